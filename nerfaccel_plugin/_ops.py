"""The ``torch.ops.nerfaccel.*`` operators: schemas, fake implementations and autograd, defined once.

Kernels are registered per device with the dispatcher, not here: the C++ CPU build registers its kernels with
``TORCH_LIBRARY_IMPL(nerfaccel, CPU, m)`` and the CUDA build with ``(nerfaccel, CUDA, m)`` (``cuda/csrc/<family>.cpp``)
when :mod:`nerfaccel_plugin._ext` loads them; Python/Triton kernels use
``torch.library.register_kernel("nerfaccel::<op>", "cuda", fn)``. Naming: public op ``x`` (e.g.
``render_weight_from_density``), reference ``_torch_impl._x``, operators ``nerfaccel::x_fwd`` / ``x_bwd`` for
differentiable ops (``nerfaccel::x`` otherwise).

The second half of the module holds the *kernel calls*: functions with the signatures of the reference
primitives in :mod:`nerfaccel_plugin._torch_impl` that prepare the arguments (16-bit floats are upcast to float32,
everything is made contiguous) and call the operator. :data:`KERNEL_CALLS` maps each public op's name to its call
and the operator whose kernel it needs; :func:`nerfaccel_plugin._backend.kernel_for` decides whether to use it.

Backward operators get ``None`` for cotangents that do not exist (``ctx.set_materialize_grads(False)``) and flags
for the input gradients that are needed; a gradient that is not needed comes back as an empty ``(0,)`` tensor.
Second derivatives go through the reference (see :func:`_second_order`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import _layout, _torch_impl

NAMESPACE = "nerfaccel"

# Each schema once; the names are those of the kernels in cuda/csrc/<family>.cpp.
SCHEMAS: dict[str, str] = {
    # grid family
    "ray_aabb_intersect": "(Tensor rays_o, Tensor rays_d, Tensor aabbs, float near_plane, float far_plane, "
    "float miss_value) -> (Tensor, Tensor, Tensor)",
    "traverse_grids": "(Tensor rays_o, Tensor rays_d, Tensor binaries, Tensor aabbs, Tensor near_planes, "
    "Tensor far_planes, float step_size, float cone_angle) -> (Tensor, Tensor, Tensor)",
    "grid_ema_update": "(Tensor occs, Tensor cell_ids, Tensor values, float ema_decay) -> Tensor",
    # lattice points the march evaluates per ray (benchmarks; a kernel in the CPU build only, no reference)
    "traverse_grids_visits": "(Tensor rays_o, Tensor rays_d, Tensor binaries, Tensor aabbs, Tensor near_planes, "
    "Tensor far_planes, float step_size, float cone_angle) -> Tensor",
    # scan family
    "scan_fwd": "(Tensor inputs, Tensor? packed_info, bool prod, bool exclusive) -> Tensor",
    "scan_bwd": "(Tensor grad, Tensor inputs, Tensor outputs, Tensor? packed_info, bool prod, bool exclusive) "
    "-> Tensor",
    # volrend family
    "render_weight_from_density_fwd": "(Tensor t_starts, Tensor t_ends, Tensor sigmas, Tensor? packed_info, "
    "bool covers_all=False) -> (Tensor weights, Tensor trans, Tensor alphas)",
    "render_weight_from_density_bwd": "(Tensor? grad_weights, Tensor? grad_trans, Tensor? grad_alphas, "
    "Tensor t_starts, Tensor t_ends, Tensor sigmas, Tensor trans, Tensor alphas, Tensor? packed_info, "
    "bool covers_all, bool need_t_grads) -> (Tensor g_t_starts, Tensor g_t_ends, Tensor g_sigmas)",
    "render_weight_from_alpha_fwd": "(Tensor alphas, Tensor? packed_info) -> (Tensor weights, Tensor trans)",
    "render_weight_from_alpha_bwd": "(Tensor? grad_weights, Tensor? grad_trans, Tensor alphas, Tensor trans, "
    "Tensor? packed_info) -> Tensor",
    "accumulate_along_rays_fwd": "(Tensor weights, Tensor? values, Tensor ray_indices, int n_rays) -> Tensor",
    "accumulate_along_rays_bwd": "(Tensor grad_out, Tensor weights, Tensor? values, Tensor ray_indices, "
    "bool need_weights_grad, bool need_values_grad) -> (Tensor g_weights, Tensor g_values)",
    # pdf family
    "searchsorted": "(Tensor sorted_vals, Tensor sorted_packed_info, Tensor query_vals, Tensor query_packed_info) "
    "-> (Tensor, Tensor)",
    "importance_sampling": "(Tensor edge_vals, Tensor cdfs, Tensor packed_info, Tensor n_per_ray, Tensor bias, "
    "int n_uniform=-1) -> (Tensor, Tensor, Tensor, Tensor)",
    # contract family
    "contract_fwd": "(Tensor x, Tensor aabb, bool linf, bool inverse) -> Tensor",
    "contract_bwd": "(Tensor grad, Tensor x, Tensor aabb, bool linf, bool inverse) -> Tensor",
    # hash family
    "hash_encode_fwd": "(Tensor x, Tensor table, Tensor scales, int table_size) -> Tensor",
    "hash_encode_bwd": "(Tensor grad, Tensor x, Tensor table, Tensor scales, int table_size, bool need_x_grad) "
    "-> (Tensor g_table, Tensor g_x)",
}

_lib = torch.library.Library(NAMESPACE, "DEF")  # noqa: TOR901 - the operators are defined exactly once, here
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)


def _q(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def _fake(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return torch.library.register_fake(_q(name), lib=_lib)


# ---------------------------------------------------------------------------------------------
# Fake implementations (shapes only; torch.compile and opcheck trace through them)
# ---------------------------------------------------------------------------------------------
@_fake("ray_aabb_intersect")
def _(rays_o, rays_d, aabbs, near_plane, far_plane, miss_value):
    shape = (rays_o.shape[0], aabbs.shape[0])
    return rays_o.new_empty(shape), rays_o.new_empty(shape), rays_o.new_empty(shape, dtype=torch.bool)


@_fake("traverse_grids")
def _(rays_o, rays_d, binaries, aabbs, near_planes, far_planes, step_size, cone_angle):
    n = torch.library.get_ctx().new_dynamic_size()
    return rays_o.new_empty((n,), dtype=torch.long), rays_o.new_empty((n,)), rays_o.new_empty((n,))


@_fake("grid_ema_update")
def _(occs, cell_ids, values, ema_decay):
    return torch.empty_like(occs)


@_fake("traverse_grids_visits")
def _(rays_o, rays_d, binaries, aabbs, near_planes, far_planes, step_size, cone_angle):
    return rays_o.new_empty((rays_o.shape[0],), dtype=torch.long)


@_fake("scan_fwd")
def _(inputs, packed_info, prod, exclusive):
    return torch.empty_like(inputs)


@_fake("scan_bwd")
def _(grad, inputs, outputs, packed_info, prod, exclusive):
    return torch.empty_like(inputs)


@_fake("render_weight_from_density_fwd")
def _(t_starts, t_ends, sigmas, packed_info, covers_all=False):
    return torch.empty_like(sigmas), torch.empty_like(sigmas), torch.empty_like(sigmas)


@_fake("render_weight_from_density_bwd")
def _(gw, gt, ga, t_starts, t_ends, sigmas, trans, alphas, packed_info, covers_all, need_t_grads):
    g_t = (lambda: torch.empty_like(sigmas)) if need_t_grads else (lambda: sigmas.new_empty((0,)))
    return g_t(), g_t(), torch.empty_like(sigmas)


@_fake("render_weight_from_alpha_fwd")
def _(alphas, packed_info):
    return torch.empty_like(alphas), torch.empty_like(alphas)


@_fake("render_weight_from_alpha_bwd")
def _(gw, gt, alphas, trans, packed_info):
    return torch.empty_like(alphas)


@_fake("accumulate_along_rays_fwd")
def _(weights, values, ray_indices, n_rays):
    return weights.new_empty((n_rays, 1 if values is None else values.shape[1]))


@_fake("accumulate_along_rays_bwd")
def _(grad_out, weights, values, ray_indices, need_weights_grad, need_values_grad):
    g_w = torch.empty_like(weights) if need_weights_grad else weights.new_empty((0,))
    g_v = torch.empty_like(values) if values is not None and need_values_grad else weights.new_empty((0,))
    return g_w, g_v


@_fake("searchsorted")
def _(sorted_vals, sorted_packed_info, query_vals, query_packed_info):
    return torch.empty_like(query_vals, dtype=torch.long), torch.empty_like(query_vals, dtype=torch.long)


@_fake("importance_sampling")
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


@_fake("contract_fwd")
def _(x, aabb, linf, inverse):
    return torch.empty_like(x)


@_fake("contract_bwd")
def _(grad, x, aabb, linf, inverse):
    return torch.empty_like(x)


@_fake("hash_encode_fwd")
def _(x, table, scales, table_size):
    return x.new_empty((x.shape[0], scales.shape[0] * table.shape[1]))


@_fake("hash_encode_bwd")
def _(grad, x, table, scales, table_size, need_x_grad):
    return torch.empty_like(table), x.new_empty(x.shape if need_x_grad else (0,))


# ---------------------------------------------------------------------------------------------
# Autograd (first order: the *_bwd operators; cotangents that do not exist stay None)
# ---------------------------------------------------------------------------------------------
def _autograd(name: str, setup: Callable[..., None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(backward: Callable[..., Any]) -> Callable[..., Any]:
        def setup_context(ctx, inputs, output):
            ctx.set_materialize_grads(False)
            setup(ctx, inputs, output)

        torch.library.register_autograd(_q(name), backward, setup_context=setup_context, lib=_lib)
        return backward

    return register


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _scan_setup(ctx, inputs, output):
    x, packed_info, prod, exclusive = inputs
    ctx.prod, ctx.exclusive = prod, exclusive
    ctx.save_for_backward(x, output, packed_info)


@_autograd("scan_fwd", _scan_setup)
def _scan_bwd(ctx, grad):
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    x, y, packed_info = ctx.saved_tensors
    return torch.ops.nerfaccel.scan_bwd(grad.contiguous(), x, y, packed_info, ctx.prod, ctx.exclusive), None, None, None


def _density_setup(ctx, inputs, output):
    t_starts, t_ends, sigmas, packed_info = inputs[:4]
    _, trans, alphas = output
    ctx.covers_all = bool(inputs[4]) if len(inputs) > 4 else False
    ctx.save_for_backward(t_starts, t_ends, sigmas, trans, alphas, packed_info)


@_autograd("render_weight_from_density_fwd", _density_setup)
def _density_bwd(ctx, g_w, g_t, g_a):
    need = ctx.needs_input_grad
    if (g_w is None and g_t is None and g_a is None) or not any(need[:3]):
        return None, None, None, None, None
    t_starts, t_ends, sigmas, trans, alphas, packed_info = ctx.saved_tensors
    need_t = bool(need[0] or need[1])
    g0, g1, gs = torch.ops.nerfaccel.render_weight_from_density_bwd(
        _c(g_w), _c(g_t), _c(g_a), t_starts, t_ends, sigmas, trans, alphas, packed_info, ctx.covers_all, need_t
    )
    return (g0 if need[0] else None), (g1 if need[1] else None), (gs if need[2] else None), None, None


def _alpha_setup(ctx, inputs, output):
    alphas, packed_info = inputs
    ctx.save_for_backward(alphas, output[1], packed_info)


@_autograd("render_weight_from_alpha_fwd", _alpha_setup)
def _alpha_bwd(ctx, g_w, g_t):
    if (g_w is None and g_t is None) or not ctx.needs_input_grad[0]:
        return None, None
    alphas, trans, packed_info = ctx.saved_tensors
    return torch.ops.nerfaccel.render_weight_from_alpha_bwd(_c(g_w), _c(g_t), alphas, trans, packed_info), None


def _accumulate_setup(ctx, inputs, output):
    weights, values, ray_indices, _ = inputs
    ctx.save_for_backward(weights, values, ray_indices)


@_autograd("accumulate_along_rays_fwd", _accumulate_setup)
def _accumulate_bwd(ctx, grad):
    weights, values, ray_indices = ctx.saved_tensors
    need_w = bool(ctx.needs_input_grad[0])
    need_v = bool(ctx.needs_input_grad[1]) and values is not None
    if grad is None or not (need_w or need_v):
        return None, None, None, None
    g_w, g_v = torch.ops.nerfaccel.accumulate_along_rays_bwd(
        grad.contiguous(), weights, values, ray_indices, need_w, need_v
    )
    return (g_w if need_w else None), (g_v if need_v else None), None, None


def _contract_setup(ctx, inputs, output):
    x, aabb, linf, inverse = inputs
    ctx.linf, ctx.inverse = linf, inverse
    ctx.save_for_backward(x, aabb)


@_autograd("contract_fwd", _contract_setup)
def _contract_bwd(ctx, grad):
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    x, aabb = ctx.saved_tensors
    return torch.ops.nerfaccel.contract_bwd(grad.contiguous(), x, aabb, ctx.linf, ctx.inverse), None, None, None


def _hash_setup(ctx, inputs, output):
    x, table, scales, table_size = inputs
    ctx.table_size = table_size
    ctx.save_for_backward(x, table, scales)


@_autograd("hash_encode_fwd", _hash_setup)
def _hash_bwd(ctx, grad):
    need_x, need_table = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    if grad is None or not (need_x or need_table):
        return None, None, None, None
    x, table, scales = ctx.saved_tensors
    g_table, g_x = torch.ops.nerfaccel.hash_encode_bwd(grad.contiguous(), x, table, scales, ctx.table_size, need_x)
    return (g_x if need_x else None), (g_table if need_table else None), None, None


# ---------------------------------------------------------------------------------------------
# Second order: the backward operators are differentiated through the PyTorch reference
# ---------------------------------------------------------------------------------------------
# Second derivatives are rare in NeRF training (gradient penalties, gradgradcheck), so rather than a second set of
# kernels the backward operators get an autograd formula that recomputes the first-order gradient with the
# reference and differentiates it. Saved forward outputs passed to a backward operator get no gradient of their
# own: the recomputation already accounts for them.
def _second_order(fn, diff, cots, hs):
    """With ``u = J(diff)^T cots`` the first-order gradient of ``fn``, returns ``d<hs, u>`` w.r.t. cots and diff.

    ``None`` cotangents (outputs without a gradient) and ``None`` or empty ``hs`` (gradients not computed) are
    skipped; their results are ``None``.
    """
    with torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in diff]
        cs = [None if c is None else c.detach().requires_grad_() for c in cots]
        ys = fn(*xs)
        ys = ys if isinstance(ys, tuple) else (ys,)
        pairs = [(y, c) for y, c in zip(ys, cs, strict=True) if c is not None and y.requires_grad]
        if not pairs:
            return [None] * len(cs), [None] * len(xs)
        us = torch.autograd.grad([y for y, _ in pairs], xs, [c for _, c in pairs], create_graph=True, allow_unused=True)
        uh = [
            (u, h)
            for u, h in zip(us, hs, strict=True)
            if u is not None and h is not None and u.requires_grad and h.shape == u.shape
        ]
        if not uh:
            return [None] * len(cs), [None] * len(xs)
        live = [c for c in cs if c is not None]
        gs = iter(torch.autograd.grad([u for u, _ in uh], live + xs, [h for _, h in uh], allow_unused=True))
        g_cots = [None if c is None else next(gs) for c in cs]
    return g_cots, list(gs)


def _save_all(ctx, inputs, output):
    ctx.inputs = inputs


_SCAN_REFS = {
    (False, False): _torch_impl._inclusive_sum,
    (False, True): _torch_impl._exclusive_sum,
    (True, False): _torch_impl._inclusive_prod,
    (True, True): _torch_impl._exclusive_prod,
}


@_autograd("scan_bwd", _save_all)
def _scan_bwd_bwd(ctx, h):
    grad, x, _, packed_info, prod, exclusive = ctx.inputs
    ref = _SCAN_REFS[(prod, exclusive)]
    (g_grad,), (g_x,) = _second_order(lambda a: ref(a, packed_info), [x], [grad], [h])
    return g_grad, g_x, None, None, None, None


@_autograd("render_weight_from_density_bwd", _save_all)
def _density_bwd_bwd(ctx, h0, h1, hs):
    gw, gt, ga, t0, t1, sig, _, _, packed_info, _, _ = ctx.inputs
    g_cots, g_diff = _second_order(
        lambda a, b, c: _torch_impl._render_weight_from_density(a, b, c, packed_info),
        [t0, t1, sig],
        [gw, gt, ga],
        [h0, h1, hs],
    )
    return (*g_cots, *g_diff, None, None, None, None, None)


@_autograd("render_weight_from_alpha_bwd", _save_all)
def _alpha_bwd_bwd(ctx, h):
    gw, gt, alphas, _, packed_info = ctx.inputs
    g_cots, (g_a,) = _second_order(
        lambda a: _torch_impl._render_weight_from_alpha(a, packed_info), [alphas], [gw, gt], [h]
    )
    return (*g_cots, g_a, None, None)


@_autograd("accumulate_along_rays_bwd", _save_all)
def _accumulate_bwd_bwd(ctx, h_w, h_v):
    grad_out, weights, values, ray_indices, _, _ = ctx.inputs
    n_rays = grad_out.shape[0]
    if values is None:
        (g_out,), (g_w,) = _second_order(
            lambda w: _torch_impl._accumulate_along_rays(w, None, ray_indices, n_rays), [weights], [grad_out], [h_w]
        )
        return g_out, g_w, None, None, None, None
    (g_out,), (g_w, g_v) = _second_order(
        lambda w, v: _torch_impl._accumulate_along_rays(w, v, ray_indices, n_rays),
        [weights, values],
        [grad_out],
        [h_w, h_v],
    )
    return g_out, g_w, g_v, None, None, None


@_autograd("contract_bwd", _save_all)
def _contract_bwd_bwd(ctx, h):
    grad, x, aabb, linf, inverse = ctx.inputs
    ref = _torch_impl._uncontract if inverse else _torch_impl._contract
    ord_ = "linf" if linf else "l2"
    (g_grad,), (g_x,) = _second_order(lambda a: ref(a, aabb, ord_), [x], [grad], [h])
    return g_grad, g_x, None, None, None


@_autograd("hash_encode_bwd", _save_all)
def _hash_bwd_bwd(ctx, *grads):
    raise RuntimeError(
        "nerfaccel: second derivatives through the hash-encoding kernel are not implemented; set "
        "NERFACCEL_HASH_KERNEL=0 to use Nerfstudio's torch hash encoding (slower, twice differentiable)."
    )


# ---------------------------------------------------------------------------------------------
# Kernel calls: the reference primitives' signatures, arguments prepared, the operator called
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelCall:
    """How public op ``name`` calls its kernel.

    Attributes:
        name: Public op name (``_torch_impl._<name>`` is its reference, when there is one).
        op: The operator whose kernel must be registered for the tensors' device (``nerfaccel::<op>``).
        fn: The call, with the reference's signature.
    """

    name: str
    op: str
    fn: Callable[..., Any]


KERNEL_CALLS: dict[str, KernelCall] = {}


def _call(op: str, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or fn.__name__.lstrip("_")
        KERNEL_CALLS[key] = KernelCall(key, op, fn)
        return fn

    return register


_HALF = (torch.float16, torch.bfloat16)


def _f(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Contiguous float32/float64 tensor (16-bit floats are upcast to float32)."""
    if dtype is not None:
        t = t.to(dtype)
    elif t.dtype in _HALF or not t.is_floating_point():
        t = t.float()
    return t.contiguous()


def _i(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.long).contiguous()


def _common(*ts: Tensor) -> torch.dtype:
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in _HALF or not dtype.is_floating_point else dtype


@_call("ray_aabb_intersect")
def _ray_aabb_intersect(rays_o, rays_d, aabbs, near_plane, far_plane, miss_value):
    dt = _common(rays_o, rays_d, aabbs)
    return torch.ops.nerfaccel.ray_aabb_intersect(
        _f(rays_o, dt), _f(rays_d, dt), _f(aabbs, dt), float(near_plane), float(far_plane), float(miss_value)
    )


@_call("traverse_grids")
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


def _scan_call(name: str, prod: bool, exclusive: bool) -> Callable[..., Tensor]:
    def fn(inputs, packed_info):
        return torch.ops.nerfaccel.scan_fwd(_f(inputs), _i(packed_info), prod, exclusive)

    fn.__name__ = fn.__qualname__ = f"_{name}"
    return _call("scan_fwd", name)(fn)


_inclusive_sum = _scan_call("inclusive_sum", False, False)
_exclusive_sum = _scan_call("exclusive_sum", False, True)
_inclusive_prod = _scan_call("inclusive_prod", True, False)
_exclusive_prod = _scan_call("exclusive_prod", True, True)


@_call("render_weight_from_density_fwd")
def _render_weight_from_density(t_starts, t_ends, sigmas, packed_info, covers_all=None):
    """``covers_all`` (default: batched, or ``packed_info`` marked by :func:`nerfaccel_plugin._layout.mark_covering`)
    lets device kernels skip the pass for samples outside every chunk."""
    dt = _common(t_starts, t_ends, sigmas)
    if covers_all is None:
        covers_all = packed_info is None or _layout.is_marked_covering(packed_info, sigmas.numel())
    return torch.ops.nerfaccel.render_weight_from_density_fwd(
        _f(t_starts, dt), _f(t_ends, dt), _f(sigmas, dt), _i(packed_info), bool(covers_all)
    )


@_call("render_weight_from_alpha_fwd")
def _render_weight_from_alpha(alphas, packed_info):
    return torch.ops.nerfaccel.render_weight_from_alpha_fwd(_f(alphas), _i(packed_info))


@_call("accumulate_along_rays_fwd")
def _accumulate_along_rays(weights, values, ray_indices, n_rays):
    if values is None:
        return torch.ops.nerfaccel.accumulate_along_rays_fwd(_f(weights), None, _i(ray_indices), int(n_rays))
    dt = _common(weights, values)
    return torch.ops.nerfaccel.accumulate_along_rays_fwd(_f(weights, dt), _f(values, dt), _i(ray_indices), int(n_rays))


@_call("searchsorted")
def _searchsorted(sorted_vals, sorted_packed_info, query_vals, query_packed_info):
    dt = _common(sorted_vals, query_vals)
    return torch.ops.nerfaccel.searchsorted(
        _f(sorted_vals, dt), _i(sorted_packed_info), _f(query_vals, dt), _i(query_packed_info)
    )


@_call("importance_sampling")
def _importance_sampling(edge_vals, cdfs, packed_info, n_per_ray, bias, n_uniform=-1):
    dt = _common(edge_vals, cdfs)
    return torch.ops.nerfaccel.importance_sampling(
        _f(edge_vals, dt), _f(cdfs, dt), _i(packed_info), _i(n_per_ray), _f(bias, dt), int(n_uniform)
    )


def _check_ord(ord: str) -> bool:
    if ord not in ("l2", "linf"):
        raise ValueError(f"ord must be 'l2' or 'linf', got {ord!r}")
    return ord == "linf"


@_call("contract_fwd")
def _contract(x, aabb, ord):
    x = _f(x)
    return torch.ops.nerfaccel.contract_fwd(x, _f(aabb, x.dtype), _check_ord(ord), False)


@_call("contract_fwd")
def _uncontract(y, aabb, ord):
    y = _f(y)
    return torch.ops.nerfaccel.contract_fwd(y, _f(aabb, y.dtype), _check_ord(ord), True)


@_call("grid_ema_update")
def _grid_ema_update(occs, cell_ids, values, ema_decay):
    # The CUDA kernels skip out-of-range ids (they never write out of bounds); the range check reads the ids, a
    # host sync, so it runs here with the value checks only (the CPU kernel always checks, for free).
    from ._validation import value_checks_enabled

    if cell_ids.is_cuda and cell_ids.numel() and value_checks_enabled():
        bad = torch.nonzero((cell_ids < 0) | (cell_ids >= occs.shape[0]))
        if bad.shape[0]:
            i = int(bad[0, 0])
            raise ValueError(f"nerfaccel: cell_ids[{i}] = {int(cell_ids[i])} is outside [0, {occs.shape[0]})")
    return torch.ops.nerfaccel.grid_ema_update(_f(occs), _i(cell_ids), _f(values), float(ema_decay))


@_call("hash_encode_fwd")
def _hash_encode(x, table, scales, table_size):
    """Hash encoding (no reference in _torch_impl: Nerfstudio's torch ``HashEncoding`` is the reference)."""
    return torch.ops.nerfaccel.hash_encode_fwd(x.contiguous(), table.contiguous(), scales.contiguous(), int(table_size))
