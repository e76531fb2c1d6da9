"""Grid traversal of the compiled builds (float32 march with empty-cell skipping, cuda/include/nerfaccel/traverse.h).

Float32 rays: checked against the float64 PyTorch reference under the tolerance stated in docs/traversal.md
(tests/traverse_tolerance.py). Float64 rays: the march runs in float64 and must give exactly the reference's
samples. Adversarial rays: grazing cell faces, along an axis, near == far, t exactly on lattice points, a scene
1e4 units wide, a 1-cell grid, all-empty and all-full grids. The CUDA cases run when a GPU is present.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from traverse_tolerance import check_traversal

from nerfaccel_plugin import _torch_impl as R

# "cpu-plain": the CPU build marching as the CUDA kernel does (NERFACCEL_TRAVERSE_RUNS=0: every occupied sample
# looked up, cell-by-cell DDA), so the CPU tests also cover that configuration of the shared traverse.h.
DEVICES = [
    "cpu",
    "cpu-plain",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def _load(kind: str):
    """The kernel calls (nerfaccel_plugin._ops) once extension ``kind`` is loaded (its kernels registered)."""
    from nerfaccel_plugin import _ext, _ops

    try:
        _ext.load_backend(kind)
        return _ops
    except _ext.ExtensionUnavailable as err:
        if os.environ.get("NERFACCEL_REQUIRE_EXT") == "1":
            pytest.fail(f"the {kind} extension must build here (NERFACCEL_REQUIRE_EXT=1): {err}")
        pytest.skip(f"{kind} extension unavailable: {err}")


@pytest.fixture(params=DEVICES)
def K(request, monkeypatch):  # noqa: N802 - (kernels, device)
    if request.param == "cuda":
        return _load("cuda"), "cuda"
    monkeypatch.setenv("NERFACCEL_TRAVERSE_RUNS", "0" if request.param == "cpu-plain" else "1")
    return _load("cpp"), "cpu"


def _run(ext, device, o, d, b, aabbs, near, far, step, cone):
    args = [x.to(device) for x in (o, d, b, aabbs, near, far)]
    return ext._traverse_grids(*args, step, cone)


def _both(ext, device, o, d, b, aabbs, near, far, step, cone, min_samples=0):
    """float32: within the stated tolerance; float64: exactly the reference's samples. Returns the f32 stats."""
    o, d, aabbs, near, far = (x.float() for x in (o, d, aabbs, near, far))
    got = _run(ext, device, o, d, b, aabbs, near, far, step, cone)
    again = _run(ext, device, o, d, b, aabbs, near, far, step, cone)
    for x, y in zip(got, again, strict=True):
        assert torch.equal(x, y), "traversal must be deterministic"
    stats = check_traversal(got, o, d, b, aabbs, near, far, step, cone)
    assert stats["n_ref"] >= min_samples
    o64, d64, a64, n64, f64 = (x.double() for x in (o, d, aabbs, near, far))
    ref = R._traverse_grids(o64, d64, b, a64, n64, f64, step, cone)
    g64 = _run(ext, device, o64, d64, b, a64, n64, f64, step, cone)
    assert torch.equal(g64[0].cpu(), ref[0]), "float64 rays must give exactly the reference's samples"
    torch.testing.assert_close(g64[1].cpu(), ref[1], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(g64[2].cpu(), ref[2], rtol=1e-13, atol=1e-13)
    return stats


def _nested(levels: int, half: float = 1.0) -> torch.Tensor:
    base = torch.tensor([[-half, -half, -half, half, half, half]])
    return base * torch.tensor([2.0**lvl for lvl in range(levels)])[:, None]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("levels", [1, 4])
@pytest.mark.parametrize("cone", [0.0, 1 / 256, 0.05])
def test_random_scenes_within_stated_tolerance(K, seed, levels, cone):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(levels, 32, 24, 16, generator=g) > 0.7
    n = 256
    d = torch.randn(n, 3, generator=g)
    d[:16, 1] = 0.0  # axis-parallel rays
    d[16:24, 0] = 1e-7  # nearly parallel
    d = torch.nn.functional.normalize(d, dim=-1)
    o = -d * 3 + torch.randn(n, 3, generator=g) * 0.7
    near = torch.rand(n, generator=g) * 0.3
    far = torch.full((n,), 1e10)
    far[32:64] = torch.rand(32, generator=g) * 3  # far inside the grid
    _both(*K, o, d, b, _nested(levels), near, far, 0.01, cone, min_samples=500)


def _blobs(levels: int, res: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Sparse clustered occupancy (shells and blobs, most 8^3 blocks empty), like a trained grid."""
    g = torch.Generator().manual_seed(seed)
    axes = [(torch.arange(r, dtype=torch.float32) + 0.5) / r * 2 - 1 for r in res]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    out = torch.zeros(levels, *res, dtype=torch.bool)
    for lvl in range(levels):
        for _ in range(4):
            c = (torch.rand(3, generator=g) - 0.5) * 1.2
            r = 0.1 + torch.rand(1, generator=g).item() * 0.3
            dist = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2).sqrt()
            out[lvl] |= (dist - r).abs() < 0.08 if lvl % 2 == 0 else dist < r
    return out


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("cone", [0.0, 1 / 256])
def test_sparse_scenes_skip_blocks_and_runs(K, levels, cone):
    """Mostly empty coarse blocks (crossed in one step by the CPU march), runs of occupied cells (emitted without a
    lookup each), resolutions that are not multiples of the block size, and rays through block edges and corners."""
    res = (37, 24, 19)
    b = _blobs(levels, res, seed=levels)
    assert b.float().mean() < 0.2
    g = torch.Generator().manual_seed(7)
    n = 384
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    o = -d * 3 + torch.randn(n, 3, generator=g) * 0.4
    # Rays along block planes (cell 8, 16, ... faces) and through block corners.
    cells = [torch.linspace(-1, 1, r + 1) for r in res]
    for i in range(48):
        px, py, pz = cells[0][8 * (1 + i % 4)], cells[1][8 * (1 + i % 2)], cells[2][8 * (1 + i % 2)]
        o[i] = torch.tensor([-3.0, py.item(), pz.item()]) if i % 3 else torch.tensor([px.item(), -3.0, pz.item()])
        d[i] = torch.tensor([1.0, 0.0, 0.0]) if i % 3 else torch.tensor([0.0, 1.0, 0.0])
        if i % 6 == 5:  # diagonal through the corner (px, py, pz) of four blocks
            d[i] = torch.nn.functional.normalize(torch.tensor([px.item(), py.item(), pz.item()]) - o[i], dim=0)
    _both(*K, o, d, b, _nested(levels), torch.zeros(n), torch.full((n,), 1e10), 0.01, cone, min_samples=300)


@pytest.mark.parametrize("seed", range(6))
def test_random_resolutions_scales_and_offsets(K, seed):
    """Resolutions that are no multiple of anything, boxes off the origin and 1e-2 to 1e3 units wide, 1, 2 and 4
    levels, sparse and random grids, axis-parallel, nearly parallel and diagonal rays: the safety margin of the
    walks (docs/traversal.md) scales with all of them."""
    g = torch.Generator().manual_seed(100 + seed)
    levels = [1, 2, 4][seed % 3]
    res = tuple(int(x) for x in torch.randint(5, 70, (3,), generator=g))
    b = _blobs(levels, res, seed) if seed % 2 else torch.rand(levels, *res, generator=g) > 0.8
    scale = [1.0, 1e3, 1e-2, 37.0, 1.0, 250.0][seed]
    shift = (torch.rand(3, generator=g) - 0.5) * 3 * scale
    n = 200
    d = torch.randn(n, 3, generator=g)
    d[:20, seed % 3] = 0.0
    d[20:40, (seed + 1) % 3] = 1e-6
    d[40:50] = torch.tensor([1.0, 1.0, 1.0])
    d = torch.nn.functional.normalize(d, dim=-1)
    o = (-d * 3 + torch.randn(n, 3, generator=g) * 0.5) * scale + shift
    aabbs = _nested(levels) * scale + torch.cat([shift, shift])
    near = torch.rand(n, generator=g) * 0.3 * scale
    cone = [0.0, 1 / 256, 0.02][seed % 3]
    step = 2 * scale / max(res) / [3, 7, 1.5][seed % 3]
    _both(*K, o, d, b, aabbs, near, torch.full((n,), 1e10), step, cone, min_samples=200)


def _lookup_everywhere_f32(o, d, b, aabbs, near, far, step):
    """The rule at every lattice point (cone 0) in float32, with the operations of traverse.h's per-sample lookup
    in the same order (slab interval, t_k = near + k step, m = (t_k + t_k+1) / 2, x = o + m d, cell = trunc((x - lo)
    / (hi - lo) * res)): what the compiled march must return exactly when its safety margins cover the rounding of
    its DDA (every jump and run decides only samples that their own lookup would decide the same way)."""
    f32 = torch.float32
    o, d, aabbs, near, far = (x.to(f32) for x in (o, d, aabbs, near, far))
    n, inf = o.shape[0], math.inf
    lo, hi = torch.full((n,), inf), torch.full((n,), -inf)
    for box in aabbs:
        inside = (o >= box[:3]) & (o <= box[3:])
        t1, t2 = (box[:3] - o) / d, (box[3:] - o) / d
        flat = d == 0
        t_in = torch.where(flat, torch.where(inside, -inf, inf), torch.minimum(t1, t2)).amax(1)
        t_out = torch.where(flat, torch.where(inside, inf, -inf), torch.maximum(t1, t2)).amin(1)
        hit = (t_out > t_in) & (t_out > 0)
        lo = torch.where(hit, torch.minimum(lo, t_in), lo)
        hi = torch.where(hit, torch.maximum(hi, t_out), hi)
    lo, hi = torch.maximum(lo, near), torch.minimum(hi, far)
    live = torch.isfinite(lo) & (hi > lo)
    k_max = int(((hi - near) / step).masked_fill(~live, 0).max().ceil()) + 2
    k = torch.arange(k_max + 1, dtype=f32)
    t = near[:, None] + k[None] * torch.tensor(step, dtype=f32)  # (n, k_max + 1)
    t0, t1 = t[:, :-1], t[:, 1:]
    m = torch.tensor(0.5, dtype=f32) * (t0 + t1)
    keep = live[:, None] & (m >= lo[:, None]) & (m < hi[:, None])
    x = o[:, None, :] + m[..., None] * d[:, None, :]
    res = torch.tensor(b.shape[1:], dtype=f32)
    found = torch.zeros_like(keep)
    occupied = torch.zeros_like(keep)
    for lvl, box in enumerate(aabbs):
        f = (x - box[:3]) / (box[3:] - box[:3]) * res
        inside = ((f >= 0) & (f < res)).all(-1) & ~found
        idx = f.clamp(min=0).to(torch.int64).minimum(torch.tensor(b.shape[1:]) - 1)
        occupied |= inside & b[lvl][idx[..., 0], idx[..., 1], idx[..., 2]]
        found |= inside
    keep &= occupied
    ri = torch.arange(n)[:, None].expand_as(keep)[keep]
    return ri, t0[keep], t1[keep]


@pytest.mark.parametrize("levels", [1, 2])
def test_march_equals_a_lookup_at_every_lattice_point(K, levels):
    """The float32 march returns exactly the samples of a float32 lookup at every lattice point: midpoints exactly
    on cell faces (near = step / 2 puts them there on axis rays), rays along faces and edges, random rays and grids,
    resolutions that are no multiple of the block size. Not included: rays tilted by ~1e-7 off a face they run
    along; there the float32 lookup itself flips between the two cells from sample to sample (rounding of
    x - box_lo), and the stated tolerance against float64 (tests above) is the guarantee."""
    ext, device = K
    g = torch.Generator().manual_seed(11 + levels)
    res = (24, 19, 37)
    b = torch.rand(levels, *res, generator=g) > 0.55
    b[:, 8:16, :, 8:24] = False  # empty coarse blocks
    aabbs = _nested(levels)
    step = 2.0 / 48  # a quarter of the x cell size: lattice points on x faces
    n = 384
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    o = -d * 3 + torch.randn(n, 3, generator=g) * 0.5
    faces = [torch.linspace(-1, 1, r + 1) for r in res]
    for i in range(96):  # axis rays on faces and edges, midpoints on faces
        a = i % 3
        p = [faces[q][(5 * i + 3 * q) % (res[q] + 1)].item() for q in range(3)]
        p[a] = -3.0 + step / 2 if i % 2 else -3.0
        o[i] = torch.tensor(p)
        d[i] = torch.zeros(3)
        d[i, a] = 1.0
    d = torch.nn.functional.normalize(d, dim=-1)
    near = torch.zeros(n)
    near[96:192] = step / 2
    far = torch.full((n,), 1e10)
    want = _lookup_everywhere_f32(o, d, b, aabbs, near, far, step)
    assert want[0].numel() > 5000
    got = _run(ext, device, o, d, b, aabbs, near, far, step, 0.0)
    for name, x, y in zip(("ray_indices", "t_starts", "t_ends"), got, want, strict=True):
        assert torch.equal(x.cpu(), y), f"{name}: the march differs from a lookup at every lattice point"


def test_grazing_cell_faces(K):
    """Rays inside a cell plane (d_a = 0, o_a exactly on a face), and barely tilted out of it."""
    res = 16
    b = torch.zeros(1, res, res, res, dtype=torch.bool)
    b[0, ::2, 1::3, :] = True
    b[0, 7, :, :] = True
    faces = torch.linspace(-1, 1, res + 1)
    rays_o, rays_d = [], []
    for f in faces[::3].tolist():
        for tilt in (0.0, 1e-7, -1e-7, 1e-3):
            rays_o.append([f, -3.0, 0.3])
            rays_d.append([tilt, 1.0, 0.0])
            rays_o.append([0.11, f, -3.0])  # along z on a y face
            rays_d.append([0.0, tilt, 1.0])
            rays_o.append([-3.0, f, f])  # along x on an edge (two faces)
            rays_d.append([1.0, tilt, tilt])
    o = torch.tensor(rays_o)
    d = torch.nn.functional.normalize(torch.tensor(rays_d), dim=-1)
    n = o.shape[0]
    _both(*K, o, d, b, _nested(1), torch.zeros(n), torch.full((n,), 1e10), 1 / 64, 0.0, min_samples=100)


def test_along_axes_and_lattice_on_faces(K):
    """Axis rays whose lattice points (and box entry / far) fall exactly on cell faces: step = cell size / 4."""
    res = 8
    b = torch.rand(1, res, res, res, generator=torch.Generator().manual_seed(3)) > 0.5
    o, d = [], []
    for a in range(3):
        for c in (-0.75, -0.25, 0.0, 0.5):  # cell centres, a face (0.0) and an edge
            p = [c, c, c]
            p[a] = -2.0
            o.append(p)
            q = [0.0, 0.0, 0.0]
            q[a] = 1.0
            d.append(q)
            p2 = list(p)
            p2[a] = 2.0
            o.append(p2)
            q2 = [0.0, 0.0, 0.0]
            q2[a] = -1.0
            d.append(q2)
    o, d = torch.tensor(o), torch.tensor(d)
    n = o.shape[0]
    near = torch.zeros(n)
    far = torch.full((n,), 3.5)  # on a lattice point, inside the box
    _both(*K, o, d, b, _nested(1), near, far, 1 / 16, 0.0, min_samples=50)
    _both(*K, o, d, b, _nested(1), near + 0.5, far, 1 / 16, 1 / 256, min_samples=50)


def test_near_equal_far_and_inverted(K):
    ext, device = K
    b = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    o = torch.tensor([[-2.0, 0.1, 0.2]] * 4)
    d = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    near = torch.tensor([1.5, 2.0, 3.0, 2.0])
    far = torch.tensor([1.5, 2.0, 3.0, 1.0])
    ri, t0, t1 = _run(ext, device, o, d, b, _nested(1), near, far, 0.01, 0.0)
    assert ri.numel() == t0.numel() == t1.numel() == 0
    _both(ext, device, o, d, b, _nested(1), near, far, 0.01, 0.0)


def test_scene_1e4_units_wide(K):
    g = torch.Generator().manual_seed(5)
    b = torch.rand(2, 64, 64, 64, generator=g) > 0.9
    aabbs = _nested(2, half=5000.0)
    n = 128
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    o = -d * 1.2e4 + torch.randn(n, 3, generator=g) * 500
    step = 1e4 * math.sqrt(3) / 1024
    for cone in (0.0, 1 / 256):
        _both(*K, o, d, b, aabbs, torch.zeros(n), torch.full((n,), 1e10), step, cone, min_samples=100)


@pytest.mark.parametrize("occupied", [False, True])
def test_one_cell_grid(K, occupied):
    b = torch.full((1, 1, 1, 1), occupied)
    g = torch.Generator().manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    o = -d * 3 + torch.randn(64, 3, generator=g) * 0.5
    stats = _both(*K, o, d, b, _nested(1), torch.zeros(64), torch.full((64,), 1e10), 0.05, 0.0)
    assert (stats["n_ref"] > 100) == occupied


@pytest.mark.parametrize("fill", [False, True])
@pytest.mark.parametrize("cone", [0.0, 1 / 256])
def test_all_empty_and_all_full(K, fill, cone):
    b = torch.full((3, 16, 16, 16), fill)
    g = torch.Generator().manual_seed(2)
    d = torch.nn.functional.normalize(torch.randn(128, 3, generator=g), dim=-1)
    o = -d * 5 + torch.randn(128, 3, generator=g)
    stats = _both(*K, o, d, b, _nested(3), torch.zeros(128), torch.full((128,), 1e10), 0.02, cone)
    assert (stats["n_ref"] > 1000) == fill
    if fill:  # every lattice point between the first box entry and the last exit is kept
        assert stats["only_one"] == 0


def test_empty_cells_are_skipped():
    """The march evaluates far fewer lattice points than the plain lattice holds on a sparse grid (CPU build)."""
    ext = _load("cpp")
    g = torch.Generator().manual_seed(0)
    b = torch.rand(1, 64, 64, 64, generator=g) > 0.97
    d = torch.nn.functional.normalize(torch.randn(512, 3, generator=g), dim=-1)
    o = -d * 4
    near, far = torch.zeros(512), torch.full((512,), 1e10)
    step = 2 * math.sqrt(3) / 512
    visits = torch.ops.nerfaccel.traverse_grids_visits(o, d, b, _nested(1), near, far, step, 0.0)
    ri, _, _ = ext._traverse_grids(o, d, b, _nested(1), near, far, step, 0.0)
    t_in, t_out = R._slab_intervals(o.double(), d.double(), _nested(1).double())
    lattice = ((t_out - t_in).clamp(min=0) / step).sum().item()
    assert ri.numel() > 100
    assert visits.sum().item() < 0.25 * lattice
    assert visits.sum().item() < 4 * ri.numel()
