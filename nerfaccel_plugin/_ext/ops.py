"""``torch.library`` registration of the compiled kernels, and the primitive-op backends.

Every kernel is a custom op ``torch.ops.nerfaccel.<name>`` with a schema, one implementation for CPU
and CUDA tensors (each calls the matching extension), a fake implementation (so ``torch.compile``
traces through it, with dynamic output sizes where the size depends on the data), and for the
differentiable ops an autograd formula whose backward is itself a registered op.

:func:`backend` wraps the ops in the primitive signatures of :mod:`nerfaccel_plugin._torch_impl`.
float16/bfloat16 inputs are upcast to float32 there (the kernels compute in float32 or float64), so
outputs of 16-bit inputs are float32 and gradients flow back through the cast.

No ``from __future__ import annotations`` here: ``torch.library.custom_op`` reads the annotations.
"""

import types
from typing import Optional

import torch
from torch import Tensor

from . import build

_NS = "nerfaccel"
_DEVICES = ("cpu", "cuda")


def _ext(t: Tensor):
    """The loaded extension for the device of ``t``."""
    return build.get_module("cuda" if t.device.type == "cuda" else "cpp")


def _zeros_if_none(g: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.contiguous()


# ---------------------------------------------------------------------------------------------
# Geometry and traversal (no gradients)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::ray_aabb_intersect", mutates_args=(), device_types=_DEVICES)
def ray_aabb_intersect(
    rays_o: Tensor, rays_d: Tensor, aabbs: Tensor, near_plane: float, far_plane: float, miss_value: float
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_ext(rays_o).ray_aabb_intersect(rays_o, rays_d, aabbs, near_plane, far_plane, miss_value))


@ray_aabb_intersect.register_fake
def _(rays_o, rays_d, aabbs, near_plane, far_plane, miss_value):
    shape = (rays_o.shape[0], aabbs.shape[0])
    return rays_o.new_empty(shape), rays_o.new_empty(shape), rays_o.new_empty(shape, dtype=torch.bool)


@torch.library.custom_op(f"{_NS}::traverse_grids", mutates_args=(), device_types=_DEVICES)
def traverse_grids(
    rays_o: Tensor,
    rays_d: Tensor,
    binaries: Tensor,
    aabbs: Tensor,
    near_planes: Tensor,
    far_planes: Tensor,
    step_size: float,
    cone_angle: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(
        _ext(rays_o).traverse_grids(rays_o, rays_d, binaries, aabbs, near_planes, far_planes, step_size, cone_angle)
    )


@traverse_grids.register_fake
def _(rays_o, rays_d, binaries, aabbs, near_planes, far_planes, step_size, cone_angle):
    n = torch.library.get_ctx().new_dynamic_size()
    return rays_o.new_empty((n,), dtype=torch.long), rays_o.new_empty((n,)), rays_o.new_empty((n,))


# ---------------------------------------------------------------------------------------------
# Segmented scans
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::scan", mutates_args=(), device_types=_DEVICES)
def scan(inputs: Tensor, packed_info: Tensor, prod: bool, exclusive: bool) -> Tensor:
    return _ext(inputs).scan_fwd(inputs, packed_info, prod, exclusive)


@scan.register_fake
def _(inputs, packed_info, prod, exclusive):
    return torch.empty_like(inputs)


@torch.library.custom_op(f"{_NS}::scan_backward", mutates_args=(), device_types=_DEVICES)
def scan_backward(
    grad: Tensor, inputs: Tensor, outputs: Tensor, packed_info: Tensor, prod: bool, exclusive: bool
) -> Tensor:
    return _ext(inputs).scan_bwd(grad, inputs, outputs, packed_info, prod, exclusive)


@scan_backward.register_fake
def _(grad, inputs, outputs, packed_info, prod, exclusive):
    return torch.empty_like(inputs)


def _scan_setup(ctx, inputs, output):
    x, packed_info, prod, exclusive = inputs
    ctx.prod, ctx.exclusive = prod, exclusive
    ctx.save_for_backward(x, output, packed_info)


def _scan_bwd(ctx, grad):
    x, y, packed_info = ctx.saved_tensors
    g = torch.ops.nerfaccel.scan_backward(_zeros_if_none(grad, y), x, y, packed_info, ctx.prod, ctx.exclusive)
    return g, None, None, None


scan.register_autograd(_scan_bwd, setup_context=_scan_setup)


# ---------------------------------------------------------------------------------------------
# Volume rendering
# ---------------------------------------------------------------------------------------------
# covers_all: the caller knows the chunks tile the samples contiguously (packed_info from pack_info or a batched
# layout), so the CUDA kernels skip their pass over all samples for the ones outside every chunk (finding out
# would cost a device sync). The CPU kernels check it themselves and ignore the flag. A wrong True leaves the
# alphas (alpha gradients) of uncovered samples unset on CUDA.
@torch.library.custom_op(f"{_NS}::render_weight_from_density", mutates_args=(), device_types=_DEVICES)
def render_weight_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, packed_info: Tensor, covers_all: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_ext(sigmas).render_density_fwd(t_starts, t_ends, sigmas, packed_info, covers_all))


@render_weight_from_density.register_fake
def _(t_starts, t_ends, sigmas, packed_info, covers_all=False):
    return torch.empty_like(sigmas), torch.empty_like(sigmas), torch.empty_like(sigmas)


@torch.library.custom_op(f"{_NS}::render_weight_from_density_backward", mutates_args=(), device_types=_DEVICES)
def render_weight_from_density_backward(
    grad_weights: Tensor,
    grad_trans: Tensor,
    grad_alphas: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    trans: Tensor,
    alphas: Tensor,
    packed_info: Tensor,
    covers_all: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(
        _ext(sigmas).render_density_bwd(
            grad_weights, grad_trans, grad_alphas, t_starts, t_ends, sigmas, trans, alphas, packed_info, covers_all
        )
    )


@render_weight_from_density_backward.register_fake
def _(grad_weights, grad_trans, grad_alphas, t_starts, t_ends, sigmas, trans, alphas, packed_info, covers_all=False):
    return torch.empty_like(sigmas), torch.empty_like(sigmas), torch.empty_like(sigmas)


def _density_setup(ctx, inputs, output):
    t_starts, t_ends, sigmas, packed_info, covers_all = inputs
    _, trans, alphas = output
    ctx.covers_all = covers_all
    ctx.save_for_backward(t_starts, t_ends, sigmas, trans, alphas, packed_info)


def _density_bwd(ctx, g_w, g_t, g_a):
    t_starts, t_ends, sigmas, trans, alphas, packed_info = ctx.saved_tensors
    g0, g1, gs = torch.ops.nerfaccel.render_weight_from_density_backward(
        _zeros_if_none(g_w, sigmas),
        _zeros_if_none(g_t, sigmas),
        _zeros_if_none(g_a, sigmas),
        t_starts,
        t_ends,
        sigmas,
        trans,
        alphas,
        packed_info,
        ctx.covers_all,
    )
    return g0, g1, gs, None, None


render_weight_from_density.register_autograd(_density_bwd, setup_context=_density_setup)


@torch.library.custom_op(f"{_NS}::render_weight_from_alpha", mutates_args=(), device_types=_DEVICES)
def render_weight_from_alpha(alphas: Tensor, packed_info: Tensor) -> tuple[Tensor, Tensor]:
    return tuple(_ext(alphas).render_alpha_fwd(alphas, packed_info))


@render_weight_from_alpha.register_fake
def _(alphas, packed_info):
    return torch.empty_like(alphas), torch.empty_like(alphas)


@torch.library.custom_op(f"{_NS}::render_weight_from_alpha_backward", mutates_args=(), device_types=_DEVICES)
def render_weight_from_alpha_backward(
    grad_weights: Tensor, grad_trans: Tensor, alphas: Tensor, trans: Tensor, packed_info: Tensor
) -> Tensor:
    return _ext(alphas).render_alpha_bwd(grad_weights, grad_trans, alphas, trans, packed_info)


@render_weight_from_alpha_backward.register_fake
def _(grad_weights, grad_trans, alphas, trans, packed_info):
    return torch.empty_like(alphas)


def _alpha_setup(ctx, inputs, output):
    alphas, packed_info = inputs
    ctx.save_for_backward(alphas, output[1], packed_info)


def _alpha_bwd(ctx, g_w, g_t):
    alphas, trans, packed_info = ctx.saved_tensors
    g = torch.ops.nerfaccel.render_weight_from_alpha_backward(
        _zeros_if_none(g_w, alphas), _zeros_if_none(g_t, alphas), alphas, trans, packed_info
    )
    return g, None


render_weight_from_alpha.register_autograd(_alpha_bwd, setup_context=_alpha_setup)


@torch.library.custom_op(f"{_NS}::accumulate_along_rays", mutates_args=(), device_types=_DEVICES)
def accumulate_along_rays(weights: Tensor, values: Optional[Tensor], ray_indices: Tensor, n_rays: int) -> Tensor:
    return _ext(weights).accumulate_fwd(weights, values, ray_indices, n_rays)


@accumulate_along_rays.register_fake
def _(weights, values, ray_indices, n_rays):
    dim = 1 if values is None else values.shape[1]
    return weights.new_empty((n_rays, dim))


@torch.library.custom_op(f"{_NS}::accumulate_along_rays_backward", mutates_args=(), device_types=_DEVICES)
def accumulate_along_rays_backward(
    grad_out: Tensor, weights: Tensor, values: Optional[Tensor], ray_indices: Tensor
) -> tuple[Tensor, Tensor]:
    return tuple(_ext(weights).accumulate_bwd(grad_out, weights, values, ray_indices))


@accumulate_along_rays_backward.register_fake
def _(grad_out, weights, values, ray_indices):
    return torch.empty_like(weights), (weights.new_empty((0,)) if values is None else torch.empty_like(values))


def _accumulate_setup(ctx, inputs, output):
    weights, values, ray_indices, n_rays = inputs
    ctx.has_values = values is not None
    ctx.n_rays, ctx.dim = n_rays, output.shape[1]
    ctx.save_for_backward(weights, values if values is not None else weights.new_empty((0,)), ray_indices)


def _accumulate_bwd(ctx, grad):
    weights, values, ray_indices = ctx.saved_tensors
    if grad is None:
        grad = weights.new_zeros((ctx.n_rays, ctx.dim))
    g_w, g_v = torch.ops.nerfaccel.accumulate_along_rays_backward(
        grad.contiguous(), weights, values if ctx.has_values else None, ray_indices
    )
    return g_w, (g_v if ctx.has_values else None), None, None


accumulate_along_rays.register_autograd(_accumulate_bwd, setup_context=_accumulate_setup)


# ---------------------------------------------------------------------------------------------
# Search and sampling (no gradients)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::searchsorted", mutates_args=(), device_types=_DEVICES)
def searchsorted(
    sorted_vals: Tensor, sorted_packed_info: Tensor, query_vals: Tensor, query_packed_info: Tensor
) -> tuple[Tensor, Tensor]:
    return tuple(_ext(sorted_vals).searchsorted(sorted_vals, sorted_packed_info, query_vals, query_packed_info))


@searchsorted.register_fake
def _(sorted_vals, sorted_packed_info, query_vals, query_packed_info):
    return torch.empty_like(query_vals, dtype=torch.long), torch.empty_like(query_vals, dtype=torch.long)


@torch.library.custom_op(f"{_NS}::importance_sampling", mutates_args=(), device_types=_DEVICES)
def importance_sampling(
    edge_vals: Tensor, cdfs: Tensor, packed_info: Tensor, n_per_ray: Tensor, bias: Tensor, n_uniform: int = -1
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_ext(edge_vals).importance_sampling(edge_vals, cdfs, packed_info, n_per_ray, bias, n_uniform))


@importance_sampling.register_fake
def _(edge_vals, cdfs, packed_info, n_per_ray, bias, n_uniform=-1):
    if n_uniform >= 0:  # batched layout: sizes known on the host
        n_rays = packed_info.shape[0]
        n_samples, n_edges = n_rays * n_uniform, (n_rays * (n_uniform + 1) if n_uniform > 0 else 0)
    else:
        ctx = torch.library.get_ctx()
        n_samples, n_edges = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    return (
        edge_vals.new_empty((n_samples,)),
        torch.empty_like(packed_info),
        edge_vals.new_empty((n_edges,)),
        torch.empty_like(packed_info),
    )


# ---------------------------------------------------------------------------------------------
# Contraction
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::contract", mutates_args=(), device_types=_DEVICES)
def contract(x: Tensor, aabb: Tensor, linf: bool, inverse: bool) -> Tensor:
    return _ext(x).contract_fwd(x, aabb, linf, inverse)


@contract.register_fake
def _(x, aabb, linf, inverse):
    return torch.empty_like(x)


@torch.library.custom_op(f"{_NS}::contract_backward", mutates_args=(), device_types=_DEVICES)
def contract_backward(grad: Tensor, x: Tensor, aabb: Tensor, linf: bool, inverse: bool) -> Tensor:
    return _ext(x).contract_bwd(grad, x, aabb, linf, inverse)


@contract_backward.register_fake
def _(grad, x, aabb, linf, inverse):
    return torch.empty_like(x)


def _contract_setup(ctx, inputs, output):
    x, aabb, linf, inverse = inputs
    ctx.linf, ctx.inverse = linf, inverse
    ctx.save_for_backward(x, aabb)


def _contract_bwd(ctx, grad):
    x, aabb = ctx.saved_tensors
    g = torch.ops.nerfaccel.contract_backward(_zeros_if_none(grad, x), x, aabb, ctx.linf, ctx.inverse)
    return g, None, None, None


contract.register_autograd(_contract_bwd, setup_context=_contract_setup)


# ---------------------------------------------------------------------------------------------
# Occupancy grid
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::grid_ema_update", mutates_args=(), device_types=_DEVICES)
def grid_ema_update(occs: Tensor, cell_ids: Tensor, values: Tensor, ema_decay: float) -> Tensor:
    return _ext(occs).grid_ema_update(occs, cell_ids, values, ema_decay)


@grid_ema_update.register_fake
def _(occs, cell_ids, values, ema_decay):
    return torch.empty_like(occs)


# ---------------------------------------------------------------------------------------------
# Hash encoding (CPU kernel; used by nerfaccel_plugin.fields.hash_encoding on CPU tensors)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::hash_encode", mutates_args=(), device_types=("cpu",))
def hash_encode(x: Tensor, table: Tensor, scales: Tensor, table_size: int) -> Tensor:
    return build.get_module("cpp").hash_encode_fwd(x, table, scales, table_size)


@hash_encode.register_fake
def _(x, table, scales, table_size):
    return x.new_empty((x.shape[0], scales.shape[0] * table.shape[1]))


@torch.library.custom_op(f"{_NS}::hash_encode_backward", mutates_args=(), device_types=("cpu",))
def hash_encode_backward(
    grad: Tensor, x: Tensor, table: Tensor, scales: Tensor, table_size: int, need_x_grad: bool
) -> tuple[Tensor, Tensor]:
    return tuple(build.get_module("cpp").hash_encode_bwd(grad, x, table, scales, table_size, need_x_grad))


@hash_encode_backward.register_fake
def _(grad, x, table, scales, table_size, need_x_grad):
    return torch.empty_like(table), x.new_empty(x.shape if need_x_grad else (0,))


def _hash_setup(ctx, inputs, output):
    x, table, scales, table_size = inputs
    ctx.table_size = table_size
    ctx.save_for_backward(x, table, scales)


def _hash_bwd(ctx, grad):
    x, table, scales = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    g_table, g_x = torch.ops.nerfaccel.hash_encode_backward(
        _zeros_if_none(grad, torch.empty((x.shape[0], scales.shape[0] * table.shape[1]), dtype=x.dtype)),
        x, table, scales, ctx.table_size, need_x,
    )  # fmt: skip
    return (g_x if need_x else None), g_table, None, None


hash_encode.register_autograd(_hash_bwd, setup_context=_hash_setup)


def _hash_bwd_bwd(ctx, *grads):
    raise RuntimeError(
        "nerfaccel: second derivatives through the hash-encoding kernel are not implemented; set "
        "NERFACCEL_HASH_KERNEL=0 to use Nerfstudio's torch hash encoding (slower, twice differentiable)."
    )


hash_encode_backward.register_autograd(_hash_bwd_bwd, setup_context=lambda ctx, inputs, output: None)


# ---------------------------------------------------------------------------------------------
# Second order: the backward ops are differentiated through the PyTorch reference
# ---------------------------------------------------------------------------------------------
# Second derivatives are rare in NeRF training (gradient penalties, gradgradcheck), so rather than a
# second set of kernels the backward ops get an autograd formula that recomputes the first-order
# gradient with the reference implementation and differentiates it. Saved forward outputs passed to a
# backward op get no gradient of their own: the recomputation already accounts for them.
def _second_order(fn, diff, cots, hs):
    """With ``u = J(diff)^T cots`` the first-order gradient of ``fn``, returns ``d<hs, u>`` w.r.t. cots and diff."""
    with torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in diff]
        cs = [c.detach().requires_grad_() for c in cots]
        ys = fn(*xs)
        ys = ys if isinstance(ys, tuple) else (ys,)
        pairs = [(y, c) for y, c in zip(ys, cs, strict=True) if y.requires_grad]
        us = torch.autograd.grad([y for y, _ in pairs], xs, [c for _, c in pairs], create_graph=True, allow_unused=True)
        uh = [(u, h) for u, h in zip(us, hs, strict=True) if u is not None and h is not None and u.requires_grad]
        if not uh:
            return [None] * len(cs), [None] * len(xs)
        gs = torch.autograd.grad([u for u, _ in uh], cs + xs, [h for _, h in uh], allow_unused=True)
    return list(gs[: len(cs)]), list(gs[len(cs) :])


def _save_all(ctx, inputs, output):
    ctx.inputs = inputs


def _ref():
    from .. import _torch_impl

    return _torch_impl


_SCAN_NAMES = {
    (False, False): "_inclusive_sum",
    (False, True): "_exclusive_sum",
    (True, False): "_inclusive_prod",
    (True, True): "_exclusive_prod",
}


def _scan_bwd_bwd(ctx, h):
    grad, x, _, packed_info, prod, exclusive = ctx.inputs
    ref = getattr(_ref(), _SCAN_NAMES[(prod, exclusive)])
    (g_grad,), (g_x,) = _second_order(lambda a: ref(a, packed_info), [x], [grad], [h])
    return g_grad, g_x, None, None, None, None


def _density_bwd_bwd(ctx, h0, h1, hs):
    gw, gt, ga, t0, t1, sig, _, _, packed_info, _ = ctx.inputs
    g_cots, g_diff = _second_order(
        lambda a, b, c: _ref()._render_weight_from_density(a, b, c, packed_info),
        [t0, t1, sig],
        [gw, gt, ga],
        [h0, h1, hs],
    )
    return (*g_cots, *g_diff, None, None, None, None)


def _alpha_bwd_bwd(ctx, h):
    gw, gt, alphas, _, packed_info = ctx.inputs
    g_cots, (g_a,) = _second_order(lambda a: _ref()._render_weight_from_alpha(a, packed_info), [alphas], [gw, gt], [h])
    return (*g_cots, g_a, None, None)


def _accumulate_bwd_bwd(ctx, h_w, h_v):
    grad_out, weights, values, ray_indices = ctx.inputs
    n_rays = grad_out.shape[0]
    if values is None:
        (g_out,), (g_w,) = _second_order(
            lambda w: _ref()._accumulate_along_rays(w, None, ray_indices, n_rays), [weights], [grad_out], [h_w]
        )
        return g_out, g_w, None, None
    (g_out,), (g_w, g_v) = _second_order(
        lambda w, v: _ref()._accumulate_along_rays(w, v, ray_indices, n_rays),
        [weights, values],
        [grad_out],
        [h_w, h_v],
    )
    return g_out, g_w, g_v, None


def _contract_bwd_bwd(ctx, h):
    grad, x, aabb, linf, inverse = ctx.inputs
    ref = _ref()._uncontract if inverse else _ref()._contract
    ord_ = "linf" if linf else "l2"
    (g_grad,), (g_x,) = _second_order(lambda a: ref(a, aabb, ord_), [x], [grad], [h])
    return g_grad, g_x, None, None, None


scan_backward.register_autograd(_scan_bwd_bwd, setup_context=_save_all)
render_weight_from_density_backward.register_autograd(_density_bwd_bwd, setup_context=_save_all)
render_weight_from_alpha_backward.register_autograd(_alpha_bwd_bwd, setup_context=_save_all)
accumulate_along_rays_backward.register_autograd(_accumulate_bwd_bwd, setup_context=_save_all)
contract_backward.register_autograd(_contract_bwd_bwd, setup_context=_save_all)


# ---------------------------------------------------------------------------------------------
# Primitive-op backends (the signatures of nerfaccel_plugin._torch_impl)
# ---------------------------------------------------------------------------------------------
_HALF = (torch.float16, torch.bfloat16)


def _f(t: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Contiguous float32/float64 tensor (16-bit floats are upcast to float32)."""
    if dtype is not None:
        t = t.to(dtype)
    elif t.dtype in _HALF or not t.is_floating_point():
        t = t.float()
    return t.contiguous()


def _i(t: Tensor) -> Tensor:
    return t.to(torch.long).contiguous()


def _common(*ts: Tensor) -> torch.dtype:
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in _HALF or not dtype.is_floating_point else dtype


def _ray_aabb_intersect(rays_o, rays_d, aabbs, near_plane, far_plane, miss_value):
    dt = _common(rays_o, rays_d, aabbs)
    return torch.ops.nerfaccel.ray_aabb_intersect(
        _f(rays_o, dt), _f(rays_d, dt), _f(aabbs, dt), float(near_plane), float(far_plane), float(miss_value)
    )


def _traverse_grids(rays_o, rays_d, binaries, aabbs, near_planes, far_planes, step_size, cone_angle):
    dt = _common(rays_o, rays_d)
    return torch.ops.nerfaccel.traverse_grids(
        _f(rays_o, dt),
        _f(rays_d, dt),
        binaries.to(torch.bool).contiguous(),
        _f(aabbs),
        _f(near_planes),
        _f(far_planes),
        float(step_size),
        float(cone_angle),
    )


def _make_scan(prod: bool, exclusive: bool):
    def fn(inputs, packed_info):
        return torch.ops.nerfaccel.scan(_f(inputs), _i(packed_info), prod, exclusive)

    return fn


_inclusive_sum = _make_scan(False, False)
_exclusive_sum = _make_scan(False, True)
_inclusive_prod = _make_scan(True, False)
_exclusive_prod = _make_scan(True, True)


def _render_weight_from_density(t_starts, t_ends, sigmas, packed_info, covers_all=None):
    """``covers_all`` (default: whether ``packed_info`` was marked with :func:`nerfaccel_plugin._backend.mark_covering`)
    lets the CUDA kernels skip the pass for samples outside every chunk."""
    dt = _common(t_starts, t_ends, sigmas)
    if covers_all is None:
        from .. import _backend

        covers_all = _backend.is_marked_covering(packed_info, sigmas.numel())
    return torch.ops.nerfaccel.render_weight_from_density(
        _f(t_starts, dt), _f(t_ends, dt), _f(sigmas, dt), _i(packed_info), bool(covers_all)
    )


def _render_weight_from_alpha(alphas, packed_info):
    return torch.ops.nerfaccel.render_weight_from_alpha(_f(alphas), _i(packed_info))


def _accumulate_along_rays(weights, values, ray_indices, n_rays):
    if values is None:
        return torch.ops.nerfaccel.accumulate_along_rays(_f(weights), None, _i(ray_indices), int(n_rays))
    dt = _common(weights, values)
    return torch.ops.nerfaccel.accumulate_along_rays(_f(weights, dt), _f(values, dt), _i(ray_indices), int(n_rays))


def _searchsorted(sorted_vals, sorted_packed_info, query_vals, query_packed_info):
    dt = _common(sorted_vals, query_vals)
    return torch.ops.nerfaccel.searchsorted(
        _f(sorted_vals, dt), _i(sorted_packed_info), _f(query_vals, dt), _i(query_packed_info)
    )


def _importance_sampling(edge_vals, cdfs, packed_info, n_per_ray, bias, n_uniform=-1):
    dt = _common(edge_vals, cdfs)
    return torch.ops.nerfaccel.importance_sampling(
        _f(edge_vals, dt), _f(cdfs, dt), _i(packed_info), _i(n_per_ray), _f(bias, dt), int(n_uniform)
    )


def _check_ord(ord: str) -> bool:
    if ord not in ("l2", "linf"):
        raise ValueError(f"ord must be 'l2' or 'linf', got {ord!r}")
    return ord == "linf"


def _contract(x, aabb, ord):
    return torch.ops.nerfaccel.contract(_f(x), _f(aabb, _f(x).dtype), _check_ord(ord), False)


def _uncontract(y, aabb, ord):
    return torch.ops.nerfaccel.contract(_f(y), _f(aabb, _f(y).dtype), _check_ord(ord), True)


def _grid_ema_update(occs, cell_ids, values, ema_decay):
    # The CUDA kernels skip out-of-range ids (they never write out of bounds); the range check reads the ids, a
    # host sync, so it runs here with the value checks only (the CPU build always checks, for free).
    from .._validation import value_checks_enabled

    if cell_ids.is_cuda and cell_ids.numel() and value_checks_enabled():
        bad = torch.nonzero((cell_ids < 0) | (cell_ids >= occs.shape[0]))
        if bad.shape[0]:
            i = int(bad[0, 0])
            raise ValueError(f"nerfaccel: cell_ids[{i}] = {int(cell_ids[i])} is outside [0, {occs.shape[0]})")
    return torch.ops.nerfaccel.grid_ema_update(_f(occs), _i(cell_ids), _f(values), float(ema_decay))


PRIMITIVES = {
    "_ray_aabb_intersect": _ray_aabb_intersect,
    "_traverse_grids": _traverse_grids,
    "_inclusive_sum": _inclusive_sum,
    "_exclusive_sum": _exclusive_sum,
    "_inclusive_prod": _inclusive_prod,
    "_exclusive_prod": _exclusive_prod,
    "_render_weight_from_density": _render_weight_from_density,
    "_render_weight_from_alpha": _render_weight_from_alpha,
    "_accumulate_along_rays": _accumulate_along_rays,
    "_searchsorted": _searchsorted,
    "_importance_sampling": _importance_sampling,
    "_contract": _contract,
    "_uncontract": _uncontract,
    "_grid_ema_update": _grid_ema_update,
}

_backends: dict[str, types.SimpleNamespace] = {}


def backend(kind: str) -> types.SimpleNamespace:
    """Namespace of the primitive ops served by extension ``kind`` (``available_ops`` lists them)."""
    ns = _backends.get(kind)
    if ns is None:
        ns = types.SimpleNamespace(kind=kind, available_ops=set(PRIMITIVES), **PRIMITIVES)
        _backends[kind] = ns
    return ns
