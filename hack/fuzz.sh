#!/usr/bin/env bash
# Runs every Fuzz target for a bounded time (FUZZTIME, default 10s). Inputs
# that fail are written by go test under the package's testdata/fuzz and
# become part of the regular test run once committed.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-10s}
status=0
while read -r file; do
	pkg=./$(dirname "$file")
	for f in $(grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | awk '{print $2}'); do
		echo "fuzz $pkg $f ($t)"
		go test -run='^$' -fuzz="^$f\$" -fuzztime="$t" "$pkg" >/tmp/fuzz.$$.log 2>&1 || { cat /tmp/fuzz.$$.log; status=1; }
	done
done < <(git ls-files '*_test.go' 2>/dev/null | xargs grep -l '^func Fuzz' 2>/dev/null)
rm -f /tmp/fuzz.$$.log
exit $status
