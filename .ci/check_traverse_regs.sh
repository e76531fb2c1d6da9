#!/usr/bin/env bash
# Registers / spills of the traversal kernel (cuda/include/nerfaccel/traverse.h) for sm_80/86/89/90: compiles
# just that kernel (no torch headers, seconds per architecture) with the extension's nvcc flags and prints the
# `ptxas -v` lines. Fails when the float32 kernel uses more than 64 registers or spills. Needs nvcc only.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}
if [ ! -x "$NVCC" ]; then
  echo "check_traverse_regs: no nvcc ($NVCC): skipped"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/traverse_regs.cu" <<'CU'
#define NERFACCEL_WITH_CUDA
#include "nerfaccel/traverse.h"
template __global__ void nerfaccel::traverse_kernel<float>(const float*, const float*, const float*, const float*,
    nerfaccel::TravGrid<float>, float, float, int64_t, const int64_t*, int64_t*, int64_t*, float*, float*);
template __global__ void nerfaccel::traverse_kernel<double>(const double*, const double*, const double*,
    const double*, nerfaccel::TravGrid<double>, double, double, int64_t, const int64_t*, int64_t*, int64_t*,
    double*, double*);
CU
fail=0
for arch in ${NERFACCEL_REG_ARCHS:-80 86 89 90}; do
  out=$("$NVCC" -c -O3 -fmad=false --expt-relaxed-constexpr -Icuda/include -gencode "arch=compute_$arch,code=sm_$arch" \
        -Xptxas -v "$tmp/traverse_regs.cu" -o "$tmp/traverse_regs.o" 2>&1)
  # ptxas prints, per function: "Compiling entry function '<name>'", "... N bytes spill stores ...", "Used R registers"
  echo "$out" | awk -v arch="sm_$arch" '
    /Compiling entry function/ { name = ($0 ~ /IfE/) ? "traverse_kernel<float>" : "traverse_kernel<double>" }
    /spill stores/ { spill = $0; sub(/^[ \t]+/, "", spill) }
    /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15);
                              printf "%s %-24s %3d registers, %s\n", arch, name, regs, spill;
                              if (name == "traverse_kernel<float>" && (regs > 64 || spill !~ /^0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads/)) bad = 1 }
    END { exit bad }' || fail=1
done
if [ "$fail" != 0 ]; then
  echo "check_traverse_regs: FAIL (traverse_kernel<float> over 64 registers or spilling)"
  exit 1
fi
echo "check_traverse_regs: OK (traverse_kernel<float> <= 64 registers, no spills)"
