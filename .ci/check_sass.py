#!/usr/bin/env python3
"""FP64 instructions and register use of the float32 hot kernels of the built CUDA extension (issue 12).

Disassembles the extension with ``cuobjdump -sass`` / ``-res-usage`` (CUDA 13 binaries; PyPI's
``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` wheels work where the toolkit lacks them), then:

* counts FP64 instructions (``D*`` arithmetic, ``MUFU.*64*``, conversions to/from ``F64``) in every ``<float>``
  instantiation of the kernels of the CUDA build (cuda/gpu/*.cu and traverse.h: traversal, importance sampling,
  searchsorted, grid update, contraction, ray/box intersection) and fails on any, and fails when one of them is
  missing from the build (a renamed kernel must be renamed here too);
* prints registers / stack / local memory per kernel (``-res-usage``) and fails when a traversal kernel uses more
  than 64 registers or local memory (spills).

Usage::

    python .ci/check_sass.py [path/to/nerfaccel_cuda_*.so]    # default: the cached build of this checkout

Exit status 0 when clean, 1 on a violation, 2 when no extension or cuobjdump is found (CI prints a notice).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# float32 instantiations that must be FP64-free: every kernel of the CUDA build of the issue-11 layout (cuda/gpu/*.cu,
# traverse.h). The scans/rendering/accumulation kernels are not C++ kernels any more (Triton serves them on CUDA).
HOT = (
    "traverse_kernel",
    "importance_samples_kernel",
    "importance_edges_kernel",
    "searchsorted_kernel",
    "ema_max_kernel",
    "ema_decay_kernel",
    "contract_kernel",
    "ray_aabb_kernel",
)
REG_LIMITED = ("traverse_kernel",)
MAX_REGS = 64
FP64 = re.compile(
    r"^\s*(?:@!?U?P\w+\s+)?("
    r"D(?:ADD|MUL|FMA|SETP|MNMX|MMA)\S*"
    r"|MUFU\.\w*64\w*"
    r"|[FI]2[FI]\S*F64\S*"
    r"|F2F\S*"  # any float-float conversion is to or from F64/F16; F16 ones are listed and counted too
    r")"
)


def find_tool(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    for root in [Path(sys.prefix), *map(Path, sys.path)]:
        for cand in (root / "nvidia" / "cu13" / "bin" / name, root / "nvidia" / "cuda_cuobjdump" / "bin" / name):
            if cand.is_file():
                return str(cand)
    cand = Path("/usr/local/cuda/bin") / name
    if cand.is_file():
        return str(cand)
    try:  # triton ships cuobjdump and nvdisasm with its NVIDIA backend
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        return str(cand) if cand.is_file() else None
    except ImportError:
        return None


def default_extension() -> Path | None:
    try:
        from nerfaccel_plugin._ext import build

        d = build.build_dir("cuda")
        hits = sorted(Path(d).glob("*.so"))
        return hits[0] if hits else None
    except Exception:  # noqa: BLE001 - reported as "not found"
        return None


def kernel_name(mangled: str) -> str:
    m = re.search(r"([a-z_]+_kernel)I([fd])E", mangled)
    if m:
        return f"{m.group(1)}<{'float' if m.group(2) == 'f' else 'double'}>"
    m = re.search(r"\d+(\w+_kernel)", mangled)
    return m.group(1) if m else mangled


def parse_sass(text: str) -> dict[str, list[str]]:
    funcs: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if "Function :" in line:
            cur = kernel_name(line.split("Function :", 1)[1].strip())
            funcs.setdefault(cur, [])
        elif cur is not None:
            m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s*(.*?);", line)
            if m:
                funcs[cur].append(m.group(1))
    return funcs


def parse_res(text: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    cur = None
    for line in text.splitlines():
        if line.strip().startswith("Function "):
            cur = kernel_name(line.strip()[len("Function ") :].rstrip(":"))
        elif cur is not None and "REG:" in line:
            out[cur] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line) if k in ("REG", "STACK", "LOCAL")}
            cur = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("extension", nargs="?", type=Path)
    args = ap.parse_args()
    ext = args.extension or default_extension()
    tool = find_tool("cuobjdump")
    if ext is None or not Path(ext).is_file():
        print("check_sass: no CUDA extension found (build it with `python -m nerfaccel_plugin._ext.cli --cuda`)")
        return 2
    if tool is None:
        print("check_sass: cuobjdump not found (pip download nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
        return 2
    nvdisasm = find_tool("nvdisasm")  # cuobjdump -sass runs nvdisasm from PATH
    env = dict(os.environ)
    if nvdisasm is not None:
        env["PATH"] = f"{Path(nvdisasm).parent}{os.pathsep}{env.get('PATH', '')}"
    sass = subprocess.run([tool, "-sass", str(ext)], capture_output=True, text=True, check=True, env=env).stdout
    res = subprocess.run([tool, "-res-usage", str(ext)], capture_output=True, text=True, check=True).stdout
    funcs, usage = parse_sass(sass), parse_res(res)
    if not funcs:
        print("check_sass: cuobjdump printed no SASS (nvdisasm missing from PATH?)")
        return 2
    archs = sorted(set(re.findall(r"arch = (sm_\d+)", sass)))
    print(f"check_sass: {ext} ({', '.join(archs) or 'arch ?'})")
    print(f"{'kernel':34} {'instr':>6} {'FP64':>5} {'REG':>4} {'STACK':>6} {'LOCAL':>6}")
    bad = []
    for name in sorted(funcs):
        if not any(name.startswith(h + "<") for h in HOT):
            continue
        fp64 = [i for i in funcs[name] if FP64.match(i)]
        u = usage.get(name, {})
        print(f"{name:34} {len(funcs[name]):6d} {len(fp64):5d} {u.get('REG', -1):4d} {u.get('STACK', -1):6d} "
              f"{u.get('LOCAL', -1):6d}")
        if name.endswith("<float>") and fp64:
            ops = sorted({i.split()[0] for i in fp64})
            bad.append(f"{name}: {len(fp64)} FP64 instructions ({', '.join(ops)})")
        if any(name.startswith(h + "<float>") for h in REG_LIMITED):
            if u.get("REG", 0) > MAX_REGS:
                bad.append(f"{name}: {u['REG']} registers > {MAX_REGS}")
            if u.get("LOCAL", 0) > 0:
                bad.append(f"{name}: {u['LOCAL']} bytes of local memory (spills)")
    for h in HOT:
        if f"{h}<float>" not in funcs:
            bad.append(f"{h}<float>: not in the build (kernel renamed or removed? update HOT)")
    for b in bad:
        print(f"check_sass: FAIL {b}")
    if not bad:
        print("check_sass: OK (no FP64 in the float32 hot kernels, traversal within registers, no spills)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
