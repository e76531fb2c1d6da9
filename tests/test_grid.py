"""Ray-box intersection, grid traversal and the occupancy-grid estimator.

The traversal is checked against a per-ray Python loop that walks the marching lattice one step at
a time and looks every sample up in the grid: the simplest possible statement of the semantics.
"""

from __future__ import annotations

import math

import pytest
import torch

import nerfaccel_plugin as nacc
from nerfaccel_plugin.grid import traverse_grids_samples

# Every test once on the PyTorch reference and once on the C++ build (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("semantic_backend")


def _loop_traverse(rays_o, rays_d, binaries, aabbs, near, far, step, cone):
    """Per-ray loop: march t_{k+1} = t_k + max(step, cone * t_k) and keep occupied midpoints."""
    out = []
    levels, rx, ry, rz = binaries.shape
    res = (rx, ry, rz)
    for r in range(rays_o.shape[0]):
        o = rays_o[r].double().tolist()
        d = rays_d[r].double().tolist()
        t = float(near[r])
        # the range covered by any box (slab test, done by hand)
        lo_all, hi_all = math.inf, -math.inf
        for lvl in range(levels):
            tin, tout = -math.inf, math.inf
            for a in range(3):
                lo, hi = float(aabbs[lvl, a]), float(aabbs[lvl, a + 3])
                if d[a] == 0:
                    if not lo <= o[a] <= hi:
                        tin, tout = math.inf, -math.inf
                    continue
                t1, t2 = (lo - o[a]) / d[a], (hi - o[a]) / d[a]
                tin, tout = max(tin, min(t1, t2)), min(tout, max(t1, t2))
            if tout > tin and tout > 0:
                lo_all, hi_all = min(lo_all, tin), max(hi_all, tout)
        lo_all, hi_all = max(lo_all, float(near[r])), min(hi_all, float(far[r]))
        if not hi_all > lo_all:
            continue
        while True:
            dt = max(step, cone * t)
            mid = t + 0.5 * dt
            if mid >= hi_all:
                break
            if mid >= lo_all:
                x = [o[a] + mid * d[a] for a in range(3)]
                for lvl in range(levels):
                    idx = [
                        math.floor((x[a] - float(aabbs[lvl, a])) / float(aabbs[lvl, a + 3] - aabbs[lvl, a]) * res[a])
                        for a in range(3)
                    ]
                    if all(0 <= idx[a] < res[a] for a in range(3)):
                        if bool(binaries[lvl, idx[0], idx[1], idx[2]]):
                            out.append((r, t, t + dt))
                        break
            t = t + dt
    return out


def _random_rays(n, spread=0.6, origin_radius=3.0):
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    origins = -dirs * origin_radius + torch.randn(n, 3) * spread
    return origins, dirs


@pytest.mark.parametrize("cone", [0.0, 0.05])
@pytest.mark.parametrize("levels", [1, 2])
def test_traverse_matches_per_ray_loop(cone, levels):
    rays_o, rays_d = _random_rays(24)
    rays_d[0] = torch.tensor([0.0, 0.0, 1.0])  # axis-parallel rays
    # y = -0.23: off the cell planes. (y = -0.2 lies on the face between y cells 1 and 2 of this 5-cell axis, where
    # float32 rounding of the lookup picks the cell for the whole ray; docs/traversal.md allows that difference and
    # tests/test_traverse.py checks grazing rays under that tolerance.)
    rays_o[0] = torch.tensor([0.1, -0.23, -3.0])
    rays_d[1] = torch.tensor([1.0, 0.0, 0.0])
    rays_o[1] = torch.tensor([-3.0, 5.0, 0.0])  # misses everything
    binaries = torch.rand(levels, 6, 5, 4) > 0.5
    base = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    aabbs = torch.stack([nacc.grid._enlarge_aabb(base, 2**i) for i in range(levels)])
    near = torch.rand(24) * 0.5
    far = 2.5 + torch.rand(24) * 4
    step = 0.07
    ray_ids, t0, t1 = traverse_grids_samples(rays_o, rays_d, binaries, aabbs, near, far, step, cone)
    expected = _loop_traverse(rays_o, rays_d, binaries, aabbs, near, far, step, cone)
    assert ray_ids.tolist() == [e[0] for e in expected]
    torch.testing.assert_close(t0, torch.tensor([e[1] for e in expected]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t1, torch.tensor([e[2] for e in expected]), rtol=1e-5, atol=1e-5)
    assert len(expected) > 20  # the case is not trivially empty


def test_traverse_properties():
    rays_o, rays_d = _random_rays(200)
    binaries = torch.rand(1, 16, 16, 16) > 0.7
    aabb = torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]])
    near = torch.full((200,), 2.0)
    far = torch.full((200,), 3.5)
    step = 0.01
    intervals, samples = nacc.traverse_grids(rays_o, rays_d, binaries, aabb, near, far, step, 0.0)
    t0 = intervals.vals[intervals.is_left]
    t1 = intervals.vals[intervals.is_right]
    ri = samples.ray_indices
    mids = samples.vals
    torch.testing.assert_close((t0 + t1) / 2, mids)
    torch.testing.assert_close(t1 - t0, torch.full_like(t0, step), rtol=1e-4, atol=1e-6)
    # every sample in an occupied cell, inside [near, far] and the box
    x = rays_o[ri] + mids[:, None] * rays_d[ri]
    idx = ((x + 1) / 2 * 16).floor().long()
    assert ((idx >= 0) & (idx < 16)).all()
    assert binaries[0, idx[:, 0], idx[:, 1], idx[:, 2]].all()
    assert (mids >= 2.0).all() and (mids < 3.5).all()
    t_min, t_max, hit = nacc.ray_aabb_intersect(rays_o, rays_d, aabb)
    assert (mids >= t_min[ri, 0] - 1e-5).all() and (mids <= t_max[ri, 0] + 1e-5).all()
    # sorted per ray, ray-major
    same = ri[1:] == ri[:-1]
    assert (ri[1:] >= ri[:-1]).all()
    assert (mids[1:][same] > mids[:-1][same]).all()
    # packed_info consistent with ray indices
    torch.testing.assert_close(samples.packed_info, nacc.pack_info(ri, 200))
    assert intervals.packed_info[:, 1].sum() == intervals.vals.numel()


def test_traverse_cone_angle_step_growth():
    rays_o = torch.tensor([[0.0, 0.0, -0.5]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0]])
    binaries = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    aabb = torch.tensor([[-10.0, -10.0, -10.0, 10.0, 10.0, 10.0]])
    step, cone = 0.01, 0.1
    ri, t0, t1 = traverse_grids_samples(
        rays_o, rays_d, binaries, aabb, torch.tensor([0.0]), torch.tensor([8.0]), step, cone
    )
    dt = t1 - t0
    torch.testing.assert_close(dt, torch.clamp(t0 * cone, min=step), rtol=1e-5, atol=1e-7)
    assert (t0[1:] == t1[:-1]).all()  # contiguous march along one ray


def test_traverse_empty_grid_misses_and_no_rays():
    rays_o, rays_d = _random_rays(50)
    aabb = torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]])
    empty = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    intervals, samples = nacc.traverse_grids(rays_o, rays_d, empty, aabb, step_size=0.01)
    assert samples.vals.numel() == 0 and intervals.vals.numel() == 0
    assert samples.packed_info.shape == (50, 2) and samples.packed_info[:, 1].sum() == 0
    full = torch.ones(1, 8, 8, 8, dtype=torch.bool)
    away = torch.tensor([[0.0, 0.0, 1.0]]).repeat(50, 1)  # origins beyond the box, looking away
    _, samples = nacc.traverse_grids(rays_o * 0 + torch.tensor([0.0, 0.0, 5.0]), away, full, aabb, step_size=0.01)
    assert samples.vals.numel() == 0
    _, samples = nacc.traverse_grids(torch.zeros(0, 3), torch.zeros(0, 3), full, aabb, step_size=0.01)
    assert samples.vals.numel() == 0 and samples.packed_info.shape == (0, 2)


def test_intervals_share_edges_only_when_contiguous():
    rays_o = torch.tensor([[-0.95, 0.05, 0.05]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0]])
    binaries = torch.zeros(1, 4, 1, 1, dtype=torch.bool)
    binaries[0, 0] = True
    binaries[0, 2] = True  # occupied, empty, occupied along x
    aabb = torch.tensor([[-1.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    intervals, samples = nacc.traverse_grids(rays_o, rays_d, binaries, aabb, step_size=0.1)
    starts = intervals.vals[intervals.is_left]
    ends = intervals.vals[intervals.is_right]
    assert starts.numel() == ends.numel() == samples.vals.numel()
    gaps = (starts[1:] - ends[:-1]).abs() > 1e-6
    assert int(gaps.sum()) == 1  # exactly one jump over the empty cell
    assert intervals.vals.numel() == samples.vals.numel() + 2  # two runs -> two extra left edges


def test_ray_aabb_intersect_values():
    rays_o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    aabbs = torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]])
    t_min, t_max, hit = nacc.ray_aabb_intersect(rays_o, rays_d, aabbs)
    assert hit[:, 0].tolist() == [True, True, False, False]  # last box is behind the ray
    assert t_min[0, 0] == 2.0 and t_max[0, 0] == 4.0
    assert t_min[1, 0] == -1.0 and t_max[1, 0] == 1.0  # origin inside, default near = -inf
    assert math.isinf(t_min[2, 0]) and math.isinf(t_max[2, 0])
    t_min, t_max, hit = nacc.ray_aabb_intersect(rays_o, rays_d, aabbs, near_plane=0.0, far_plane=3.0, miss_value=-1)
    assert t_min[0, 0] == 2.0 and t_max[0, 0] == 3.0
    assert t_min[1, 0] == 0.0 and t_max[1, 0] == 1.0
    assert t_min[2, 0] == -1.0


class _Sphere:
    """Analytic density: a solid ball of radius 0.5 at the origin."""

    def density(self, x):
        return 100.0 * (x.norm(dim=-1) < 0.5).to(x.dtype)


def _trained_grid(levels=1, resolution=32):
    est = nacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=resolution, levels=levels)
    est.train()
    sphere = _Sphere()
    for step in range(0, 64, 16):
        est.update_every_n_steps(step, lambda x: sphere.density(x)[:, None] * 1e-2, warmup_steps=32, n=16)
    return est, sphere


def test_estimator_grid_covers_the_object():
    est, sphere = _trained_grid()
    centers = (est.grid_coords.float() + 0.5) / 32 * 2 - 1
    inside = centers.norm(dim=-1) < 0.5 - 2 / 32
    outside = centers.norm(dim=-1) > 0.5 + 2 / 32
    occ = est.binaries.reshape(-1)
    assert occ[inside].all()
    assert not occ[outside].any()


def test_estimator_sampling_respects_planes_and_cells():
    est, sphere = _trained_grid(levels=2)
    rays_o, rays_d = _random_rays(300, spread=0.2)
    t_min = torch.full((300,), 2.6)
    t_max = torch.full((300,), 3.2)
    ri, t0, t1 = est.sampling(
        rays_o, rays_d, near_plane=2.5, far_plane=3.3, t_min=t_min, t_max=t_max, render_step_size=0.005
    )
    mids = (t0 + t1) / 2
    assert ri.numel() > 0
    assert (mids >= 2.6).all() and (mids < 3.2).all()
    x = rays_o[ri] + rays_d[ri] * mids[:, None]
    values, inside = nacc.grid._query(x, est.binaries, est.aabbs[0])
    assert inside.all() and values.all()
    # with a density function: nothing behind the opaque sphere survives early stopping
    ri2, t02, t12 = est.sampling(
        rays_o,
        rays_d,
        sigma_fn=lambda a, b, r: sphere.density(rays_o[r] + rays_d[r] * ((a + b) / 2)[:, None]),
        render_step_size=0.005,
        early_stop_eps=1e-3,
    )
    ri3, _, _ = est.sampling(rays_o, rays_d, render_step_size=0.005)  # the same march without sigma_fn
    assert 0 < ri2.numel() < ri3.numel(), "early stopping inside the opaque ball must drop samples"
    per_ray_last = torch.zeros(300).scatter_reduce(0, ri2, t12, "amax", include_self=False)
    hit_t = nacc.ray_aabb_intersect(rays_o, rays_d, torch.tensor([[-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]]))[0][:, 0]
    has = torch.bincount(ri2, minlength=300) > 0
    # samples end well before the far side of the ball (the ball is opaque: sigma * step = 0.5 per sample)
    assert (per_ray_last[has] < hit_t[has] + 0.5 + 0.1).all()


def test_estimator_state_dict_round_trip_and_eval_mode_update_error():
    est, _ = _trained_grid()
    state = est.state_dict()
    assert {"occs", "binaries", "aabbs", "resolution"} <= set(state)
    fresh = nacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=32)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.binaries, est.binaries)
    with pytest.raises(RuntimeError, match="training"):
        fresh.eval()
        fresh.update_every_n_steps(0, lambda x: x[:, :1])


def test_ema_update_and_threshold():
    est = nacc.OccGridEstimator(roi_aabb=[0, 0, 0, 1, 1, 1], resolution=2)
    est.train()
    est._update(0, lambda x: torch.full((x.shape[0], 1), 0.5), warmup_steps=10)
    assert torch.allclose(est.occs, torch.full_like(est.occs, 0.5))
    assert est.binaries.all()  # 0.5 > min(mean, occ_thre=0.01)
    est._update(1, lambda x: torch.zeros(x.shape[0], 1), ema_decay=0.5, warmup_steps=10)
    torch.testing.assert_close(est.occs, torch.full_like(est.occs, 0.25))
    assert est.binaries.all()
    # threshold = min(mean, occ_thre): with occ_thre above the mean, cells equal to the mean are not occupied
    est._update(2, lambda x: torch.zeros(x.shape[0], 1), ema_decay=0.5, warmup_steps=10, occ_thre=1.0)
    assert not est.binaries.any()
    # duplicate cell ids reduce with max deterministically
    from nerfaccel_plugin._torch_impl import _grid_ema_update

    occs = torch.tensor([0.2, -1.0, 0.0])
    new = _grid_ema_update(occs, torch.tensor([0, 0, 1, 2]), torch.tensor([0.1, 0.7, 5.0, 0.3]), 0.5)
    torch.testing.assert_close(new, torch.tensor([0.7, -1.0, 0.3]))


def test_mark_invisible_cells():
    est = nacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=8)
    # one OpenCV camera at z=-3 looking at +z with a narrow field of view: only central cells are seen
    c2w = torch.eye(4)[None].clone()
    c2w[0, 2, 3] = -3.0
    K = torch.tensor([[100.0, 0.0, 20.0], [0.0, 100.0, 20.0], [0.0, 0.0, 1.0]])
    est.mark_invisible_cells(K, c2w, width=40, height=40)
    invisible = (est.occs < 0).reshape(8, 8, 8)
    assert invisible.any() and not invisible.all()
    assert not invisible[3:5, 3:5, :].any()  # the cells on the optical axis are seen
    assert invisible[0, 0, :].all()
    est.train()
    est._update(0, lambda x: torch.ones(x.shape[0], 1), warmup_steps=10)
    assert (est.occs[invisible.reshape(-1)] == -1).all()
    assert not est.binaries[0][invisible].any()
    assert est.binaries[0][~invisible].all()


def test_estimator_rejects_bad_configuration():
    with pytest.raises(ValueError, match="contraction_type"):
        nacc.OccGridEstimator([0, 0, 0, 1, 1, 1], contraction_type="aabb")
    with pytest.raises(ValueError, match="roi_aabb"):
        nacc.OccGridEstimator([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        nacc.OccGridEstimator([0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="resolution"):
        nacc.OccGridEstimator([0, 0, 0, 1, 1, 1], resolution=0)
    with pytest.raises(ValueError, match="levels"):
        nacc.OccGridEstimator([0, 0, 0, 1, 1, 1], levels=0)


def _two_by_two_grid() -> nacc.OccGridEstimator:
    """8 cells of [-1, 1]^3 with centres at (+-0.5, +-0.5, +-0.5); occs viewed as [x, y, z]."""
    return nacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=2)


def test_mark_invisible_cells_near_plane_rule():
    """nerfacc 0.5.3's rule: a cell in view but closer than near_plane to ANY camera is invisible, even when
    another camera sees it from far enough away (before, one such camera made it visible)."""
    # Camera 1 at z = -1 looking along +z: the z = -0.5 cells are at depth 0.5 (< near_plane = 1) and project to
    # u, v = 1.5 +- 1 * 0.5 / 0.5 = 0.5 or 2.5 (inside the 3 x 3 image); the z = +0.5 cells at depth 1.5 to
    # 1.5 +- 1/3. Camera 2 at z = -3 sees all eight at depths 2.5 and 3.5.
    K = torch.tensor([[1.0, 0.0, 1.5], [0.0, 1.0, 1.5], [0.0, 0.0, 1.0]])
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[0, 2, 3], c2w[1, 2, 3] = -1.0, -3.0
    for k in (K, K[None], K.expand(2, 3, 3)):  # (3, 3), (1, 3, 3) as nerfacc 0.5.3, (n, 3, 3)
        est = _two_by_two_grid()
        est.occs.fill_(0.3)
        est.mark_invisible_cells(k, c2w, width=3, height=3, near_plane=1.0)
        occs = est.occs.view(2, 2, 2)
        assert (occs[:, :, 0] == -1).all(), "too near to camera 1"
        assert (occs[:, :, 1] == 0.3).all(), "seen by both at >= near_plane; the occupancy is kept"
    # Camera 2 alone sees everything far enough away; camera 1 alone leaves the near cells unseen too.
    est = _two_by_two_grid()
    est.mark_invisible_cells(K, c2w[1:], width=3, height=3, near_plane=1.0)
    assert (est.occs == 0).all()
    est.mark_invisible_cells(K, c2w, width=3, height=3, near_plane=0.0)  # no near plane: all seen
    assert (est.occs == 0).all()
    with pytest.raises(ValueError, match="`K` must be"):
        est.mark_invisible_cells(K.expand(3, 3, 3), c2w, width=3, height=3)


def _per_cell(values: dict[int, float]):
    """occ_eval_fn giving each cell of the 2 x 2 x 2 grid a fixed value (by flat index, x-major)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        idx = (x > 0).long()
        flat = (idx[:, 0] * 2 + idx[:, 1]) * 2 + idx[:, 2]
        out = torch.zeros(x.shape[0])
        for cell, v in values.items():
            out[flat == cell] = v
        return out[:, None]

    return fn


def test_update_threshold_is_the_mean_over_visible_cells():
    """nerfacc 0.5.3: thre = min(occ_thre, mean of occs >= 0). The old clamp(min=0) counted invisible cells as 0."""
    est = _two_by_two_grid()
    est.train()
    est.occs[[0, 2, 4, 6]] = -1.0  # the z = -0.5 half is invisible
    est._update(0, _per_cell({1: 0.001, 3: 0.002, 5: 0.003, 7: 0.006}), warmup_steps=10)
    torch.testing.assert_close(est.occs[[1, 3, 5, 7]], torch.tensor([0.001, 0.002, 0.003, 0.006]))
    # visible mean 0.003 (not 0.0015): only the 0.006 cell is above it
    assert est.binaries.view(-1).nonzero()[:, 0].tolist() == [7]
    assert (est.occs[[0, 2, 4, 6]] == -1).all()


def test_sampling_alpha_threshold_cap_uses_visible_cells():
    """alpha_thre is capped at the grid's mean occupancy over visible cells (0.02 here, not 0.01)."""
    est = _two_by_two_grid()
    est.occs[[0, 2, 4, 6]] = -1.0
    est.occs[[1, 3, 5, 7]] = 0.02
    est.binaries[:] = True
    rays_o = torch.tensor([[0.5, 0.5, -3.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0]])

    def alpha_fn(t0, t1, ri):
        return torch.full_like(t0, 0.015)

    kw = dict(render_step_size=0.1, early_stop_eps=0.0, alpha_thre=0.5)
    assert est.sampling(rays_o, rays_d, **kw)[0].numel() == 20
    assert est.sampling(rays_o, rays_d, alpha_fn=alpha_fn, **kw)[0].numel() == 0  # 0.015 < cap 0.02
    est.occs[[1, 3, 5, 7]] = 0.012
    assert est.sampling(rays_o, rays_d, alpha_fn=alpha_fn, **kw)[0].numel() == 20  # 0.015 >= cap 0.012


def test_sync_distributed_option_and_env(monkeypatch):
    est = _two_by_two_grid()
    assert est.sync_distributed is None and est._sync_enabled()
    monkeypatch.setenv("NERFACCEL_GRID_SYNC", "0")
    assert not est._sync_enabled()
    assert nacc.OccGridEstimator([0, 0, 0, 1, 1, 1], resolution=2, sync_distributed=True)._sync_enabled()
    monkeypatch.delenv("NERFACCEL_GRID_SYNC")
    assert not nacc.OccGridEstimator([0, 0, 0, 1, 1, 1], resolution=2, sync_distributed=False)._sync_enabled()
    with pytest.raises(TypeError, match="sync_distributed"):
        nacc.OccGridEstimator([0, 0, 0, 1, 1, 1], sync_distributed="no")
