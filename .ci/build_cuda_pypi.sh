#!/usr/bin/env bash
# Proves the CUDA extension builds with the toolkit from PyPI alone (issue 14): in the venv whose python is first
# on PATH, installs the `cuda` extra (nvcc, nvvm, crt, cccl wheels matched to torch.version.cuda), then in a private
# mount namespace hides the system toolkit (an empty folder bind-mounted over /usr/local/cuda's target), clears
# CUDA_HOME / CUDA_PATH, removes every CUDA folder from PATH, and compiles + imports the CUDA extension for
# sm_80/86/89/90 into a fresh extension cache. No GPU needed (importing only loads libcudart).
#   NERFACCEL_CI_CUDA_ARCHS   architectures (default "8.0;8.6;8.9;9.0")
#   NERFACCEL_CI_SKIP_EXTRA=1 do not pip-install the extra (already installed)
#   NERFACCEL_CI_CUDA_CACHE   build into this folder and keep it (default: a temporary folder, removed)
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHS=${NERFACCEL_CI_CUDA_ARCHS:-8.0;8.6;8.9;9.0}
start=$(date +%s)
stamp() { echo "[build_cuda_pypi +$(( $(date +%s) - start ))s] $*"; }

if ! python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
  echo "notice: CPU-only torch: the PyPI-toolkit CUDA build is skipped"
  exit 0
fi
if [ "${NERFACCEL_CI_SKIP_EXTRA:-0}" != 1 ]; then
  stamp "installing nerfaccel[cuda] (the toolkit wheels)"
  python -m pip install -q -e ".[cuda]"
fi

if [ "$(id -u)" = 0 ]; then UNSHARE=(unshare -m); else UNSHARE=(unshare -r -m); fi
EMPTY=$(mktemp -d)
# NERFACCEL_CI_CUDA_CACHE: keep the build there (for .ci/check_sass.py); default a temporary folder
CACHE=${NERFACCEL_CI_CUDA_CACHE:-$(mktemp -d)}
KEEP_CACHE=${NERFACCEL_CI_CUDA_CACHE:+1}
EMPTY_FILE=$(mktemp)
chmod 644 "$EMPTY_FILE"
trap 'rm -rf "$EMPTY" "$EMPTY_FILE"; [ -n "$KEEP_CACHE" ] || rm -rf "$CACHE"' EXIT
HIDE=()
for d in /usr/local/cuda /opt/cuda; do
  [ -e "$d" ] && HIDE+=("$(readlink -f "$d")")
done
for d in /usr/local/cuda-*; do
  [ -d "$d" ] && HIDE+=("$(readlink -f "$d")")
done
mapfile -t HIDE < <(printf '%s\n' "${HIDE[@]}" | sort -u)
CLEAN_PATH=$(echo "$PATH" | tr ':' '\n' | grep -vi cuda | paste -sd: -)
# Wrappers outside the toolkit (e.g. /usr/local/bin/nvcc exec-ing into /usr/local/cuda-13.0) are hidden too:
# an empty, non-executable file is bind-mounted over each.
SHADOW=()
TOOLS=$(for d in "${HIDE[@]}"; do ls "$d/bin" 2>/dev/null; done | sort -u)
IFS=: read -r -a dirs <<< "$CLEAN_PATH"
for dir in "${dirs[@]}"; do
  [ -d "$dir" ] || continue
  case "$dir" in "$VIRTUAL_ENV"*) continue ;; esac
  for tool in $(echo nvcc $TOOLS | tr " " "\n" | sort -u); do
    [ -f "$dir/$tool" ] && SHADOW+=("$dir/$tool")
  done
done

stamp "hiding ${HIDE[*]:-nothing} ${SHADOW[*]:-}; compiling the CUDA extension for sm ${ARCHS} with the PyPI toolkit"
t=$(date +%s)
"${UNSHARE[@]}" env -u CUDA_HOME -u CUDA_PATH -u CUDA_ROOT PATH="$CLEAN_PATH" NERFACCEL_EXT_DIR="$CACHE" \
  HIDE="${HIDE[*]:-}" SHADOW="${SHADOW[*]:-}" EMPTY="$EMPTY" EMPTY_FILE="$EMPTY_FILE" ARCHS="$ARCHS" \
  bash -euo pipefail -c '
  for d in $HIDE; do mount --bind "$EMPTY" "$d"; done
  for f in $SHADOW; do mount --bind "$EMPTY_FILE" "$f"; done
  if [ -x /usr/local/cuda/bin/nvcc ] || which nvcc >/dev/null 2>&1; then
    echo "error: a system nvcc is still visible ($(which nvcc || echo /usr/local/cuda/bin/nvcc))" >&2; exit 1
  fi
  python -m nerfaccel_plugin._ext.cli --cuda --arch "$ARCHS" --import --quiet --force
  # The same architectures, so this loads the build above instead of compiling a default (sm_90) one.
  TORCH_CUDA_ARCH_LIST="$ARCHS" python - <<PY
import os
from nerfaccel_plugin._ext import build
home = build.cuda_home()
assert "cuda-toolkit-pypi" in home, "expected the PyPI toolkit tree, got CUDA_HOME=" + repr(home)
m = build.get_module("cuda")
arch = str(getattr(m, "cuda_arch", "?"))
assert arch == "$ARCHS".replace(";", "_"), "imported a build for " + arch + ", not for $ARCHS"
print("imported", m.__file__, "cuda_arch=" + arch, "CUDA_HOME=" + home)
PY
'
stamp "done: CUDA extension for sm ${ARCHS} built with the PyPI toolkit in $(( $(date +%s) - t ))s"
