#!/usr/bin/env bash
# ptxas's register / spill report (-Xptxas=-v) of an sm80-style kernel: the forward
# (src/fwd/forward_kernel.cuh; each generated TU instantiates it plain and with the score
# modifiers, reported apart) or the backward main kernel (src/bwd/backward_kernel.cuh; the
# modifiers are a run-time branch inside the one kernel, so one report per TU covers both), for
# every (dtype, head dim, architecture) asked for. No GPU needed.
#
# The compile command is the build's own: taken from `ninja -t commands` of a configured CUDA
# build (any SPATTN_CUDA_REDUCED setting: its bf16 D = 128 TU of each pass is always there),
# with the instance source swapped for one generated here from src/<fwd|bwd>/<fwd|bwd>_instance.cu.in
# and `-c` for `-cubin` (device code only: no host compile). Nothing in the build directory is
# written.
#
# usage: cuda/check_ptxas.sh forward|backward [build-dir] (default build-cuda)
#   env DTYPES="half_t bfloat16_t"  DIMS="32 64 96 128 256"  ARCHS="sm80 sm90a"
#   env KEEP=dir keeps the cubins there (<arch>_<dtype>_d<D>.cubin) for cuobjdump / nvdisasm
# Prints one line per kernel: arch dtype D variant registers spill-stores spill-loads stack;
# exit status 1 if any kernel spills.
set -euo pipefail

case "${1:-}" in
  forward) pass=fwd; macro=FWD; kernel=forward_kernel ;;
  backward) pass=bwd; macro=BWD; kernel=backward_kernel ;;
  *) echo "usage: cuda/check_ptxas.sh forward|backward [build-dir]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${2:-$root/build-cuda}" && pwd)
dtypes=${DTYPES:-"half_t bfloat16_t"}
dims=${DIMS:-"32 64 96 128 256"}
archs=${ARCHS:-"sm80 sm90a"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
touch "$work/all.txt"

for arch in $archs; do
  cmd=$(ninja -C "$build" -t commands | grep -F "spattn_cuda_${arch}.dir/generated/${pass}_bfloat16_t_d128.cu.o" \
        | grep -F nvcc | head -n 1)
  if [[ -z "$cmd" ]]; then
    echo "no nvcc command for the $arch $1 TU in $build (configure with SPATTN_CUDA=ON)" >&2
    exit 2
  fi
  # Drop the dependency-file flags and the source / output; keep everything else verbatim.
  base=$(sed -E 's/ -MD / /; s/ -MT [^ ]+//; s/ -MF [^ ]+//; s/ -x cu -c [^ ]+ -o [^ ]+$//' <<<"$cmd")
  for t in $dtypes; do
    for d in $dims; do
      src="$work/${pass}_${t}_d${d}.cu"
      sed -e "s/@SPATTN_${macro}_T@/$t/g" -e "s/@SPATTN_${macro}_D@/$d/g" \
          "$root/cuda/src/${pass}/${pass}_instance.cu.in" >"$src"
      log="$work/${arch}_${t}_d${d}.log"
      (cd "$build" && eval "$base -Xptxas=-v -x cu -cubin $src -o $work/${arch}_${t}_d${d}.cubin") >"$log" 2>&1 || {
        cat "$log" >&2
        exit 2
      }
      # ptxas prints "Compiling entry function '<mangled>'" then its "Used N registers" and
      # "N bytes stack frame, N bytes spill stores, N bytes spill loads" lines. The forward's
      # variant is its template's bool (true: modifiers); the backward has one (both).
      awk -v arch="$arch" -v t="$t" -v d="$d" -v kernel="$kernel" -v pass="$pass" '
        /Compiling entry function/ {
          match($0, /_Z[A-Za-z0-9_]+/); name = substr($0, RSTART, RLENGTH)
          if (name !~ kernel) { name = ""; next }
          variant = "both"
          if (pass == "fwd") {
            cmd = "c++filt " name; cmd | getline dem; close(cmd)
            variant = (dem ~ /true>/) ? "modifiers" : "plain"
          }
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
if [[ ! -s "$work/all.txt" ]]; then echo "no $kernel found in ptxas's output" >&2; exit 2; fi
if awk '{ if ($7 != "0" || $9 != "0") bad = 1 } END { exit !bad }' "$work/all.txt"; then
  echo "SPILLS: see the lines above"
  exit 1
fi
echo "no spills"
