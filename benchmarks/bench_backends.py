"""Backends side by side on identical inputs: pure PyTorch vs C++ on the CPU; CUDA vs nerfacc on a GPU.

Usage::

    python benchmarks/bench_backends.py                       # CPU: torch vs cpp
    python benchmarks/bench_backends.py --out benchmarks/results/backends-cpu.md
    python benchmarks/bench_backends.py --device cuda         # torch vs cuda (vs nerfacc when installed)

Each row times one primitive (median of ``--repeat`` runs after a warm-up) through the primitive
functions (``nerfaccel_plugin._torch_impl`` and ``nerfaccel_plugin._ext.load_backend(kind)``), so the
numbers compare the kernels, not input validation. "fwd+bwd" rows include the backward pass with a
random cotangent. Ratios are ``torch time / other time`` (higher is faster). nerfacc is used only
here, for comparison on the GPU; the library never imports it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from nerfaccel_plugin import _torch_impl as ref


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str, repeat: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _packed(n_rays: int, spp: int, device: str):
    counts = torch.randint(spp // 2, spp * 3 // 2 + 1, (n_rays,))
    counts[:: max(1, n_rays // 16)] = 0
    starts = torch.cumsum(counts, 0) - counts
    packed_info = torch.stack([starts, counts], -1).to(device)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts).to(device)
    n = int(counts.sum())
    t0 = torch.rand(n, device=device)
    return packed_info, ray_indices, t0, t0 + 1e-2, n


def _fwd_bwd(fn, inputs):
    """Forward, then backward from fixed random cotangents (made once, outside the timed call), so the time is
    the op's own forward and backward and not a loss built around it."""
    cotangents: list = []

    def run():
        xs = [x.detach().requires_grad_() for x in inputs]
        outs = fn(*xs)
        outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if o.is_floating_point() and o.requires_grad]
        if not cotangents:
            cotangents.extend(torch.rand_like(o) for o in outs)
        torch.autograd.backward(outs, cotangents)

    return run


def _nerfacc_cases(cases, device, args):
    """nerfacc 0.5 equivalents of some rows (GPU comparison only); empty when nerfacc is missing."""
    try:
        import nerfacc  # noqa: F401 - optional, comparison only
        from nerfacc import volrend
        from nerfacc.grid import traverse_grids as nf_traverse
    except Exception:  # pragma: no cover - optional dependency
        return {}
    out = {}
    c = cases
    out["traverse_grids"] = lambda: nf_traverse(
        c["rays_o"], c["rays_d"], c["binaries"], c["aabbs"], c["near"], c["far"], args.step, args.cone
    )
    out["render_weight_from_density fwd"] = lambda: volrend.render_weight_from_density(
        c["t0"], c["t1"], c["sigmas"], ray_indices=c["ray_indices"], n_rays=c["n_rays"]
    )
    out["render_weight_from_alpha fwd"] = lambda: volrend.render_weight_from_alpha(
        c["alphas"], ray_indices=c["ray_indices"], n_rays=c["n_rays"]
    )
    return out


def build_cases(n_rays: int, spp: int, res: int, device: str, args) -> tuple[dict, dict]:
    """Inputs shared by every backend, and the per-op call recipes ``name -> fn(backend_module)``."""
    g = torch.Generator().manual_seed(0)
    packed_info, ray_indices, t0, t1, n = _packed(n_rays, spp, device)
    rays_o = (torch.rand(n_rays, 3, generator=g) * 0.2 - 0.1).to(device)
    d = torch.randn(n_rays, 3, generator=g)
    rays_d = (d / d.norm(dim=-1, keepdim=True)).to(device)
    binaries = (torch.rand(1, res, res, res, generator=g) > 0.7).to(device)
    aabbs = torch.tensor([[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5]], device=device)
    near = torch.zeros(n_rays, device=device)
    far = torch.full((n_rays,), 1e10, device=device)
    sigmas = torch.rand(n, device=device) * 5
    alphas = torch.rand(n, device=device) * 0.1
    rgb = torch.rand(n, 3, device=device)
    pts = torch.randn(n, 3, device=device) * 2
    occs = torch.rand(res**3, device=device)
    cell_ids = torch.randint(0, res**3, (res**3 // 4,), device=device)
    cell_vals = torch.rand(res**3 // 4, device=device)
    cdfs = ref._inclusive_sum(torch.rand(n, device=device), packed_info)
    n_per_ray = torch.full((n_rays,), 32, device=device, dtype=torch.long)
    bias = torch.full((n_rays,), 0.5, device=device)
    data = dict(
        rays_o=rays_o, rays_d=rays_d, binaries=binaries, aabbs=aabbs, near=near, far=far, t0=t0, t1=t1,
        sigmas=sigmas, alphas=alphas, ray_indices=ray_indices, n_rays=n_rays, packed_info=packed_info, n=n,
    )  # fmt: skip
    step, cone = args.step, args.cone
    recipes = {
        "traverse_grids": lambda m: lambda: m._traverse_grids(rays_o, rays_d, binaries, aabbs, near, far, step, cone),
        "render_weight_from_density fwd": lambda m: lambda: m._render_weight_from_density(t0, t1, sigmas, packed_info),
        "render_weight_from_density fwd+bwd": lambda m: _fwd_bwd(
            lambda s: m._render_weight_from_density(t0, t1, s, packed_info), [sigmas]
        ),
        "render_weight_from_alpha fwd": lambda m: lambda: m._render_weight_from_alpha(alphas, packed_info),
        "render_weight_from_alpha fwd+bwd": lambda m: _fwd_bwd(
            lambda a: m._render_weight_from_alpha(a, packed_info), [alphas]
        ),
        "exclusive_prod fwd+bwd": lambda m: _fwd_bwd(lambda a: m._exclusive_prod(a, packed_info), [1 - alphas]),
        "inclusive_sum fwd": lambda m: lambda: m._inclusive_sum(sigmas, packed_info),
        "accumulate_along_rays fwd+bwd": lambda m: _fwd_bwd(
            lambda w, v: m._accumulate_along_rays(w, v, ray_indices, n_rays), [alphas, rgb]
        ),
        "contract l2 fwd+bwd": lambda m: _fwd_bwd(lambda x: m._contract(x, aabbs[0], "l2"), [pts]),
        "importance_sampling": lambda m: lambda: m._importance_sampling(t0, cdfs, packed_info, n_per_ray, bias),
        "grid_ema_update": lambda m: lambda: m._grid_ema_update(occs, cell_ids, cell_vals, 0.95),
    }
    return data, recipes


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _commit() -> str:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rays", type=int, default=4096)
    parser.add_argument("--spp", type=int, default=64, help="mean samples per ray for the packed ops")
    parser.add_argument("--res", type=int, default=128, help="occupancy grid resolution")
    parser.add_argument("--step", type=float, default=3**0.5 * 3 / 1024)
    parser.add_argument("--cone", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args()

    from nerfaccel_plugin import _ext

    device = args.device
    kind = "cpp" if device == "cpu" else "cuda"
    kernels = _ext.load_backend(kind)
    data, recipes = build_cases(args.rays, args.spp, args.res, device, args)
    others = _nerfacc_cases(data, device, args) if device == "cuda" else {}

    header = f"| op | torch (ms) | {kind} (ms) | torch/{kind} |"
    sep = "|---|---:|---:|---:|"
    if others:
        header += " nerfacc (ms) | nerfacc/" + kind + " |"
        sep += "---:|---:|"
    lines = [header, sep]
    for name, recipe in recipes.items():
        t_ref = _time(recipe(ref), device, args.repeat)
        t_ker = _time(recipe(kernels), device, args.repeat)
        row = f"| {name} | {t_ref * 1e3:.2f} | {t_ker * 1e3:.2f} | {t_ref / t_ker:.1f}x |"
        if others:
            if name in others:
                t_nf = _time(others[name], device, args.repeat)
                row += f" {t_nf * 1e3:.2f} | {t_nf / t_ker:.2f}x |"
            else:
                row += " - | - |"
        lines.append(row)
        print(row, flush=True)

    dev_name = torch.cuda.get_device_name() if device == "cuda" else _machine()
    meta = [
        f"# Backends on {device}: torch reference vs {kind}",
        "",
        f"- machine: {dev_name}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {_commit()}",
        f"- sizes: {args.rays} rays, ~{args.spp} samples/ray ({data['n']} samples), grid {args.res}^3, "
        f"step {args.step:.5f}, cone {args.cone}; median of {args.repeat} runs",
        "- fwd+bwd: forward, then backward from fixed random cotangents (no loss around the op)",
        "",
    ]
    text = "\n".join(meta + lines) + "\n"
    print()
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
