#!/usr/bin/env bash
# Runs every test tier this machine has: static checks, unit and root tests
# against the host kernel (go test -race), bounded fuzzing, then the VM tier.
# Ends with one plain summary line.
set -uo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=-mod=mod
# The Makefile builds static binaries with cgo off; the race detector needs it.
export CGO_ENABLED=1
export CIRCUIT_TEST_CNI_PATH=$PWD/bin/cni CIRCUIT_TEST_BIN=$PWD/bin/circuit CIRCUIT_TEST_AGENT=$PWD/bin/circuit-agent
log=$(mktemp -d)/host.log
status=0

echo "== static checks"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad"; status=1; fi
go vet ./... || status=1
(cd hack/bench && go vet ./...) || status=1

echo "== unit and host-kernel tests (go test -race)"
[ "$(id -u)" = 0 ] || echo "test: not root: the root tier will skip; run as root for the real tests"
{
	go test -race -count=1 -timeout 20m -v ./...
	# The benchmark is its own module (its plotting libraries stay out of
	# circuit's); its unit tests run here too.
	(cd hack/bench && go test -race -count=1 -v ./...)
} >"$log" 2>&1
rc=$?
grep -E '^(ok|FAIL|---|panic:|\?)' "$log" | grep -vE '^--- (PASS|SKIP)' || true
if [ $rc -ne 0 ]; then
	echo "-- go test failed; failing tests' output:"
	grep -B2 -A30 -E '^\s*--- FAIL' "$log" | head -300
	status=1
fi
host_pass=$(grep -cE '^--- PASS' "$log")
host_fail=$(grep -cE '^--- FAIL' "$log")
host_skip=$(grep -cE '^--- SKIP' "$log")
echo "host: $host_pass passed, $host_fail failed, $host_skip skipped"
if [ "$(id -u)" = 0 ] && [ "$host_skip" -gt 0 ]; then
	echo "-- skipped as root (each says why):"
	# go test -v prints a skip's reason on the line before its "--- SKIP".
	grep -B1 -E '^--- SKIP' "$log" | grep -vE '^(--|--- SKIP|=== )' | sed 's/^ */   /' | sort | uniq -c | head -20
fi

echo "== fuzzing (bounded by executions)"
hack/fuzz.sh || status=1
hack/fuzzcheck.sh || status=1

# The benchmark's numbers are not checked here; that it still runs is.
bench_pass=0 bench_fail=0
if [ "$(id -u)" = 0 ]; then
	echo "== benchmark smoke run (bin/bench -smoke)"
	blog=$(dirname "$log")/bench.log
	if (cd hack/bench && CGO_ENABLED=0 go build -o ../../bin/bench .) && bin/bench -smoke -out "$(dirname "$log")/bench/benchmarks.md" >"$blog" 2>&1; then
		bench_pass=1
		# The table of targets, every section's rows.
		sed -n '/^## Targets/,/^## 1\./p' "$blog" | grep '^|' | sed 's/^/   /'
	else
		bench_fail=1
		status=1
		echo "-- the benchmark failed:"
		tail -30 "$blog"
	fi
fi

vm_pass=0 vm_fail=0
if [ "${SKIP_VM:-}" = 1 ]; then
	echo "vmtest: skipped (SKIP_VM=1)"
else
	echo "== VM tier"
	vlog=$(dirname "$log")/vm.log
	hack/vmtest.sh 2>&1 | tee "$vlog"
	[ "${PIPESTATUS[0]}" = 0 ] || status=1
	line=$(grep -E '^vmtest: [0-9]+ passed, [0-9]+ failed' "$vlog" | tail -1)
	vm_pass=$(echo "$line" | awk '{print $2}')
	vm_fail=$(echo "$line" | awk '{print $4}')
	[ -n "$line" ] || { vm_fail=1; status=1; }
fi

[ $status = 0 ] || [ $((host_fail + vm_fail + bench_fail)) -gt 0 ] || host_fail=1
echo "test: $((host_pass + vm_pass + bench_pass)) passed, $((host_fail + vm_fail + bench_fail)) failed"
exit $status
