"""Multiresolution hash encoding on CUDA in Triton, bit-compatible with Nerfstudio's torch ``HashEncoding``.

Same math as the CPU kernel (``cuda/include/nerfaccel/math.h``: ``hash_corner``, ``hash_level_corners``) and as
Nerfstudio's ``HashEncoding.pytorch_fwd``: level ``l`` scales ``x`` by ``scales[l]``; the corners are
``floor``/``ceil`` of the scaled point cast to int32; corner ``(cx, cy, cz)`` hashes to
``(cx * 1) ^ (cy * 2654435761) ^ (cz * 805459861)`` in 64-bit integers, reduced modulo ``table_size`` with a
non-negative remainder (Python's ``%``) and offset by ``l * table_size``; features are interpolated trilinearly
with ``o = s - floor(s)``. Parameter layout: one ``(levels * table_size, F)`` table, level-major output
``(n, levels * F)``, exactly Nerfstudio's, so checkpoints are interchangeable.

* Forward: one program per (block of points, level).
* Backward: the table gradient is scattered with atomics (into a float32 buffer for half/bfloat16 tables, cast
  back once); the position gradient of each (point, level) goes to a ``(n, levels, 3)`` buffer summed over levels
  afterwards (deterministic, no atomics).
* Arithmetic runs in float32 (float64 when ``x`` is float64); tables may be float16, bfloat16, float32 or
  float64; the output and ``x``'s gradient have ``x``'s dtype (Nerfstudio promotes a half table times float32
  offsets to float32 the same way).

The kernels run unchanged under Triton's interpreter on CPU tensors (``interpret=True``), which is how CI tests
them against Nerfstudio's encoding without a GPU (``tests/triton/test_hash.py``). :func:`register` installs them as
the ``cuda`` kernels of the hash ops; :func:`aot_report` compiles them ahead of time for given architectures and
reports registers and spills (``python -m nerfaccel_plugin._triton.hash``).
"""

from __future__ import annotations

import functools
import re
import subprocess
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

HASH_PRIMES = (1, 2654435761, 805459861)
BLOCK = 128
_TABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _hash_fwd_kernel(
    x_ptr, table_ptr, scales_ptr, out_ptr, n, table_size, n_levels,
    F: tl.constexpr, BLOCK_N: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    level = tl.program_id(1)
    i = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask = i < n
    cdt = tl.float64 if F64 else tl.float32
    scale = tl.load(scales_ptr + level).to(cdt)
    s0 = tl.load(x_ptr + i * 3 + 0, mask=mask, other=0).to(cdt) * scale
    s1 = tl.load(x_ptr + i * 3 + 1, mask=mask, other=0).to(cdt) * scale
    s2 = tl.load(x_ptr + i * 3 + 2, mask=mask, other=0).to(cdt) * scale
    f0 = tl.floor(s0)
    f1 = tl.floor(s1)
    f2 = tl.floor(s2)
    lo0 = f0.to(tl.int32).to(tl.int64)
    lo1 = f1.to(tl.int32).to(tl.int64)
    lo2 = f2.to(tl.int32).to(tl.int64)
    hi0 = tl.ceil(s0).to(tl.int32).to(tl.int64)
    hi1 = tl.ceil(s1).to(tl.int32).to(tl.int64)
    hi2 = tl.ceil(s2).to(tl.int32).to(tl.int64)
    o0 = s0 - f0
    o1 = s1 - f1
    o2 = s2 - f2
    base = level.to(tl.int64) * table_size
    out_row = out_ptr + i * (n_levels * F) + level * F
    for c in tl.static_range(F):
        acc = o0 * 0  # (not tl.zeros: a jit helper the interpreter cannot run unless set at import)
        for k in tl.static_range(8):
            b0 = k & 1
            b1 = (k >> 1) & 1
            b2 = (k >> 2) & 1
            c0 = lo0 + b0 * (hi0 - lo0)
            c1 = lo1 + b1 * (hi1 - lo1)
            c2 = lo2 + b2 * (hi2 - lo2)
            h = (c0 * 1) ^ (c1 * 2654435761) ^ (c2 * 805459861)
            h = h % table_size
            h = tl.where(h < 0, h + table_size, h)
            w0 = b0 * o0 + (1 - b0) * (1 - o0)
            w1 = b1 * o1 + (1 - b1) * (1 - o1)
            w2 = b2 * o2 + (1 - b2) * (1 - o2)
            t = tl.load(table_ptr + (base + h) * F + c, mask=mask, other=0).to(cdt)
            acc += w0 * w1 * w2 * t
        tl.store(out_row + c, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _hash_bwd_kernel(
    grad_ptr, x_ptr, table_ptr, scales_ptr, gtable_ptr, gx_ptr, n, table_size, n_levels,
    F: tl.constexpr, BLOCK_N: tl.constexpr, F64: tl.constexpr, NEED_X: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    level = tl.program_id(1)
    i = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask = i < n
    cdt = tl.float64 if F64 else tl.float32
    scale = tl.load(scales_ptr + level).to(cdt)
    s0 = tl.load(x_ptr + i * 3 + 0, mask=mask, other=0).to(cdt) * scale
    s1 = tl.load(x_ptr + i * 3 + 1, mask=mask, other=0).to(cdt) * scale
    s2 = tl.load(x_ptr + i * 3 + 2, mask=mask, other=0).to(cdt) * scale
    f0 = tl.floor(s0)
    f1 = tl.floor(s1)
    f2 = tl.floor(s2)
    lo0 = f0.to(tl.int32).to(tl.int64)
    lo1 = f1.to(tl.int32).to(tl.int64)
    lo2 = f2.to(tl.int32).to(tl.int64)
    hi0 = tl.ceil(s0).to(tl.int32).to(tl.int64)
    hi1 = tl.ceil(s1).to(tl.int32).to(tl.int64)
    hi2 = tl.ceil(s2).to(tl.int32).to(tl.int64)
    o0 = s0 - f0
    o1 = s1 - f1
    o2 = s2 - f2
    base = level.to(tl.int64) * table_size
    g_row = grad_ptr + i * (n_levels * F) + level * F
    gx0 = o0 * 0
    gx1 = o0 * 0
    gx2 = o0 * 0
    for k in tl.static_range(8):
        b0 = k & 1
        b1 = (k >> 1) & 1
        b2 = (k >> 2) & 1
        c0 = lo0 + b0 * (hi0 - lo0)
        c1 = lo1 + b1 * (hi1 - lo1)
        c2 = lo2 + b2 * (hi2 - lo2)
        h = (c0 * 1) ^ (c1 * 2654435761) ^ (c2 * 805459861)
        h = h % table_size
        h = tl.where(h < 0, h + table_size, h)
        w0 = b0 * o0 + (1 - b0) * (1 - o0)
        w1 = b1 * o1 + (1 - b1) * (1 - o1)
        w2 = b2 * o2 + (1 - b2) * (1 - o2)
        w = w0 * w1 * w2
        row = (base + h) * F
        dot = o0 * 0
        for c in tl.static_range(F):
            g = tl.load(g_row + c, mask=mask, other=0).to(cdt)
            tl.atomic_add(gtable_ptr + row + c, (w * g).to(gtable_ptr.dtype.element_ty), mask=mask)
            if NEED_X:
                dot += g * tl.load(table_ptr + row + c, mask=mask, other=0).to(cdt)
        if NEED_X:
            # d w / d o_a: +-1 (ceil / floor side) times the other two factors.
            gx0 += dot * (2 * b0 - 1) * w1 * w2
            gx1 += dot * (2 * b1 - 1) * w0 * w2
            gx2 += dot * (2 * b2 - 1) * w0 * w1
    if NEED_X:
        gx_row = gx_ptr + (i * n_levels + level) * 3
        tl.store(gx_row + 0, gx0 * scale, mask=mask)
        tl.store(gx_row + 1, gx1 * scale, mask=mask)
        tl.store(gx_row + 2, gx2 * scale, mask=mask)


_fwd_jit = triton.jit(_hash_fwd_kernel)
_bwd_jit = triton.jit(_hash_bwd_kernel)


@functools.cache
def _interpreted() -> tuple[Any, Any]:
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    return InterpretedFunction(_hash_fwd_kernel), InterpretedFunction(_hash_bwd_kernel)


def _kernels(interpret: bool) -> tuple[Any, Any]:
    return _interpreted() if interpret else (_fwd_jit, _bwd_jit)


def _check(x: Tensor, table: Tensor, scales: Tensor, table_size: int) -> tuple[int, int, int]:
    if x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"nerfaccel: hash encoding needs points `x` of shape (n, 3), got {tuple(x.shape)}")
    if x.dtype not in _X_DTYPES or table.dtype not in _TABLE_DTYPES or not scales.is_floating_point():
        raise TypeError(
            f"nerfaccel: hash encoding needs floating x / table / scales, got {x.dtype} / {table.dtype} / "
            f"{scales.dtype}"
        )
    if scales.dim() != 1 or table.dim() != 2:
        raise ValueError(
            f"nerfaccel: hash encoding needs scales (levels,) and table (levels * table_size, F), got "
            f"{tuple(scales.shape)} and {tuple(table.shape)}"
        )
    levels, feats = scales.shape[0], table.shape[1]
    if table_size <= 0 or table.shape[0] != levels * table_size:
        raise ValueError(
            f"nerfaccel: hash table has {table.shape[0]} rows but levels * table_size = {levels} * {table_size}; "
            "pass the table of a HashEncoding with these levels and log2_hashmap_size"
        )
    if not (x.device == table.device == scales.device):
        raise ValueError(
            f"nerfaccel: x, table and scales must be on one device, got {x.device}, {table.device}, {scales.device}"
        )
    return x.shape[0], levels, feats


def hash_encode_fwd(x: Tensor, table: Tensor, scales: Tensor, table_size: int, interpret: bool = False) -> Tensor:
    """Forward of the hash encoding (Triton).

    Args:
        x: ``(n, 3)`` points.
        table: ``(levels * table_size, F)`` features (float16, bfloat16, float32 or float64).
        scales: ``(levels,)`` grid resolution of each level.
        table_size: Rows per level.
        interpret: Run under Triton's interpreter (CPU tensors; tests only).

    Returns:
        ``(n, levels * F)`` features in ``x``'s dtype.
    """
    n, levels, feats = _check(x, table, scales, table_size)
    x, table, scales = x.contiguous(), table.contiguous(), scales.contiguous()
    out = torch.empty((n, levels * feats), dtype=x.dtype, device=x.device)
    if n == 0 or levels == 0 or feats == 0:
        return out
    fwd, _ = _kernels(interpret)
    grid = (triton.cdiv(n, BLOCK), levels)
    fwd[grid](x, table, scales, out, n, table_size, levels, F=feats, BLOCK_N=BLOCK, F64=x.dtype == torch.float64)
    return out


def hash_encode_bwd(
    grad: Tensor, x: Tensor, table: Tensor, scales: Tensor, table_size: int, need_x_grad: bool, interpret: bool = False
) -> tuple[Tensor, Tensor]:
    """Backward of the hash encoding (Triton): table gradient by atomics, position gradient per level.

    Args:
        grad: ``(n, levels * F)`` gradient of the output.
        x: ``(n, 3)`` points of the forward.
        table: ``(levels * table_size, F)`` table of the forward.
        scales: ``(levels,)`` resolutions.
        table_size: Rows per level.
        need_x_grad: Whether to compute the gradient of ``x``.
        interpret: Run under Triton's interpreter (CPU tensors; tests only).

    Returns:
        ``(g_table, g_x)``: ``g_table`` like ``table``; ``g_x`` like ``x``, or an empty ``(0,)`` tensor when
        ``need_x_grad`` is False.
    """
    n, levels, feats = _check(x, table, scales, table_size)
    if grad.shape != (n, levels * feats):
        raise ValueError(f"nerfaccel: `grad` must have shape ({n}, {levels * feats}), got {tuple(grad.shape)}")
    grad, x, table, scales = grad.contiguous(), x.contiguous(), table.contiguous(), scales.contiguous()
    f64 = x.dtype == torch.float64
    acc_dtype = torch.float64 if table.dtype == torch.float64 else torch.float32
    g_table = torch.zeros(table.shape, dtype=acc_dtype, device=x.device)
    g_x_levels = torch.zeros(
        (n, levels, 3) if need_x_grad else (1,), dtype=torch.float64 if f64 else torch.float32, device=x.device
    )
    if n > 0 and levels > 0 and feats > 0:
        _, bwd = _kernels(interpret)
        grid = (triton.cdiv(n, BLOCK), levels)
        bwd[grid](
            grad, x, table, scales, g_table, g_x_levels, n, table_size, levels,
            F=feats, BLOCK_N=BLOCK, F64=f64, NEED_X=bool(need_x_grad),
        )  # fmt: skip
    g_x = g_x_levels.sum(1).to(x.dtype) if need_x_grad else x.new_empty((0,))
    return g_table.to(table.dtype), g_x


def register(fwd_op: str = "nerfaccel::hash_encode_fwd", bwd_op: str = "nerfaccel::hash_encode_bwd") -> None:
    """Registers the Triton kernels as the ``cuda`` kernels of the hash ops.

    The ops keep their schemas, fake kernels and autograd (defined once elsewhere); this only adds the CUDA
    implementation. Argument lists: ``fwd(x, table, scales, table_size) -> out`` and
    ``bwd(grad, x, table, scales, table_size, need_x_grad) -> (g_table, g_x)``.

    Args:
        fwd_op: Qualified name of the forward op (``nerfaccel::hash_encode_fwd`` after the kernel-layer rename).
        bwd_op: Qualified name of the backward op.
    """
    torch.library.register_kernel(fwd_op, "cuda", lambda x, table, scales, table_size: hash_encode_fwd(
        x, table, scales, table_size))  # fmt: skip
    torch.library.register_kernel(
        bwd_op,
        "cuda",
        lambda grad, x, table, scales, table_size, need_x_grad: hash_encode_bwd(
            grad, x, table, scales, table_size, need_x_grad
        ),
    )


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compilation report (no GPU needed)
# ---------------------------------------------------------------------------------------------
def _ptxas(cc: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas  # noqa: PLC0415

    return get_ptxas(cc).path


def aot_compile(cc: int, which: str = "fwd", table_dtype: str = "fp32", features: int = 2, need_x: bool = True):
    """Compiles one kernel ahead of time for compute capability ``cc`` (e.g. 90); returns Triton's CompiledKernel.

    Args:
        cc: Compute capability as an integer (80, 86, 89, 90).
        which: ``"fwd"`` or ``"bwd"``.
        table_dtype: ``"fp32"`` or ``"fp16"`` (``x`` is float32).
        features: Features per level (constexpr).
        need_x: Backward only: whether the position gradient is compiled in.

    Returns:
        The compiled kernel (``.asm`` holds ``ttir``, ``ptx``, ``cubin``).
    """
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    acc = "fp32"
    if which == "fwd":
        sig = {"x_ptr": "*fp32", "table_ptr": f"*{table_dtype}", "scales_ptr": "*fp32", "out_ptr": "*fp32",
               "n": "i64", "table_size": "i64", "n_levels": "i32",
               "F": "constexpr", "BLOCK_N": "constexpr", "F64": "constexpr"}  # fmt: skip
        consts = {"F": features, "BLOCK_N": BLOCK, "F64": False}
        fn = _fwd_jit
    else:
        sig = {"grad_ptr": "*fp32", "x_ptr": "*fp32", "table_ptr": f"*{table_dtype}", "scales_ptr": "*fp32",
               "gtable_ptr": f"*{acc}", "gx_ptr": "*fp32", "n": "i64", "table_size": "i64", "n_levels": "i32",
               "F": "constexpr", "BLOCK_N": "constexpr", "F64": "constexpr", "NEED_X": "constexpr"}  # fmt: skip
        consts = {"F": features, "BLOCK_N": BLOCK, "F64": False, "NEED_X": need_x}
        fn = _bwd_jit
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", cc, 32))


def resource_usage(ptx: str, cc: int) -> dict[str, int]:
    """Registers and spill bytes of ``ptx`` for ``sm_<cc>``, read from ``ptxas -v`` (Triton's bundled ptxas)."""
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    arch = f"sm_{cc}a" if cc == 90 else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run(
            [_ptxas(cc), "-v", f"--gpu-name={arch}", path, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    text = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_stores": int(stores.group(1)) if stores else 0,
        "spill_loads": int(loads.group(1)) if loads else 0,
    }


def aot_report(ccs: tuple[int, ...] = (80, 86, 89, 90)) -> list[dict[str, Any]]:
    """AOT-compiles every kernel variant for each architecture; returns one row per variant with registers/spills."""
    rows = []
    for cc in ccs:
        for which, table_dtype, need_x in (
            ("fwd", "fp32", True), ("fwd", "fp16", True), ("bwd", "fp32", True), ("bwd", "fp32", False),
            ("bwd", "fp16", True),
        ):  # fmt: skip
            k = aot_compile(cc, which, table_dtype, need_x=need_x)
            usage = resource_usage(k.asm["ptx"], cc)
            rows.append({"cc": cc, "kernel": which, "table": table_dtype, "need_x": need_x,
                         "cubin_bytes": len(k.asm["cubin"]), **usage})  # fmt: skip
    return rows


def _main() -> None:
    rows = aot_report()
    print("| sm | kernel | table | need_x | registers | spill stores | spill loads | cubin bytes |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['cc']} | {r['kernel']} | {r['table']} | {r['need_x']} | {r['registers']} | {r['spill_stores']} "
            f"| {r['spill_loads']} | {r['cubin_bytes']} |"
        )


if __name__ == "__main__":
    _main()
