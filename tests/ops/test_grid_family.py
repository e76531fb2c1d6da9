"""grid family: ray_aabb_intersect, traverse_grids, grid_ema_update against the PyTorch reference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ops_helpers import close

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the float32 traversal tolerance
from traverse_tolerance import check_traversal  # noqa: E402

from nerfaccel_plugin import _torch_impl as R


def _rays(n: int, device: str, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    o = (torch.rand(n, 3, dtype=dtype) * 4 - 2).to(device)
    d = torch.randn(n, 3, dtype=dtype)
    d[: n // 8, 1] = 0.0  # axis-parallel rays
    d[: n // 16, 2] = 0.0
    d = (d / d.norm(dim=-1, keepdim=True)).to(device)
    return o, d


def test_ray_aabb_intersect(K):
    ext, device = K
    o, d = _rays(500, device)
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [0, 0, 0, 0.5, 0.5, 0.5], [3, 3, 3, 4, 4, 4]], device=device)
    for near, far, miss in [(0.0, 1e10, 1e10), (0.5, 2.0, -1.0)]:
        ref = R._ray_aabb_intersect(o, d, aabbs, near, far, miss)
        got = ext._ray_aabb_intersect(o, d, aabbs, near, far, miss)
        assert torch.equal(got[2].cpu(), ref[2].cpu())
        close(got[0], ref[0])
        close(got[1], ref[1])
    empty = ext._ray_aabb_intersect(o[:0], d[:0], aabbs, 0.0, 1e10, 0.0)
    assert empty[0].shape == (0, 3)


@pytest.mark.parametrize("cone_angle", [0.0, 0.004, 0.05])
@pytest.mark.parametrize("levels", [1, 3])
def test_traverse_grids(K, cone_angle, levels):
    ext, device = K
    res = (32, 24, 16)
    binaries = (torch.rand(levels, *res) > 0.6).to(device)
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1]]) * torch.tensor([2.0**lvl for lvl in range(levels)])[:, None]
    aabbs = aabbs.to(device)
    o, d = _rays(300, device)
    o[-5:] = torch.tensor([10.0, 10.0, 10.0], device=device)  # rays that miss everything
    d[-5:] = torch.tensor([1.0, 0.0, 0.0], device=device)
    near = torch.rand(300, device=device) * 0.3
    near[:10] = 0.0
    far = torch.full((300,), 1e10, device=device)
    far[10:20] = 1.0
    # float32 rays march in float32: the samples may differ from the float64 reference only as docs/traversal.md
    # states (t within a few ulps; a sample in one output only when its midpoint is within a few ulps of a cell
    # plane or of far), checked by traverse_tolerance; float64 rays give exactly the reference's samples.
    got = ext._traverse_grids(o, d, binaries, aabbs, near, far, 0.01, cone_angle)
    stats = check_traversal(got, o, d, binaries, aabbs, near, far, 0.01, cone_angle)
    assert stats["n_ref"] > 100
    args64 = [x.double() for x in (o, d)] + [binaries, aabbs.double(), near.double(), far.double()]
    ref = R._traverse_grids(*[x.cpu() for x in args64], 0.01, cone_angle)
    got = ext._traverse_grids(*args64, 0.01, cone_angle)
    assert torch.equal(got[0].cpu(), ref[0].cpu())
    close(got[1], ref[1])
    close(got[2], ref[2])


def test_traverse_grids_empty(K):
    ext, device = K
    binaries = torch.zeros(1, 8, 8, 8, dtype=torch.bool, device=device)
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1]], device=device)
    o, d = _rays(20, device)
    near, far = torch.zeros(20, device=device), torch.full((20,), 1e10, device=device)
    ri, t0, t1 = ext._traverse_grids(o, d, binaries, aabbs, near, far, 0.01, 0.0)
    assert ri.numel() == t0.numel() == t1.numel() == 0 and ri.dtype == torch.long
    ri, _, _ = ext._traverse_grids(o[:0], d[:0], binaries, aabbs, near[:0], far[:0], 0.01, 0.0)
    assert ri.numel() == 0


def test_grid_ema_update(K):
    ext, device = K
    occs = torch.rand(5000, device=device)
    occs[::7] = -1.0  # invisible cells
    cell_ids = torch.randint(0, 5000, (8000,), device=device)  # duplicates
    values = torch.rand(8000, device=device)
    ref = R._grid_ema_update(occs, cell_ids, values, 0.95)
    got = ext._grid_ema_update(occs, cell_ids, values, 0.95)
    assert torch.equal(got.cpu(), ref.cpu())
    empty = ext._grid_ema_update(occs, cell_ids[:0], values[:0], 0.95)
    assert torch.equal(empty.cpu(), occs.cpu())


def test_out_of_range_cell_ids_are_errors(K):
    """Both builds reject cell indices outside their range (the CUDA build checks on the host)."""
    ext, device = K
    with pytest.raises(ValueError, match=r"cell_ids\[1\] = 9 is outside \[0, 8\)"):
        ext._grid_ema_update(
            torch.rand(8, device=device), torch.tensor([2, 9], device=device), torch.rand(2, device=device), 0.9
        )
