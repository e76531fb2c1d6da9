"""Ground truth of the embedded brick scene: occupancy, exact depth, box, motion, camera helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerfaccel_plugin.scene import BrickScene, focal_from_angle, look_at_origin, pixel_rays
from nerfaccel_plugin.scene.cameras import CAMERA_RADIUS, circle_positions, hemisphere_positions


@pytest.fixture(scope="module")
def scene() -> BrickScene:
    return BrickScene()


@pytest.fixture(scope="module")
def dyn() -> BrickScene:
    return BrickScene(dynamic=True)


def _grid(aabb: torch.Tensor, n: int, pad: float = 0.0) -> torch.Tensor:
    axes = [torch.linspace(float(aabb[i]) - pad, float(aabb[i + 3]) + pad, n, dtype=torch.float64) for i in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _extent_by_rays(s: BrickScene, times, n: int = 160) -> torch.Tensor:
    """True extent of the model (min xyz, max xyz) found by dense parallel rays from all six sides."""
    box = s.aabb.double()
    lo, hi = box[:3] - 0.05, box[3:] + 0.05
    out = torch.cat([hi.clone(), lo.clone()])
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        gu = torch.linspace(float(lo[u]), float(hi[u]), n, dtype=torch.float64)
        gv = torch.linspace(float(lo[v]), float(hi[v]), n, dtype=torch.float64)
        uu, vv = torch.meshgrid(gu, gv, indexing="ij")
        for sign in (-1.0, 1.0):
            o = torch.zeros(n * n, 3, dtype=torch.float64)
            o[:, u], o[:, v] = uu.reshape(-1), vv.reshape(-1)
            o[:, axis] = float(hi[axis]) if sign > 0 else float(lo[axis])
            d = torch.zeros_like(o)
            d[:, axis] = -sign
            for t in times:
                r = s.cast_rays(o, d, time=float(t))
                if r["hit"].any():
                    face = o[r["hit"], axis] - sign * r["t"][r["hit"]]
                    if sign > 0:
                        out[3 + axis] = max(out[3 + axis], face.max())
                    else:
                        out[axis] = min(out[axis], face.min())
    return out


def test_aabb_is_tight_and_inside_blender_box(scene: BrickScene, dyn: BrickScene) -> None:
    for s, times in ((scene, [0.0]), (dyn, [0.0, 0.25, 0.5, 0.75])):
        box = s.aabb
        assert box.shape == (6,) and box.dtype == torch.float32
        assert bool((box[:3] > -1.5).all()) and bool((box[3:] < 1.5).all())
        extent = _extent_by_rays(s, times).float()
        assert bool((box[:3] <= extent[:3]).all()) and bool((box[3:] >= extent[3:]).all())
        assert torch.allclose(box, extent, atol=0.06), (box, extent)
        # and the occupancy query finds nothing outside the box
        pts = _grid(box, 24, pad=0.3)
        outside = ((pts < box[:3].double()) | (pts > box[3:].double())).any(-1)
        for t in times:
            assert not s.occupancy(pts[outside], time=t).any()


def test_occupancy_known_points_and_types(scene: BrickScene) -> None:
    pts = np.array(
        [
            [0.0, 0.0, -0.58],  # inside the base plate
            [0.3, 0.3, -0.58],
            [0.0, 0.0, 1.4],  # high above
            [1.3, 0.0, 0.0],  # beside the model
            [0.0, 0.0, -0.7],  # below the base plate
        ]
    )
    occ_np = scene.occupancy(pts)
    assert isinstance(occ_np, np.ndarray) and occ_np.dtype == bool
    assert occ_np.tolist() == [True, True, False, False, False]
    occ_t = scene.occupancy(torch.tensor(pts, dtype=torch.float32))
    assert isinstance(occ_t, torch.Tensor) and occ_t.dtype == torch.bool
    assert occ_t.tolist() == occ_np.tolist()
    # leading dimensions are kept
    assert scene.occupancy(torch.zeros(2, 3, 3)).shape == (2, 3)


def test_model_has_thin_parts_and_gaps(scene: BrickScene) -> None:
    """The model fills a small part of its box (so an occupancy grid pays off) and has thin parts."""
    pts = _grid(scene.aabb, 64)
    frac = scene.occupancy(pts).double().mean().item()
    assert 0.02 < frac < 0.35
    # a horizontal line through the fence passes through posts separated by gaps
    xs = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    line = torch.stack([xs, torch.full_like(xs, -0.1875), torch.full_like(xs, -0.55 + 0.12)], -1)
    occ = scene.occupancy(line).int()
    runs = int((occ[1:] - occ[:-1] == 1).sum())
    assert runs >= 3
    widths = occ.sum().item() * (1.0 / 2000) / max(runs, 1)
    assert widths < 0.06  # posts are thin


def _view(scene: BrickScene, pos, res: int = 64, time: float = 0.0):
    c2w = look_at_origin(np.asarray(pos, float) / np.linalg.norm(pos) * CAMERA_RADIUS)
    focal = focal_from_angle(res)
    return c2w, focal, scene.render(c2w, res, res, focal, time)


@pytest.mark.parametrize("pos", [(3.0, -2.2, 2.0), (-1.0, 2.5, 0.6), (0.2, 0.1, 4.0)])
def test_depth_is_exact_against_occupancy(scene: BrickScene, pos) -> None:
    """Just before the reported depth the ray is outside the model, just after it is inside."""
    res = 64
    c2w, focal, out = _view(scene, pos, res)
    o, d = pixel_rays(torch.tensor(c2w[:3]), res, res, focal)
    hit = out["alpha"].reshape(-1) > 0
    assert 0.05 < hit.double().mean().item() < 0.9
    t = out["depth"].reshape(-1).double()
    assert torch.isinf(t[~hit]).all() and torch.isfinite(t[hit]).all()
    before = scene.occupancy(o[hit] + (t[hit] - 2e-4)[:, None] * d[hit])
    after = scene.occupancy(o[hit] + (t[hit] + 2e-4)[:, None] * d[hit])
    # (a ray grazing an edge may leave the solid again within 2e-4: allow a few such pixels)
    assert (~before).double().mean().item() > 0.99
    assert after.double().mean().item() > 0.99
    # an independent march with the occupancy query finds the same first surface
    idx = torch.nonzero(hit).squeeze(1)[::37]
    ts = torch.arange(0.0, 6.0, 0.004, dtype=torch.float64)
    pts = o[idx, None] + ts[None, :, None] * d[idx, None]
    occ = scene.occupancy(pts.reshape(-1, 3)).reshape(len(idx), -1)
    first = ts[occ.int().argmax(1)]
    assert occ.any(1).all()
    # never inside before the exact depth; found within one step of it unless a thin part was stepped over
    assert bool((first >= t[idx] - 1e-9).all())
    assert ((first - t[idx]) <= 0.0041).double().mean().item() > 0.95
    # misses really miss
    miss = torch.nonzero(~hit).squeeze(1)[::97]
    pts = o[miss, None] + ts[None, :, None] * d[miss, None]
    assert not scene.occupancy(pts.reshape(-1, 3)).any()


def test_render_outputs_consistent(scene: BrickScene) -> None:
    c2w, focal, out = _view(scene, (2.0, -3.0, 1.5), 48)
    assert out["rgb"].shape == (48, 48, 3) and out["alpha"].shape == (48, 48)
    alpha = out["alpha"]
    assert set(alpha.unique().tolist()) <= {0.0, 1.0}
    assert float(out["rgb"][alpha == 0].abs().max()) == 0.0
    assert float(out["rgb"].max()) <= 1.0 and float(out["rgb"][alpha > 0].min()) >= 0.0
    # z-depth is the ray depth times the cosine to the optical axis
    o, d = pixel_rays(torch.tensor(c2w[:3]), 48, 48, focal)
    cos = (d @ -torch.tensor(c2w[:3, 2])).reshape(48, 48).float()
    m = alpha > 0
    assert torch.allclose(out["z_depth"][m], out["depth"][m] * cos[m], rtol=1e-5)
    # normals are unit length and face the camera
    nrm = out["normal"][m]
    assert torch.allclose(nrm.norm(dim=-1), torch.ones(int(m.sum())), atol=1e-5)
    assert bool(((nrm.double() * d.reshape(48, 48, 3)[m]).sum(-1) < 1e-6).all())
    # cast_rays agrees with render
    ref = scene.cast_rays(o, d)
    assert torch.equal(ref["hit"].reshape(48, 48), m)
    assert torch.allclose(ref["t"][ref["hit"]].float(), out["depth"][m])


def test_supersampling_gives_partial_coverage_on_edges(scene: BrickScene) -> None:
    c2w, focal, one = _view(scene, (3.0, 2.0, 1.0), 40)
    four = scene.render(c2w, 40, 40, focal, supersample=2)
    frac = four["alpha"][(four["alpha"] > 0) & (four["alpha"] < 1)]
    assert frac.numel() > 0
    assert torch.equal(four["depth"], one["depth"])
    # 2 x 2 supersampling is exactly a render at twice the resolution, pooled: alpha is the mean coverage and
    # rgb the coverage-weighted mean colour (straight, not premultiplied, as in the PNGs)
    big = scene.render(c2w, 80, 80, 2 * focal)
    cover = big["alpha"].reshape(40, 2, 40, 2).sum((1, 3))
    torch.testing.assert_close(four["alpha"], cover / 4, rtol=0, atol=0)
    premult = (big["rgb"] * big["alpha"][..., None]).reshape(40, 2, 40, 2, 3).sum((1, 3))
    hit = cover > 0
    torch.testing.assert_close(four["rgb"][hit], (premult / cover[..., None])[hit], rtol=0, atol=1e-6)
    assert ((four["alpha"] == 1) & (one["alpha"] == 1)).sum() > 100


def test_dynamic_parts_move_and_static_do_not(scene: BrickScene, dyn: BrickScene) -> None:
    pts = _grid(dyn.aabb, 40)
    occ0 = dyn.occupancy(pts, time=0.0)
    occ_half = dyn.occupancy(pts, time=0.25)
    changed = (occ0 != occ_half).double().mean().item()
    assert changed > 1e-3
    assert torch.equal(scene.occupancy(pts, time=0.0), scene.occupancy(pts, time=0.7))
    # the base plate does not move
    base = torch.tensor([[x, y, -0.58] for x in np.linspace(-0.9, 0.9, 7) for y in np.linspace(-0.7, 0.7, 5)])
    for t in (0.0, 0.3, 0.9):
        assert dyn.occupancy(base, time=t).all()


def test_render_is_deterministic(scene: BrickScene) -> None:
    _, _, a = _view(scene, (1.0, -3.0, 2.0), 40)
    _, _, b = _view(BrickScene(seed=0), (1.0, -3.0, 2.0), 40)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_camera_helpers_follow_blender_conventions() -> None:
    rng = np.random.default_rng(0)
    pos = hemisphere_positions(50, rng)
    assert np.allclose(np.linalg.norm(pos, axis=1), CAMERA_RADIUS)
    assert (pos[:, 2] > 0).all()
    for p in list(pos) + list(circle_positions(8)):
        m = look_at_origin(p)
        r = m[:3, :3]
        assert np.allclose(r.T @ r, np.eye(3), atol=1e-12) and math.isclose(np.linalg.det(r), 1.0)
        assert np.allclose(m[3], [0, 0, 0, 1])
        assert np.allclose(m[:3, 2], p / np.linalg.norm(p))  # camera +z points away from the origin
        assert abs(m[2, 0]) < 1e-12  # no roll: the right axis is horizontal
        assert m[2, 1] >= 0  # up axis points up
    assert math.isclose(focal_from_angle(800), 1111.111, rel_tol=1e-5)  # NeRF-synthetic's focal at 800 px


@pytest.mark.parametrize("kind", ["pinhole", "parallel"])
def test_binned_ray_casting_matches_brute_force(scene: BrickScene, kind: str) -> None:
    """The binned fast paths give the same hits as the all-pairs bounding-sphere test."""
    flat = scene.at(0.0)
    g = torch.Generator().manual_seed(0)
    n = 4000
    if kind == "pinhole":
        o = torch.tensor([2.5, -2.0, 2.2], dtype=torch.float64).expand(n, 3).contiguous()
        target = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2.4
        d = target - o
    else:
        d = torch.tensor([0.3, -0.5, -0.8], dtype=torch.float64).expand(n, 3).contiguous()
        o = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2.4 - 3 * d
    d = d / d.norm(dim=-1, keepdim=True)
    t_fast, n_fast, p_fast = flat.cast(o, d)
    t_ref, n_ref, p_ref = flat._cast_chunk(o, d, 0.0)
    assert 0.2 < (p_ref >= 0).double().mean().item() < 0.95
    assert torch.equal(p_fast >= 0, p_ref >= 0)
    assert torch.allclose(t_fast[p_ref >= 0], t_ref[p_ref >= 0], atol=1e-9)
    assert torch.allclose(n_fast, n_ref, atol=1e-9)


def test_binned_occupancy_matches_sphere_candidates(dyn: BrickScene) -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(60000, 3, generator=g, dtype=torch.float64) - 0.5) * 2.6
    for t in (0.0, 0.4):
        flat = dyn.at(t)
        binned = flat.occupancy(x)
        assert 0.005 < binned.double().mean().item() < 0.3
        assert torch.equal(binned, flat.occupancy(x, binned=False))


def test_occupancy_grid(scene: BrickScene, dyn: BrickScene) -> None:
    res = 24
    grid = scene.occupancy_grid(res, samples=2)
    assert grid.shape == (res, res, res) and float(grid.min()) >= 0 and float(grid.max()) == 1.0
    box = scene.aabb.double()
    size = (box[3:] - box[:3]) / res
    # cells are indexed [x, y, z]; each value is the inside fraction of the cell's 2 x 2 x 2 probe points
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, res, (40, 3), generator=g)
    cells = torch.cat([cells, torch.nonzero(grid > 0)[::50]])
    offsets = torch.tensor([[a, b, c] for a in (0.25, 0.75) for b in (0.25, 0.75) for c in (0.25, 0.75)])
    for cell in cells:
        pts = box[:3] + (cell.double() + offsets.double()) * size
        assert grid[tuple(cell.tolist())] == pytest.approx(scene.occupancy(pts).double().mean().item())
    empty = torch.nonzero(grid == 0.0)
    assert len(empty) > 0 and (grid == 1.0).any()
    centres_empty = box[:3] + (empty.double() + 0.5) * size
    assert scene.occupancy(centres_empty).double().mean().item() < 0.02
    # the base plate (x in [-1, 1], y in [-0.75, 0.75]) fills the bottom layer of cells above it
    cx = box[0] + (torch.arange(res) + 0.5) * size[0]
    cy = box[1] + (torch.arange(res) + 0.5) * size[1]
    above = (cx.abs() < 0.95)[:, None] & (cy.abs() < 0.7)[None, :]
    assert (grid[..., 0][above] > 0).all() and (grid[..., 0][~above] < 1).all()
    # the dynamic grid over several times covers each time's grid
    times = [0.0, 0.25, 0.5]
    union = dyn.occupancy_grid(res, times=times)
    for t in times:
        assert bool((union >= dyn.occupancy_grid(res, times=[t])).all())
