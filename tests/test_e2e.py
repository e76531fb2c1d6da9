"""End-to-end: a toy radiance field trained on the CPU with the library's samplers and renderer.

The scene is built by the test: a sphere whose colour depends on the surface normal, in front of a
white background, rendered analytically. The migration test is written in the call patterns of
nerfacc 0.5's documentation and examples, with only the import changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import nerfaccel_plugin as nerfacc  # the migration promise: only this line differs from nerfacc code

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
RADIUS = 0.5


def _camera_rays(n, generator):
    """Rays from random points on a sphere of radius 3 towards random points near the origin."""
    origins = F.normalize(torch.randn(n, 3, generator=generator), dim=-1) * 3.0
    targets = (torch.rand(n, 3, generator=generator) - 0.5) * 1.4
    return origins, F.normalize(targets - origins, dim=-1)


def _ground_truth(rays_o, rays_d):
    """Analytic colour of the sphere (normal-shaded) over a white background."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - RADIUS**2
    disc = b * b - c
    hit = disc > 0
    t = -b - torch.sqrt(disc.clamp(min=0))
    normal = F.normalize(rays_o + t[:, None] * rays_d, dim=-1)
    color = torch.where(hit[:, None], normal * 0.4 + 0.5, torch.ones_like(rays_o))
    return color


class VoxelField(torch.nn.Module):
    """A dense learnable grid of density and colour, trilinearly interpolated: trains fast on a CPU."""

    def __init__(self, res=24):
        super().__init__()
        self.grid = torch.nn.Parameter(torch.zeros(1, 4, res, res, res))

    def _lookup(self, x):
        u = (x - AABB[:3]) / (AABB[3:] - AABB[:3]) * 2 - 1
        feats = F.grid_sample(self.grid, u.flip(-1)[None, :, None, None, :], align_corners=True)
        return feats[0, :, :, 0, 0].t()

    def query_density(self, x):
        return F.softplus(self._lookup(x)[:, :1] * 10.0 - 1.0) * 10.0

    def forward(self, x):
        f = self._lookup(x)
        return torch.sigmoid(f[:, 1:] * 5.0), F.softplus(f[:, 0] * 10.0 - 1.0) * 10.0


def test_toy_field_trains_with_occupancy_grid():
    g = torch.Generator().manual_seed(0)
    field = VoxelField(res=32)
    estimator = nerfacc.OccGridEstimator(roi_aabb=AABB, resolution=64, levels=1)
    optimizer = torch.optim.Adam(field.parameters(), lr=0.05)
    render_step_size = 2 * 3**0.5 / 256
    bkgd = torch.ones(3)
    losses = []
    for step in range(300):
        rays_o, rays_d = _camera_rays(256, g)
        target = _ground_truth(rays_o, rays_d)

        def occ_eval_fn(x):
            return field.query_density(x) * render_step_size

        estimator.train()
        estimator.update_every_n_steps(step=step, occ_eval_fn=occ_eval_fn, occ_thre=1e-2, warmup_steps=64, n=4)

        def sigma_fn(t_starts, t_ends, ray_indices):
            pos = rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) / 2)[:, None]
            return field.query_density(pos).squeeze(-1)

        def rgb_sigma_fn(t_starts, t_ends, ray_indices):
            pos = rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) / 2)[:, None]
            return field(pos)

        ray_indices, t_starts, t_ends = estimator.sampling(
            rays_o,
            rays_d,
            sigma_fn=sigma_fn,
            near_plane=0.5,
            far_plane=6.0,
            render_step_size=render_step_size,
            stratified=True,
            alpha_thre=1e-3,
        )
        color, opacity, depth, extras = nerfacc.rendering(
            t_starts, t_ends, ray_indices, n_rays=rays_o.shape[0], rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bkgd
        )
        loss = F.mse_loss(color, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    start = sum(losses[:20]) / 20
    end = sum(losses[-20:]) / 20
    assert end < 0.25 * start, (start, end)
    # held-out rays: the sphere is opaque where it should be, the background clear, the depth right
    estimator.eval()
    with torch.no_grad():
        rays_o, rays_d = _camera_rays(512, g)
        b = (rays_o * rays_d).sum(-1)
        disc = b * b - ((rays_o * rays_o).sum(-1) - RADIUS**2)
        hit = disc > 0.05  # away from the silhouette
        miss = disc < -0.3
        true_depth = -b - torch.sqrt(disc.clamp(min=0))

        def rgb_sigma_fn(t_starts, t_ends, ray_indices):
            return field(rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) / 2)[:, None])

        ray_indices, t_starts, t_ends = estimator.sampling(
            rays_o, rays_d, near_plane=0.5, far_plane=6.0, render_step_size=render_step_size
        )
        _, opacity, depth, _ = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=512, rgb_sigma_fn=rgb_sigma_fn)
    assert opacity[hit].mean() > 0.9
    assert opacity[miss].mean() < 0.1
    assert (depth[hit, 0] - true_depth[hit]).abs().mean() < 0.1
    # the sphere's cells are occupied in the grid
    centers = (estimator.grid_coords.float() + 0.5) / 64 * 2 - 1
    assert estimator.binaries.reshape(-1)[centers.norm(dim=-1) < RADIUS - 0.1].all()
    # and empty space was carved out of it (the ball fills 6.5% of the box)
    assert estimator.binaries.float().mean() < 0.3


def test_migration_occupancy_grid_loop():
    """nerfacc README pattern: OccGridEstimator.update_every_n_steps / sampling + rendering."""
    torch.manual_seed(0)
    radiance_field = VoxelField(res=16)
    optimizer = torch.optim.Adam(radiance_field.parameters(), lr=1e-2)
    estimator = nerfacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=16)
    render_step_size = 0.05
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(40):
        rays_o, rays_d = _camera_rays(64, g)
        color_gt = _ground_truth(rays_o, rays_d)

        def sigma_fn(t_starts, t_ends, ray_indices):
            t_origins = rays_o[ray_indices]
            t_dirs = rays_d[ray_indices]
            positions = t_origins + t_dirs * (t_starts + t_ends)[:, None] / 2.0
            sigmas = radiance_field.query_density(positions)
            return sigmas.squeeze(-1)

        def rgb_sigma_fn(t_starts, t_ends, ray_indices):
            t_origins = rays_o[ray_indices]
            t_dirs = rays_d[ray_indices]
            positions = t_origins + t_dirs * (t_starts + t_ends)[:, None] / 2.0
            rgbs, sigmas = radiance_field(positions)
            return rgbs, sigmas

        estimator.update_every_n_steps(
            step=step, occ_eval_fn=lambda x: radiance_field.query_density(x) * render_step_size
        )
        ray_indices, t_starts, t_ends = estimator.sampling(
            rays_o, rays_d, sigma_fn=sigma_fn, render_step_size=render_step_size
        )
        color, opacity, depth, extras = nerfacc.rendering(
            t_starts, t_ends, ray_indices, n_rays=rays_o.shape[0], rgb_sigma_fn=rgb_sigma_fn
        )
        loss = F.mse_loss(color, color_gt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert color.shape == (64, 3) and opacity.shape == (64, 1) and depth.shape == (64, 1)
        assert {"weights", "alphas", "trans", "sigmas", "rgbs"} <= set(extras)
        assert ray_indices.numel() > 0, f"step {step}: the grid let no sample through"
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f"the loss should fall clearly: {first:.4f} -> {last:.4f}"


def test_migration_proposal_network_loop():
    """nerfacc examples pattern: PropNetEstimator with get_proposal_requires_grad_fn."""
    field = VoxelField(res=16)
    prop_net = VoxelField(res=8)
    optimizer = torch.optim.Adam(field.parameters(), lr=1e-2)
    prop_optimizer = torch.optim.Adam(prop_net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(prop_optimizer, gamma=0.999)
    estimator = nerfacc.PropNetEstimator(prop_optimizer, scheduler)
    proposal_requires_grad_fn = nerfacc.get_proposal_requires_grad_fn(target=5.0, num_steps=10)
    g = torch.Generator().manual_seed(2)
    prop_losses = []
    for step in range(30):
        rays_o, rays_d = _camera_rays(32, g)
        color_gt = _ground_truth(rays_o, rays_d)

        def prop_sigma_fn(t_starts, t_ends):
            positions = rays_o[:, None, :] + rays_d[:, None, :] * (t_starts + t_ends)[..., None] / 2.0
            return prop_net.query_density(positions.reshape(-1, 3)).reshape(t_starts.shape)

        def rgb_sigma_fn(t_starts, t_ends, ray_indices):
            positions = rays_o[:, None, :] + rays_d[:, None, :] * (t_starts + t_ends)[..., None] / 2.0
            rgbs, sigmas = field(positions.reshape(-1, 3))
            return rgbs.reshape(t_starts.shape + (3,)), sigmas.reshape(t_starts.shape)

        proposal_requires_grad = proposal_requires_grad_fn(step)
        t_starts, t_ends = estimator.sampling(
            prop_sigma_fns=[prop_sigma_fn],
            prop_samples=[16],
            num_samples=24,
            n_rays=rays_o.shape[0],
            near_plane=1.0,
            far_plane=5.0,
            sampling_type="lindisp",
            stratified=True,
            requires_grad=proposal_requires_grad,
        )
        assert t_starts.shape == (32, 24) and (t_ends > t_starts).all()
        rgb, opacity, depth, extras = nerfacc.rendering(
            t_starts, t_ends, ray_indices=None, n_rays=None, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=torch.ones(3)
        )
        loss = F.mse_loss(rgb, color_gt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        prop_losses.append(estimator.update_every_n_steps(extras["trans"], proposal_requires_grad, loss_scaler=1024))
    assert any(v > 0 for v in prop_losses)  # the proposal network was trained on some steps
    assert all(v == v for v in prop_losses)
    assert estimator.prop_cache == []
