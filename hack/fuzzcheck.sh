#!/usr/bin/env bash
# Proves the fuzz tier still fails on a real bug: hack/fuzz.sh must fail on
# the canary's deliberately broken parser (internal/fuzzcanary, behind the
# fuzzcanary tag), name the failing input and leave it under the package's
# testdata/fuzz. The input is removed afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=internal/fuzzcanary/testdata
out=$(FUZZ_PKGS=./internal/fuzzcanary FUZZ_TAGS=fuzzcanary FUZZ_EXECS=1000000 hack/fuzz.sh 2>&1)
rc=$?
input=$(echo "$out" | sed -n 's/.*failing input kept at \([^ ]*\).*/\1/p' | head -1)
trap 'rm -rf "$dir"' EXIT
if [ $rc -eq 0 ]; then
	echo "fuzzcheck: FAIL: the fuzz tier passed a broken parser"; echo "$out"; exit 1
fi
if [ -z "$input" ] || [ ! -f "$input" ]; then
	echo "fuzzcheck: FAIL: the fuzz tier failed but did not name a kept input"; echo "$out"; exit 1
fi
echo "fuzzcheck: ok: the broken parser failed the tier with input $input"
