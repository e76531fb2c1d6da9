"""Volume rendering weights from densities or opacities, forward and backward, sample-parallel.

Density: ``tau_i = sigma_i (t_end_i - t_start_i)``, ``alpha_i = 1 - exp(-tau_i)``, ``T_i = exp(-E_i)`` with
``E_i = sum_{j<i} tau_j`` (an exclusive segmented sum: element ``i`` carries ``tau_{i-1}``), ``w_i = T_i alpha_i``.
Backward (reverse exclusive sum): ``g_tau_k = sum_{i>k} D_i + (gw_k T_k + ga_k) exp(-tau_k)`` with
``D_i = -T_i (gw_i alpha_i + gT_i)``; ``g_sigma = g_tau dt``, ``g_t_end = g_tau sigma = -g_t_start``.

Alpha: ``T_i = prod_{j<i} (1 - alpha_j)`` (exclusive segmented product), ``w_i = T_i alpha_i``. Backward:
``g_alpha_k = T_k (gw_k - S_k)`` with ``S_k = G_{k+1} + (1 - alpha_{k+1}) S_{k+1}`` (0 at a chunk end) and
``G_i = gw_i alpha_i + gT_i``: a reverse scan of affine maps, multiplications only (exact with opacities of 1).

Samples outside every chunk get ``T = w = 0`` (their alpha is still computed), and their gradients follow from
that (only ``grad_alphas`` reaches them). Missing cotangents (None) are skipped at compile time.
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
def density_fwd_kernel(
    ts_ptr, te_ptr, sg_ptr, w_ptr, tr_ptr, al_ptr, em_ptr, te_tile_ptr, ta_ptr, tb_ptr, tf_ptr, ca_ptr, cb_ptr,
    N, n_per_row, PACKED: tl.constexpr, PHASE: tl.constexpr, HAS_CARRY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    ar, offs = tile_offsets(tile, BLOCK, False)
    mask = offs < N
    covered, head, tail = layout_flags(offs, mask, em_ptr, te_tile_ptr, tile, n_per_row, PACKED, False)
    prv = phase_mask(mask & (head == 0), head, ar, PHASE)
    ts_p = tl.load(ts_ptr + offs - 1, mask=prv, other=0)
    te_p = tl.load(te_ptr + offs - 1, mask=prv, other=0)
    sg_p = tl.load(sg_ptr + offs - 1, mask=prv, other=0)
    b = tl.where(prv, sg_p * (te_p - ts_p), 0)
    f = head.to(tl.int32)
    a = tl.zeros_like(b) + 1
    a, b, f = seg_scan(a, b, f, 0)
    if PHASE == 1:
        store_tile_aggregate(a, b, f, ar, tile, ta_ptr, tb_ptr, tf_ptr, 0, BLOCK)
    else:
        if HAS_CARRY:
            ca, cb = load_carry(tile, ca_ptr, cb_ptr, 0)
            a, b = apply_carry(a, b, f, ca, cb, 0)
        ts = tl.load(ts_ptr + offs, mask=mask, other=0)
        te = tl.load(te_ptr + offs, mask=mask, other=0)
        sg = tl.load(sg_ptr + offs, mask=mask, other=0)
        alpha = 1.0 - tl.exp(-(sg * (te - ts)))
        trans = tl.where(covered, tl.exp(-b), 0)
        tl.store(al_ptr + offs, alpha, mask=mask)
        tl.store(tr_ptr + offs, trans, mask=mask)
        tl.store(w_ptr + offs, trans * alpha, mask=mask)


@triton.jit
def density_bwd_kernel(
    gw_ptr, gt_ptr, ga_ptr, ts_ptr, te_ptr, sg_ptr, tr_ptr, al_ptr, gts_ptr, gte_ptr, gsg_ptr,
    em_ptr, te_tile_ptr, ta_ptr, tb_ptr, tf_ptr, ca_ptr, cb_ptr, N, n_per_row, T,
    HAS_GW: tl.constexpr, HAS_GT: tl.constexpr, HAS_GA: tl.constexpr, NEED_T: tl.constexpr,
    PACKED: tl.constexpr, PHASE: tl.constexpr, HAS_CARRY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    sidx = T - 1 - tile
    ar, offs = tile_offsets(tile, BLOCK, True)
    mask = offs < N
    covered, head, tail = layout_flags(offs, mask, em_ptr, te_tile_ptr, tile, n_per_row, PACKED, True)
    SCAN: tl.constexpr = HAS_GW or HAS_GT
    if SCAN:
        nxt = phase_mask(mask & (tail == 0), tail, ar, PHASE)
        tr_n = tl.load(tr_ptr + offs + 1, mask=nxt, other=0)
        d = tl.zeros_like(tr_n)
        if HAS_GW:
            gw_n = tl.load(gw_ptr + offs + 1, mask=nxt, other=0)
            al_n = tl.load(al_ptr + offs + 1, mask=nxt, other=0)
            d += gw_n * al_n
        if HAS_GT:
            d += tl.load(gt_ptr + offs + 1, mask=nxt, other=0)
        b = tl.where(nxt, -tr_n * d, 0)
        a = tl.zeros_like(b) + 1
        f = tail.to(tl.int32)
        a, b, f = seg_scan(a, b, f, 0)
        if PHASE == 1:
            store_tile_aggregate(a, b, f, ar, sidx, ta_ptr, tb_ptr, tf_ptr, 0, BLOCK)
        else:
            if HAS_CARRY:
                ca, cb = load_carry(sidx, ca_ptr, cb_ptr, 0)
                a, b = apply_carry(a, b, f, ca, cb, 0)
            b = tl.where(covered, b, 0)
    if PHASE == 3:
        ts = tl.load(ts_ptr + offs, mask=mask, other=0)
        te = tl.load(te_ptr + offs, mask=mask, other=0)
        sg = tl.load(sg_ptr + offs, mask=mask, other=0)
        dt = te - ts
        e = tl.exp(-(sg * dt))
        local = tl.zeros_like(e)
        if HAS_GW:
            local += tl.load(gw_ptr + offs, mask=mask, other=0) * tl.load(tr_ptr + offs, mask=mask, other=0)
        if HAS_GA:
            local += tl.load(ga_ptr + offs, mask=mask, other=0)
        g_tau = local * e
        if SCAN:
            g_tau += b
        tl.store(gsg_ptr + offs, g_tau * dt, mask=mask)
        if NEED_T:
            g_te = g_tau * sg
            tl.store(gte_ptr + offs, g_te, mask=mask)
            tl.store(gts_ptr + offs, -g_te, mask=mask)


@triton.jit
def alpha_fwd_kernel(
    al_ptr, w_ptr, tr_ptr, em_ptr, te_tile_ptr, ta_ptr, tb_ptr, tf_ptr, ca_ptr, cb_ptr, N, n_per_row,
    PACKED: tl.constexpr, PHASE: tl.constexpr, HAS_CARRY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    ar, offs = tile_offsets(tile, BLOCK, False)
    mask = offs < N
    covered, head, tail = layout_flags(offs, mask, em_ptr, te_tile_ptr, tile, n_per_row, PACKED, False)
    prv = phase_mask(mask & (head == 0), head, ar, PHASE)
    al_p = tl.load(al_ptr + offs - 1, mask=prv, other=0)
    a = tl.where(prv, 1.0 - al_p, 1)
    b = tl.zeros_like(a)
    f = head.to(tl.int32)
    a, b, f = seg_scan(a, b, f, 1)
    if PHASE == 1:
        store_tile_aggregate(a, b, f, ar, tile, ta_ptr, tb_ptr, tf_ptr, 1, BLOCK)
    else:
        if HAS_CARRY:
            ca, cb = load_carry(tile, ca_ptr, cb_ptr, 1)
            a, b = apply_carry(a, b, f, ca, cb, 1)
        alpha = tl.load(al_ptr + offs, mask=mask, other=0)
        trans = tl.where(covered, a, 0)
        tl.store(tr_ptr + offs, trans, mask=mask)
        tl.store(w_ptr + offs, trans * alpha, mask=mask)


@triton.jit
def alpha_bwd_kernel(
    gw_ptr, gt_ptr, al_ptr, tr_ptr, gal_ptr, em_ptr, te_tile_ptr, ta_ptr, tb_ptr, tf_ptr, ca_ptr, cb_ptr,
    N, n_per_row, T, HAS_GW: tl.constexpr, HAS_GT: tl.constexpr,
    PACKED: tl.constexpr, PHASE: tl.constexpr, HAS_CARRY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    sidx = T - 1 - tile
    ar, offs = tile_offsets(tile, BLOCK, True)
    mask = offs < N
    covered, head, tail = layout_flags(offs, mask, em_ptr, te_tile_ptr, tile, n_per_row, PACKED, True)
    nxt = phase_mask(mask & (tail == 0), tail, ar, PHASE)
    al_n = tl.load(al_ptr + offs + 1, mask=nxt, other=0)
    gn = tl.zeros_like(al_n)
    if HAS_GW:
        gn += tl.load(gw_ptr + offs + 1, mask=nxt, other=0) * al_n
    if HAS_GT:
        gn += tl.load(gt_ptr + offs + 1, mask=nxt, other=0)
    a = tl.where(nxt, 1.0 - al_n, 1)
    b = tl.where(nxt, gn, 0)
    f = tail.to(tl.int32)
    a, b, f = seg_scan(a, b, f, 2)
    if PHASE == 1:
        store_tile_aggregate(a, b, f, ar, sidx, ta_ptr, tb_ptr, tf_ptr, 2, BLOCK)
    else:
        if HAS_CARRY:
            ca, cb = load_carry(sidx, ca_ptr, cb_ptr, 2)
            a, b = apply_carry(a, b, f, ca, cb, 2)
        trans = tl.load(tr_ptr + offs, mask=mask, other=0)
        if HAS_GW:
            gw = tl.load(gw_ptr + offs, mask=mask, other=0)
        else:
            gw = tl.zeros_like(trans)
        tl.store(gal_ptr + offs, tl.where(covered, trans * (gw - b), 0), mask=mask)


def _lay(x: Tensor, packed_info: Tensor | None) -> Layout:
    n_per_row = 1 if packed_info is not None else (x.shape[-1] if x.dim() > 0 else 1)
    return Layout(x.numel(), packed_info, n_per_row, x.device, block_size())


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def render_weight_from_density_fwd(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, packed_info: Tensor | None, covers_all: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(weights, trans, alphas)`` of packed ``(n,)`` samples, or batched ``(n_rays, n)`` when ``packed_info``
    is None. ``covers_all`` is a hint only: every sample is visited once whatever it says."""
    ts, te, sg = t_starts.contiguous(), t_ends.contiguous(), sigmas.contiguous()
    lay = _lay(sg, packed_info)
    w, tr, al = torch.empty_like(sg), torch.empty_like(sg), torch.empty_like(sg)
    blk = lay.block

    def launch(phase, has_carry, ta, tb, tf, ca, cb):
        density_fwd_kernel[(lay.tiles,)](
            ts, te, sg, w, tr, al, lay.endmark, lay.tile_end, ta, tb, tf, ca, cb, lay.n, lay.n_per_row,
            PACKED=lay.packed, PHASE=phase, HAS_CARRY=has_carry, BLOCK=blk, num_warps=num_warps(blk),
        )  # fmt: skip

    run_three_phase(launch, lay.tiles, sg.dtype, sg.device, 0)
    return w, tr, al


def render_weight_from_density_bwd(
    grad_weights: Tensor | None,
    grad_trans: Tensor | None,
    grad_alphas: Tensor | None,
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    trans: Tensor,
    alphas: Tensor,
    packed_info: Tensor | None,
    covers_all: bool,
    need_t_grads: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(g_t_starts, g_t_ends, g_sigmas)``; the t gradients are empty ``(0,)`` unless ``need_t_grads``."""
    ts, te, sg, tr, al = (x.contiguous() for x in (t_starts, t_ends, sigmas, trans, alphas))
    gw, gt, ga = _c(grad_weights), _c(grad_trans), _c(grad_alphas)
    lay = _lay(sg, packed_info)
    gsg = torch.empty_like(sg)
    if need_t_grads:
        gts, gte = torch.empty_like(sg), torch.empty_like(sg)
    else:
        gts, gte = sg.new_empty((0,)), sg.new_empty((0,))
    blk = lay.block
    has_gw, has_gt, has_ga = gw is not None, gt is not None, ga is not None

    def launch(phase, has_carry, ta, tb, tf, ca, cb):
        density_bwd_kernel[(lay.tiles,)](
            gw if has_gw else sg, gt if has_gt else sg, ga if has_ga else sg, ts, te, sg, tr, al,
            gts if need_t_grads else sg, gte if need_t_grads else sg, gsg,
            lay.endmark, lay.tile_end, ta, tb, tf, ca, cb, lay.n, lay.n_per_row, lay.tiles,
            HAS_GW=has_gw, HAS_GT=has_gt, HAS_GA=has_ga, NEED_T=need_t_grads,
            PACKED=lay.packed, PHASE=phase, HAS_CARRY=has_carry, BLOCK=blk, num_warps=num_warps(blk),
        )  # fmt: skip

    if has_gw or has_gt:
        run_three_phase(launch, lay.tiles, sg.dtype, sg.device, 0)
    elif lay.tiles > 0:  # no scan: one pass, no carries
        launch(3, False, sg, sg, sg, sg, sg)
    return gts, gte, gsg


def render_weight_from_alpha_fwd(alphas: Tensor, packed_info: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(weights, trans)`` of packed ``(n,)`` opacities, or batched ``(n_rays, n)`` when ``packed_info`` is None."""
    al = alphas.contiguous()
    lay = _lay(al, packed_info)
    w, tr = torch.empty_like(al), torch.empty_like(al)
    blk = lay.block

    def launch(phase, has_carry, ta, tb, tf, ca, cb):
        alpha_fwd_kernel[(lay.tiles,)](
            al, w, tr, lay.endmark, lay.tile_end, ta, tb, tf, ca, cb, lay.n, lay.n_per_row,
            PACKED=lay.packed, PHASE=phase, HAS_CARRY=has_carry, BLOCK=blk, num_warps=num_warps(blk),
        )  # fmt: skip

    run_three_phase(launch, lay.tiles, al.dtype, al.device, 1)
    return w, tr


def render_weight_from_alpha_bwd(
    grad_weights: Tensor | None, grad_trans: Tensor | None, alphas: Tensor, trans: Tensor, packed_info: Tensor | None
) -> Tensor:
    """Gradient with respect to ``alphas``."""
    al, tr = alphas.contiguous(), trans.contiguous()
    gw, gt = _c(grad_weights), _c(grad_trans)
    if gw is None and gt is None:
        return torch.zeros_like(al)
    lay = _lay(al, packed_info)
    gal = torch.empty_like(al)
    blk = lay.block

    def launch(phase, has_carry, ta, tb, tf, ca, cb):
        alpha_bwd_kernel[(lay.tiles,)](
            gw if gw is not None else al, gt if gt is not None else al, al, tr, gal,
            lay.endmark, lay.tile_end, ta, tb, tf, ca, cb, lay.n, lay.n_per_row, lay.tiles,
            HAS_GW=gw is not None, HAS_GT=gt is not None,
            PACKED=lay.packed, PHASE=phase, HAS_CARRY=has_carry, BLOCK=blk, num_warps=num_warps(blk),
        )  # fmt: skip

    run_three_phase(launch, lay.tiles, al.dtype, al.device, 2)
    return gal
