#!/usr/bin/env bash
# The longer reliability campaign (RELIABILITY.md): what CI runs, at length. About an hour and
# a half on a free 2-core machine; run from the repository root with spattn installed in the
# current Python (pip install ".[test]") and clang available.
#
#   tests/reliability/campaign.sh [SCALE] [SEED]
#
#   1. differential fuzzing, SPATTN_FUZZ_SCALE=SCALE (default 20: 44,000 cases), random seeds
#   2. 100,000 malformed inputs (seed SEED, default 1)
#   3. ASan+UBSan: C++ tests, the fuzz targets (fuzz_core 30 minutes, fuzz_syntax 15), the
#      reduced Python set
#   4. TSan: the concurrency and kernel tests
#   5. sizes and memory: > 2^31 elements, the 12M-token window forward, out of memory
#   6. leaks and concurrency (RSS, fds, threads over 10,000 calls of each entry point)
# Figures go to build-reliability/ (one log per step) and a summary is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
scale="${1:-20}"
seed="${2:-1}"
out=build-reliability
mkdir -p "$out"
PY="${PYTHON:-python}"
status=0
step() {  # step NAME COMMAND...: run, log, remember failure
  local name="$1"; shift
  local t0=$(date +%s)
  echo "=== $name"
  if "$@" > "$out/$name.log" 2>&1; then r=ok; else r="FAILED"; status=1; fi
  echo "=== $name: $r in $(( $(date +%s) - t0 )) s (log: $out/$name.log)"
  tail -5 "$out/$name.log"
}
step fuzz-differential env SPATTN_FUZZ_SCALE="$scale" "$PY" -m pytest -q -p no:cacheprovider \
  --hypothesis-show-statistics tests/python/test_fuzz_differential.py
step malformed "$PY" tests/reliability/run_malformed.py --cases 100000 --seed "$seed" \
  --json "$out/malformed.json"
step asan tests/reliability/sanitize.sh asan 1800
step tsan tests/reliability/sanitize.sh tsan
step sizes env SPATTN_RUN_LARGE=1 "$PY" -m pytest -q -p no:cacheprovider -s tests/python/test_sizes_and_memory.py
step leaks "$PY" -m pytest -q -p no:cacheprovider -s tests/python/test_leaks.py tests/python/test_concurrency.py
echo "=== summary"
grep -h "passing examples\|passed\|failed" "$out/fuzz-differential.log" | tail -3
grep -h "^malformed inputs" "$out/malformed.log"
grep -h "^fuzz_[a-z]*:$\|stat::number_of_executed_units\|=== asan: done" "$out/asan.log"
grep -h "failures\|=== tsan: done" "$out/tsan.log"
grep -h "RSS" "$out/leaks.log" | head -12
exit $status
