"""Numerical parity with nerfacc 0.5 on identical inputs (the migration promise, beyond matching signatures).

nerfacc is only used here, as the yardstick; the library never imports it. nerfacc's batched (padded) forms run
on the CPU, so they are compared on every run; its packed forms, traversal and sampling need CUDA, so those
comparisons run when a GPU is present (skipped otherwise). Known, documented differences are excluded: the
exclusive-product gradient at zero (nerfacc's is wrong there).
"""

from __future__ import annotations

import pytest
import torch

import nerfaccel_plugin as ours

nerfacc = pytest.importorskip("nerfacc")

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nerfacc's packed ops are CUDA-only)")


def _close(a, b, tol=1e-5):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y, tol)
        return
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    if a.dtype == torch.bool or not a.is_floating_point():
        assert torch.equal(a.cpu(), b.cpu())
    else:
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=tol, atol=tol)


def _batched(n_rays: int = 7, n: int = 33, device: str = "cpu"):
    g = torch.Generator().manual_seed(n_rays * 100 + n)
    t = torch.sort(torch.rand(n_rays, n + 1, generator=g) * 4, dim=-1).values
    sig = torch.rand(n_rays, n, generator=g) * 3
    sig[0] = 0.0  # an empty ray
    sig[1, 5:] = 50.0  # a ray that turns opaque (early stop)
    return t[:, :-1].to(device), t[:, 1:].to(device), sig.to(device)


@pytest.mark.parametrize("name", ["inclusive_sum", "exclusive_sum", "inclusive_prod", "exclusive_prod"])
def test_batched_scans(name):
    x = torch.rand(5, 17, requires_grad=True)
    a, b = getattr(ours, name)(x), getattr(nerfacc, name)(x)
    _close(a, b)
    if "sum" in name:
        cot = torch.randn_like(a)
        _close(torch.autograd.grad(a, x, cot), torch.autograd.grad(b, x, cot))


@pytest.mark.parametrize(
    "name", ["render_weight_from_density", "render_transmittance_from_density", "render_visibility_from_density"]
)
def test_batched_density_rendering(name):
    t0, t1, sig = _batched()
    sig.requires_grad_()
    kwargs = {"early_stop_eps": 1e-3, "alpha_thre": 0.05} if "visibility" in name else {}
    a = getattr(ours, name)(t0, t1, sig, **kwargs)
    b = getattr(nerfacc, name)(t0, t1, sig, **kwargs)
    _close(a, b)
    if "visibility" not in name:
        outs_a = a if isinstance(a, tuple) else (a,)
        outs_b = b if isinstance(b, tuple) else (b,)
        cots = [torch.randn_like(o) for o in outs_a]
        ga = torch.autograd.grad(outs_a, sig, cots, allow_unused=True)
        gb = torch.autograd.grad(outs_b, sig, cots, allow_unused=True)
        _close(ga, gb)


@pytest.mark.parametrize(
    "name", ["render_weight_from_alpha", "render_transmittance_from_alpha", "render_visibility_from_alpha"]
)
def test_batched_alpha_rendering(name):
    _, _, sig = _batched()
    alphas = (1 - torch.exp(-sig * 0.1)).requires_grad_()
    kwargs = {"early_stop_eps": 1e-3, "alpha_thre": 0.05} if "visibility" in name else {}
    a = getattr(ours, name)(alphas, **kwargs)
    b = getattr(nerfacc, name)(alphas, **kwargs)
    _close(a, b)


def test_batched_accumulate_and_rendering():
    t0, t1, sig = _batched()
    rgb = torch.rand(*sig.shape, 3)
    w = torch.rand_like(sig)
    _close(ours.accumulate_along_rays(w, rgb), nerfacc.accumulate_along_rays(w, rgb))
    _close(ours.accumulate_along_rays(w), nerfacc.accumulate_along_rays(w))

    def rgb_sigma_fn(a, b, ray_indices):
        return rgb, sig

    bkgd = torch.tensor([0.2, 0.5, 1.0])
    a = ours.rendering(t0, t1, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bkgd)
    b = nerfacc.rendering(t0, t1, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bkgd)
    _close(a[:3], b[:3])
    for key in ("weights", "alphas", "trans", "sigmas", "rgbs"):
        _close(a[3][key], b[3][key])


def _batched_nd(shape=(2, 3), n: int = 9):
    """(..., n) samples: nerfacc's batched path takes any (..., n_samples) shape, () being one 1-D ray."""
    g = torch.Generator().manual_seed(11)
    t = torch.sort(torch.rand(*shape, n + 1, generator=g) * 4, dim=-1).values
    sig = torch.rand(*shape, n, generator=g) * 3
    rows = sig.view(-1, n)
    rows[-1, 3:] = 50.0  # a ray that turns opaque
    if rows.shape[0] > 1:
        rows[0] = 0.0  # an empty ray
    return t[..., :-1], t[..., 1:], sig


@pytest.mark.parametrize(
    "name",
    [
        "render_weight_from_density",
        "render_transmittance_from_density",
        "render_visibility_from_density",
        "render_weight_from_alpha",
        "render_transmittance_from_alpha",
        "render_visibility_from_alpha",
    ],
)
@pytest.mark.parametrize("shape", [(2, 3), (2, 1, 4), ()])
def test_batched_nd_rendering(name, shape):
    """Leading dimensions beyond (n_rays,), and a single 1-D ray: both raised ValueError before."""
    t0, t1, sig = _batched_nd(shape)
    kwargs = {"early_stop_eps": 1e-3, "alpha_thre": 0.05} if "visibility" in name else {}
    if "alpha" in name:
        wrt = (1 - torch.exp(-sig * 0.3)).requires_grad_()
        a, b = getattr(ours, name)(wrt, **kwargs), getattr(nerfacc, name)(wrt, **kwargs)
    else:
        wrt = sig.requires_grad_()
        a, b = getattr(ours, name)(t0, t1, wrt, **kwargs), getattr(nerfacc, name)(t0, t1, wrt, **kwargs)
    _close(a, b)
    outs_a = a if isinstance(a, tuple) else (a,)
    assert all(o.shape == wrt.shape for o in outs_a)
    if "visibility" in name:
        assert not a.all() and a.any()  # the thresholds bite, so the comparison means something
    else:
        outs_b = b if isinstance(b, tuple) else (b,)
        cots = [torch.randn_like(o) for o in outs_a]
        _close(torch.autograd.grad(outs_a, wrt, cots), torch.autograd.grad(outs_b, wrt, cots), tol=1e-4)


def test_batched_nd_accumulate_and_rendering():
    t0, t1, sig = _batched_nd()
    rgb = torch.rand(*sig.shape, 3)
    w = torch.rand_like(sig)
    _close(ours.accumulate_along_rays(w, rgb), nerfacc.accumulate_along_rays(w, rgb))
    _close(ours.accumulate_along_rays(w), nerfacc.accumulate_along_rays(w))
    # 1-D weights without ray_indices: one ray, (D,) out (raised ValueError before)
    v = torch.rand(sig.shape[-1], 4)
    _close(ours.accumulate_along_rays(w[0, 0], v), nerfacc.accumulate_along_rays(w[0, 0], v))
    assert ours.accumulate_along_rays(w[0, 0], v).shape == (4,)
    _close(ours.accumulate_along_rays(w[0, 0]), nerfacc.accumulate_along_rays(w[0, 0]))

    def rgb_sigma_fn(a, b, ray_indices):
        return rgb, sig

    def rgb_alpha_fn(a, b, ray_indices):
        return rgb, 1 - torch.exp(-sig * 0.3)

    bkgd = torch.tensor([0.2, 0.5, 1.0])
    for kw in ({"rgb_sigma_fn": rgb_sigma_fn}, {"rgb_alpha_fn": rgb_alpha_fn}):
        a = ours.rendering(t0, t1, render_bkgd=bkgd, **kw)
        b = nerfacc.rendering(t0, t1, render_bkgd=bkgd, **kw)
        assert a[0].shape == (2, 3, 3) and a[1].shape == a[2].shape == (2, 3, 1)
        _close(a[:3], b[:3])
        assert set(a[3]) == set(b[3])
        for key in a[3]:
            _close(a[3][key], b[3][key])


# ---------------------------------------------------------------------------------------------
# Packed forms, traversal, estimators: nerfacc needs CUDA for these
# ---------------------------------------------------------------------------------------------
def _packed(device="cuda"):
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([0, 4, 1, 40, 0, 17, 9])
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), counts).to(device)
    n = int(counts.sum())
    t0 = torch.rand(n, generator=g).to(device)
    t1 = t0 + 0.05 * torch.rand(n, generator=g).to(device)
    sig = (5 * torch.rand(n, generator=g)).to(device)
    return ray_indices, t0, t1, sig, len(counts)


@GPU
@pytest.mark.parametrize("name", ["render_weight_from_density", "render_transmittance_from_density"])
def test_packed_density_rendering_cuda(name):
    ri, t0, t1, sig, n_rays = _packed()
    sig.requires_grad_()
    a = getattr(ours, name)(t0, t1, sig, ray_indices=ri, n_rays=n_rays)
    b = getattr(nerfacc, name)(t0, t1, sig, ray_indices=ri, n_rays=n_rays)
    _close(a, b)
    cots = [torch.randn_like(o) for o in a]
    _close(torch.autograd.grad(a, sig, cots), torch.autograd.grad(b, sig, cots))


@GPU
def test_packed_visibility_and_accumulate_cuda():
    ri, t0, t1, sig, n_rays = _packed()
    kw = dict(ray_indices=ri, n_rays=n_rays, early_stop_eps=1e-3, alpha_thre=0.05)
    _close(
        ours.render_visibility_from_density(t0, t1, sig, **kw),
        nerfacc.render_visibility_from_density(t0, t1, sig, **kw),
    )
    w = torch.rand_like(sig)
    v = torch.rand(sig.shape[0], 3, device="cuda")
    _close(
        ours.accumulate_along_rays(w, v, ray_indices=ri, n_rays=n_rays),
        nerfacc.accumulate_along_rays(w, v, ray_indices=ri, n_rays=n_rays),
    )


@GPU
def test_ray_aabb_and_traversal_cuda():
    g = torch.Generator().manual_seed(5)
    rays_o = (torch.rand(512, 3, generator=g) * 4 - 2).cuda()
    rays_d = torch.nn.functional.normalize(torch.randn(512, 3, generator=g), dim=-1).cuda()
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [-2.0, -2, -2, 2, 2, 2]], device="cuda")
    _close(ours.ray_aabb_intersect(rays_o, rays_d, aabbs), nerfacc.ray_aabb_intersect(rays_o, rays_d, aabbs))
    binaries = (torch.rand(2, 32, 32, 32, generator=g) > 0.7).cuda()
    for cone in (0.0, 1 / 256):
        ia, sa = ours.traverse_grids(rays_o, rays_d, binaries, aabbs, step_size=0.02, cone_angle=cone)
        ib, sb = nerfacc.traverse_grids(rays_o, rays_d, binaries, aabbs, step_size=0.02, cone_angle=cone)
        _close(sa.ray_indices, sb.ray_indices)
        _close(sa.vals, sb.vals)
        _close(ia.vals, ib.vals)


@GPU
def test_occupancy_grid_sampling_cuda():
    """Both estimators, given the same grid, return the same samples for the same rays."""
    g = torch.Generator().manual_seed(7)
    a = ours.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=32).cuda()
    b = nerfacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=32).cuda()
    binaries = (torch.rand(1, 32, 32, 32, generator=g) > 0.6).cuda()
    a.binaries.copy_(binaries)
    b.binaries.copy_(binaries)
    rays_o = torch.tensor([[0.0, 0.0, -3.0]], device="cuda").repeat(256, 1)
    rays_d = torch.nn.functional.normalize(
        torch.randn(256, 3, generator=g).cuda() * 0.2 + torch.tensor([0, 0, 1.0], device="cuda"), dim=-1
    )
    ra = a.sampling(rays_o, rays_d, render_step_size=0.01, near_plane=0.5, far_plane=6.0)
    rb = b.sampling(rays_o, rays_d, render_step_size=0.01, near_plane=0.5, far_plane=6.0)
    for x, y in zip(ra, rb, strict=True):
        _close(x, y)


# ---------------------------------------------------------------------------------------------
# searchsorted, importance sampling and the proposal estimator (nerfacc: CUDA only)
# ---------------------------------------------------------------------------------------------
def _sorted_and_queries(device="cuda"):
    """Three rays of 5 sorted entries (one with repeats) and queries below, inside, on and above each range."""
    s = torch.tensor([[0.0, 0.5, 1.0, 1.5, 2.0], [1.0, 1.0, 2.0, 2.0, 3.0], [-1.0, 0.0, 0.1, 0.2, 5.0]])
    q = torch.tensor(
        [[-1.0, 0.0, 0.7, 1.5, 2.0, 9.0], [0.5, 1.0, 1.5, 2.0, 3.0, 2.9], [-2.0, -1.0, 0.05, 0.2, 4.0, 5.0]]
    )
    return s.to(device), q.to(device)


def _flat(vals, counts=None):
    """A flattened RayIntervals of the rows of ``vals`` (optionally only the first ``counts[i]`` of row i)."""
    rows = [v if counts is None else v[:c] for v, c in zip(vals, counts or [None] * len(vals), strict=True)]
    cnt = torch.tensor([len(r) for r in rows], device=vals.device)
    info = torch.stack([torch.cumsum(cnt, 0) - cnt, cnt], dim=-1)
    return torch.cat(rows), info


@GPU
@pytest.mark.parametrize("layout", ["batched", "packed", "sorted_batched_query_packed", "sorted_packed_query_batched"])
def test_searchsorted_cuda(layout):
    """Same indices as nerfacc for every layout, including out-of-range queries (below: (b, b); above: (l-1, l))
    and which kind of index (per-ray or flat) the query's layout asks for."""
    s, q = _sorted_and_queries()
    s_flat, s_info = _flat(s, [5, 3, 4])
    q_flat, q_info = _flat(q, [6, 2, 5])
    batched_s, batched_q = ours.RayIntervals(vals=s), ours.RayIntervals(vals=q)
    packed_s = ours.RayIntervals(vals=s_flat, packed_info=s_info)
    packed_q = ours.RayIntervals(vals=q_flat, packed_info=q_info)
    key, query = {
        "batched": (batched_s, batched_q),
        "packed": (packed_s, packed_q),
        "sorted_batched_query_packed": (batched_s, packed_q),
        "sorted_packed_query_batched": (packed_s, batched_q),
    }[layout]

    def theirs(spec):
        return nerfacc.RayIntervals(vals=spec.vals, packed_info=spec.packed_info)

    a = ours.searchsorted(key, query)
    b = nerfacc.searchsorted(theirs(key), theirs(query))
    _close(a, b)


@GPU
def test_importance_sampling_cuda():
    """stratified=False is deterministic in both: same intervals and samples, batched (int n) and packed (per-ray n)."""
    g = torch.Generator().manual_seed(13)
    t = torch.sort(torch.rand(6, 9, generator=g) * 3, dim=-1).values.cuda()
    w = torch.rand(6, 8, generator=g).cuda()
    w[1, 2:5] = 0.0  # flat stretches of the CDF
    cdfs = torch.cat([torch.zeros(6, 1, device="cuda"), torch.cumsum(w, -1) / w.sum(-1, keepdim=True)], -1)
    for n in (2, 7, 32):
        ia, sa = ours.importance_sampling(ours.RayIntervals(vals=t), cdfs, n, stratified=False)
        ib, sb = nerfacc.importance_sampling(nerfacc.RayIntervals(vals=t), cdfs.contiguous(), n, stratified=False)
        _close(ia.vals, ib.vals)
        _close(sa.vals, sb.vals)
    t_flat, info = _flat(t, [9, 4, 2, 9, 6, 3])
    c_flat, _ = _flat(cdfs, [9, 4, 2, 9, 6, 3])
    n_per_ray = torch.tensor([5, 0, 3, 16, 2, 4], device="cuda")
    ia, sa = ours.importance_sampling(ours.RayIntervals(vals=t_flat, packed_info=info), c_flat, n_per_ray)
    ib, sb = nerfacc.importance_sampling(nerfacc.RayIntervals(vals=t_flat, packed_info=info), c_flat, n_per_ray)
    for field in ("vals", "packed_info", "ray_indices", "is_left", "is_right"):
        _close(getattr(ia, field), getattr(ib, field))
    for field in ("vals", "packed_info", "ray_indices"):
        _close(getattr(sa, field), getattr(sb, field))


@GPU
def test_prop_net_sampling_and_loss_cuda():
    """PropNetEstimator: same samples and the same proposal loss and gradients as nerfacc's."""
    n_rays = 64
    g = torch.Generator().manual_seed(17)
    centres = (torch.rand(n_rays, 1, generator=g) * 4 + 1).cuda()

    def make_fns(scale):
        def density(t_starts, t_ends):
            mid = (t_starts + t_ends) / 2
            return scale * torch.exp(-((mid - centres) ** 2) / 0.1) + 0.01

        return density

    results = []
    for lib in (ours, nerfacc):
        scales = [
            torch.tensor(3.0, device="cuda", requires_grad=True),
            torch.tensor(5.0, device="cuda", requires_grad=True),
        ]
        est = lib.PropNetEstimator().cuda()
        t_starts, t_ends = est.sampling(
            [make_fns(s) for s in scales],
            [32, 16],
            24,
            n_rays,
            near_plane=0.2,
            far_plane=8.0,
            sampling_type="lindisp",
            stratified=False,
            requires_grad=True,
        )
        sig = 10 * torch.exp(-(((t_starts + t_ends) / 2 - centres) ** 2) / 0.05)
        trans, _ = lib.render_transmittance_from_density(t_starts, t_ends, sig)
        loss = est.compute_loss(trans, loss_scaler=2.0)
        grads = torch.autograd.grad(loss, scales)
        results.append((t_starts, t_ends, loss.detach(), grads))
    (a0, a1, la, ga), (b0, b1, lb, gb) = results
    _close((a0, a1), (b0, b1))
    assert float(la) > 0
    _close(la, lb, tol=1e-4)
    _close(ga, gb, tol=1e-4)
