#!/usr/bin/env bash
# ptxas's register / spill report (-Xptxas=-v) of the sm80-style backward main kernel
# (src/bwd/backward_kernel.cuh), every (dtype, head dim, architecture) asked for. No GPU needed.
# The score modifiers are a run-time branch (f.mods) inside the one kernel, so one report per
# TU covers both.
#
# The compile command is the build's own: taken from `ninja -t commands` of a configured CUDA
# build (any SPATTN_CUDA_REDUCED setting: its bf16 D = 128 backward TU is always there), with the
# instance source swapped for one generated here from src/bwd/bwd_instance.cu.in and `-c` for
# `-cubin` (device code only: no host compile). Nothing in the build directory is written.
# (The same approach as check_ptxas_forward.sh.)
#
# usage: cuda/check_ptxas_backward.sh [build-dir] (default build-cuda)
#   env DTYPES="half_t bfloat16_t"  DIMS="32 64 96 128 256"  ARCHS="sm80 sm90a"
#   env KEEP=dir keeps the cubins there (<arch>_<dtype>_d<D>.cubin) for cuobjdump / nvdisasm
# Prints one line per kernel: arch dtype D registers spill-stores spill-loads stack;
# exit status 1 if any kernel spills.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build-cuda}" && pwd)
dtypes=${DTYPES:-"half_t bfloat16_t"}
dims=${DIMS:-"32 64 96 128 256"}
archs=${ARCHS:-"sm80 sm90a"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for arch in $archs; do
  cmd=$(ninja -C "$build" -t commands | grep -F "spattn_cuda_${arch}.dir/generated/bwd_bfloat16_t_d128.cu.o" \
        | grep -F nvcc | head -n 1)
  if [[ -z "$cmd" ]]; then
    echo "no nvcc command for the $arch backward TU in $build (configure with SPATTN_CUDA=ON)" >&2
    exit 2
  fi
  # Drop the dependency-file flags and the source / output; keep everything else verbatim.
  base=$(sed -E 's/ -MD / /; s/ -MT [^ ]+//; s/ -MF [^ ]+//; s/ -x cu -c [^ ]+ -o [^ ]+$//' <<<"$cmd")
  for t in $dtypes; do
    for d in $dims; do
      src="$work/bwd_${t}_d${d}.cu"
      sed -e "s/@SPATTN_BWD_T@/$t/g" -e "s/@SPATTN_BWD_D@/$d/g" \
          "$root/cuda/src/bwd/bwd_instance.cu.in" >"$src"
      log="$work/${arch}_${t}_d${d}.log"
      (cd "$build" && eval "$base -Xptxas=-v -x cu -cubin $src -o $work/${arch}_${t}_d${d}.cubin") >"$log" 2>&1 || {
        cat "$log" >&2
        exit 2
      }
      # ptxas prints "Compiling entry function '<mangled>'" then its "Used N registers" and
      # "N bytes stack frame, N bytes spill stores, N bytes spill loads" lines.
      awk -v arch="$arch" -v t="$t" -v d="$d" '
        /Compiling entry function/ {
          match($0, /_Z[A-Za-z0-9_]+/); name = substr($0, RSTART, RLENGTH)
          if (name !~ /backward_kernel/) name = ""
        }
        name != "" && /bytes stack frame/ {
          split($0, f, /[ ,]+/)
          for (i = 1; i <= length(f); ++i) {
            if (f[i] == "stack") stack = f[i - 2]
            if (f[i] == "stores") st = f[i - 3]
            if (f[i] == "loads") ld = f[i - 3]
          }
        }
        name != "" && /Used [0-9]+ registers/ {
          match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
          printf "%-6s %-11s D=%-4s %4s registers  %4s / %4s bytes spill stores / loads  %3s bytes stack\n",
                 arch, t, d, regs, st, ld, stack
          name = ""
        }' "$log" | tee -a "$work/all.txt"
      if [[ -n "${KEEP:-}" ]]; then mkdir -p "$KEEP" && cp "$work/${arch}_${t}_d${d}.cubin" "$KEEP/"; fi
    done
  done
done
if awk '{ if ($6 != "0" || $8 != "0") bad = 1 } END { exit !bad }' "$work/all.txt"; then
  echo "SPILLS: see the lines above"
  exit 1
fi
echo "no spills"
