"""Bad input is either handled correctly or rejected with an error naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch

import nerfaccel_plugin as nacc

# Every test once on the PyTorch reference and once on the C++ build (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("semantic_backend")

AABB = torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]])
GRID = torch.ones(1, 4, 4, 4, dtype=torch.bool)


def _rays(n=4):
    return torch.zeros(n, 3) + torch.tensor([0.0, 0.0, -3.0]), torch.tensor([[0.0, 0.0, 1.0]]).repeat(n, 1)


def test_wrong_dtype_messages():
    with pytest.raises(TypeError, match="`inputs`.*floating"):
        nacc.inclusive_sum(torch.arange(5), torch.tensor([[0, 5]]))
    with pytest.raises(TypeError, match="`packed_info`.*integer"):
        nacc.inclusive_sum(torch.rand(5), torch.tensor([[0.0, 5.0]]))
    with pytest.raises(TypeError, match="`ray_indices`.*integer"):
        nacc.render_weight_from_alpha(torch.rand(3), ray_indices=torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(TypeError, match="`binaries`.*bool"):
        nacc.traverse_grids(*_rays(), GRID.float(), AABB)
    with pytest.raises(TypeError, match="`rays_o`.*torch.Tensor"):
        nacc.ray_aabb_intersect([[0.0, 0.0, 0.0]], torch.rand(1, 3), AABB)


def test_wrong_device_mix_is_named():
    meta_info = torch.tensor([[0, 3]], device="meta")
    with pytest.raises(ValueError, match="same device"):
        nacc.render_weight_from_alpha(torch.rand(3), packed_info=meta_info)
    rays_o, rays_d = _rays()
    with pytest.raises(ValueError, match="`rays_d`.*same device"):
        nacc.ray_aabb_intersect(rays_o, rays_d.to("meta"), AABB)


def test_mismatched_lengths_and_shapes():
    with pytest.raises(ValueError, match="`ray_indices` has 2 entries but there are 3 samples"):
        nacc.render_weight_from_alpha(torch.rand(3), ray_indices=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="`t_starts`.*same shape"):
        nacc.render_weight_from_density(
            torch.rand(4), torch.rand(3), torch.rand(3), ray_indices=torch.tensor([0, 0, 1])
        )
    with pytest.raises(ValueError, match="out-of-range"):
        nacc.inclusive_sum(torch.rand(3), torch.tensor([[0, 2], [2, 5]]))
    with pytest.raises(ValueError, match="`values` must have shape"):
        nacc.accumulate_along_rays(torch.rand(3), torch.rand(4, 3), torch.tensor([0, 0, 1]), n_rays=2)
    with pytest.raises(ValueError, match="n_rays"):
        nacc.accumulate_along_rays(torch.rand(3), None, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"indices >= n_rays=2"):
        nacc.accumulate_along_rays(torch.rand(3), None, torch.tensor([0, 1, 2]), n_rays=2)
    with pytest.raises(ValueError, match="sorted"):
        nacc.render_weight_from_alpha(torch.rand(3), ray_indices=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match=r"rays_o.*\(n_rays, 3\)"):
        nacc.ray_aabb_intersect(torch.rand(4, 2), torch.rand(4, 2), AABB)
    with pytest.raises(ValueError, match="aabbs.*6"):
        nacc.ray_aabb_intersect(*_rays(), torch.rand(1, 4))
    with pytest.raises(ValueError, match="levels"):
        nacc.traverse_grids(*_rays(), torch.ones(2, 4, 4, 4, dtype=torch.bool), AABB)
    with pytest.raises(ValueError, match="near_planes.*one per ray"):
        nacc.traverse_grids(*_rays(), GRID, AABB, near_planes=torch.zeros(3))


def test_nan_and_degenerate_rays():
    rays_o, rays_d = _rays()
    bad = rays_o.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="`rays_o` contains NaN"):
        nacc.traverse_grids(bad, rays_d, GRID, AABB)
    zero = rays_d.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match="zero-length directions"):
        nacc.ray_aabb_intersect(rays_o, zero, AABB)
    est = nacc.OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=4)
    with pytest.raises(ValueError, match="`rays_d` contains NaN"):
        est.sampling(rays_o, torch.full_like(rays_d, float("nan")))
    with pytest.raises(ValueError, match="step_size"):
        nacc.traverse_grids(rays_o, rays_d, GRID, AABB, step_size=0.0)
    with pytest.raises(ValueError, match="cone_angle"):
        nacc.traverse_grids(rays_o, rays_d, GRID, AABB, step_size=0.1, cone_angle=-1.0)
    with pytest.raises(ValueError, match="max > min"):
        nacc.ray_aabb_intersect(rays_o, rays_d, torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]))


def test_field_output_shapes_are_checked():
    t0 = torch.rand(5)
    with pytest.raises(ValueError, match="rgb_sigma_fn.*sigmas of shape"):
        nacc.rendering(
            t0,
            t0 + 1,
            torch.zeros(5, dtype=torch.long),
            n_rays=1,
            rgb_sigma_fn=lambda *_: (torch.rand(5, 3), torch.rand(5, 1)),
        )
    with pytest.raises(ValueError, match="rgb_sigma_fn.*or.*rgb_alpha_fn"):
        nacc.rendering(t0, t0 + 1)
    est = nacc.OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=4)
    est.train()
    with pytest.raises(ValueError, match="occ_eval_fn"):
        est.update_every_n_steps(0, lambda x: torch.rand(3))


def test_non_contiguous_inputs_give_the_same_results():
    base = torch.rand(6, 2)
    x = base[:, 0]  # stride 2
    assert not x.is_contiguous()
    info = torch.tensor([[0, 2], [2, 4]])
    torch.testing.assert_close(nacc.exclusive_prod(x, info), nacc.exclusive_prod(x.contiguous(), info))
    info_nc = torch.tensor([[0, 2, 9], [2, 4, 9]])[:, :2]
    torch.testing.assert_close(nacc.inclusive_sum(x, info_nc), nacc.inclusive_sum(x, info))
    rays_o = torch.rand(8, 6)[:, ::2] * 0.1 + torch.tensor([0.0, 0.0, -3.0])
    rays_d = torch.nn.functional.normalize(torch.rand(8, 6)[:, 1::2] * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    a = nacc.traverse_grids(rays_o, rays_d, GRID, AABB, step_size=0.1)[1].vals
    b = nacc.traverse_grids(rays_o.contiguous(), rays_d.contiguous(), GRID, AABB, step_size=0.1)[1].vals
    torch.testing.assert_close(a, b)
    w = torch.rand(4, 5).t()  # non-contiguous batched
    torch.testing.assert_close(nacc.render_weight_from_alpha(w)[0], nacc.render_weight_from_alpha(w.contiguous())[0])


def test_contract_and_importance_sampling_argument_errors():
    with pytest.raises(ValueError, match="ord"):
        nacc.contract(torch.rand(4, 3), [0, 0, 0, 1, 1, 1], ord="l1")
    with pytest.raises(ValueError, match="aabb.*6"):
        nacc.contract(torch.rand(4, 3), [0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"x.*\(\.\.\., 3\)"):
        nacc.contract(torch.rand(4, 2), [0, 0, 0, 1, 1, 1])
    iv = nacc.RayIntervals(vals=torch.tensor([0.0, 1.0, 2.0]), packed_info=torch.tensor([[0, 3], [3, 0]]))
    with pytest.raises(ValueError, match="no edges"):
        nacc.importance_sampling(iv, torch.tensor([0.0, 0.5, 1.0]), 4)
    new_iv, s = nacc.importance_sampling(iv, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([4, 0]))
    assert s.packed_info.tolist() == [[0, 4], [4, 0]]
    with pytest.raises(TypeError, match="RayIntervals"):
        nacc.importance_sampling(torch.rand(3), torch.rand(3), 2)


def test_overlapping_packed_info_is_rejected(monkeypatch):
    """Two rays sharing samples used to be accepted and return garbage ([[0, 2], [0, 2]] for 4 samples)."""
    x = torch.rand(4)
    for bad in ([[0, 2], [0, 2]], [[0, 3], [2, 2]], [[2, 2], [0, 3]], [[0, 1], [3, 1], [1, 3]]):
        with pytest.raises(ValueError, match=r"`packed_info` has overlapping chunks.*pack_info\(ray_indices, n_rays\)"):
            nacc.inclusive_sum(x, torch.tensor(bad))
    with pytest.raises(ValueError, match="`packed_info` has overlapping chunks"):
        nacc.render_weight_from_alpha(x, packed_info=torch.tensor([[0, 2], [1, 2]]))
    with pytest.raises(ValueError, match=r"`sorted_sequence.packed_info` has overlapping chunks"):
        nacc.searchsorted(
            nacc.RayIntervals(vals=x, packed_info=torch.tensor([[0, 2], [1, 2]])),
            nacc.RayIntervals(vals=x[:2], packed_info=torch.tensor([[0, 1], [1, 1]])),
        )
    # Allowed: gaps, empty chunks anywhere in [0, n], non-empty chunks out of order but disjoint.
    torch.testing.assert_close(
        nacc.inclusive_sum(torch.arange(4.0), torch.tensor([[2, 2], [0, 0], [0, 2], [4, 0]])), _t4([0.0, 1, 2, 5])
    )
    torch.testing.assert_close(
        nacc.inclusive_sum(torch.arange(4.0), torch.tensor([[0, 1], [3, 1]])), _t4([0.0, 0, 0, 3])
    )
    # The check reads values, so it is one of the checks NERFACCEL_SKIP_VALUE_CHECKS turns off.
    monkeypatch.setenv("NERFACCEL_SKIP_VALUE_CHECKS", "1")
    from nerfaccel_plugin import _validation

    _validation.packed_info(torch.tensor([[0, 2], [0, 2]]), 4)


def _t4(v):
    return torch.tensor(v, dtype=torch.float32)


def test_sampling_t_min_t_max_are_checked_under_their_own_names():
    """Wrong length or (n, 1) (which used to broadcast silently to (n, n)) fail naming t_min / t_max, not the
    internal near_planes."""
    est = nacc.OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=4)
    est.binaries[:] = True
    rays_o, rays_d = _rays(4)
    with pytest.raises(ValueError, match=r"`t_min` must have shape \(4,\).*got \(4, 1\).*t_min.reshape\(-1\)"):
        est.sampling(rays_o, rays_d, t_min=torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"`t_max` must have shape \(4,\), one value per ray.*got \(3,\)"):
        est.sampling(rays_o, rays_d, t_max=torch.full((3,), 5.0))
    with pytest.raises(ValueError, match="`t_max`.*same device"):
        est.sampling(rays_o, rays_d, t_max=torch.full((4,), 5.0, device="meta"))
    with pytest.raises(ValueError, match="`t_min` contains NaN"):
        est.sampling(rays_o, rays_d, t_min=torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(TypeError, match="`t_min`.*floating"):
        est.sampling(rays_o, rays_d, t_min=torch.zeros(4, dtype=torch.long))
    # Per-ray values are honoured: t_max = 2.5 keeps only samples ending by z = -0.5.
    ri, t0, t1 = est.sampling(rays_o, rays_d, render_step_size=0.1, t_max=torch.tensor([2.5, 9.0, 9.0, 9.0]))
    assert (t1[ri == 0] <= 2.5 + 1e-6).all() and (t1[ri == 1] > 3.5).any()
