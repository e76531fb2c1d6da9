"""The Nerfstudio samplers used on their own, the way another Nerfstudio model would use them.

An analytic density (a ball of radius 0.5 at the origin) makes the expected grid and sample positions
known in advance; a small Nerfstudio ``NerfactoField`` checks that gradients reach a real field through
packed samples and nerfaccel's rendering.
"""

from __future__ import annotations

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from nerfaccel_plugin import accumulate_along_rays, render_weight_from_density
from nerfaccel_plugin.ns.samplers import OccupancyGridSampler, ProposalSampler

RADIUS = 0.5


def ball_density(positions: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
    """Density 50 inside the ball, 0 outside; shape ``(..., 1)`` like a Nerfstudio field's ``density_fn``."""
    inside = positions.norm(dim=-1, keepdim=True) < RADIUS
    return inside.to(positions.dtype) * 50.0


def rays_at_origin(n: int, offsets: torch.Tensor | None = None, times: torch.Tensor | None = None) -> RayBundle:
    """Rays from distance 3 along -x towards the origin, shifted sideways by ``offsets`` (n, 2) in (y, z)."""
    origins = torch.zeros(n, 3)
    origins[:, 0] = 3.0
    if offsets is not None:
        origins[:, 1:] = offsets
    directions = torch.zeros(n, 3)
    directions[:, 0] = -1.0
    return RayBundle(
        origins=origins,
        directions=directions,
        pixel_area=torch.full((n, 1), 1e-4),
        camera_indices=torch.arange(n)[:, None] % 3,
        times=times,
    )


def run_callbacks(callbacks, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        for cb in callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)


def trained_ball_sampler(**kwargs) -> OccupancyGridSampler:
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])  # Nerfstudio's scene_box.aabb layout
    sampler = OccupancyGridSampler(
        aabb, density_fn=ball_density, resolution=32, update_every=1, warmup_steps=4, **kwargs
    )
    sampler.train()
    run_callbacks(sampler.get_training_callbacks(), 8)
    return sampler


def test_occupancy_callbacks_carve_the_grid() -> None:
    sampler = trained_ball_sampler()
    grid = sampler.occupancy_grid
    res = 32
    idx = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (idx.float() + 0.5) / res * 2.0 - 1.0
    dist = centres.norm(dim=-1)
    half_diag = 3**0.5 / res
    occupied = grid.binaries[0].reshape(-1)
    assert occupied[dist < RADIUS - half_diag].all(), "cells inside the ball must be occupied"
    assert not occupied[dist > RADIUS + half_diag].any(), "cells away from the ball must be empty"


@pytest.mark.parametrize("training", [True, False])
def test_occupancy_samples_only_hit_the_ball(training: bool) -> None:
    sampler = trained_ball_sampler()
    sampler.train(training)
    offsets = torch.tensor([[0.0, 0.0], [0.2, -0.1], [0.9, 0.0], [0.0, 0.8], [0.3, 0.3]])
    bundle = rays_at_origin(len(offsets), offsets)
    samples, ray_indices = sampler(bundle)

    assert ray_indices.dtype == torch.long and bool((ray_indices[1:] >= ray_indices[:-1]).all())
    hit = set(ray_indices.tolist())
    assert {0, 1, 4} <= hit and not ({2, 3} & hit), "rays missing the ball get no samples"
    starts, ends = samples.frustums.starts[:, 0], samples.frustums.ends[:, 0]
    assert bool((ends > starts).all())
    mid = samples.frustums.origins + samples.frustums.directions * ((starts + ends) / 2)[:, None]
    assert float(mid.norm(dim=-1).max()) < RADIUS + 2 * 3**0.5 / 32  # within a cell of the surface
    assert torch.equal(samples.camera_indices[:, 0], bundle.camera_indices[ray_indices, 0])
    assert samples.frustums.pixel_area.shape == (len(ray_indices), 1)
    if training:  # the density test drops samples behind the opaque front of the ball
        t_front, t_back = 3.0 - RADIUS, 3.0 + RADIUS
        assert float(ends[ray_indices == 0].max()) < (t_front + t_back) / 2
    else:  # evaluation keeps every sample in occupied cells, deterministic
        again, again_idx = sampler(bundle)
        assert torch.equal(again_idx, ray_indices) and torch.equal(again.frustums.starts, samples.frustums.starts)


def test_occupancy_all_rays_miss() -> None:
    sampler = trained_ball_sampler()
    bundle = rays_at_origin(3, torch.tensor([[0.9, 0.9], [-0.9, 0.9], [0.95, 0.0]]))
    samples, ray_indices = sampler(bundle)
    # One zero-length sample on ray 0: downstream code never sees empty tensors, and it weighs nothing.
    assert ray_indices.tolist() == [0]
    assert float(samples.frustums.ends[0, 0] - samples.frustums.starts[0, 0]) == 0.0
    weights, _, _ = render_weight_from_density(
        samples.frustums.starts[:, 0], samples.frustums.ends[:, 0], torch.ones(1), ray_indices=ray_indices, n_rays=3
    )
    assert float(weights.sum()) == 0.0


def test_occupancy_near_far_and_times() -> None:
    sampler = trained_ball_sampler(time_samples=2)
    times = torch.rand(2, 1)
    bundle = rays_at_origin(2, times=times)
    bundle.nears = torch.full((2, 1), 3.0)  # start at the ball's centre
    bundle.fars = torch.full((2, 1), 10.0)
    sampler.eval()
    samples, ray_indices = sampler(bundle)
    assert float(samples.frustums.starts.min()) >= 3.0 - 1e-6
    assert torch.equal(samples.times, times[ray_indices])


def test_occupancy_sampler_without_density_fn_explains() -> None:
    sampler = OccupancyGridSampler(torch.tensor([-1.0, -1, -1, 1, 1, 1]), density_fn=None, update_every=1)
    sampler.train()
    with pytest.raises(RuntimeError, match="density_fn"):
        sampler.update_grid(0)


def test_occupancy_sampler_in_a_nerfstudio_field_pipeline() -> None:
    """The docstring's recipe: a Nerfstudio field + the sampler + nerfaccel rendering; gradients reach the field."""
    from nerfstudio.field_components.field_heads import FieldHeadNames
    from nerfstudio.fields.nerfacto_field import NerfactoField

    torch.manual_seed(0)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    field = NerfactoField(aabb, num_images=3, num_levels=4, max_res=64, log2_hashmap_size=12, implementation="torch")
    sampler = OccupancyGridSampler(aabb, density_fn=field.density_fn, resolution=16, update_every=1, warmup_steps=2)
    sampler.train()
    field.train()
    run_callbacks(sampler.get_training_callbacks(), 2)
    assert sampler.occupancy_grid.binaries.any()

    bundle = rays_at_origin(8, torch.rand(8, 2) - 0.5)
    samples, ray_indices = sampler(bundle)
    out = field(samples)
    weights, _, _ = render_weight_from_density(
        samples.frustums.starts[:, 0], samples.frustums.ends[:, 0], out[FieldHeadNames.DENSITY][:, 0],
        ray_indices=ray_indices, n_rays=8,
    )  # fmt: skip
    rgb = accumulate_along_rays(weights, out[FieldHeadNames.RGB], ray_indices=ray_indices, n_rays=8)
    assert rgb.shape == (8, 3)
    rgb.sum().backward()
    grads = [p.grad for p in field.mlp_base.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)


class BallNet(torch.nn.Module):
    """A proposal network with one learnable log-density inside the ball."""

    def __init__(self) -> None:
        super().__init__()
        self.log_density = torch.nn.Parameter(torch.tensor(2.0))

    def density_fn(self, positions: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        inside = (positions.norm(dim=-1, keepdim=True) < RADIUS).to(positions.dtype)
        return inside * self.log_density.exp() + 1e-3


def test_proposal_sampler_concentrates_samples_and_trains_its_networks() -> None:
    nets = [BallNet(), BallNet()]
    sampler = ProposalSampler(nets, num_proposal_samples=(64, 32), num_samples=16, near_plane=0.5, far_plane=6.0,
                              sampling_type="uniform", requires_grad_target=1.0, requires_grad_steps=1)  # fmt: skip
    sampler.train()
    callbacks = sampler.get_training_callbacks()
    for step in range(5):  # the schedule decides which steps train the proposal networks
        run_callbacks(callbacks, 1, start=step)
        if sampler._requires_grad:
            break
    assert sampler._requires_grad
    bundle = rays_at_origin(4, torch.tensor([[0.0, 0.0], [0.1, 0.2], [0.2, 0.0], [0.0, -0.3]]))
    samples = sampler(bundle)
    starts, ends = samples.frustums.starts[..., 0], samples.frustums.ends[..., 0]
    assert starts.shape == (4, 16) and samples.camera_indices.shape == (4, 16, 1)
    assert bool((ends >= starts).all()) and bool((starts[:, 1:] >= starts[:, :-1]).all())
    mid = (starts + ends) / 2
    # Most final samples fall around the ball's front surface (t in [2.5, 3.5] on these rays).
    assert float(((mid > 2.3) & (mid < 3.6)).float().mean()) > 0.6

    sigma = ball_density(samples.frustums.get_positions())[..., 0]
    _, trans, _ = render_weight_from_density(starts, ends, sigma)
    loss = sampler.loss(trans)
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    loss.backward()
    grads = [net.log_density.grad for net in nets]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), "the proposal loss must train the nets"


def test_proposal_sampler_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="num_proposal_samples"):
        ProposalSampler([BallNet()], num_proposal_samples=(64, 32))


def test_callbacks_are_nerfstudio_callbacks() -> None:
    from nerfstudio.engine.callbacks import TrainingCallback

    sampler = trained_ball_sampler()
    callbacks = sampler.get_training_callbacks()
    assert len(callbacks) >= 1
    for cb in callbacks:
        assert isinstance(cb, TrainingCallback)
        assert TrainingCallbackLocation.BEFORE_TRAIN_ITERATION in cb.where_to_run


def test_time_samples_keep_the_maximum_over_time() -> None:
    """A dynamic field: the grid must cover where the object is at *any* time, not only at one time."""
    torch.manual_seed(0)
    path_start, path_end, radius = torch.tensor([-0.6, 0.0, 0.0]), torch.tensor([0.6, 0.0, 0.0]), 0.2

    def moving_ball(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # centre moves along x as t goes 0 -> 1
        centre = path_start + t.reshape(-1, 1) * (path_end - path_start)
        return 100.0 * ((x - centre).norm(dim=-1) < radius).float()

    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    sampler = OccupancyGridSampler(
        aabb, density_fn=moving_ball, resolution=16, update_every=1, warmup_steps=100, time_samples=4
    )
    sampler.train()
    run_callbacks(sampler.get_training_callbacks(), 24)
    res = 16
    idx = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (idx.float() + 0.5) / res * 2.0 - 1.0
    # distance from each cell centre to the segment the ball's centre sweeps
    s = ((centres - path_start) @ (path_end - path_start) / (path_end - path_start).square().sum()).clamp(0, 1)
    dist = (centres - (path_start + s[:, None] * (path_end - path_start))).norm(dim=-1)
    occupied = sampler.occupancy_grid.binaries[0].reshape(-1)
    half_diag = 3**0.5 / res
    swept = dist < radius - half_diag
    assert swept.sum() > 20 and occupied[swept].all(), "every cell the ball passes through must be occupied"
    assert not occupied[dist > radius + half_diag].any(), "cells the ball never reaches must stay empty"
    # one time alone would not do: at t = 0 the ball is nowhere near the end of its path
    end_cell = swept & (centres[:, 0] > 0.5)
    assert end_cell.any() and float(moving_ball(centres[end_cell], torch.zeros(int(end_cell.sum()))).max()) == 0.0
