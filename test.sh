#!/usr/bin/env bash
# Runs every test of every module in this repository: gofmt, go vet and
# go test -race for the root module and each nested module (interop/, ...).
# Whatever the tests need is installed or started here, never by hand.
set -euo pipefail
cd "$(dirname "$0")"

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
