"""Train a small radiance field with the occupancy grid and packed rendering, on the CPU, in seconds.

The scene is analytic (a normal-shaded sphere in front of a white background), so the example needs
no data and no download::

    python -m nerfaccel_plugin.examples.train_sphere [--steps 400] [--rays 512] [--device cpu]

It prints the training loss, the held-out PSNR, the share of the grid that stays occupied and the
samples per ray, showing empty-space skipping at work.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import nerfaccel_plugin as nerfacc

RADIUS = 0.5
AABB = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def camera_rays(n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from random points at distance 3 towards random points near the origin."""
    origins = F.normalize(torch.randn(n, 3, generator=generator), dim=-1) * 3.0
    targets = (torch.rand(n, 3, generator=generator) - 0.5) * 1.4
    return origins.to(device), F.normalize(targets - origins, dim=-1).to(device)


def ground_truth(rays_o: torch.Tensor, rays_d: torch.Tensor) -> torch.Tensor:
    """Analytic colour: the sphere shaded by its normal, white elsewhere."""
    b = (rays_o * rays_d).sum(-1)
    disc = b * b - ((rays_o * rays_o).sum(-1) - RADIUS**2)
    t = -b - torch.sqrt(disc.clamp(min=0))
    normal = F.normalize(rays_o + t[:, None] * rays_d, dim=-1)
    return torch.where((disc > 0)[:, None], normal * 0.4 + 0.5, torch.ones_like(rays_o))


class VoxelField(torch.nn.Module):
    """A dense learnable grid of density and colour with trilinear interpolation."""

    def __init__(self, resolution: int = 32) -> None:
        super().__init__()
        self.grid = torch.nn.Parameter(torch.zeros(1, 4, resolution, resolution, resolution))
        self.register_buffer("aabb", torch.tensor(AABB))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3]) * 2 - 1
        return F.grid_sample(self.grid, u.flip(-1)[None, :, None, None, :], align_corners=True)[0, :, :, 0, 0].t()

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self._features(x)[:, :1] * 10.0 - 1.0) * 10.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._features(x)
        return torch.sigmoid(f[:, 1:] * 5.0), F.softplus(f[:, 0] * 10.0 - 1.0) * 10.0


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rays", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    field = VoxelField().to(device)
    estimator = nerfacc.OccGridEstimator(roi_aabb=AABB, resolution=64).to(device)
    optimizer = torch.optim.Adam(field.parameters(), lr=0.05)
    step_size = 2 * math.sqrt(3) / 256
    bkgd = torch.ones(3, device=device)
    print(f"nerfaccel backend: {nerfacc.backend_info()[device.type]['backend']} on {device}")
    start = time.perf_counter()
    for step in range(args.steps):
        rays_o, rays_d = camera_rays(args.rays, g, device)
        target = ground_truth(rays_o, rays_d)
        estimator.train()
        estimator.update_every_n_steps(step, lambda x: field.density(x) * step_size, warmup_steps=64, n=4)

        def sigma_fn(t0, t1, ri):
            return field.density(rays_o[ri] + rays_d[ri] * ((t0 + t1) / 2)[:, None]).squeeze(-1)

        def rgb_sigma_fn(t0, t1, ri):
            return field(rays_o[ri] + rays_d[ri] * ((t0 + t1) / 2)[:, None])

        ri, t0, t1 = estimator.sampling(
            rays_o,
            rays_d,
            sigma_fn=sigma_fn,
            near_plane=0.5,
            far_plane=6.0,
            render_step_size=step_size,
            stratified=True,
            alpha_thre=1e-3,
        )
        color, _, _, _ = nerfacc.rendering(t0, t1, ri, n_rays=args.rays, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bkgd)
        loss = F.mse_loss(color, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.5f}  samples/ray {ri.numel() / args.rays:6.1f}  "
                f"occupied {estimator.binaries.float().mean().item():.1%}  {time.perf_counter() - start:.1f}s"
            )
    estimator.eval()
    with torch.no_grad():
        rays_o, rays_d = camera_rays(4096, g, device)
        ri, t0, t1 = estimator.sampling(rays_o, rays_d, near_plane=0.5, far_plane=6.0, render_step_size=step_size)
        color, _, _, _ = nerfacc.rendering(
            t0,
            t1,
            ri,
            n_rays=4096,
            rgb_sigma_fn=lambda a, b, r: field(rays_o[r] + rays_d[r] * ((a + b) / 2)[:, None]),
            render_bkgd=bkgd,
        )
        mse = F.mse_loss(color, ground_truth(rays_o, rays_d)).item()
    psnr = -10.0 * math.log10(max(mse, 1e-10))
    print(f"held-out PSNR {psnr:.2f} dB on 4096 new rays ({time.perf_counter() - start:.1f}s total)")
    return psnr


if __name__ == "__main__":
    main()
