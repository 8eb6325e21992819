#!/usr/bin/env bash
# Runs every test of every module in this repository: gofmt, go vet and
# go test -race for the root module and each nested module (interop/, ...),
# the JavaScript client's tests (js/, node --test), then the allocation
# checks without the race detector. Whatever the tests
# need is installed or started here, never by hand. It ends with one line
# per module and a total: "N passed, M failed", counting tests, subtests
# and examples.
set -euo pipefail
cd "$(dirname "$0")"

# The browser tests (browsertest/) drive Debian's chromium; the Redis tests
# (redisrt/) start Debian's redis-server themselves.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The JavaScript client's tests (js/) run on Node's own test runner.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
	echo "=== installing Debian's ${missing[*]} for the browser, Redis and JavaScript tests"
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "test.sh: missing ${missing[*]}, and there is no apt-get here to install them." >&2
		echo "Install them with this system's package manager (Debian names: chromium, redis-server, nodejs, npm), then run ./test.sh again." >&2
		exit 2
	fi
	as_root=()
	if [ "$(id -u)" != 0 ]; then
		if ! command -v sudo >/dev/null 2>&1; then
			echo "test.sh: installing ${missing[*]} needs root, and sudo is missing." >&2
			echo "Run it as root, or install them first: apt-get install ${missing[*]}" >&2
			exit 2
		fi
		as_root=(sudo)
	fi
	# env, so that DEBIAN_FRONTEND survives sudo; the lists are updated once.
	${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# What the run must leave as it found it: the processes that tests start
# (redis-server, a browser, Node, a demo binary, a re-executed test binary)
# and the working tree (a stale go.work.sum, say, would be rewritten).
children() {
	ps -eo pid=,stat=,comm= | awk '$2 !~ /^Z/ && $3 ~ /^(redis-server|chromium|chrome|node|realtime-demo|jstestserver|.*\.test)$/ {print $1}' | sort
}
# ours PID...: those of the PIDs that this run started: descendants of this
# script, or orphans (a child whose parent ended is given to PID 1), not a
# process someone else started meanwhile.
ours() {
	local pid p
	for pid in "$@"; do
		p=$(ps -o ppid= -p "$pid" | tr -d ' ')
		if [ "$p" = 1 ]; then
			echo "$pid" # an orphan
			continue
		fi
		while [ -n "$p" ] && [ "$p" -gt 1 ] && [ "$p" != $$ ]; do
			p=$(ps -o ppid= -p "$p" | tr -d ' ')
		done
		if [ "$p" = $$ ]; then
			echo "$pid"
		fi
	done
}
leftover_before=$(children)
tree_before=$(git status --porcelain 2>/dev/null || true)
summary=()
total_pass=0
total_fail=0
status=0

# run NAME LOG CMD...: runs a go test command with -v into LOG, shows the
# package lines and every failure, and counts the tests that passed and
# failed.
run() {
	local name=$1 log=$2
	shift 2
	local rc=0
	"$@" >"$log" 2>&1 || rc=$?
	grep -E '^(ok|FAIL|\?|panic:)' "$log" || true
	if [ $rc != 0 ]; then
		# What a plain (non -v) run would show: everything but the
		# progress lines and the logs of tests that passed.
		grep -v -E '^\s*(=== (RUN|PAUSE|CONT|NAME)|--- PASS|--- SKIP)' "$log" | tail -n 400 || true
		status=1
	fi
	local pass fail
	pass=$(grep -c -E '^\s*--- PASS' "$log" || true)
	fail=$(grep -c -E '^\s*--- FAIL' "$log" || true)
	if [ $rc != 0 ] && [ "$fail" = 0 ]; then
		fail=1 # a build failure, a panic or a timeout: count it
	fi
	summary+=("$name: $pass passed, $fail failed")
	total_pass=$((total_pass + pass))
	total_fail=$((total_fail + fail))
}

modules=$(find . -name go.mod -not -path './.git/*' -exec dirname {} \; | sort)
i=0
for m in $modules; do
	echo "=== module $m"
	unformatted=$(cd "$m" && gofmt -l .)
	if [ -n "$unformatted" ]; then
		echo "gofmt: these files need formatting:"
		echo "$unformatted"
		status=1
	fi
	(cd "$m" && go vet ./...) || status=1
	i=$((i + 1))
	run "module $m" "$logs/$i.log" bash -c "cd '$m' && go test -race -count=1 -v -timeout 20m ./..."
done
# The JavaScript client: its test dependency (ws, pinned in
# package-lock.json) from the npm registry, then node --test against the Go
# test server it builds from this repository.
echo "=== js"
js_log="$logs/js.log"
js_rc=0
(cd js && npm ci --no-audit --no-fund --loglevel=error && node --test --test-reporter=tap test/) >"$js_log" 2>&1 || js_rc=$?
grep -E '^(not ok|# (tests|pass|fail))' "$js_log" || true
js_pass=$(grep -E '^# pass ' "$js_log" | awk '{print $3}' || true)
js_fail=$(grep -E '^# fail ' "$js_log" | awk '{print $3}' || true)
js_pass=${js_pass:-0}
js_fail=${js_fail:-0}
if [ $js_rc != 0 ]; then
	tail -n 200 "$js_log"
	status=1
	if [ "$js_fail" = 0 ]; then js_fail=1; fi
fi
summary+=("js: $js_pass passed, $js_fail failed")
total_pass=$((total_pass + js_pass))
total_fail=$((total_fail + js_fail))

# Allocation counts are checked without the race detector, which allocates
# on its own.
echo "=== allocation checks (no -race)"
run "allocation checks" "$logs/allocs.log" go test -count=1 -v -run 'Allocs' . ./promrt

# Each fuzz target runs a few seconds, so that an invariant that no longer
# holds is caught the day it breaks (run them for minutes after touching
# a decoder: go test -run=NONE -fuzz=^FuzzReadFrames$ -fuzztime=10m .).
echo "=== fuzz targets (5 s each)"
for target in FuzzReadFrames FuzzDecodeClientMessage FuzzDecodeServerMessage; do
	run "fuzz $target" "$logs/fuzz-$target.log" go test -v -run=NONE -fuzz="^$target\$" -fuzztime=5s -parallel=2 .
done

echo "=== what the run left behind"
leftover=$(ours $(comm -13 <(echo "$leftover_before") <(children)))
if [ -n "$leftover" ]; then
	echo "test.sh: these processes started by the tests are still running:"
	ps -o pid,ppid,args -p "$(echo $leftover | tr ' ' ',')" || true
	kill -9 $leftover 2>/dev/null || true
	status=1
	total_fail=$((total_fail + 1))
fi
tree_after=$(git status --porcelain 2>/dev/null || true)
if [ "$tree_before" != "$tree_after" ]; then
	echo "test.sh: the run changed the working tree:"
	diff <(echo "$tree_before") <(echo "$tree_after") || true
	status=1
	total_fail=$((total_fail + 1))
fi

echo "=== summary"
for line in "${summary[@]}"; do
	echo "$line"
done
echo "total: $total_pass passed, $total_fail failed"
exit $status
