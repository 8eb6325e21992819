#!/usr/bin/env bash
# Runs every test of every module in this repository: gofmt, go vet and
# go test -race for the root module and each nested module (interop/, ...).
# Whatever the tests need is installed or started here, never by hand.
set -euo pipefail
cd "$(dirname "$0")"

# The browser tests (browsertest/) drive Debian's chromium.
if ! command -v chromium >/dev/null 2>&1; then
	echo "=== installing Debian's chromium for the browser tests"
	SUDO=""
	if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# The Redis tests (redisrt/) start Debian's redis-server themselves.
if ! command -v redis-server >/dev/null 2>&1; then
	echo "=== installing Debian's redis-server for the Redis tests"
	SUDO=""
	if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

modules=$(find . -name go.mod -not -path './.git/*' -exec dirname {} \; | sort)
status=0
for m in $modules; do
	echo "=== module $m"
	(
		cd "$m"
		unformatted=$(gofmt -l .)
		if [ -n "$unformatted" ]; then
			echo "gofmt: these files need formatting:"; echo "$unformatted"; exit 1
		fi
		go vet ./...
		go test -race -count=1 -timeout 20m ./...
	) || status=1
done
# Allocation counts are checked without the race detector, which allocates
# on its own.
echo "=== allocation checks (no -race)"
go test -count=1 -run 'Allocs' . || status=1
exit $status
