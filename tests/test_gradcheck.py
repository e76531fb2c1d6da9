"""``torch.autograd.gradcheck`` (float64) of every differentiable public op.

Small packed layouts with empty rays mixed in (first, middle and last). Inputs avoid the points
where an op is not differentiable (the contraction's kink at ``|z| = 1``, ties of the L-inf norm,
the clamp of ``uncontract`` at the outer shell).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import nerfaccel_plugin as nacc

# Every test once on the PyTorch reference and once on the C++ build (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("semantic_backend")

F64 = torch.float64
COUNTS = [0, 2, 3, 0, 1, 4, 0]  # empty rays first, in the middle and last; a single-sample ray
N = sum(COUNTS)


def layout(counts=COUNTS) -> tuple[torch.Tensor, torch.Tensor]:
    info, ids, start = [], [], 0
    for r, c in enumerate(counts):
        info.append([start, c])
        ids.extend([r] * c)
        start += c
    return torch.tensor(info, dtype=torch.long).reshape(-1, 2), torch.tensor(ids, dtype=torch.long)


INFO, IDS = layout()


def rand(*shape, lo=0.0, hi=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=F64)).requires_grad_()


def sorted_intervals(counts=COUNTS, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping, well-separated intervals per ray (strictly increasing midpoints)."""
    g = torch.Generator().manual_seed(seed)
    starts, ends = [], []
    for c in counts:
        t = 0.1
        for _ in range(c):
            t += 0.05 + 0.2 * float(torch.rand(1, generator=g, dtype=F64))
            dt = 0.05 + 0.3 * float(torch.rand(1, generator=g, dtype=F64))
            starts.append(t)
            ends.append(t + dt)
            t += dt
    return (
        torch.tensor(starts, dtype=F64).requires_grad_(),
        torch.tensor(ends, dtype=F64).requires_grad_(),
    )


# ---------------------------------------------------------------------------------------------
# Scans
# ---------------------------------------------------------------------------------------------
SCANS = ["inclusive_sum", "exclusive_sum", "inclusive_prod", "exclusive_prod"]


@pytest.mark.parametrize("name", SCANS)
def test_scans_packed(name):
    fn = getattr(nacc, name)
    x = rand(N, lo=0.5, hi=1.5)
    assert gradcheck(lambda v: fn(v, INFO), (x,))
    assert gradgradcheck(lambda v: fn(v, INFO), (x,))
    assert gradcheck(lambda v: fn(v, indices=IDS), (x,))


@pytest.mark.parametrize("name", SCANS)
def test_scans_batched(name):
    fn = getattr(nacc, name)
    for shape in [(3, 4), (2, 1), (1, 5)]:
        x = rand(*shape, lo=0.5, hi=1.5, seed=1)
        assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (rand(2, 3, lo=0.5, hi=1.5),))


@pytest.mark.parametrize("name", SCANS)
def test_scans_packed_with_gaps(name):
    """Elements outside every chunk have output 0 and get no gradient."""
    fn = getattr(nacc, name)
    info = torch.tensor([[4, 2], [1, 2], [7, 0]])
    x = rand(8, lo=0.5, hi=1.5, seed=2)
    assert gradcheck(lambda v: fn(v, info), (x,))
    fn(x, info).sum().backward()
    assert x.grad[[0, 3, 6, 7]].eq(0).all()


def prod_jacobian(x: list[float], counts, exclusive: bool) -> torch.Tensor:
    """Analytic Jacobian of a packed cumulative product: d out_i / d x_k = prod of the other factors."""
    n = len(x)
    jac = torch.zeros(n, n, dtype=F64)
    start = 0
    for c in counts:
        for i in range(start, start + c):
            last = i if not exclusive else i - 1  # out_i = prod(x[start .. last])
            for k in range(start, last + 1):
                p = 1.0
                for j in range(start, last + 1):
                    if j != k:
                        p *= x[j]
                jac[i, k] = p
        start += c
    return jac


@pytest.mark.parametrize("name", ["exclusive_prod", "inclusive_prod"])
def test_prod_gradient_exact_with_zeros(name):
    """nerfacc 0.5 divides by the input in exclusive_prod's backward: wrong (or NaN) at zeros. Ours is exact."""
    fn = getattr(nacc, name)
    counts = [0, 4, 3, 0, 5]
    info, ids = layout(counts)
    vals = [0.0, 2.0, 0.0, 3.0, 1.5, 0.0, 0.5, 2.0, 0.0, 0.0, 3.0, 0.7]
    x = torch.tensor(vals, dtype=F64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda v: fn(v, info), x)
    expected = prod_jacobian(vals, counts, exclusive=name == "exclusive_prod")
    torch.testing.assert_close(jac, expected, rtol=0, atol=1e-14)
    assert torch.isfinite(jac).all()
    assert gradcheck(lambda v: fn(v, info), (x,))
    assert gradgradcheck(lambda v: fn(v, info), (x,))
    assert gradcheck(lambda v: fn(v, indices=ids), (x,))
    xb = torch.tensor([[0.0, 2.0, 3.0], [1.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    assert gradcheck(fn, (xb,))
    # The gradient of the exclusive product at a zero: out = [1, x0, x0 x1, x0 x1 x2] with x1 = 0.
    if name == "exclusive_prod":
        x = torch.tensor([2.0, 0.0, 3.0, 4.0], dtype=F64, requires_grad=True)
        fn(x, torch.tensor([[0, 4]])).sum().backward()
        # d/dx1 (x0 x1 + x0 x1 x2) = x0 + x0 x2 = 2 + 6 = 8; d/dx0 = 1 + x1 + x1 x2 = 1.
        torch.testing.assert_close(x.grad, torch.tensor([1.0, 8.0, 0.0, 0.0], dtype=F64))


# ---------------------------------------------------------------------------------------------
# Rendering weights / transmittance
# ---------------------------------------------------------------------------------------------
def test_render_weight_from_density_packed():
    t0, t1 = sorted_intervals()
    sigmas = rand(N, lo=0.0, hi=3.0, seed=3)
    with torch.no_grad():
        sigmas[2] = 0.0  # exactly transparent sample

    def f(a, b, s):
        return nacc.render_weight_from_density(a, b, s, packed_info=INFO)

    assert gradcheck(f, (t0, t1, sigmas))
    assert gradgradcheck(f, (t0, t1, sigmas))
    assert gradcheck(
        lambda a, b, s: nacc.render_weight_from_density(a, b, s, ray_indices=IDS, n_rays=7), (t0, t1, sigmas)
    )
    assert gradcheck(
        lambda a, b, s: nacc.render_transmittance_from_density(a, b, s, packed_info=INFO), (t0, t1, sigmas)
    )


def test_render_weight_from_density_large_sigma():
    t0, t1 = sorted_intervals()
    sigmas = rand(N, lo=0.0, hi=3.0, seed=4)
    with torch.no_grad():
        sigmas[1] = 50.0  # nearly opaque: everything behind it on ray 1 has T ~ 1e-5 .. 0
        sigmas[6] = 200.0
    assert gradcheck(lambda s: nacc.render_weight_from_density(t0.detach(), t1.detach(), s, INFO), (sigmas,))
    w, t, _ = nacc.render_weight_from_density(t0, t1, sigmas, INFO)
    (w.sum() + t.sum()).backward()
    assert torch.isfinite(sigmas.grad).all() and torch.isfinite(t0.grad).all() and torch.isfinite(t1.grad).all()


def test_render_weight_from_density_batched():
    t0, t1 = sorted_intervals([4, 4, 4], seed=5)
    t0, t1 = t0.detach().reshape(3, 4).requires_grad_(), t1.detach().reshape(3, 4).requires_grad_()
    sigmas = rand(3, 4, lo=0.0, hi=3.0, seed=6)
    assert gradcheck(nacc.render_weight_from_density, (t0, t1, sigmas))
    assert gradcheck(nacc.render_transmittance_from_density, (t0, t1, sigmas))


def weight_jacobian_from_alpha(alphas: list[float], counts) -> torch.Tensor:
    """Analytic d w_i / d alpha_k for w_i = alpha_i prod_{j<i} (1 - alpha_j), no division anywhere."""
    n = len(alphas)
    jac = torch.zeros(n, n, dtype=F64)
    start = 0
    for c in counts:
        for i in range(start, start + c):
            for k in range(start, i + 1):
                p = 1.0 if k == i else -alphas[i]
                for j in range(start, i):
                    if j != k:
                        p *= 1.0 - alphas[j]
                jac[i, k] = p
        start += c
    return jac


def test_render_weight_from_alpha_packed_with_exact_zero_and_one():
    alphas = rand(N, lo=0.05, hi=0.95, seed=7)
    with torch.no_grad():
        alphas[1] = 1.0  # last sample of ray 1 fully opaque
        alphas[3] = 0.0
        alphas[5] = 1.0  # the single sample of ray 4
        alphas[7] = 1.0  # second sample of ray 5 (samples 6..9)
        alphas[9] = 1.0  # last sample of ray 5

    def f(a):
        return nacc.render_weight_from_alpha(a, packed_info=INFO)

    assert gradcheck(f, (alphas,))
    assert gradgradcheck(f, (alphas,))
    assert gradcheck(lambda a: nacc.render_weight_from_alpha(a, ray_indices=IDS, n_rays=7), (alphas,))
    assert gradcheck(lambda a: nacc.render_transmittance_from_alpha(a, packed_info=INFO), (alphas,))
    # Exact Jacobian at alpha = 1 (samples behind an opaque one still get the gradient through it).
    jac = torch.autograd.functional.jacobian(lambda a: f(a)[0], alphas.detach())
    expected = weight_jacobian_from_alpha(alphas.detach().tolist(), COUNTS)
    torch.testing.assert_close(jac, expected, rtol=1e-12, atol=1e-14)
    assert jac[8, 7] != 0  # d w_8 / d alpha_7 = -alpha_8 (1 - alpha_6), although T_8 = 0


def test_render_weight_from_alpha_batched():
    alphas = rand(3, 4, lo=0.05, hi=0.95, seed=8)
    with torch.no_grad():
        alphas[0, 0] = 1.0
        alphas[2, 3] = 0.0
    assert gradcheck(nacc.render_weight_from_alpha, (alphas,))
    assert gradcheck(nacc.render_transmittance_from_alpha, (alphas,))
    assert gradcheck(nacc.render_weight_from_alpha, (rand(2, 1, seed=9),))


def test_prefix_trans_gradient():
    alphas = rand(N, lo=0.05, hi=0.95, seed=10)
    prefix = rand(N, lo=0.1, hi=1.0, seed=11)
    assert gradcheck(lambda a, p: nacc.render_weight_from_alpha(a, INFO, prefix_trans=p), (alphas, prefix))
    t0, t1 = sorted_intervals()
    sigmas = rand(N, lo=0.0, hi=3.0, seed=12)
    assert gradcheck(
        lambda a, b, s, p: nacc.render_weight_from_density(a, b, s, INFO, prefix_trans=p), (t0, t1, sigmas, prefix)
    )


# ---------------------------------------------------------------------------------------------
# accumulate_along_rays and rendering
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 3])
def test_accumulate_along_rays(d):
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    ids = IDS[perm]  # unsorted is allowed
    w = rand(N, lo=-1.0, hi=1.0, seed=13)
    v = rand(N, d, lo=-1.0, hi=1.0, seed=14)
    assert gradcheck(lambda a, b: nacc.accumulate_along_rays(a, b, ids, 9), (w, v))
    assert gradgradcheck(lambda a, b: nacc.accumulate_along_rays(a, b, ids, 9), (w, v))
    assert gradcheck(lambda a: nacc.accumulate_along_rays(a, None, ids, 7), (w,))
    wb, vb = rand(3, 4, seed=15), rand(3, 4, d, seed=16)
    assert gradcheck(nacc.accumulate_along_rays, (wb, vb))
    assert gradcheck(nacc.accumulate_along_rays, (wb,))


class TinyField(torch.nn.Module):
    """A differentiable toy radiance field of the sample midpoint."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(17)
        self.w_sigma = torch.nn.Parameter(torch.randn(2, generator=g, dtype=F64))
        self.w_rgb = torch.nn.Parameter(torch.randn(3, 2, generator=g, dtype=F64))

    def __call__(self, w_sigma, w_rgb, t_starts, t_ends):
        m = (t_starts + t_ends) * 0.5
        sigmas = torch.nn.functional.softplus(w_sigma[0] * m + w_sigma[1]) * 3.0
        rgbs = torch.sigmoid(m[..., None] * w_rgb[:, 0] + w_rgb[:, 1])
        return rgbs, sigmas


def test_rendering_gradcheck_packed_and_batched():
    field = TinyField()
    t0, t1 = sorted_intervals()
    bkgd = rand(3, seed=18)

    def packed(ws, wr, a, b, bg):
        def rgb_sigma_fn(ts, te, ri):
            return field(ws, wr, ts, te)

        colors, opac, depth, _ = nacc.rendering(a, b, IDS, 7, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bg)
        return colors, opac, depth

    params = (field.w_sigma.detach().requires_grad_(), field.w_rgb.detach().requires_grad_())
    assert gradcheck(packed, params + (t0, t1, bkgd))

    def alpha_fn_render(ws, wr, a, b):
        def rgb_alpha_fn(ts, te, ri):
            rgbs, sigmas = field(ws, wr, ts, te)
            return rgbs, 1.0 - torch.exp(-sigmas * (te - ts))

        return nacc.rendering(a, b, IDS, 7, rgb_alpha_fn=rgb_alpha_fn)[:3]

    assert gradcheck(alpha_fn_render, params + (t0, t1))
    tb0, tb1 = sorted_intervals([3, 3], seed=19)
    tb0, tb1 = tb0.detach().reshape(2, 3).requires_grad_(), tb1.detach().reshape(2, 3).requires_grad_()

    def batched(ws, wr, a, b, bg):
        return nacc.rendering(a, b, rgb_sigma_fn=lambda ts, te, ri: field(ws, wr, ts, te), render_bkgd=bg)[:3]

    assert gradcheck(batched, params + (tb0, tb1, bkgd))


# ---------------------------------------------------------------------------------------------
# Distortion
# ---------------------------------------------------------------------------------------------
def test_distortion_packed():
    t0, t1 = sorted_intervals()
    w = rand(N, seed=20)
    assert gradcheck(lambda a, b, c: nacc.distortion(a, b, c, IDS, 7), (w, t0, t1))
    assert gradgradcheck(lambda a, b, c: nacc.distortion(a, b, c, IDS, 7), (w, t0, t1))


def test_distortion_batched():
    t0, t1 = sorted_intervals([4, 4, 1], seed=21)
    t0 = t0.detach()[:9].reshape(3, 3).requires_grad_()
    t1 = t1.detach()[:9].reshape(3, 3).requires_grad_()
    w = rand(3, 3, seed=22)
    assert gradcheck(nacc.distortion, (w, t0, t1))
    assert gradgradcheck(nacc.distortion, (w, t0, t1))


def test_distortion_gradient_matches_double_sum():
    """The O(n) loss and the O(n^2) definition have the same gradient (sorted midpoints)."""
    t0, t1 = sorted_intervals()
    w = rand(N, seed=23)

    def double_sum(w, a, b):
        m = (a + b) * 0.5
        same = IDS[:, None] == IDS[None, :]
        pair = (w[:, None] * w[None, :] * (m[:, None] - m[None, :]).abs() * same).sum(dim=1)
        per_sample = pair + w**2 * (b - a) / 3.0
        return torch.zeros(7, dtype=F64).index_add(0, IDS, per_sample)

    g_lib = torch.autograd.grad(nacc.distortion(w, t0, t1, IDS, 7).sum(), (w, t0, t1))
    g_ref = torch.autograd.grad(double_sum(w, t0, t1).sum(), (w, t0, t1))
    for a, b in zip(g_lib, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Contraction
# ---------------------------------------------------------------------------------------------
AABB = torch.tensor([-1.0, -2.0, 0.5, 2.0, 1.0, 2.5], dtype=F64)


def points_in_z(z: list[list[float]]) -> torch.Tensor:
    """World points at normalized box coordinates ``z`` (box -> [-1, 1]^3)."""
    z_t = torch.tensor(z, dtype=F64)
    center, half = (AABB[:3] + AABB[3:]) / 2, (AABB[3:] - AABB[:3]) / 2
    return (center + z_t * half).requires_grad_()


# No |z| = 1 kinks, no L-inf ties, all components distinct in magnitude.
Z_POINTS = [
    [0.1, -0.3, 0.2],  # inside (both norms)
    [0.5, 0.2, -0.4],  # inside (both norms)
    [1.6, 0.3, -0.2],  # outside (both norms)
    [-0.9, 2.5, 0.7],
    [3.0, -7.0, 12.0],  # far outside
    [0.75, -0.8, 0.55],  # inside the box (linf) but outside the ball (l2)
]


@pytest.mark.parametrize("ord", ["l2", "linf"])
def test_contract_gradcheck(ord):
    x = points_in_z(Z_POINTS)
    assert gradcheck(lambda v: nacc.contract(v, AABB, ord=ord), (x,))
    assert gradgradcheck(lambda v: nacc.contract(v, AABB, ord=ord), (x,))


@pytest.mark.parametrize("ord", ["l2", "linf"])
def test_uncontract_gradcheck(ord):
    with torch.no_grad():
        y = nacc.contract(points_in_z(Z_POINTS), AABB, ord=ord)
    y.requires_grad_()
    assert gradcheck(lambda v: nacc.uncontract(v, AABB, ord=ord), (y,))
    assert gradgradcheck(lambda v: nacc.uncontract(v, AABB, ord=ord), (y,))
    # uncontract is the inverse of contract, so their Jacobians are inverse matrices.
    x = points_in_z(Z_POINTS)
    for i in range(x.shape[0]):
        jc = torch.autograd.functional.jacobian(lambda v: nacc.contract(v[None], AABB, ord=ord)[0], x[i].detach())
        ju = torch.autograd.functional.jacobian(lambda v: nacc.uncontract(v[None], AABB, ord=ord)[0], y[i].detach())
        torch.testing.assert_close(ju @ jc, torch.eye(3, dtype=F64), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("ord", ["l2", "linf"])
def test_contract_gradient_at_box_centre_is_finite(ord):
    """The centre (z = 0) is inside: the map is affine there, gradient 1 / (4 half) per axis."""
    x = ((AABB[:3] + AABB[3:]) / 2)[None].clone().requires_grad_()
    nacc.contract(x, AABB, ord=ord).sum().backward()
    torch.testing.assert_close(x.grad[0], 0.25 / ((AABB[3:] - AABB[:3]) / 2))
    y = torch.full((1, 3), 0.5, dtype=F64, requires_grad=True)
    nacc.uncontract(y, AABB, ord=ord).sum().backward()
    torch.testing.assert_close(y.grad[0], 4.0 * (AABB[3:] - AABB[:3]) / 2)


# ---------------------------------------------------------------------------------------------
# Random layouts
# ---------------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.lists(st.integers(0, 4), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1))
@example(counts=[0], seed=0)
@example(counts=[1], seed=1)
@example(counts=[0, 0, 3], seed=2)
def test_random_layouts_gradcheck(counts, seed):
    """Scans, weights and distortion on hypothesis-drawn layouts, with exact 0 / 1 values mixed in."""
    info, ids = layout(counts)
    n = sum(counts)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=F64) + 0.5
    special = torch.rand(n, generator=g) < 0.3
    alphas = torch.where(special, (torch.rand(n, generator=g) < 0.5).to(F64), x - 0.5).requires_grad_()
    x = torch.where(special, torch.zeros_like(x), x).requires_grad_()
    for name in SCANS:
        fn = getattr(nacc, name)
        assert gradcheck(lambda v, fn=fn: fn(v, info), (x,))
    assert gradcheck(lambda a: nacc.render_weight_from_alpha(a, info), (alphas,))
    t0, t1 = sorted_intervals(counts, seed=seed % 1000)
    sigmas = (torch.rand(n, generator=g, dtype=F64) * 3.0).requires_grad_()
    assert gradcheck(lambda a, b, s: nacc.render_weight_from_density(a, b, s, ray_indices=ids), (t0, t1, sigmas))
    w = torch.rand(n, generator=g, dtype=F64).requires_grad_()
    assert gradcheck(lambda a, b, c: nacc.distortion(a, b, c, ids, len(counts)), (w, t0, t1))
    assert gradcheck(lambda a: nacc.accumulate_along_rays(a, None, ids, len(counts)), (w,))
