"""Unpack, patch and build nerfacc's CUDA extension as ``nerfacc/csrc*.so`` inside a site folder (nerfacc imports
``nerfacc.csrc`` before it tries a JIT build). Used by ``gpu_check.sh --prepare`` (download + patch + optional
build here) and by the ``build`` stage on the GPU machine (build against that machine's Python and torch).

nerfacc 0.5.3's ``utils_math.cuh`` defines ``float lerp(float, float, float)`` (and float2/3/4 overloads); CUDA 13's
math headers declare a ``lerp`` of their own, so nvcc 13.0 stops with "conflicts with a previous declaration".
``patch`` renames nerfacc's helpers to ``nerfacc_lerp`` (nothing in nerfacc 0.5.3 calls them) and is idempotent.

    python benchmarks/gpu/build_nerfacc.py --site .gpu_carry/site --wheel nerfacc-0.5.3-py3-none-any.whl --patch-only
    python benchmarks/gpu/build_nerfacc.py --site .gpu_carry/site --arch 9.0        # build the patched source
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

_LERP = re.compile(r"(inline\s+__(?:device|host)__\s+__(?:device|host)__\s+float[234]?\s+)lerp\(")


def unpack(wheel: Path, site: Path) -> Path:
    """Extracts the ``nerfacc/`` package of ``wheel`` into ``site`` (replacing an older copy); returns its folder."""
    shutil.rmtree(site / "nerfacc", ignore_errors=True)
    site.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("nerfacc/"):
                z.extract(name, site)
    return site / "nerfacc"


def patch(pkg: Path) -> int:
    """Renames nerfacc's ``lerp`` helpers (CUDA 13 clash); returns how many definitions were renamed (0 when the
    source was patched before or has none). Raises when a call of the old name remains (a newer nerfacc)."""
    header = pkg / "cuda" / "csrc" / "include" / "utils_math.cuh"
    text = header.read_text()
    new, n = _LERP.subn(r"\1nerfacc_lerp(", text)
    if n:
        header.write_text(new)
    for src in (pkg / "cuda" / "csrc").rglob("*"):
        if src.suffix in (".cu", ".cuh", ".cpp", ".h", ".hpp") and re.search(r"(?<![\w.])lerp\(", src.read_text()):
            raise RuntimeError(f"{src} still calls lerp(): extend build_nerfacc.patch for this nerfacc version")
    return n


def build(pkg: Path, arch: str, jobs: int | None = None) -> Path:
    """Compiles nerfacc's CUDA sources with torch's ``load`` as module ``csrc`` and copies it into ``pkg``."""
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", arch)
    os.environ.setdefault("MAX_JOBS", str(jobs or os.cpu_count() or 1))
    if not os.environ.get("CUDA_HOME"):
        for cand in ("/usr/local/cuda",):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")):
                os.environ["CUDA_HOME"] = cand
    from torch.utils.cpp_extension import CUDA_HOME, load  # after the environment is set

    csrc = pkg / "cuda" / "csrc"
    # torch's ATen/cuda headers include cublas_v2.h; a system toolkit without cuBLAS gets the headers of the
    # nvidia-cublas wheel that a CUDA build of torch installs (nvidia/cu13/include, nvidia/cublas/include)
    include: list[str] = []
    if not os.path.exists(os.path.join(CUDA_HOME or "/nonexistent", "include", "cublas_v2.h")):
        import torch

        site = Path(torch.__file__).resolve().parents[1]
        include = [str(h.parent) for h in sorted((site / "nvidia").glob("*/include/cublas_v2.h"))][:1]
    srcs = sorted(glob.glob(str(csrc / "*.cu"))) + sorted(glob.glob(str(csrc / "*.cpp")))
    with tempfile.TemporaryDirectory() as tmp:
        mod = load(name="csrc", sources=srcs, extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
                   extra_include_paths=include, build_directory=tmp, verbose=False)  # fmt: skip
        dst = pkg / os.path.basename(mod.__file__)
        shutil.copy(mod.__file__, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, required=True, help="folder that holds (or receives) nerfacc/")
    parser.add_argument("--wheel", type=Path, default=None, help="nerfacc wheel to unpack first")
    parser.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST (H100/H200: 9.0)")
    parser.add_argument("--patch-only", action="store_true", help="unpack + patch, no compile")
    parser.add_argument("--dry-run", action="store_true", help="check the folder is patched; no compile")
    args = parser.parse_args(argv)
    pkg = args.site / "nerfacc"
    if args.wheel is not None:
        unpack(args.wheel, args.site)
    if not (pkg / "cuda" / "csrc").is_dir():
        print(f"no nerfacc source under {pkg} (run gpu_check.sh --prepare)")
        return 2
    n = patch(pkg)
    print(f"nerfacc source {pkg}: lerp definitions renamed now: {n}")
    if args.patch_only or args.dry_run:
        return 0
    start = time.monotonic()
    so = build(pkg, args.arch)
    print(f"RESULT: nerfacc csrc built in {time.monotonic() - start:.0f} s: {so}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
