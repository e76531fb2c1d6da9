"""Segmented scans (inclusive/exclusive sum/product), forward and backward, sample-parallel.

Forward: element ``i`` is ``x[i]`` (inclusive) or ``x[i - 1]`` (exclusive; identity with a reset at a chunk
start), scanned left to right. Backward (reverse scan, tiles read in descending order), for ``y`` the outputs:

* sum, inclusive: ``gx[k] = sum_{i >= k} g[i]``; exclusive: ``sum_{i > k} g[i]``;
* prod, inclusive: ``gx[k] = y_excl[k] * R[k]``, ``R[k] = g[k] + x[k+1] * R[k+1]``, ``y_excl[k] = y[k-1]``
  (1 at a chunk start);
* prod, exclusive: ``gx[k] = y[k] * S[k]``, ``S[k] = g[k+1] + x[k+1] * S[k+1]`` (0 at a chunk end).

Products are built from multiplications only, so the gradient is exact when inputs contain zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (
    Layout,
    apply_carry,
    block_size,
    layout_flags,
    load_carry,
    num_warps,
    phase_mask,
    run_three_phase,
    seg_scan,
    store_tile_aggregate,
    tile_offsets,
)


@triton.jit
def scan_fwd_kernel(
    x_ptr, y_ptr, em_ptr, te_ptr, ta_ptr, tb_ptr, tf_ptr, ca_ptr, cb_ptr, N, n_per_row,
    PROD: tl.constexpr, EXCLUSIVE: tl.constexpr, PACKED: tl.constexpr, PHASE: tl.constexpr,
    HAS_CARRY: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    ar, offs = tile_offsets(tile, BLOCK, False)
    mask = offs < N
    covered, head, tail = layout_flags(offs, mask, em_ptr, te_ptr, tile, n_per_row, PACKED, False)
    if EXCLUSIVE:
        use = phase_mask(mask & (head == 0), head, ar, PHASE)
        x = tl.load(x_ptr + offs - 1, mask=use, other=0)
    else:
        use = phase_mask(mask, head, ar, PHASE)
        x = tl.load(x_ptr + offs, mask=use, other=0)
    if PROD:
        a = tl.where(use, x, 1)
        b = tl.zeros_like(a)
    else:
        b = tl.where(use, x, 0)
        a = tl.zeros_like(b) + 1
    f = head.to(tl.int32)
    a, b, f = seg_scan(a, b, f, KIND)
    if PHASE == 1:
        store_tile_aggregate(a, b, f, ar, tile, ta_ptr, tb_ptr, tf_ptr, KIND, BLOCK)
    else:
        if HAS_CARRY:
            ca, cb = load_carry(tile, ca_ptr, cb_ptr, KIND)
            a, b = apply_carry(a, b, f, ca, cb, KIND)
        if PROD:
            val = a
        else:
            val = b
        tl.store(y_ptr + offs, tl.where(covered, val, 0), mask=mask)


@triton.jit
def scan_bwd_kernel(
    g_ptr, x_ptr, y_ptr, gx_ptr, em_ptr, te_ptr, ta_ptr, tb_ptr, tf_ptr, ca_ptr, cb_ptr, N, n_per_row, T,
    PROD: tl.constexpr, EXCLUSIVE: tl.constexpr, PACKED: tl.constexpr, PHASE: tl.constexpr,
    HAS_CARRY: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    sidx = T - 1 - tile  # tiles are scanned in reverse order
    ar, offs = tile_offsets(tile, BLOCK, True)
    mask = offs < N
    covered, head, tail = layout_flags(offs, mask, em_ptr, te_ptr, tile, n_per_row, PACKED, True)
    nxt = mask & (tail == 0)  # k + 1 lies in the same chunk
    live = phase_mask(mask, tail, ar, PHASE)  # phase 1: only the elements after the tile's last reset
    nxt = nxt & live
    if PROD:
        xn = tl.load(x_ptr + offs + 1, mask=nxt, other=1)
        if EXCLUSIVE:
            gn = tl.load(g_ptr + offs + 1, mask=nxt, other=0)
            a = tl.where(nxt, xn, 1)
            b = tl.where(nxt, gn, 0)
        else:
            g = tl.load(g_ptr + offs, mask=live, other=0)
            a = tl.where(nxt, xn, 1)
            b = tl.where(live, g, 0)
    else:
        if EXCLUSIVE:
            b = tl.load(g_ptr + offs + 1, mask=nxt, other=0)
            b = tl.where(nxt, b, 0)
        else:
            b = tl.load(g_ptr + offs, mask=live, other=0)
            b = tl.where(live, b, 0)
        a = tl.zeros_like(b) + 1
    f = tail.to(tl.int32)
    a, b, f = seg_scan(a, b, f, KIND)
    if PHASE == 1:
        store_tile_aggregate(a, b, f, ar, sidx, ta_ptr, tb_ptr, tf_ptr, KIND, BLOCK)
    else:
        if HAS_CARRY:
            ca, cb = load_carry(sidx, ca_ptr, cb_ptr, KIND)
            a, b = apply_carry(a, b, f, ca, cb, KIND)
        if PROD:
            if EXCLUSIVE:
                w = tl.load(y_ptr + offs, mask=mask, other=0)
            else:
                prv = mask & (head == 0)
                w = tl.load(y_ptr + offs - 1, mask=prv, other=1)
                w = tl.where(prv, w, 1)
            val = w * b
        else:
            val = b
        tl.store(gx_ptr + offs, tl.where(covered, val, 0), mask=mask)


def _layout(inputs: Tensor, packed_info: Tensor | None) -> tuple[Tensor, Layout]:
    x = inputs.contiguous()
    n_per_row = 1 if packed_info is not None else (x.shape[-1] if x.dim() > 0 else 1)
    return x, Layout(x.numel(), packed_info, n_per_row, x.device, block_size())


def scan_fwd(inputs: Tensor, packed_info: Tensor | None, prod: bool, exclusive: bool) -> Tensor:
    """Segmented scan of ``inputs`` (packed ``(n,)`` with ``packed_info``, or batched ``(n_rays, n)`` along the
    last dim when ``packed_info`` is None). Samples outside every chunk get 0."""
    x, lay = _layout(inputs, packed_info)
    y = torch.empty_like(x)
    blk = lay.block
    kind = 1 if prod else 0

    def launch(phase, has_carry, ta, tb, tf, ca, cb):
        scan_fwd_kernel[(lay.tiles,)](
            x, y, lay.endmark, lay.tile_end, ta, tb, tf, ca, cb, lay.n, lay.n_per_row,
            PROD=prod, EXCLUSIVE=exclusive, PACKED=lay.packed, PHASE=phase, HAS_CARRY=has_carry, KIND=kind,
            BLOCK=blk, num_warps=num_warps(blk),
        )  # fmt: skip

    run_three_phase(launch, lay.tiles, x.dtype, x.device, kind)
    return y


def scan_bwd(
    grad: Tensor, inputs: Tensor, outputs: Tensor, packed_info: Tensor | None, prod: bool, exclusive: bool
) -> Tensor:
    """Gradient of :func:`scan_fwd` with respect to ``inputs`` given the output cotangent ``grad``."""
    x, lay = _layout(inputs, packed_info)
    g = grad.contiguous()
    y = outputs.contiguous()
    gx = torch.empty_like(x)
    blk = lay.block
    kind = 2 if prod else 0

    def launch(phase, has_carry, ta, tb, tf, ca, cb):
        scan_bwd_kernel[(lay.tiles,)](
            g, x, y, gx, lay.endmark, lay.tile_end, ta, tb, tf, ca, cb, lay.n, lay.n_per_row, lay.tiles,
            PROD=prod, EXCLUSIVE=exclusive, PACKED=lay.packed, PHASE=phase, HAS_CARRY=has_carry, KIND=kind,
            BLOCK=blk, num_warps=num_warps(blk),
        )  # fmt: skip

    run_three_phase(launch, lay.tiles, x.dtype, x.device, kind)
    return gx
