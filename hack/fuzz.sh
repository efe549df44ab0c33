#!/usr/bin/env bash
# Runs every Fuzz target for a bounded number of executions and fails when,
# and only when, a target finds a failing input.
#
# Why executions (-fuzztime=Nx) and not a duration: with a duration, Go's
# fuzz coordinator (go1.26 and older, golang/go#75804, fixed in go1.27)
# races its own deadline and can fail a target with a bare "context
# deadline exceeded" under CPU contention, having found nothing. A count
# has no deadline to race: a loaded machine only makes the tier slower. We
# stay on the machine's Go rather than GOTOOLCHAIN=go1.27.3 so that no
# shell, script or README needs an export for the fuzz tier alone.
#
# FUZZ_EXECS (default 50000) is sized so the tier takes about as long as the
# old 10 s per target on this machine kind (2 cores): ~1 s for the fastest
# target, ~15 s for the slowest. FUZZ_PKGS limits the packages (e.g.
# ./pkg/qos); FUZZ_TAGS passes build tags (hack/fuzzcheck.sh uses it).
#
# A failing input is written by go test under the package's testdata/fuzz,
# where the regular test run picks it up; this script names the file. Commit
# it with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${FUZZ_EXECS:-50000}
tags=${FUZZ_TAGS:-}
# Targets whose every execution is costly get fewer: FuzzOpenDamaged writes
# and opens a database file each time (~1000/s here).
declare -A per_target=([FuzzOpenDamaged]=$((n / 10)))
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

targets() {
	if [ -n "${FUZZ_PKGS:-}" ]; then
		for p in $FUZZ_PKGS; do
			grep -l '^func Fuzz' "${p#./}"/*_test.go 2>/dev/null || true
		done
	else
		# Files behind a build tag (the canary of hack/fuzzcheck.sh) only
		# build when FUZZ_TAGS names it.
		git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | xargs grep -L '^//go:build' || true
	fi
}

while read -r file; do
	[ -n "$file" ] || continue
	pkg=./$(dirname "$file")
	for f in $(grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | awk '{print $2}'); do
		execs=${per_target[$f]:-$n}
		start=$(date +%s)
		# -timeout is a backstop for a hung target, far above any run's length.
		if go test ${tags:+-tags "$tags"} -run='^$' -fuzz="^$f\$" -fuzztime="${execs}x" -timeout 10m "$pkg" >"$log" 2>&1; then
			echo "fuzz $pkg $f: ok, ${execs} executions in $(($(date +%s) - start))s"
			continue
		fi
		status=1
		input=$(sed -n 's/.*Failing input written to \([^ ]*\).*/\1/p' "$log" | tail -1)
		if [ -n "$input" ]; then
			echo "fuzz $pkg $f: FAIL: failing input kept at ${pkg#./}/$input"
			echo "   re-run it: go test -run='^$f\$/$(basename "$input")\$' $pkg"
		else
			echo "fuzz $pkg $f: FAIL (no input written: the target itself failed)"
		fi
		sed 's/^/   /' "$log" | grep -vE '^   fuzz: elapsed' | head -40
	done
done < <(targets)
exit $status
