"""nerfacc-style functions backed directly by the Triton kernels (``nerfaccel_plugin._triton``), for benchmarks.

``bench_backends.py --backend triton`` builds its "ours" rows with this module in place of ``nerfaccel_plugin``:
the segmented ops (``render_weight_from_{density,alpha}``, the four scans, ``accumulate_along_rays``) run the Triton
kernels through small autograd functions that pass ``None`` for missing cotangents and the ``needs_input_grad``
flags down, as the dispatcher will after the merge; every other name (traversal, sampling, ``pack_info``,
``rendering``, ...) falls through to ``nerfaccel_plugin``. ``ray_indices`` inputs are converted with
``nerfaccel_plugin.pack_info`` (as the public API does). Triton runs on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1`` (slow; a smoke test).
"""

from __future__ import annotations

import torch
from torch import Tensor

import nerfaccel_plugin as _ours
from nerfaccel_plugin._triton import accumulate as _acc
from nerfaccel_plugin._triton import scan as _scan
from nerfaccel_plugin._triton import volrend as _vr


def __getattr__(name):  # everything this module does not define: the library's own public API
    return getattr(_ours, name)


def _info(packed_info, ray_indices, n_rays, n):
    if packed_info is not None:
        return packed_info
    if ray_indices is not None:
        return _ours.pack_info(ray_indices, n_rays)
    return None  # batched


class _Density(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t_starts, t_ends, sigmas, packed_info):
        w, t, a = _vr.render_weight_from_density_fwd(t_starts, t_ends, sigmas, packed_info)
        ctx.save_for_backward(t_starts, t_ends, sigmas, t, a)
        ctx.packed_info = packed_info
        ctx.set_materialize_grads(False)
        return w, t, a

    @staticmethod
    def backward(ctx, gw, gt, ga):
        ts, te, sg, t, a = ctx.saved_tensors
        need_t = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        g0, g1, gs = _vr.render_weight_from_density_bwd(gw, gt, ga, ts, te, sg, t, a, ctx.packed_info, False, need_t)
        return (g0 if need_t else None), (g1 if need_t else None), gs, None


class _Alpha(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alphas, packed_info):
        w, t = _vr.render_weight_from_alpha_fwd(alphas, packed_info)
        ctx.save_for_backward(alphas, t)
        ctx.packed_info = packed_info
        ctx.set_materialize_grads(False)
        return w, t

    @staticmethod
    def backward(ctx, gw, gt):
        alphas, t = ctx.saved_tensors
        return _vr.render_weight_from_alpha_bwd(gw, gt, alphas, t, ctx.packed_info), None


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, packed_info, prod, exclusive):
        y = _scan.scan_fwd(inputs, packed_info, prod, exclusive)
        ctx.save_for_backward(inputs, y)
        ctx.args = (packed_info, prod, exclusive)
        return y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return _scan.scan_bwd(g, x, y, *ctx.args), None, None, None


class _Accumulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, values, ray_indices, n_rays):
        out = _acc.accumulate_along_rays_fwd(weights, values, ray_indices, n_rays)
        ctx.save_for_backward(weights, values, ray_indices)
        return out

    @staticmethod
    def backward(ctx, g):
        w, v, idx = ctx.saved_tensors
        gw, gv = _acc.accumulate_along_rays_bwd(g, w, v, idx, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return (gw if ctx.needs_input_grad[0] else None), (gv if ctx.needs_input_grad[1] else None), None, None


def render_weight_from_density(t_starts, t_ends, sigmas, packed_info=None, ray_indices=None, n_rays=None):
    """(weights, trans, alphas), nerfacc 0.5's signature."""
    return _Density.apply(t_starts, t_ends, sigmas, _info(packed_info, ray_indices, n_rays, sigmas.numel()))


def render_weight_from_alpha(alphas, packed_info=None, ray_indices=None, n_rays=None):
    """(weights, trans), nerfacc 0.5's signature."""
    return _Alpha.apply(alphas, _info(packed_info, ray_indices, n_rays, alphas.numel()))


def _scan_api(prod: bool, exclusive: bool):
    def fn(inputs: Tensor, packed_info=None, indices=None):
        info = _info(packed_info, indices, None if indices is None else int(indices.max()) + 1, inputs.numel())
        return _Scan.apply(inputs, info, prod, exclusive)

    return fn


inclusive_sum = _scan_api(False, False)
exclusive_sum = _scan_api(False, True)
inclusive_prod = _scan_api(True, False)
exclusive_prod = _scan_api(True, True)


def accumulate_along_rays(weights, values=None, ray_indices=None, n_rays=None):
    """nerfacc 0.5's signature; batched (``ray_indices`` None) inputs are summed along the samples dim."""
    if ray_indices is None:
        src = weights[..., None] if values is None else weights[..., None] * values
        return src.sum(dim=-2)
    return _Accumulate.apply(weights, values, ray_indices, n_rays)
