#!/usr/bin/env bash
# ptxas's register / spill report (-Xptxas=-v) of the sm80-style forward kernel, every
# (dtype, head dim, architecture) asked for, plain and with the score modifiers (each generated
# TU instantiates both). No GPU needed.
#
# The compile command is the build's own: taken from `ninja -t commands` of a configured CUDA
# build (any SPATTN_CUDA_REDUCED setting: its bf16 D = 128 forward TU is always there), with the
# instance source swapped for one generated here from src/fwd/fwd_instance.cu.in and `-c` for
# `-cubin` (device code only: no host compile). Nothing in the build directory is written.
#
# usage: cuda/check_ptxas_forward.sh [build-dir] (default build-cuda)
#   env DTYPES="half_t bfloat16_t"  DIMS="32 64 96 128 256"  ARCHS="sm80 sm90a"
#   env KEEP=dir keeps the cubins there (<arch>_<dtype>_d<D>.cubin) for cuobjdump / nvdisasm
# Prints one line per kernel: arch dtype D variant registers spill-stores spill-loads stack;
# exit status 1 if any kernel spills.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build-cuda}" && pwd)
dtypes=${DTYPES:-"half_t bfloat16_t"}
dims=${DIMS:-"32 64 96 128 256"}
archs=${ARCHS:-"sm80 sm90a"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

spilled=0
for arch in $archs; do
  cmd=$(ninja -C "$build" -t commands | grep -F "spattn_cuda_${arch}.dir/generated/fwd_bfloat16_t_d128.cu.o" \
        | grep -F nvcc | head -n 1)
  if [[ -z "$cmd" ]]; then
    echo "no nvcc command for the $arch forward TU in $build (configure with SPATTN_CUDA=ON)" >&2
    exit 2
  fi
  # Drop the dependency-file flags and the source / output; keep everything else verbatim.
  base=$(sed -E 's/ -MD / /; s/ -MT [^ ]+//; s/ -MF [^ ]+//; s/ -x cu -c [^ ]+ -o [^ ]+$//' <<<"$cmd")
  for t in $dtypes; do
    for d in $dims; do
      src="$work/fwd_${t}_d${d}.cu"
      sed -e "s/@SPATTN_FWD_T@/$t/g" -e "s/@SPATTN_FWD_D@/$d/g" \
          "$root/cuda/src/fwd/fwd_instance.cu.in" >"$src"
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
          if (name !~ /forward_kernel/) { name = ""; next }
          cmd = "c++filt " name; cmd | getline dem; close(cmd)
          variant = (dem ~ /true>/) ? "modifiers" : "plain"
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
          printf "%-6s %-11s D=%-4s %-10s %4s registers  %4s / %4s bytes spill stores / loads  %3s bytes stack\n",
                 arch, t, d, variant, regs, st, ld, stack
          name = ""
        }' "$log" | tee -a "$work/all.txt"
      if [[ -n "${KEEP:-}" ]]; then mkdir -p "$KEEP" && cp "$work/${arch}_${t}_d${d}.cubin" "$KEEP/"; fi
    done
  done
done
if awk '{ if ($7 != "0" || $9 != "0") bad = 1 } END { exit !bad }' "$work/all.txt"; then
  echo "SPILLS: see the lines above"
  exit 1
fi
echo "no spills"
