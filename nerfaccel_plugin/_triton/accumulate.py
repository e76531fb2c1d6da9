"""``accumulate_along_rays`` forward and backward, sample-parallel over ``ray_indices``.

Forward: each program takes a tile of consecutive samples (``BLOCK x D`` values, read once, coalesced), runs a
segmented sum over runs of equal ray indices within the tile (a run starts where the index changes), and adds
each run's total to ``out[ray]`` with one atomic per run and channel. Sorted indices give one atomic per ray and
tile edge; unsorted indices are still right (a run of length 1 per sample in the worst case). Indices outside
``[0, n_rays)`` are skipped (never written; the CPU build reports them as an error).

Backward: a gather per sample, ``g_w[i] = <grad_out[r], values[i]>`` (``grad_out[r, 0]`` without values) and
``g_values[i] = grad_out[r] * w[i]``; samples with an out-of-range index get 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import _seg_add, block_size, num_warps


def _dims(d: int) -> tuple[int, int]:
    dpad = triton.next_power_of_2(max(d, 1))
    blk = max(2, min(block_size(), max(16, 2048 // dpad)))
    return dpad, blk


@triton.jit
def accumulate_fwd_kernel(
    w_ptr, v_ptr, idx_ptr, out_ptr, N, D, n_rays,
    HAS_V: tl.constexpr, BLOCK: tl.constexpr, DPAD: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    ar = tl.arange(0, BLOCK)
    offs = tile.to(tl.int64) * BLOCK + ar
    mask = offs < N
    r = tl.load(idx_ptr + offs, mask=mask, other=-1).to(tl.int64)
    has_prev = mask & (ar > 0)
    r_prev = tl.load(idx_ptr + offs - 1, mask=has_prev, other=-1).to(tl.int64)
    has_next = mask & (ar < BLOCK - 1) & (offs + 1 < N)
    r_next = tl.load(idx_ptr + offs + 1, mask=has_next, other=-1).to(tl.int64)
    head = (has_prev == 0) | (r != r_prev)
    tail = (has_next == 0) | (r != r_next)
    w = tl.load(w_ptr + offs, mask=mask, other=0)
    d = tl.arange(0, DPAD)
    dmask = d < D
    m2 = mask[:, None] & dmask[None, :]
    if HAS_V:
        v = tl.load(v_ptr + offs[:, None] * D + d[None, :], mask=m2, other=0)
        src = w[:, None] * v
    else:
        src = w[:, None] + tl.zeros([BLOCK, DPAD], dtype=w.dtype)
    f = head.to(tl.int32)[:, None] + tl.zeros([BLOCK, DPAD], dtype=tl.int32)
    s, f = tl.associative_scan((src, f), 0, _seg_add)
    ok = mask & tail & (r >= 0) & (r < n_rays)
    safe_r = tl.where(ok, r, 0)
    tl.atomic_add(out_ptr + safe_r[:, None] * D + d[None, :], s, mask=ok[:, None] & dmask[None, :], sem="relaxed")


@triton.jit
def accumulate_bwd_kernel(
    go_ptr, w_ptr, v_ptr, idx_ptr, gw_ptr, gv_ptr, N, D, n_rays,
    HAS_V: tl.constexpr, NEED_W: tl.constexpr, NEED_V: tl.constexpr, BLOCK: tl.constexpr, DPAD: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    ar = tl.arange(0, BLOCK)
    offs = tile.to(tl.int64) * BLOCK + ar
    mask = offs < N
    r = tl.load(idx_ptr + offs, mask=mask, other=-1).to(tl.int64)
    ok = mask & (r >= 0) & (r < n_rays)
    safe_r = tl.where(ok, r, 0)
    d = tl.arange(0, DPAD)
    dmask = d < D
    m2 = ok[:, None] & dmask[None, :]
    go = tl.load(go_ptr + safe_r[:, None] * D + d[None, :], mask=m2, other=0)
    if NEED_W:
        if HAS_V:
            v = tl.load(v_ptr + offs[:, None] * D + d[None, :], mask=m2, other=0)
            gw = tl.sum(go * v, axis=1)
        else:
            gw = tl.sum(go, axis=1)
        tl.store(gw_ptr + offs, gw, mask=mask)
    if NEED_V:
        w = tl.load(w_ptr + offs, mask=mask, other=0)
        tl.store(gv_ptr + offs[:, None] * D + d[None, :], go * w[:, None], mask=mask[:, None] & dmask[None, :])


def accumulate_along_rays_fwd(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """``out[r] = sum_{i: ray_indices[i] = r} weights[i] * values[i]`` (``values = 1`` when None): shape
    ``(n_rays, D)`` or ``(n_rays, 1)``. ``ray_indices`` need not be sorted."""
    w = weights.contiguous()
    v = None if values is None else values.contiguous()
    idx = ray_indices.contiguous()
    dim = 1 if v is None else v.shape[-1]
    out = torch.zeros((n_rays, dim), dtype=w.dtype, device=w.device)
    n = w.numel()
    if n == 0 or dim == 0 or n_rays == 0:
        return out
    dpad, blk = _dims(dim)
    accumulate_fwd_kernel[(triton.cdiv(n, blk),)](
        w, v if v is not None else w, idx, out, n, dim, n_rays,
        HAS_V=v is not None, BLOCK=blk, DPAD=dpad, num_warps=num_warps(blk * dpad),
    )  # fmt: skip
    return out


def accumulate_along_rays_bwd(
    grad_out: Tensor,
    weights: Tensor,
    values: Tensor | None,
    ray_indices: Tensor,
    need_weights_grad: bool,
    need_values_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(g_weights, g_values)``; a gradient that is not needed (or ``values`` None) is empty ``(0,)``."""
    w = weights.contiguous()
    v = None if values is None else values.contiguous()
    idx = ray_indices.contiguous()
    go = grad_out.contiguous()
    need_v = need_values_grad and v is not None
    gw = torch.empty_like(w) if need_weights_grad else w.new_empty((0,))
    gv = torch.empty_like(v) if need_v else w.new_empty((0,))
    n = w.numel()
    dim = go.shape[-1] if go.dim() == 2 else 1
    if n == 0 or not (need_weights_grad or need_v):
        return gw, gv
    if dim == 0 or go.shape[0] == 0:  # nothing to gather: every gradient is zero
        return gw.zero_(), gv.zero_()
    dpad, blk = _dims(dim)
    accumulate_bwd_kernel[(triton.cdiv(n, blk),)](
        go, w, v if v is not None else w, idx, gw if need_weights_grad else w, gv if need_v else w, n, dim,
        go.shape[0], HAS_V=v is not None, NEED_W=need_weights_grad, NEED_V=need_v, BLOCK=blk, DPAD=dpad,
        num_warps=num_warps(blk * dpad),
    )  # fmt: skip
    return gw, gv
