#!/usr/bin/env bash
# One command for a GPU machine: build spattn with CUDA (all cores), run the GPU tests (forward
# and backward, decode), time decode over a 1M-token paged cache (bench_decode.py), the forward and the forward+backward against torch SDPA (flash and cuDNN)
# and FlexAttention, print the tables last. On Hopper the forward+backward table also has rows
# for the sm90a backward's two ways of forming dQ, "spattn sm90a, dQ pass" (the query-major dQ
# kernel) and "spattn sm90a, dQ tma" (TMA reduce-add from the dK/dV kernel, SPATTN_CUDA_DQ=tma),
# and the GPU tests include both (test_cuda_sm90_backward.py, test_cuda_sm90_dq_tma.py).
#
#   bash bench/gpu/run.sh            # from anywhere; results and logs under $OUT (or ./gpu-out)
#   bash bench/gpu/run.sh --profile  # also a short Nsight Compute summary of spattn's kernels
#                                    # (bench/gpu/profile.py: speed of light, occupancy, warp
#                                    # stalls, spills), printed last and in $OUT/profile.md
#
# The device machines of this workplace have no network: the CuTe/CUTLASS headers must come
# with the tree. Put them at .gl/cutlass/include (gitignored) before the call, e.g.
#   mkdir -p .gl/cutlass && cp -r build-*/_deps/nvidia-cutlass-4.2.0.0/unpacked/cutlass_library/source/include .gl/cutlass/
# and carry ".gl"; or set CUTLASS_INCLUDE_DIR. torch, triton, pytest, scikit-build-core and
# pybind11 are taken from the machine's Python (nothing is installed from an index).
#
# Environment: SPATTN_WHEEL (a wheel built beforehand, e.g. on a machine without a GPU with
#   SPATTN_CUDA=ON SPATTN_CUDA_ARCHS=90a python3.12 -m pip wheel --no-deps -w .whl .
# and carried in .whl: installed instead of building here), OUT (results folder), PYTHON (default python3), SPATTN_CUDA_ARCHS (default: the
# GPU's own, 90a on Hopper, 80 on Ampere/Ada), BENCH_ARGS (extra arguments for
# bench_forward.py, e.g. "--quick" or "--no-flex"), BENCH_PLANNER_ARGS (for bench_planner.py,
# e.g. "--skip-1m"), BENCH_DECODE_ARGS (for bench_decode.py, e.g. "--pages 16"), BENCH_BWD_ARGS (extra arguments for
# bench_backward.py, e.g. "--no-flex" or "--no-sm90a"), SKIP_BUILD=1 (reuse an installed build), SKIP_TESTS=1,
# SKIP_BWD=1 (no backward tests or timings), SKIP_BWD_BENCH=1 (backward tests, no timings),
# SKIP_BENCH=1 (tests only), SPATTN_TEST_KERNELS (e.g. "bfloat16:128,float16:64": the
# (dtype, D) the per-kernel tests loop over), EXTRA_TESTS, TEST_TIMEOUT (default 300 s),
# BENCH_TIMEOUT (per benchmark, default 240 s; FWD_TIMEOUT for the forward one, default 420 s:
# it also has the D=64/256 and 1M/12M rows, BENCH_ARGS="--dims '' --long ''" drops them), COMPARE_SM80=1 (also the forward benchmark with
# the sm80-style kernel on a Hopper GPU).
set -uo pipefail
PROFILE="${PROFILE:-0}"
for arg in "$@"; do
  case "$arg" in
    --profile) PROFILE=1 ;;
    *) echo "usage: bash bench/gpu/run.sh [--profile]  (settings through the environment: see the top of this file)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/../.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start )) s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
nproc | sed 's/^/cpu cores: /'

cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
if [ -z "${SPATTN_CUDA_ARCHS:-}" ]; then
  case "$cap" in
    9.0) SPATTN_CUDA_ARCHS="90a" ;;
    8.*) SPATTN_CUDA_ARCHS="80" ;;
    *) SPATTN_CUDA_ARCHS="80;90a"; echo "warning: compute capability $cap has no spattn kernel" ;;
  esac
fi
export SPATTN_CUDA=ON SPATTN_CUDA_ARCHS SPATTN_CUDA_REDUCED=OFF
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"


if [ -n "${SPATTN_WHEEL:-}" ]; then
  # A wheel built elsewhere (saves the device machine's time): installed into a private folder.
  stamp "install $SPATTN_WHEEL"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/spattn-site "$SPATTN_WHEEL" || exit 1
  export PYTHONPATH="/tmp/spattn-site${PYTHONPATH:+:$PYTHONPATH}"
elif [ "${SKIP_BUILD:-0}" != "1" ]; then
  if [ -z "${CUTLASS_INCLUDE_DIR:-}" ]; then
    for c in "$ROOT/.gl/cutlass/include" "$ROOT"/build-*/_deps/nvidia-cutlass-*/unpacked/cutlass_library/source/include; do
      if [ -f "$c/cute/tensor.hpp" ]; then export CUTLASS_INCLUDE_DIR="$c"; break; fi
    done
  fi
  if [ -z "${CUTLASS_INCLUDE_DIR:-}" ]; then
    echo "error: no CuTe/CUTLASS headers: copy them to .gl/cutlass/include (see the top of this script)" >&2
    exit 2
  fi
  echo "CUTLASS_INCLUDE_DIR=$CUTLASS_INCLUDE_DIR"
  stamp "build (SPATTN_CUDA_ARCHS=$SPATTN_CUDA_ARCHS, $CMAKE_BUILD_PARALLEL_LEVEL jobs)"
  # No build isolation and no dependencies: the machine cannot reach an index; the build
  # requirements (scikit-build-core, pybind11, cmake, ninja) are already installed there.
  if ! "$PY" -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    echo "error: the build failed (full log: $OUT/build.log)" >&2
    exit 1
  fi
  grep -E "spattn: CUDA|Build files" "$OUT/build.log" | head -5
fi
cd "$OUT"  # import the installed package, not the source tree's python/ folder
"$PY" -c "import spattn, json; i = spattn.info(); print(json.dumps({k: i[k] for k in sorted(i) if k.startswith('cuda') or k in ('version', 'backends')}))" | tee "$OUT/info.txt"

if [ "${SKIP_TESTS:-0}" != "1" ]; then
  stamp "GPU tests"
  # Every GPU test file (test_cuda_*.py), without -x: one failure must not hide the others.
  tests=()
  for f in "$ROOT"/tests/python/test_cuda_*.py; do
    case "$f" in *backward*) [ "${SKIP_BWD:-0}" = "1" ] && continue ;; esac
    tests+=("$f")
  done
  # More GPU tests than test_cuda_*.py: EXTRA_TESTS (paths or pytest arguments).
  # shellcheck disable=SC2206
  extra=(${EXTRA_TESTS:-})
  for i in "${!extra[@]}"; do  # paths relative to the repository root (the tests run from $OUT)
    [ -e "$ROOT/${extra[$i]}" ] && extra[$i]="$ROOT/${extra[$i]}"
  done
  # A hung kernel must not take the whole session: the tests get TEST_TIMEOUT seconds; past
  # it the benchmarks run with the sm80-style forward (SPATTN_CUDA_FORWARD=sm80).
  # -v: one line per test in tests.log, so that a run cut short by the time limit still says
  # which tests passed and which failed (pytest prints its summary only at the end).
  SPATTN_CUDA_SYNC=1 timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest -v -rfE -p no:cacheprovider "${tests[@]}" "${extra[@]}" \
      > "$OUT/tests.log" 2>&1
  trc=$?
  echo "$(grep -c " PASSED" "$OUT/tests.log") passed, $(grep -c " SKIPPED" "$OUT/tests.log") skipped, $(grep -c " FAILED\| ERROR" "$OUT/tests.log") failed or errors"
  grep -iE "^(FAILED|ERROR)|error:|passed|failed" "$OUT/tests.log" | grep -v " PASSED\| SKIPPED" | tail -25
  if [ "$trc" = 124 ]; then
    echo "error: the GPU tests ran past ${TEST_TIMEOUT:-300} s (a hang?); benchmarks use the sm80-style forward"
    tail -5 "$OUT/tests.log"
    export SPATTN_CUDA_FORWARD=sm80
  fi
  if command -v compute-sanitizer > /dev/null 2>&1; then
    stamp "compute-sanitizer memcheck (small run)"
    compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" - > "$OUT/memcheck.log" 2>&1 <<'EOF'
import torch, spattn
for nq, nk, pat in [(257, 385, spattn.Causal()), (300, 200, spattn.Sink(3) | spattn.SlidingWindow(50, 0))]:
    q = torch.randn(1, nq, 2, 128, dtype=torch.bfloat16, device="cuda")
    k, v = (torch.randn(1, nk, 1, 128, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    out, lse = spattn.attention(q, k, v, pattern=pat, return_lse=True)
    if "cuda_backward_kernels" in spattn.info() and spattn.info()["cuda_backward_kernels"]:
        spattn.attention_backward(torch.randn_like(out), q, k, v, out, lse, pattern=pat)
# Decode, paged (pages in a random order) and contiguous, GQA, a window and a union.
kp, vp = (torch.randn(70, 16, 2, 128, dtype=torch.bfloat16, device="cuda") for _ in range(2))
table = torch.randperm(70, device="cuda").to(torch.int32).reshape(2, 35)
q = torch.randn(2, 3, 8, 128, dtype=torch.bfloat16, device="cuda")
for pat in (spattn.SlidingWindow(40, 0), spattn.Sink(4) | spattn.SlidingWindow(20, 0), spattn.Dense()):
    spattn.decode(q, kp, vp, [555, 17], pattern=pat, block_table=table, return_lse=True)
    spattn.decode(q, kp[:60].reshape(2, 480, 2, 128), vp[:60].reshape(2, 480, 2, 128), [480, 9], pattern=pat)
spattn.pool_keys(kp, [555, 17], 64, block_table=table)
torch.cuda.synchronize()
print("memcheck run done")
EOF
    echo "memcheck exit $? ($(grep -c 'Invalid' "$OUT/memcheck.log") invalid accesses; log $OUT/memcheck.log)"
    grep -E "ERROR SUMMARY" "$OUT/memcheck.log" | tail -1
  fi
fi

if [ "${SKIP_BENCH:-0}" = "1" ] && [ "$PROFILE" != "1" ]; then stamp "done (SKIP_BENCH)"; exit 0; fi
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  stamp "benchmark: planner (host overhead, block-sparse end to end, dilated/strided)"
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-240}" "$PY" "$ROOT/bench/gpu/bench_planner.py" --out "$OUT" ${BENCH_PLANNER_ARGS:-} 2>&1 | tee "$OUT/bench_planner.log" | grep -v '^|' | tail -5
  stamp "benchmark: decode (1M-token paged bf16 cache, window 4096 and dense)"
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-240}" "$PY" "$ROOT/bench/gpu/bench_decode.py" --out "$OUT" ${BENCH_DECODE_ARGS:-} 2>&1 | tee "$OUT/bench_decode.log" | grep -v '^|' | tail -5
  stamp "benchmark"
  # shellcheck disable=SC2086
  timeout "${FWD_TIMEOUT:-420}" "$PY" "$ROOT/bench/gpu/bench_forward.py" --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -v '^|' | tail -20
  if [ "${COMPARE_SM80:-0}" = "1" ]; then
    stamp "benchmark (the sm80-style forward, for comparison)"
    mkdir -p "$OUT/sm80"
    # shellcheck disable=SC2086
    SPATTN_CUDA_FORWARD=sm80 timeout "${BENCH_TIMEOUT:-240}" "$PY" "$ROOT/bench/gpu/bench_forward.py" --out "$OUT/sm80" --quick --no-flex \
        2>&1 | grep "^  spattn" | tail -8
  fi
  if [ "${SKIP_BWD:-0}" != "1" ] && [ "${SKIP_BWD_BENCH:-0}" != "1" ]; then
    stamp "benchmark forward+backward"
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-240}" "$PY" "$ROOT/bench/gpu/bench_backward.py" --out "$OUT" ${BENCH_BWD_ARGS:-} 2>&1 | tee "$OUT/bench_bwd.log" | grep -v '^|' | tail -20
  fi
fi  # SKIP_BENCH
if [ "$PROFILE" = "1" ]; then
  stamp "profile (Nsight Compute)"
  if command -v ncu > /dev/null 2>&1; then
    timeout "${BENCH_TIMEOUT:-240}" "$PY" "$ROOT/bench/gpu/profile.py" --out "$OUT" > "$OUT/profile_run.log" 2>&1 \
      || { echo "profile failed:"; tail -5 "$OUT/profile_run.log"; }
  else
    echo "no ncu on this machine: no profile"
  fi
fi
stamp "done"
cat "$OUT/table_planner.md" 2>/dev/null
echo
cat "$OUT/table_decode.md" 2>/dev/null
echo
cat "$OUT/table.md" 2>/dev/null
echo
cat "$OUT/table_bwd.md" 2>/dev/null
if [ "$PROFILE" = "1" ]; then echo; cat "$OUT/profile.md" 2>/dev/null; fi
