"""volrend family: weights from densities and opacities, accumulation along rays.

Forward and backward against the reference on packed layouts (empty rays, one-sample rays, a 200k-sample ray,
samples outside every chunk, chunks out of order) and batched (n_rays, n) rows without packed_info; cotangents
that autograd does not materialise and gradients that are not needed; semantics through the public API on every
backend.
"""

from __future__ import annotations

import pytest
import torch
from ops_helpers import LAYOUTS, close, compare_fwd_bwd, device_of, layout, packed, ref_dtype

import nerfaccel_plugin as nacc
from nerfaccel_plugin import _torch_impl as R


@pytest.mark.parametrize("lay", list(LAYOUTS))
def test_render_weight_from_density(K, lay):
    ext, device = K
    packed_info, shape = layout(lay, device)
    t0 = torch.rand(shape, device=device)
    t1 = t0 + 0.05 * torch.rand(shape, device=device)
    sig = 10 * torch.rand(shape, device=device)
    if lay in ("huge", "batched_long"):
        sig = sig * 1e-4  # keep transmittance from underflowing over 200k samples
    compare_fwd_bwd(
        lambda a, b, c: R._render_weight_from_density(a, b, c, packed_info),
        lambda a, b, c: ext._render_weight_from_density(a, b, c, packed_info),
        [t0, t1, sig],
        # float32 trans/alphas saved for the backward: d tau is a difference of O(1) terms (atol 1e-5 there)
        atol=1e-5 if lay.startswith("batched") else 1e-6,
        ref_dtype=ref_dtype(lay),
    )


@pytest.mark.parametrize("lay", list(LAYOUTS))
def test_render_weight_from_alpha(K, lay):
    ext, device = K
    packed_info, shape = layout(lay, device)
    long = lay in ("huge", "batched_long")
    alphas = torch.rand(shape, device=device) * (1e-5 if long else 0.3)
    flat = alphas.view(-1)
    n = flat.numel()
    if n > 10:
        flat[torch.randint(0, n, (3,))] = 1.0  # fully opaque samples: division-free gradient
    if lay == "huge":
        flat[: 150_000 + 6] = torch.where(flat[: 150_000 + 6] == 1.0, 0.0, flat[: 150_000 + 6])  # long prefix
    compare_fwd_bwd(
        lambda a: R._render_weight_from_alpha(a, packed_info),
        lambda a: ext._render_weight_from_alpha(a, packed_info),
        [alphas],
        ref_dtype=ref_dtype(lay),
    )


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("lay", ["mixed", "gaps", "batched"])
def test_density_backward_with_one_cotangent(K, lay, which):
    """Only one of (weights, trans, alphas) is used: the others reach the kernel as None, not as zeros."""
    ext, device = K
    packed_info, shape = layout(lay, device)
    t0 = torch.rand(shape, device=device, dtype=torch.float64)
    sig = torch.rand(shape, device=device, dtype=torch.float64, requires_grad=True)
    t1 = (t0 + 0.1).requires_grad_()
    cot = torch.randn(shape, device=device, dtype=torch.float64)
    got = torch.autograd.grad((ext._render_weight_from_density(t0, t1, sig, packed_info)[which] * cot).sum(), (t1, sig))
    want = torch.autograd.grad((R._render_weight_from_density(t0, t1, sig, packed_info)[which] * cot).sum(), (t1, sig))
    for a, b in zip(got, want, strict=True):
        close(a, b)


def test_density_backward_skips_time_gradients(K):
    """The time gradients are computed only when needed (need_t_grads); otherwise (0,) tensors come back."""
    ext, device = K
    info = torch.tensor([[0, 3], [3, 4]], device=device)
    t0, sig = torch.rand(7, device=device), torch.rand(7, device=device)
    _, trans, alphas = torch.ops.nerfaccel.render_weight_from_density_fwd(t0, t0 + 0.1, sig, info)
    g = torch.randn(7, device=device)
    ops = torch.ops.nerfaccel
    g0, g1, gs = ops.render_weight_from_density_bwd(g, None, None, t0, t0 + 0.1, sig, trans, alphas, info, False, False)
    assert g0.shape == g1.shape == (0,) and gs.shape == (7,)
    full = ops.render_weight_from_density_bwd(g, None, None, t0, t0 + 0.1, sig, trans, alphas, info, False, True)
    close(gs, full[2])
    zeros = torch.zeros_like(g)
    close(full[0], ops.render_weight_from_density_bwd(g, zeros, zeros, t0, t0 + 0.1, sig, trans, alphas, info, False,
                                                      True)[0])  # fmt: skip
    assert ext._render_weight_from_density  # (skips on backends without this kernel)
    sig_leaf = sig.clone().requires_grad_()
    w, _, _ = ext._render_weight_from_density(t0, t0 + 0.1, sig_leaf, info)
    (gs2,) = torch.autograd.grad(w, sig_leaf, g)
    close(gs2, gs)


def test_accumulate_backward_skips_unneeded_gradients(K):
    ext, device = K
    ri = torch.tensor([0, 0, 1, 2, 2], device=device)
    w, v = torch.rand(5, device=device), torch.rand(5, 3, device=device)
    go = torch.randn(3, 3, device=device)
    assert ext._accumulate_along_rays  # (skips on backends without this kernel)
    op = torch.ops.nerfaccel.accumulate_along_rays_bwd
    g_w, g_v = op(go, w, v, ri, True, False)
    assert g_v.shape == (0,) and g_w.shape == (5,)
    g_w2, g_v2 = op(go, w, v, ri, False, True)
    assert g_w2.shape == (0,) and g_v2.shape == (5, 3)
    close(g_v2, go[ri] * w[:, None])
    close(g_w, (go[ri] * v).sum(-1))
    vv = v.clone().requires_grad_()
    (gv,) = torch.autograd.grad(ext._accumulate_along_rays(w, vv, ri, 3), vv, go)  # weights need no gradient
    close(gv, g_v2)


@pytest.mark.parametrize("dim", [None, 1, 3])
@pytest.mark.parametrize("n, order", [(0, "unsorted"), (1, "unsorted"), (5000, "unsorted"), (40000, "sorted")])
def test_accumulate_along_rays(K, dim, n, order):
    ext, device = K
    n_rays = 37
    weights = torch.rand(n, device=device)
    ray_indices = torch.randint(0, n_rays, (n,), device=device)  # unsorted on purpose
    if order == "sorted":  # the samplers' layout; large enough for the CPU kernel's parallel pass
        ray_indices = torch.sort(torch.randint(0, 3 * n_rays // 4, (n,), device=device)).values
        ray_indices[ray_indices > 5] += 1  # an empty ray in the middle, empty rays at the end
    values = None if dim is None else torch.randn(n, dim, device=device)
    # The kernels sum in double (on CUDA also with atomics, for unsorted indices, in no fixed order) and round once:
    # compared with a float64 reference (index_add on the CPU) rounded to float32.
    if dim is None:
        compare_fwd_bwd(
            lambda w: R._accumulate_along_rays(w.cpu(), None, ray_indices.cpu(), n_rays),
            lambda w: ext._accumulate_along_rays(w, None, ray_indices, n_rays),
            [weights],
            ref_dtype=torch.float64,
        )
    else:
        compare_fwd_bwd(
            lambda w, v: R._accumulate_along_rays(w.cpu(), v.cpu(), ray_indices.cpu(), n_rays),
            lambda w, v: ext._accumulate_along_rays(w, v, ray_indices, n_rays),
            [weights, values],
            ref_dtype=torch.float64,
        )


def test_accumulate_zero_width_values(K):
    """values of shape [n, 0] (no data pointer) give [n_rays, 0] sums and zero weight gradients."""
    ext, device = K
    ray_indices = torch.tensor([0, 0, 1, 2], device=device)
    compare_fwd_bwd(
        lambda w, v: R._accumulate_along_rays(w, v, ray_indices, 3),
        lambda w, v: ext._accumulate_along_rays(w, v, ray_indices, 3),
        [torch.rand(4, device=device), torch.rand(4, 0, device=device)],
    )
    out = ext._accumulate_along_rays(torch.rand(4, device=device), torch.rand(4, 0, device=device), ray_indices, 3)
    assert out.shape == (3, 0)


def test_out_of_range_ray_indices_are_errors(K):
    """Every kernel rejects ray indices outside their range (the CUDA build checks on the host)."""
    ext, device = K
    w = torch.rand(5, device=device)
    with pytest.raises(ValueError, match=r"ray_indices\[3\] = 7 is outside \[0, n_rays = 4\)"):
        ext._accumulate_along_rays(w, None, torch.tensor([0, 1, 1, 7, 2], device=device), 4)
    with pytest.raises(ValueError, match="ray_indices"):
        ext._accumulate_along_rays(w, torch.rand(5, 2, device=device), torch.tensor([0, 1, -1, 2, 2], device=device), 4)


def test_half_inputs_upcast(K):
    ext, device = K
    packed_info, n = packed([3, 0, 5], False, device)
    alphas = (torch.rand(n, device=device) * 0.5).half()
    w, t = ext._render_weight_from_alpha(alphas, packed_info)
    assert w.dtype == torch.float32
    ref_w, _ = R._render_weight_from_alpha(alphas.float(), packed_info)
    close(w, ref_w)


def test_chunks_out_of_order_still_cover_their_samples(K):  # noqa: N803
    """Disjoint chunks in any order (and gaps) are valid: results match the reference, forward and backward."""
    ext, device = K
    pi = torch.tensor([[5, 3], [0, 2], [8, 0], [2, 2]], device=device)  # sample 4 in no chunk
    n = 8
    t0 = torch.rand(n, device=device)
    compare_fwd_bwd(
        lambda a, b, c: R._render_weight_from_density(a, b, c, pi),
        lambda a, b, c: ext._render_weight_from_density(a, b, c, pi),
        [t0, t0 + 0.3, torch.rand(n, device=device) * 3],
    )
    x = torch.rand(n, device=device)
    compare_fwd_bwd(lambda a: R._inclusive_prod(a, pi), lambda a: ext._inclusive_prod(a, pi), [x])


@pytest.mark.parametrize("values_dim", [None, 3])
def test_accumulate_backward_checks_grad_out_shape(K, values_dim):  # noqa: N803
    """A grad_out of the wrong shape used to be read out of bounds (heap corruption); now a ValueError."""
    assert K[0]._accumulate_along_rays  # (skips on backends without this kernel)
    _, device = K
    n, n_rays = 6, 3
    w = torch.rand(n, device=device)
    v = None if values_dim is None else torch.rand(n, values_dim, device=device)
    ri = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    op = torch.ops.nerfaccel.accumulate_along_rays_bwd
    dim = 1 if values_dim is None else values_dim
    good = torch.rand(n_rays, dim, device=device)
    op(good, w, v, ri, True, True)
    for bad in [
        torch.rand(n_rays, dim + 2, device=device),  # wider than the values
        torch.rand(n_rays * dim, device=device),  # flat
        torch.rand(n_rays, dim, 1, device=device),
        torch.rand(n_rays, 0, device=device),
    ]:
        with pytest.raises(ValueError, match="grad_out"):
            op(bad, w, v, ri, True, True)
    if values_dim is None:
        with pytest.raises(ValueError, match="grad_out"):
            op(torch.rand(n_rays, 3, device=device), w, None, ri, True, True)  # no values: width 1


def test_cpu_accumulate_parallel_pass_is_exact(cpp_kernels) -> None:
    """With sorted ray indices the C++ CPU accumulation runs in parallel over whole rays: the same bits as
    summing sample by sample in order (what it does for unsorted indices)."""
    g = torch.Generator().manual_seed(0)
    n_rays, n = 5000, 200_000
    ri = torch.sort(torch.randint(0, n_rays, (n,), generator=g)).values
    w, v = torch.rand(n, generator=g), torch.randn(n, 3, generator=g)
    shuffled = torch.randperm(n, generator=g)
    with torch.no_grad():
        par = cpp_kernels._accumulate_along_rays(w, v, ri, n_rays)
        # Same samples in the same per-ray order but with one ray moved to the end: unsorted, sequential path.
        last = ri == ri[0]
        perm = torch.cat([torch.nonzero(~last)[:, 0], torch.nonzero(last)[:, 0]])
        seq = cpp_kernels._accumulate_along_rays(w[perm], v[perm], ri[perm], n_rays)
    assert torch.equal(par, seq)
    ref = R._accumulate_along_rays(w[shuffled], v[shuffled], ri[shuffled], n_rays)
    assert torch.allclose(par, ref, rtol=1e-5, atol=1e-5)




# ------------------------------------------------------------------------------------------
# Semantics on every backend (the reference included), through the public API
# ------------------------------------------------------------------------------------------
def test_hand_values(backend):
    device = device_of(backend)
    t0 = torch.arange(7.0, device=device)
    sig = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9], device=device)
    ri = torch.tensor([0, 0, 0, 1, 1, 2, 2], device=device)
    w, t, a = nacc.render_weight_from_density(t0, t0 + 1, sig, ray_indices=ri, n_rays=3)
    torch.testing.assert_close(w.cpu(), torch.tensor([0.3297, 0.3691, 0.0287, 0.5507, 0.0428, 0.0000, 0.5934]),
                               atol=1e-4, rtol=0)  # fmt: skip
    alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9], device=device)
    w, t = nacc.render_weight_from_alpha(alphas, ray_indices=ri, n_rays=3)
    torch.testing.assert_close(w.cpu(), torch.tensor([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]))
    torch.testing.assert_close(t.cpu(), torch.tensor([1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]))
    rgb = nacc.accumulate_along_rays(w, torch.ones(7, 3, device=device), ri, 3)
    torch.testing.assert_close(rgb.cpu(), torch.tensor([[0.892] * 3, [0.82] * 3, [0.9] * 3]))


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5), (5,), (3, 0)])
def test_batched_equals_packed(backend, shape):
    """The batched (..., n) form gives the same values and gradients as the same samples packed."""
    device = device_of(backend)
    t0 = torch.rand(shape, device=device, dtype=torch.float64)
    t1 = t0 + torch.rand(shape, device=device, dtype=torch.float64)
    sig = torch.rand(shape, device=device, dtype=torch.float64, requires_grad=True)
    s = shape[-1]
    r = sig.numel() // s if s else 0
    info = torch.stack([torch.arange(r, device=device) * s, torch.full((r,), s, device=device)], -1)
    wb, tb, ab = nacc.render_weight_from_density(t0, t1, sig)
    wp, tp, ap = nacc.render_weight_from_density(t0.reshape(-1), t1.reshape(-1), sig.reshape(-1), packed_info=info)
    for a, b in ((wb, wp), (tb, tp), (ab, ap)):
        assert a.shape == shape
        torch.testing.assert_close(a.reshape(-1), b)
    if sig.numel():
        g = torch.autograd.grad(wb.sum() + tb.sum(), sig)[0]
        torch.testing.assert_close(g.reshape(-1), torch.autograd.grad(wp.sum() + tp.sum(), sig)[0].reshape(-1))
    alphas = torch.rand(shape, device=device, dtype=torch.float64)
    wa, ta = nacc.render_weight_from_alpha(alphas)
    wq, tq = nacc.render_weight_from_alpha(alphas.reshape(-1), packed_info=info)
    torch.testing.assert_close(wa.reshape(-1), wq)
    torch.testing.assert_close(ta.reshape(-1), tq)


def test_gradcheck(backend):
    device = device_of(backend)
    f64 = dict(dtype=torch.float64, device=device)
    info = torch.tensor([[0, 3], [3, 0], [4, 4]], device=device)  # sample 3 in no chunk
    t0 = torch.rand(8, **f64)
    t1 = (t0 + torch.rand(8, **f64)).requires_grad_()
    sig = torch.rand(8, **f64, requires_grad=True)
    for args in ((t0.requires_grad_(), t1, sig), (t0.reshape(2, 4), t1.reshape(2, 4), sig.reshape(2, 4))):
        fn = (lambda a, b, c: nacc.render_weight_from_density(a, b, c, packed_info=info)) if args[0].dim() == 1 \
            else nacc.render_weight_from_density  # fmt: skip
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)
    a = (torch.rand(2, 4, **f64) * 0.9).requires_grad_()
    assert torch.autograd.gradcheck(nacc.render_weight_from_alpha, (a,))
    assert torch.autograd.gradgradcheck(nacc.render_weight_from_alpha, (a,))
    ri = torch.tensor([2, 0, 0, 1, 2, 2, 0, 1], device=device)
    v = torch.rand(8, 2, **f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, vv: nacc.accumulate_along_rays(w, vv, ri, 3), (sig, v))
    assert torch.autograd.gradgradcheck(lambda w, vv: nacc.accumulate_along_rays(w, vv, ri, 3), (sig, v))
