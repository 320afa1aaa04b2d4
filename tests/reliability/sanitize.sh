#!/usr/bin/env bash
# Sanitizer runs of spattn (RELIABILITY.md). CPU only, clang (the fuzz targets need libFuzzer).
#
#   tests/reliability/sanitize.sh asan [FUZZ_SECONDS] [ci]
#       ASan+UBSan build in build-asan/ (core, C++ tests, Python extension, fuzz targets), then:
#       every C++ test (ci: all but the 2-minute kernel sweep, whose kernels the Python set runs),
#       the fuzz targets (fuzz_core for FUZZ_SECONDS, default 30; fuzz_syntax, the pattern text
#       parser, for half as long), and a reduced Python set over the sanitized extension
#       (LD_PRELOAD of the ASan runtime), plus 500 malformed inputs.
#   tests/reliability/sanitize.sh tsan
#       TSan build in build-tsan/ (core and C++ tests) and the tests that run threads: the
#       8-thread concurrency test and the kernel tests (thread pool, per-call thread limits).
#
# Incremental: a second run rebuilds only what changed. CI_JOBS (default 2) sets build jobs.
# Any sanitizer report aborts the program that made it, so a finding fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode="${1:-asan}"
jobs="${CI_JOBS:-2}"
start=$(date +%s)
CXX="${SPATTN_SANITIZE_CXX:-clang++}"
fuzz=ON
if ! command -v "$CXX" >/dev/null 2>&1; then
  # GCC has the same sanitizers but no libFuzzer: everything runs except the fuzz targets.
  echo "warning: $CXX not found (apt-get install clang): building with g++, without the fuzz targets" >&2
  CXX=g++
  fuzz=OFF
fi
case "$("$CXX" --version)" in *clang*) asan_rt=libclang_rt.asan-x86_64.so ;; *) asan_rt=libasan.so ;; esac
PY="${PYTHON:-python}"

if [ "$mode" = asan ]; then
  fuzz_seconds="${2:-30}"
  ci="${3:-}"
  pybind_dir=$("$PY" -c "import pybind11; print(pybind11.get_cmake_dir())" 2>/dev/null || true)
  if [ -z "$pybind_dir" ]; then
    "$PY" -m pip install -q pybind11
    pybind_dir=$("$PY" -c "import pybind11; print(pybind11.get_cmake_dir())")
  fi
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$CXX" \
    -DSPATTN_CUDA=OFF -DSPATTN_SANITIZE=address,undefined -DSPATTN_BUILD_FUZZ=$fuzz \
    -DSPATTN_BUILD_TESTS=ON -DSPATTN_BUILD_PYTHON=ON \
    -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$pybind_dir" >/dev/null
  targets=()
  if [ "${3:-}" = ci ]; then  # everything but the kernel sweep CI does not run here
    targets=(--target spattn)
    [ -d build-asan/python ] && targets+=(_core)
    [ "$fuzz" = ON ] && targets+=(fuzz_core fuzz_syntax)
    for t in tests/cpp/test_*.cpp; do
      t=$(basename "$t" .cpp)
      [ "$t" = test_cpu_kernels ] || targets+=("$t")
    done
  fi
  cmake --build build-asan -j "$jobs" "${targets[@]}"
  echo "=== asan: build done after $(( $(date +%s) - start )) s"

  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  exclude=()
  [ "$ci" = ci ] && exclude=(-E '^test_cpu_kernels$')
  ctest --test-dir build-asan --output-on-failure --no-tests=error -j "$jobs" "${exclude[@]}"
  echo "=== asan: C++ tests done after $(( $(date +%s) - start )) s"

  # run_fuzz NAME SECONDS MAX_LEN [libFuzzer options and seed folders]: the target under the
  # sanitizers; its corpus grows in build-asan/NAME-corpus, a finding fails the run
  run_fuzz() {
    local name="$1" seconds="$2" max_len="$3"; shift 3
    mkdir -p "build-asan/$name-corpus"
    local rc=0
    ./build-asan/tests/fuzz/"$name" -max_total_time="$seconds" -timeout=20 -max_len="$max_len" \
      -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="build-asan/$name-" "$@" \
      "build-asan/$name-corpus" > "build-asan/$name.log" 2>&1 || rc=$?
    echo "$name:"
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done )" "build-asan/$name.log" || true
    if [ "$rc" -ne 0 ]; then
      tail -60 "build-asan/$name.log"
      echo "$name: a finding (rc $rc); the input is in build-asan/ ($name-crash-*, -timeout-*, -oom-*)"
      exit 1
    fi
  }
  if [ "$fuzz" = ON ]; then
    run_fuzz fuzz_core "$fuzz_seconds" 600
    syntax_seconds=$(( fuzz_seconds / 2 > 0 ? fuzz_seconds / 2 : 1 ))
    run_fuzz fuzz_syntax "$syntax_seconds" 2048 -dict=tests/fuzz/fuzz_syntax.dict tests/fuzz/seeds_syntax
  fi
  echo "=== asan: fuzz targets done after $(( $(date +%s) - start )) s"

  # The sanitized extension beside the package's Python files, first on the path.
  stage=build-asan/stage/spattn
  mkdir -p "$stage"
  for f in python/spattn/*.py; do ln -sf "$PWD/$f" "$stage/"; done
  ln -sf "$PWD"/build-asan/python/_core*.so "$stage/"
  runtime=$("$CXX" -print-file-name="$asan_rt")
  # Python itself is not instrumented and keeps memory until exit: no leak report there.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
  PYTHONPATH="$PWD/build-asan/stage" LD_PRELOAD="$runtime" "$PY" -m pytest -q -p no:cacheprovider \
    tests/python/test_dlpack.py tests/python/test_errors.py tests/python/test_nonfinite.py \
    tests/python/test_merge.py tests/python/test_varlen.py tests/python/test_decode.py \
    tests/python/test_sizes_and_memory.py tests/python/test_core_bindings.py
  PYTHONPATH="$PWD/build-asan/stage" LD_PRELOAD="$runtime" "$PY" tests/reliability/run_malformed.py \
    --cases 500 --seed 7 --timeout 120
  echo "=== asan: done after $(( $(date +%s) - start )) s"
elif [ "$mode" = tsan ]; then
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$CXX" \
    -DSPATTN_CUDA=OFF -DSPATTN_SANITIZE=thread -DSPATTN_BUILD_TESTS=ON -DSPATTN_BUILD_PYTHON=OFF >/dev/null
  cmake --build build-tsan -j "$jobs" --target test_concurrency test_cpu_kernels
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"
  ./build-tsan/tests/cpp/test_concurrency
  ./build-tsan/tests/cpp/test_cpu_kernels | tail -1
  echo "=== tsan: done after $(( $(date +%s) - start )) s"
else
  echo "usage: $0 asan [FUZZ_SECONDS] [ci] | tsan" >&2
  exit 2
fi
