"""Throughput of every public op at realistic sizes, on the backend dispatch picks (or a forced one).

Usage::

    python benchmarks/bench_ops.py                    # active backend per device
    NERFACCEL_BACKEND=torch python benchmarks/bench_ops.py --rays 4096 16384
    python benchmarks/bench_ops.py --device cuda --out benchmarks/results/ops-cuda.md

Sizes follow a typical NeRF batch: 4096-65536 rays, a 128^3 occupancy grid, 64-256 samples per ray.
Prints a markdown table (median of ``--repeat`` timed runs after one warm-up) and optionally writes it
with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import nerfaccel_plugin as nacc
from nerfaccel_plugin.grid import traverse_grids_samples


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeat):
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _packed(n_rays, spp, device):
    counts = torch.randint(spp // 2, spp * 3 // 2 + 1, (n_rays,), device=device)
    counts[:: max(1, n_rays // 16)] = 0  # some empty rays
    ray_indices = torch.repeat_interleave(torch.arange(n_rays, device=device), counts)
    n = ray_indices.numel()
    packed_info = nacc.pack_info(ray_indices, n_rays)
    t0 = torch.rand(n, device=device).sort()[0]
    return ray_indices, packed_info, t0, t0 + 1e-2, n


def run(rays_list, spp_list, grid_res, device, repeat):
    rows = []
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], device=device)
    for n_rays in rays_list:
        dirs = torch.nn.functional.normalize(torch.randn(n_rays, 3, device=device), dim=-1)
        origins = -dirs * 4.0 + torch.randn(n_rays, 3, device=device) * 0.3
        binaries = torch.rand(1, grid_res, grid_res, grid_res, device=device) > 0.8
        step = 3.0 * 3**0.5 / 1024
        ri, t_s, t_e = traverse_grids_samples(origins, dirs, binaries, aabb[None], step_size=step)
        n_trav = ri.numel()
        sec = _time(lambda: traverse_grids_samples(origins, dirs, binaries, aabb[None], step_size=step), device, repeat)
        rows.append(("traverse_grids (20% occupied)", n_rays, f"{grid_res}^3", n_trav, sec))
        sec = _time(lambda: nacc.ray_aabb_intersect(origins, dirs, aabb[None]), device, repeat)
        rows.append(("ray_aabb_intersect", n_rays, "1 box", n_rays, sec))
        est = nacc.OccGridEstimator(roi_aabb=aabb, resolution=grid_res).to(device)
        est.binaries.copy_(binaries)
        sec = _time(lambda: est.sampling(origins, dirs, render_step_size=step, near_plane=0.1), device, repeat)
        rows.append(("OccGridEstimator.sampling", n_rays, f"{grid_res}^3", n_trav, sec))
        for spp in spp_list:
            ray_indices, packed_info, t0, t1, n = _packed(n_rays, spp, device)
            sigmas = torch.rand(n, device=device, requires_grad=True)
            alphas = torch.rand(n, device=device, requires_grad=True)
            rgbs = torch.rand(n, 3, device=device, requires_grad=True)
            label = f"{spp} spp"

            def dens_fb():
                w, _, _ = nacc.render_weight_from_density(t0, t1, sigmas, packed_info=packed_info)
                w.sum().backward()

            def alpha_fb():
                w, _ = nacc.render_weight_from_alpha(alphas, packed_info=packed_info)
                w.sum().backward()

            def acc_fb():
                out = nacc.accumulate_along_rays(sigmas, rgbs, ray_indices, n_rays)
                out.sum().backward()

            def render_fb():
                c, o, d, _ = nacc.rendering(
                    t0, t1, ray_indices, n_rays, rgb_sigma_fn=lambda *_: (rgbs, sigmas), render_bkgd=None
                )
                (c.sum() + o.sum()).backward()

            x = torch.rand(n, device=device)
            rows.append(
                (
                    "inclusive_sum (fwd)",
                    n_rays,
                    label,
                    n,
                    _time(lambda: nacc.inclusive_sum(x, packed_info), device, repeat),
                )
            )
            rows.append(
                (
                    "exclusive_prod (fwd)",
                    n_rays,
                    label,
                    n,
                    _time(lambda: nacc.exclusive_prod(x, packed_info), device, repeat),
                )
            )
            rows.append(("render_weight_from_density (fwd+bwd)", n_rays, label, n, _time(dens_fb, device, repeat)))
            rows.append(("render_weight_from_alpha (fwd+bwd)", n_rays, label, n, _time(alpha_fb, device, repeat)))
            rows.append(("accumulate_along_rays (fwd+bwd)", n_rays, label, n, _time(acc_fb, device, repeat)))
            rows.append(("rendering (fwd+bwd)", n_rays, label, n, _time(render_fb, device, repeat)))
            cdfs = torch.rand(n_rays, spp + 1, device=device).cumsum(-1)
            cdfs = cdfs / cdfs[:, -1:]
            edges = torch.linspace(0, 1, spp + 1, device=device).expand(n_rays, -1).contiguous()
            iv = nacc.RayIntervals(vals=edges)
            rows.append(
                (
                    "importance_sampling",
                    n_rays,
                    label,
                    n_rays * spp,
                    _time(lambda: nacc.importance_sampling(iv, cdfs, spp, stratified=True), device, repeat),
                )
            )
            pts = torch.randn(n, 3, device=device) * 3
            rows.append(
                ("contract l2 (fwd)", n_rays, label, n, _time(lambda: nacc.contract(pts, aabb), device, repeat))
            )
    return rows


def format_table(rows, device):
    info = nacc.backend_info().get(device.type, {})
    lines = [
        f"backend on {device.type}: {info.get('backend', '?')} ({info.get('reason', '')})",
        "",
        "| op | rays | size | items | time (ms) | M items/s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for op, n_rays, size, items, sec in rows:
        lines.append(f"| {op} | {n_rays} | {size} | {items} | {sec * 1e3:.2f} | {items / sec / 1e6:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rays", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--spp", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--grid", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (with machine/date/commit) here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = run(args.rays, args.spp, args.grid, device, args.repeat)
    table = format_table(rows, device)
    print(table)
    if args.out is not None:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            commit = "unknown"
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
        if device.type == "cuda":
            machine = torch.cuda.get_device_name(device)
        header = (
            f"# bench_ops on {device.type}\n\nmachine: {machine}\ndate: {datetime.date.today()}\ncommit: {commit}\n"
            f"torch: {torch.__version__}\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
