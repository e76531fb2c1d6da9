"""Ahead-of-time compilation of every Triton kernel for NVIDIA targets, without a GPU: registers and spills.

``python -m nerfaccel_plugin._triton.aot [--cc 80 86 89 90] [--all-cc]`` compiles each kernel variant (phase,
layout, flags, dtype) with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and runs the
PTX through Triton's bundled ``ptxas -v`` (the same flags Triton uses) to read the registers and spill bytes.
By default every variant is compiled for the first capability and, for the others, the variant of each kernel
that used the most registers there. Exits with status 1 if any variant spills. Must run without
``TRITON_INTERPRET`` (the interpreter replaces the kernels).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ._common import DEFAULT_BLOCK, mark_chunks_kernel, num_warps, tile_carry_kernel

_INT_PTRS = {"em_ptr": "*i32", "te_ptr": "*i32", "te_tile_ptr": "*i32", "tf_ptr": "*i32", "tm_ptr": "*i32"}
_I64_PTRS = {"idx_ptr": "*i64", "pi_ptr": "*i64"}


@dataclass
class Variant:
    kernel: object
    label: str
    constexprs: dict
    float_ty: str = "fp32"
    warps: int = 4
    overrides: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__

    def signature(self) -> dict:
        sig = {}
        for arg in self.kernel.arg_names:
            if arg in self.constexprs:
                sig[arg] = "constexpr"
            elif arg in self.overrides:
                sig[arg] = self.overrides[arg]
            elif arg in _INT_PTRS:
                sig[arg] = _INT_PTRS[arg]
            elif arg in _I64_PTRS:
                sig[arg] = _I64_PTRS[arg]
            elif arg.endswith("_ptr"):
                sig[arg] = f"*{self.float_ty}"
            else:
                sig[arg] = "i32"
        return sig


def variants(block: int = DEFAULT_BLOCK) -> list[Variant]:
    """Every kernel variant the host code launches (the packed layout for the scanned ones: a superset of the
    batched code path's loads), in float32 and float64."""
    from . import accumulate, scan, volrend

    out: list[Variant] = []
    w = num_warps(block)
    for fty in ("fp32", "fp64"):
        for prod in (False, True):
            for exc in (False, True):
                for phase, carry in ((1, False), (3, True)):
                    base = dict(PROD=prod, EXCLUSIVE=exc, PACKED=True, PHASE=phase, HAS_CARRY=carry, BLOCK=block)
                    lab = f"{'prod' if prod else 'sum'}{'_excl' if exc else ''} phase{phase}"
                    out.append(Variant(scan.scan_fwd_kernel, lab, {**base, "KIND": int(prod)}, fty, w))
                    out.append(Variant(scan.scan_bwd_kernel, lab, {**base, "KIND": 2 if prod else 0}, fty, w))
        for phase, carry in ((1, False), (3, True)):
            cx = dict(PACKED=True, PHASE=phase, HAS_CARRY=carry, BLOCK=block)
            out.append(Variant(volrend.density_fwd_kernel, f"phase{phase}", cx, fty, w))
            out.append(Variant(volrend.alpha_fwd_kernel, f"phase{phase}", cx, fty, w))
            full = dict(HAS_GW=True, HAS_GT=True, HAS_GA=True, NEED_T=True, **cx)
            out.append(Variant(volrend.density_bwd_kernel, f"all grads phase{phase}", full, fty, w))
            out.append(
                Variant(
                    volrend.alpha_bwd_kernel, f"all grads phase{phase}", dict(HAS_GW=True, HAS_GT=True, **cx), fty, w
                )
            )
        lean = dict(HAS_GW=False, HAS_GT=False, HAS_GA=True, NEED_T=False, PACKED=False, PHASE=3, HAS_CARRY=False)
        out.append(Variant(volrend.density_bwd_kernel, "grad_alphas only, batched", {**lean, "BLOCK": block}, fty, w))
        out.append(
            Variant(
                volrend.density_fwd_kernel,
                "batched phase3",
                dict(PACKED=False, PHASE=3, HAS_CARRY=True, BLOCK=block),
                fty,
                w,
            )
        )
        for dpad, has_v in ((1, False), (4, True), (16, True)):
            blk = max(16, min(block, 2048 // dpad))
            wa = num_warps(blk * dpad)
            out.append(
                Variant(
                    accumulate.accumulate_fwd_kernel, f"D<={dpad}", dict(HAS_V=has_v, BLOCK=blk, DPAD=dpad), fty, wa
                )
            )
            out.append(
                Variant(
                    accumulate.accumulate_bwd_kernel,
                    f"D<={dpad}",
                    dict(HAS_V=has_v, NEED_W=True, NEED_V=has_v, BLOCK=blk, DPAD=dpad),
                    fty,
                    wa,
                )
            )
        for kind in (0, 1, 2):
            out.append(Variant(tile_carry_kernel, f"kind{kind}", dict(KIND=kind, BLOCK_T=1024), fty, 4))
    out.append(Variant(mark_chunks_kernel, "", dict(TILE=block, BLOCK_R=256), "fp32", 4))
    return out


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(ptx: str, cc: int) -> tuple[int, int]:
    """(registers, spill bytes stored + loaded) of the PTX's kernel, from Triton's bundled ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(cc).path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(cc)}", src]
        res = subprocess.run(cmd + ["-o", os.path.join(tmp, "k.o")], capture_output=True, text=True, check=True)
    log = res.stdout + res.stderr
    regs = max((int(m) for m in _REGS.findall(log)), default=0)
    spills = sum(int(a) + int(b) for a, b in _SPILL.findall(log))
    return regs, spills


def compile_variant(v: Variant, cc: int) -> tuple[int, int, float]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    src = ASTSource(v.kernel, v.signature(), constexprs=v.constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(num_warps=v.warps))
    regs, spills = ptxas_usage(k.asm["ptx"], cc)
    return regs, spills, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", type=int, nargs="+", default=[90, 80, 86, 89])
    parser.add_argument("--all-cc", action="store_true", help="every variant for every capability")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK)
    parser.add_argument("--fp32-only", action="store_true")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels", file=sys.stderr)
        return 2
    vs = variants(args.block)
    if args.fp32_only:
        vs = [v for v in vs if v.float_ty == "fp32"]
    bad = []
    t_all = time.perf_counter()
    print(f"{'cc':>3} {'kernel':<24} {'variant':<28} {'dtype':<5} {'warps':>5} {'regs':>5} {'spill B':>7} {'s':>5}")
    worst: dict[tuple[str, str], tuple[int, Variant]] = {}
    for i, cc in enumerate(args.cc):
        todo = vs if (i == 0 or args.all_cc) else [v for _, v in worst.values()]
        for v in todo:
            regs, spills, dt = compile_variant(v, cc)
            print(f"{cc:>3} {v.name:<24} {v.label:<28} {v.float_ty:<5} {v.warps:>5} {regs:>5} {spills:>7} {dt:5.1f}")
            key = (v.name, v.float_ty)
            if i == 0 and (key not in worst or regs > worst[key][0]):
                worst[key] = (regs, v)
            if spills:
                bad.append(f"sm_{cc} {v.name} {v.label} {v.float_ty}: {spills} bytes spilled")
    print(f"{len(vs)} variants; total {time.perf_counter() - t_all:.1f} s")
    for line in bad:
        print("SPILL:", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
