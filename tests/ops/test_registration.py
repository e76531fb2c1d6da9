"""Operator registration across families: schemas vs kernels (opcheck), torch.compile, gradcheck and double
backward through the registered operators, and how a public op chooses its implementation (_backend.kernel_for).
"""

from __future__ import annotations

import pytest
import torch
from ops_helpers import close, packed

import nerfaccel_plugin as nacc
from nerfaccel_plugin import _backend, _ops, _torch_impl


def _rays(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    o = (torch.rand(n, 3) * 4 - 2).to(device)
    d = torch.randn(n, 3)
    return o, (d / d.norm(dim=-1, keepdim=True)).to(device)


def _opcheck_cases(device: str = "cpu"):
    info, n = packed([3, 0, 1, 6], True, device)
    x = torch.rand(n, device=device, requires_grad=True)
    t0 = torch.rand(n, device=device)
    t1 = t0 + torch.rand(n, device=device)
    ri = torch.randint(0, 4, (n,), device=device)
    o, d = _rays(16, device)
    binaries = torch.rand(2, 8, 8, 8, device=device) > 0.5
    aabbs2 = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [-2.0, -2, -2, 2, 2, 2]], device=device)
    spi, n_s = packed([2, 3, 0, 4], False, device)
    sv = torch.rand(n_s, device=device).cumsum(0)
    qpi, n_q = packed([1, 3, 2, 0], False, device)
    cdfs = torch.rand(n_s, device=device)
    tiled, n_tiled = packed([4, 0, 2, 5], False, device)  # chunks that tile the samples: covers_all may be set
    t0_tiled = torch.rand(n_tiled, device=device)
    box = torch.tensor([-1.0, -1, -1, 1, 1, 1], device=device)
    rows = torch.rand(5, 7, device=device, requires_grad=True)  # batched (n_rays, n): packed_info None
    ops = torch.ops.nerfaccel

    def dev(*shape, fn=torch.rand, **kwargs):
        return fn(*shape, device=device, **kwargs)

    _, trans, alphas = ops.render_weight_from_density_fwd(t0, t1, x.detach(), info)
    g = [dev(n, fn=torch.randn, requires_grad=True) for _ in range(3)]
    return {
        "ray_aabb_intersect": (ops.ray_aabb_intersect, (o, d, aabbs2, 0.0, 1e10, 1e10)),
        "traverse_grids": (
            ops.traverse_grids,
            (o, d, binaries, aabbs2, dev(16, fn=torch.zeros), torch.full((16,), 1e10, device=device), 0.05, 0.0),
        ),
        "grid_ema_update": (ops.grid_ema_update, (dev(64), torch.randint(0, 64, (30,), device=device), dev(30), 0.9)),
        "scan_fwd": (ops.scan_fwd, (x, info, True, True)),
        "scan_fwd_sum": (ops.scan_fwd, (x, info, False, False)),
        "scan_fwd_batched": (ops.scan_fwd, (rows, None, False, True)),
        "render_weight_from_density_fwd": (ops.render_weight_from_density_fwd, (t0, t1.requires_grad_(), x, info)),
        "render_weight_from_density_fwd_covers_all": (
            ops.render_weight_from_density_fwd,
            (t0_tiled, t0_tiled + 0.5, dev(n_tiled, requires_grad=True), tiled, True),
        ),
        "render_weight_from_density_fwd_batched": (
            ops.render_weight_from_density_fwd,
            (rows.detach(), rows.detach() + 0.5, rows, None, True),
        ),
        "render_weight_from_alpha_fwd": (ops.render_weight_from_alpha_fwd, (x * 0.5, info)),
        "render_weight_from_alpha_fwd_batched": (ops.render_weight_from_alpha_fwd, (rows * 0.5, None)),
        "accumulate_along_rays_fwd": (ops.accumulate_along_rays_fwd, (x, dev(n, 3, requires_grad=True), ri, 4)),
        "accumulate_along_rays_fwd_none": (ops.accumulate_along_rays_fwd, (x, None, ri, 4)),
        "searchsorted": (ops.searchsorted, (sv, spi, dev(n_q) * 4, qpi)),
        "importance_sampling": (
            ops.importance_sampling,
            (sv, cdfs, spi, torch.tensor([2, 0, 1, 3], device=device), torch.full((4,), 0.5, device=device)),
        ),
        "importance_sampling_uniform": (  # batched layout: every ray has edges, sizes known on the host
            ops.importance_sampling,
            (sv, cdfs, spi[[0, 1, 3]], torch.full((3,), 2, device=device), torch.full((3,), 0.5, device=device), 2),
        ),
        "traverse_grids_visits": (
            ops.traverse_grids_visits,
            (o, d, binaries, aabbs2, dev(16, fn=torch.zeros), torch.full((16,), 1e10, device=device), 0.05, 0.0),
        ),
        "contract_fwd": (ops.contract_fwd, (dev(20, 3, fn=torch.randn, requires_grad=True), box, False, False)),
        "contract_fwd_inverse": (ops.contract_fwd, ((dev(20, 3) * 0.8 + 0.1).requires_grad_(), box, True, True)),
        # the backward operators are registered too (double backward goes through them)
        "scan_bwd": (
            ops.scan_bwd,
            (dev(n, fn=torch.randn, requires_grad=True), x.detach(), x.detach().cumprod(0), info, True, True),
        ),
        "render_weight_from_density_bwd": (
            ops.render_weight_from_density_bwd,
            (*g, t0, t1.detach(), x.detach(), trans, alphas, info, False, True),
        ),
        "render_weight_from_density_bwd_partial": (
            ops.render_weight_from_density_bwd,
            (g[0], None, None, t0, t1.detach(), x.detach(), trans, alphas, info, False, False),
        ),
        "render_weight_from_alpha_bwd": (
            ops.render_weight_from_alpha_bwd,
            (g[0], dev(n, fn=torch.randn), x.detach() * 0.5, trans, info),
        ),
        "render_weight_from_alpha_bwd_partial": (
            ops.render_weight_from_alpha_bwd,
            (g[0], None, x.detach() * 0.5, trans, info),
        ),
        "accumulate_along_rays_bwd": (
            ops.accumulate_along_rays_bwd,
            (dev(4, 3, fn=torch.randn, requires_grad=True), x.detach(), dev(n, 3), ri, True, True),
        ),
        "accumulate_along_rays_bwd_partial": (
            ops.accumulate_along_rays_bwd,
            (dev(4, 3, fn=torch.randn, requires_grad=True), x.detach(), dev(n, 3), ri, False, True),
        ),
        "contract_bwd": (
            ops.contract_bwd,
            (dev(20, 3, fn=torch.randn, requires_grad=True), dev(20, 3, fn=torch.randn), box, False, False),
        ),
    }


CASES = [
    "ray_aabb_intersect",
    "traverse_grids",
    "grid_ema_update",
    "scan_fwd",
    "scan_fwd_sum",
    "scan_fwd_batched",
    "render_weight_from_density_fwd",
    "render_weight_from_density_fwd_covers_all",
    "render_weight_from_density_fwd_batched",
    "render_weight_from_alpha_fwd",
    "render_weight_from_alpha_fwd_batched",
    "accumulate_along_rays_fwd",
    "accumulate_along_rays_fwd_none",
    "searchsorted",
    "importance_sampling",
    "importance_sampling_uniform",
    "traverse_grids_visits",
    "contract_fwd",
    "contract_fwd_inverse",
    "scan_bwd",
    "render_weight_from_density_bwd",
    "render_weight_from_density_bwd_partial",
    "render_weight_from_alpha_bwd",
    "render_weight_from_alpha_bwd_partial",
    "accumulate_along_rays_bwd",
    "accumulate_along_rays_bwd_partial",
    "contract_bwd",
]
# Second derivatives of the packed-ray ops recompute the first-order gradient with the PyTorch reference, whose
# packed layouts are data-dependent: they run eagerly and cannot be traced with dynamic shapes.
EAGER_DOUBLE_BACKWARD = ("scan_bwd", "render_weight_from_density_bwd", "render_weight_from_alpha_bwd")


@pytest.mark.parametrize("case", CASES)
def test_opcheck(K, case):  # noqa: N803
    kernels, device = K
    op, args = _opcheck_cases(device)[case]
    name = op._qualified_op_name.split("::")[1]
    call = next((c for c in _ops.KERNEL_CALLS.values() if c.op in (name, name.replace("_bwd", "_fwd"))), None)
    if call is not None:
        getattr(kernels, "_" + call.name)  # skips when this backend has no kernel for the family
    elif kernels.name != "cpp":
        pytest.skip(f"{name}: a kernel of the C++ CPU build only")
    if case.startswith(EAGER_DOUBLE_BACKWARD):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    else:
        torch.library.opcheck(op, args)


def test_torch_compile_smoke(K):  # noqa: N803
    """torch.compile (aot_eager: no C++ codegen needed) traces through the ops, forward and backward."""
    kernels, device = K
    kernels._render_weight_from_density, kernels._accumulate_along_rays  # noqa: B018 - skip without kernels
    info, n = packed([5, 0, 3, 7], False, device)
    ri = torch.repeat_interleave(torch.arange(4, device=device), info[:, 1])

    def render(t0, t1, sigmas, rgb):
        w, _, _ = torch.ops.nerfaccel.render_weight_from_density_fwd(t0, t1, sigmas, info, True)
        return torch.ops.nerfaccel.accumulate_along_rays_fwd(w, rgb, ri, 4)

    t0 = torch.rand(n, device=device)
    t1 = t0 + 0.1
    sigmas = torch.rand(n, device=device, requires_grad=True)
    rgb = torch.rand(n, 3, device=device, requires_grad=True)
    compiled = torch.compile(render, backend="aot_eager", fullgraph=True)
    out = compiled(t0, t1, sigmas, rgb)
    cot = torch.randn_like(out)
    grads = torch.autograd.grad(out, (sigmas, rgb), cot)
    ref = render(t0, t1, sigmas, rgb)
    ref_grads = torch.autograd.grad(ref, (sigmas, rgb), cot)
    close(out.detach(), ref.detach())
    for g, r in zip(grads, ref_grads, strict=True):
        assert float(r.abs().sum()) > 0
        close(g, r)


def test_gradcheck_and_double_backward(K):  # noqa: N803
    """Through the registered operators (second order goes through the reference)."""
    ext, device = K
    info, n = packed([3, 0, 1, 6], True, device)
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x = torch.rand(n, **f64)
    for name in ["_inclusive_sum", "_exclusive_sum", "_inclusive_prod", "_exclusive_prod"]:
        assert torch.autograd.gradcheck(lambda a, name=name: getattr(ext, name)(a, info), (x,))
    xz = x.detach().clone()
    xz[[1, 6]] = 0.0
    assert torch.autograd.gradcheck(lambda a: ext._exclusive_prod(a, info), (xz.requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda a: ext._exclusive_prod(a, info), (x,))
    t0 = torch.rand(n, dtype=torch.float64, device=device)
    t1 = (t0 + torch.rand(n, dtype=torch.float64, device=device)).requires_grad_()
    sig = torch.rand(n, **f64)
    density = lambda a, b, c: ext._render_weight_from_density(a, b, c, info)  # noqa: E731
    assert torch.autograd.gradcheck(density, (t0.requires_grad_(), t1, sig))
    assert torch.autograd.gradgradcheck(lambda b, c: density(t0.detach(), b, c), (t1, sig))
    assert torch.autograd.gradcheck(lambda a: ext._render_weight_from_alpha(a, info), (x * 0.9,))
    assert torch.autograd.gradgradcheck(lambda a: ext._render_weight_from_alpha(a, info), (x * 0.5,))
    rows = torch.rand(3, 4, **f64)
    assert torch.autograd.gradgradcheck(lambda a: ext._render_weight_from_alpha(a, None), (rows * 0.5,))
    assert torch.autograd.gradgradcheck(lambda a: ext._inclusive_prod(a, None), (rows,))
    assert torch.autograd.gradgradcheck(lambda c: ext._render_weight_from_density(rows.detach(), rows.detach() + 1,
                                                                                   c, None), (rows,))  # fmt: skip
    ri = torch.randint(0, 4, (n,), device=device)
    vals = torch.rand(n, 2, **f64)
    assert torch.autograd.gradcheck(lambda w, v: ext._accumulate_along_rays(w, v, ri, 4), (x, vals))
    assert torch.autograd.gradgradcheck(lambda w, v: ext._accumulate_along_rays(w, v, ri, 4), (x, vals))
    assert torch.autograd.gradgradcheck(lambda w: ext._accumulate_along_rays(w, None, ri, 4), (x,))


def test_gradcheck_geometry(K):  # noqa: N803
    ext, device = K
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1], dtype=torch.float64, device=device)
    pts = (torch.randn(50, 3, dtype=torch.float64, device=device) * 2).requires_grad_()
    ys = (torch.rand(50, 3, dtype=torch.float64, device=device) * 0.8 + 0.1).requires_grad_()
    for ord in ["l2", "linf"]:
        assert torch.autograd.gradcheck(lambda a, ord=ord: ext._contract(a, aabb, ord), (pts,))
        assert torch.autograd.gradcheck(lambda a, ord=ord: ext._uncontract(a, aabb, ord), (ys,))
    assert torch.autograd.gradgradcheck(lambda a: ext._contract(a, aabb, "l2"), (pts[:10],))


# ------------------------------------------------------------------------------------------
# Choosing the implementation
# ------------------------------------------------------------------------------------------
def test_every_public_op_has_a_reference_and_an_operator():
    """One name per op: KERNEL_CALLS[x] calls nerfaccel::<op> (defined in _ops.SCHEMAS) and _torch_impl._x exists
    (hash_encode's reference is Nerfstudio's torch HashEncoding); every reference primitive has a kernel call."""
    for name, call in _ops.KERNEL_CALLS.items():
        assert call.op in _ops.SCHEMAS, name
        assert name == "hash_encode" or hasattr(_torch_impl, "_" + name), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"nerfaccel::{call.op}", "Meta") or call.op
    assert {n.lstrip("_") for n in _torch_impl.__all__} <= set(_ops.KERNEL_CALLS)


def test_kernel_for_asks_the_dispatcher(cpp, monkeypatch, reset_backend):
    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    assert _backend.kernel_for("inclusive_sum", "cpu") is _ops.KERNEL_CALLS["inclusive_sum"].fn
    assert _backend.op("_inclusive_sum", "cpu") is _ops._inclusive_sum
    assert _backend.kernel_for("exclusive_sum", "meta") is None
    assert _backend.op("exclusive_sum", "meta") is _torch_impl._exclusive_sum
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, device_type: op == "scan_fwd")
    assert _backend.op("render_weight_from_alpha", "cpu") is _torch_impl._render_weight_from_alpha
    monkeypatch.setenv("NERFACCEL_BACKEND", "cpp")
    with pytest.raises(_backend.BackendError, match=r"no cpu kernel for 'render_weight_from_alpha'"):
        _backend.op("render_weight_from_alpha", "cpu")
    with pytest.raises(ValueError, match="no op named"):
        _backend.kernel_for("no_such_op", "cpu")


def test_disabled_device_uses_the_reference(cpp, monkeypatch, reset_backend):
    """The hook of the first-use self-test: a disabled device type's ops run the reference (forced: an error)."""
    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    monkeypatch.setitem(_backend.disabled, "cpu", "self-test failed in this test")
    assert _backend.op("inclusive_sum", "cpu") is _torch_impl._inclusive_sum
    info = nacc.backend_info()["cpu"]
    assert info["backend"] == "torch" and "self-test failed" in info["reason"]
    monkeypatch.setenv("NERFACCEL_BACKEND", "cpp")
    with pytest.raises(_backend.BackendError, match="switched off: self-test failed"):
        _backend.op("inclusive_sum", "cpu")


def test_backend_info_counts_ops_with_kernels(cpp, monkeypatch, reset_backend):
    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    info = nacc.backend_info()["cpu"]
    assert info["backend"] == "cpp"
    n = len(_ops.KERNEL_CALLS)
    assert info["ops"] == f"{n}/{n} ops with kernels"
