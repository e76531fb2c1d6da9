#!/usr/bin/env bash
# CI for the compiled extensions; .ci/run calls it after installing the package into the venv whose
# python is first on PATH.
#  1. compile the CPU extension (system C++ compiler) from scratch into the extension cache and import it;
#  2. test it against the pure-PyTorch reference (parity, gradcheck, opcheck, torch.compile, build machinery);
#  3. compile + link the CUDA extension for sm_80/86/89/90 with the toolkit from PyPI (the `cuda` extra), the
#     system toolkit hidden, and import it (.ci/build_cuda_pypi.sh; no GPU needed: importing only needs
#     libcudart). Skipped with a notice for a CPU-only torch.
# The builds go to the normal cache (~/.cache/nerfaccel/ext or $NERFACCEL_EXT_DIR), so the full test
# run afterwards finds them. NERFACCEL_CI_FORCE=0 reuses cached builds instead of recompiling.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stamp() { echo "[build_ext +$(( $(date +%s) - start ))s] $*"; }
FORCE=()
[ "${NERFACCEL_CI_FORCE:-1}" = "1" ] && FORCE=(--force)
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi

stamp "CPU extension: compile + import"
t=$(date +%s)
python -m nerfaccel_plugin._ext.cli --cpu --import --quiet "${FORCE[@]}"
cpu_s=$(( $(date +%s) - t ))

stamp "CPU extension: tests against the PyTorch reference"
NERFACCEL_REQUIRE_EXT=1 python -m pytest -q -p no:cacheprovider tests/ops tests/test_ext.py tests/test_ext_build.py

cuda_s=skipped
if python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
  # The CUDA extension for sm_80/86/89/90 with nvcc and headers from PyPI only (`nerfaccel[cuda]`), the system
  # toolkit hidden (issue 14).
  stamp "CUDA extension: compile + link with the PyPI toolkit + import"
  t=$(date +%s)
  bash .ci/build_cuda_pypi.sh
  cuda_s=$(( $(date +%s) - t ))s
else
  echo "notice: a CPU-only torch: the CUDA extension build is skipped"
fi
stamp "done (CPU build ${cpu_s}s, CUDA build ${cuda_s})"
