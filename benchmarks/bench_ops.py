"""Throughput of every public op at realistic sizes, on the backend dispatch picks (or a forced one).

Usage::

    python benchmarks/bench_ops.py                    # active backend per device, 4096 and 65536 rays, 64 and 256 spp
    NERFACCEL_BACKEND=torch python benchmarks/bench_ops.py --out benchmarks/results/ops-cpu-torch.md
    NERFACCEL_BACKEND=cpp python benchmarks/bench_ops.py --out benchmarks/results/ops-cpu-cpp.md
    python benchmarks/bench_ops.py --device cuda --out benchmarks/results/ops-cuda.md
    python benchmarks/bench_ops.py --rays 1024 --spp 16 --grid 32 --repeat 1   # smoke run

Sizes follow a typical NeRF batch: 4096-65536 rays, a 128^3 occupancy grid, 64-256 samples per ray (packed:
uniform in [spp/2, 3spp/2] per ray, every 16th ray empty; batched: rays x spp). Every public function of
``nerfaccel_plugin`` has a row, forward and, where it is differentiable, forward+backward (backward from fixed
random cotangents; for ``render_weight_from_*`` and ``render_transmittance_from_*`` on the first output only).
Rows whose size depends only on the grid (the grid update) are timed once. Prints a markdown table (median of
``--repeat`` timed calls after ``--warmup`` untimed ones; CUDA events on a GPU) and optionally writes it with the
machine, date, commit and torch version. Input value checks stay on (as users get them) unless
``--no-value-checks``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_util as bu  # noqa: E402

import nerfaccel_plugin as nacc  # noqa: E402


def _field_sigma(t_starts, t_ends, ray_indices=None):
    return ((t_starts + t_ends) * 3.0).sin().abs() * 20.0


def _occ_eval(x):
    return (x * 4.0).sin().prod(dim=-1, keepdim=True).abs() * 0.05


def grid_rows(grid_res, device, repeat, warmup):
    """Rows that depend only on the grid size."""
    rows = []
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], device=device)
    est = nacc.OccGridEstimator(roi_aabb=aabb, resolution=grid_res).to(device)
    cells = grid_res**3
    sec = bu.time_fn(lambda: est.update_every_n_steps(step=0, occ_eval_fn=_occ_eval, n=16), device, repeat, warmup)
    rows.append(("OccGridEstimator.update_every_n_steps (warm-up: all cells)", "-", f"{grid_res}^3", cells, sec))
    sec = bu.time_fn(lambda: est.update_every_n_steps(step=1024, occ_eval_fn=_occ_eval, n=16), device, repeat, warmup)
    rows.append(("OccGridEstimator.update_every_n_steps (1/4 + occupied cells)", "-", f"{grid_res}^3", cells // 4, sec))
    return rows


def ray_rows(n_rays, grid_res, device, repeat, warmup):
    """Rows that depend on the rays only (traversal, estimators)."""
    rows = []
    t = lambda fn: bu.time_fn(fn, device, repeat, warmup)  # noqa: E731
    g = torch.Generator().manual_seed(n_rays)
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], device=device)
    d = torch.randn(n_rays, 3, generator=g)
    dirs = (d / d.norm(dim=-1, keepdim=True)).to(device)
    origins = -dirs * 4.0 + (torch.randn(n_rays, 3, generator=g) * 0.3).to(device)
    binaries = (torch.rand(1, grid_res, grid_res, grid_res, generator=g) > 0.8).to(device)
    step = 3.0 * 3**0.5 / 1024
    grid = f"{grid_res}^3"
    rows.append(
        ("ray_aabb_intersect", n_rays, "1 box", n_rays, t(lambda: nacc.ray_aabb_intersect(origins, dirs, aabb[None])))
    )
    _, samples = nacc.traverse_grids(origins, dirs, binaries, aabb[None], step_size=step)
    n_trav = samples.vals.numel()
    sec = t(lambda: nacc.traverse_grids(origins, dirs, binaries, aabb[None], step_size=step))
    rows.append(("traverse_grids (20% occupied)", n_rays, grid, n_trav, sec))
    est = nacc.OccGridEstimator(roi_aabb=aabb, resolution=grid_res).to(device)
    est.binaries.copy_(binaries.view(est.binaries.shape))
    sec = t(lambda: est.sampling(origins, dirs, render_step_size=step, near_plane=0.1))
    rows.append(("OccGridEstimator.sampling", n_rays, grid, n_trav, sec))
    sec = t(lambda: est.sampling(origins, dirs, sigma_fn=_field_sigma, render_step_size=step, near_plane=0.1))
    rows.append(("OccGridEstimator.sampling + sigma_fn", n_rays, grid, n_trav, sec))

    prop = nacc.PropNetEstimator()
    w = torch.ones((), device=device, requires_grad=True)

    def prop_sigma(t0, t1):
        return ((t0 + t1) * 2.0 * w).sin().abs() * 5.0

    def prop_fwd():
        return prop.sampling([prop_sigma, prop_sigma], [256, 96], 48, n_rays, 0.05, 6.0, "lindisp", stratified=True)

    def prop_fwd_bwd():
        ts, te = prop.sampling(
            [prop_sigma, prop_sigma], [256, 96], 48, n_rays, 0.05, 6.0, "lindisp", stratified=True, requires_grad=True
        )
        trans, _ = nacc.render_transmittance_from_density(ts, te, prop_sigma(ts, te).detach())
        prop.compute_loss(trans).backward()

    rows.append(("PropNetEstimator.sampling (256, 96 -> 48)", n_rays, "batched", n_rays * (256 + 96 + 48), t(prop_fwd)))
    rows.append(
        (
            "PropNetEstimator.sampling + compute_loss (fwd+bwd)",
            n_rays,
            "batched",
            n_rays * (256 + 96 + 48),
            t(prop_fwd_bwd),
        )
    )
    return rows


def sample_rows(n_rays, spp, device, repeat, warmup):
    """Rows over packed (and batched) samples."""
    rows = []
    t = lambda fn: bu.time_fn(fn, device, repeat, warmup)  # noqa: E731
    g = torch.Generator().manual_seed(n_rays + spp)
    _, ray_indices, t0, t1, n = bu.packed_layout(n_rays, spp, device, seed=n_rays + spp)
    packed_info = nacc.pack_info(ray_indices, n_rays)  # as users get it (marked as tiling the samples)
    sigmas = (torch.rand(n, generator=g) * 5).to(device)
    alphas = (torch.rand(n, generator=g) * 0.1).to(device)
    rgbs = torch.rand(n, 3, generator=g).to(device)
    label = f"{spp} spp"

    def add(name, fn, items=n, size=label):
        rows.append((name, n_rays, size, items, t(fn)))

    add("pack_info", lambda: nacc.pack_info(ray_indices, n_rays))
    add("unpack_info", lambda: nacc.unpack_info(packed_info, n))
    for op in ("inclusive_sum", "exclusive_sum", "inclusive_prod", "exclusive_prod"):
        fn = getattr(nacc, op)
        x = sigmas if "sum" in op else 1.0 - alphas
        add(f"{op} (fwd)", lambda fn=fn, x=x: fn(x, packed_info))
        add(f"{op} (fwd+bwd)", bu.fwd_bwd(lambda v, fn=fn: fn(v, packed_info), [x]))

    def dens(name):
        return lambda s: getattr(nacc, name)(t0, t1, s, packed_info=packed_info)

    def alph(name):
        return lambda a: getattr(nacc, name)(a, packed_info=packed_info)

    for kind in ("weight", "transmittance"):
        name = f"render_{kind}_from_density"
        add(f"{name} (fwd)", lambda f=dens(name): f(sigmas))
        add(f"{name} (fwd+bwd)", bu.fwd_bwd(dens(name), [sigmas], grad_outputs=1))
        name = f"render_{kind}_from_alpha"
        add(f"{name} (fwd)", lambda f=alph(name): f(alphas))
        add(f"{name} (fwd+bwd)", bu.fwd_bwd(alph(name), [alphas], grad_outputs=1))
    add(
        "render_visibility_from_density (fwd)",
        lambda: nacc.render_visibility_from_density(t0, t1, sigmas, packed_info=packed_info, alpha_thre=1e-2),
    )
    add(
        "render_visibility_from_alpha (fwd)",
        lambda: nacc.render_visibility_from_alpha(alphas, packed_info=packed_info, alpha_thre=1e-2),
    )
    add("accumulate_along_rays (fwd)", lambda: nacc.accumulate_along_rays(alphas, rgbs, ray_indices, n_rays))
    add(
        "accumulate_along_rays (fwd+bwd)",
        bu.fwd_bwd(lambda w, v: nacc.accumulate_along_rays(w, v, ray_indices, n_rays), [alphas, rgbs]),
    )

    def render(rgb, s):
        c, o, d, _ = nacc.rendering(t0, t1, ray_indices, n_rays, rgb_sigma_fn=lambda *_: (rgb, s))
        return c, o, d

    add("rendering (fwd)", lambda: render(rgbs, sigmas))
    add("rendering (fwd+bwd)", bu.fwd_bwd(render, [rgbs, sigmas]))
    add("distortion (fwd)", lambda: nacc.distortion(alphas, t0, t1, ray_indices, n_rays))
    add("distortion (fwd+bwd)", bu.fwd_bwd(lambda w: nacc.distortion(w, t0, t1, ray_indices, n_rays), [alphas]))

    cdfs = torch.rand(n_rays, spp + 1, generator=g).cumsum(-1)
    cdfs = ((cdfs - cdfs[:, :1]) / (cdfs[:, -1:] - cdfs[:, :1])).to(device)
    edges = torch.linspace(0, 1, spp + 1, device=device).expand(n_rays, -1).contiguous()
    iv = nacc.RayIntervals(vals=edges)
    add(
        "importance_sampling (batched, stratified)",
        lambda: nacc.importance_sampling(iv, cdfs, spp, stratified=True),
        items=n_rays * spp,
    )
    n_per_ray = packed_info[:, 1]
    add(
        "importance_sampling (batched -> packed counts)",
        lambda: nacc.importance_sampling(iv, cdfs, n_per_ray, stratified=True),
        items=n,
    )
    queries = nacc.RaySamples(vals=torch.sort(torch.rand(n_rays, spp, generator=g), dim=-1).values.to(device))
    add("searchsorted (batched)", lambda: nacc.searchsorted(iv, queries), items=n_rays * spp)

    pts = (torch.randn(n, 3, generator=g) * 3).to(device)
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], device=device)
    ys = nacc.contract(pts, aabb).clamp(0.02, 0.98)
    add("contract l2 (fwd)", lambda: nacc.contract(pts, aabb))
    add("contract l2 (fwd+bwd)", bu.fwd_bwd(lambda x: nacc.contract(x, aabb), [pts]))
    add("uncontract l2 (fwd)", lambda: nacc.uncontract(ys, aabb))
    add("uncontract l2 (fwd+bwd)", bu.fwd_bwd(lambda y: nacc.uncontract(y, aabb), [ys]))
    return rows


def run(rays_list, spp_list, grid_res, device, repeat, warmup, log=print):
    rows = grid_rows(grid_res, device, repeat, warmup)
    for row in rows:
        log(_fmt(row))
    for n_rays in rays_list:
        for row in ray_rows(n_rays, grid_res, device, repeat, warmup):
            rows.append(row)
            log(_fmt(row))
        for spp in spp_list:
            for row in sample_rows(n_rays, spp, device, repeat, warmup):
                rows.append(row)
                log(_fmt(row))
    return rows


def _fmt(row) -> str:
    op, n_rays, size, items, sec = row
    return f"| {op} | {n_rays} | {size} | {items} | {sec * 1e3:.2f} | {items / sec / 1e6:.2f} |"


def format_table(rows, device):
    info = nacc.backend_info().get(device.type, {})
    lines = [
        f"backend on {device.type}: {info.get('backend', '?')} ({info.get('reason', '')})",
        "",
        "| op | rays | size | items | time (ms) | M items/s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    lines += [_fmt(row) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rays", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--spp", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--grid", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--value-checks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the input value checks on (default; --no-value-checks sets NERFACCEL_SKIP_VALUE_CHECKS=1)",
    )
    parser.add_argument("--note", default="", help="a line for the results file (e.g. 'machine shared with a build')")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (with machine/date/commit) here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not args.value_checks:
        os.environ["NERFACCEL_SKIP_VALUE_CHECKS"] = "1"
    torch.manual_seed(0)
    load_start = bu.load_average()
    print(f"backend on {device.type}: {nacc.backend_info().get(device.type, {}).get('backend', '?')}", flush=True)
    rows = run(args.rays, args.spp, args.grid, device, args.repeat, args.warmup, log=lambda s: print(s, flush=True))
    table = format_table(rows, device)
    print()
    print(table)
    if args.out is not None:
        extra = [
            f"sizes: rays {args.rays}, samples/ray {args.spp}, grid {args.grid}^3; median of {args.repeat} after "
            f"{args.warmup} warm-up call(s)" + ("; CUDA events" if device.type == "cuda" else ""),
            f"value checks: {'on' if args.value_checks else 'off (NERFACCEL_SKIP_VALUE_CHECKS=1)'}",
            f"load average (1/5/15 min): {load_start} at the start, {bu.load_average()} at the end",
        ]
        if args.note:
            extra.append(f"note: {args.note}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(bu.header(f"bench_ops on {device.type}", device, extra) + "\n" + table + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
