"""Occupancy-grid sampling speed: ``OccGridEstimator.sampling`` without a field function, this checkout vs a
baseline commit (default 5033a15, the float64 traversal that visits every lattice step), and on a GPU against
nerfacc's ``traverse_grids``.

Usage::

    python benchmarks/bench_traversal.py --out benchmarks/results/traversal-cpu.md      # CPU, vs 5033a15
    python benchmarks/bench_traversal.py --baseline none                                  # this checkout only
    python benchmarks/bench_traversal.py --device cuda                                    # GPU rows (+ nerfacc)

Scene (CPU target of issue 12): a lego-like 128^3 grid about 6% occupied (shells of a few boxes and ellipsoids
in a [-1.5, 1.5]^3 box, seeded), 4096 rays from random points on a radius-4 sphere aimed at random points of the
central region, step = box diagonal / 1024, cone 0, one level. Reported: median time of ``--repeat`` calls after
warmup, samples emitted, and lattice points evaluated per emitted sample (this checkout: counted by the CPU
build's ``traverse_grids_visits``; the baseline evaluates every lattice point between the first box entry and
the last exit, counted in closed form). The baseline runs this same script, ``--measure-only``, inside a temporary
``git worktree`` of the baseline commit (its extension is built into the normal cache on first use), alternating
with this checkout for ``--rounds`` rounds; the fastest call of the fastest round counts (a shared machine's load
only ever slows a run down).

GPU rows (``--device cuda``): ``traverse_grids`` of this checkout and of nerfacc (when importable) at cone 0 /
1 level and cone 1/256 / 4 levels, same rays and grids.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def lego_like_grid(res: int = 128, levels: int = 1, seed: int = 0) -> torch.Tensor:
    """Shells of boxes and ellipsoids (surfaces, like a trained lego grid), ~6% of the cells at 128^3."""
    g = torch.Generator().manual_seed(seed)
    c = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1  # cell centres in [-1, 1]
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    occ = torch.zeros(res, res, res, dtype=torch.bool)
    shell = 3.0 / res
    for _ in range(5):  # ellipsoid shells
        ctr = (torch.rand(3, generator=g) - 0.5) * 0.8
        rad = 0.15 + torch.rand(3, generator=g) * 0.35
        r = (((x - ctr[0]) / rad[0]) ** 2 + ((y - ctr[1]) / rad[1]) ** 2 + ((z - ctr[2]) / rad[2]) ** 2).sqrt()
        occ |= (r - 1).abs() * rad.min() < shell
    for _ in range(4):  # box shells
        lo = (torch.rand(3, generator=g) - 0.5) * 1.2
        hi = lo + 0.1 + torch.rand(3, generator=g) * 0.4
        inside = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
        dist = torch.stack(
            [
                (x - lo[0]).abs(),
                (x - hi[0]).abs(),
                (y - lo[1]).abs(),
                (y - hi[1]).abs(),
                (z - lo[2]).abs(),
                (z - hi[2]).abs(),
            ]
        ).amin(0)
        occ |= inside & (dist < shell)
    occ |= (y < -0.55) & (y > -0.6) & (x.abs() < 0.6) & (z.abs() < 0.6)  # a base plate
    return occ[None].expand(levels, res, res, res).contiguous()


def rays(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 4.0
    target = (torch.rand(n, 3, generator=g) - 0.5) * 1.0
    d = torch.nn.functional.normalize(target - o, dim=-1)
    return o, d


def plain_lattice_points(o, d, aabbs, near, far, step, cone) -> int:
    """Lattice points a march without skipping evaluates: mid in [first box entry, last exit) per ray."""
    from nerfaccel_plugin import _torch_impl as R

    o64, d64, a64 = o.double().cpu(), d.double().cpu(), aabbs.double().cpu()
    t_in, t_out = R._slab_intervals(o64, d64, a64)
    hit = (t_out > t_in) & (t_out > 0)
    lo = torch.where(hit, t_in, torch.full_like(t_in, math.inf)).amin(-1).clamp(min=0.0)
    hi = torch.where(hit, t_out, torch.full_like(t_out, -math.inf)).amax(-1)
    lo = torch.maximum(lo, near.double().cpu())
    hi = torch.minimum(hi, far.double().cpu())
    valid = torch.isfinite(lo) & (hi > lo)
    nr = near.double().cpu()
    k_lo = R._first_mid_at_or_after(torch.where(valid, lo, nr), nr, step, cone)
    k_hi = R._first_mid_at_or_after(torch.where(valid, hi, nr), nr, step, cone)
    return int(torch.where(valid, (k_hi - k_lo).clamp(min=0), torch.zeros_like(k_lo)).sum())


def _min_median(fn, repeat: int) -> tuple[float, float]:
    import time

    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), sorted(times)[len(times) // 2]


def measure_cpu_sampling(n_rays: int, res: int, repeat: int, threads: int = 0) -> dict:
    sys.path.insert(0, str(HERE))
    src = os.environ.get("NERFACCEL_BENCH_SOURCES")
    if src:  # baseline worktree: build its own kernel sources (the editable install maps csrc to this checkout)
        from nerfaccel_plugin._ext import build as _build

        _build.source_dir = lambda: Path(src)
    import nerfaccel_plugin as nacc

    if threads > 0:
        torch.set_num_threads(threads)
    est = nacc.OccGridEstimator(roi_aabb=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], resolution=res, levels=1)
    est.binaries.copy_(lego_like_grid(res))
    o, d = rays(n_rays)
    step = 3.0 * math.sqrt(3.0) / 1024
    out = {"module": nacc.__file__, "occupied": float(est.binaries.float().mean())}
    with nacc.value_checks(False) if hasattr(nacc, "value_checks") else _null():
        ri, t0, _ = est.sampling(o, d, render_step_size=step)
        out["seconds"], out["median"] = _min_median(lambda: est.sampling(o, d, render_step_size=step), repeat)
    out["samples"] = int(ri.numel())
    near, far = torch.zeros(n_rays), torch.full((n_rays,), 1e10)
    try:
        from nerfaccel_plugin._ext import build

        mod = build.get_module("cpp")
        if hasattr(mod, "traverse_grids_visits"):  # old layout (pybind op list)
            visits_op = mod.traverse_grids_visits
        else:  # kernel layout of issue 11: a CPU-only operator registered with the dispatcher
            visits_op = torch.ops.nerfaccel.traverse_grids_visits
        visits = int(visits_op(o, d, est.binaries, est.aabbs, near, far, step, 0.0).sum())
        out["visits_source"] = "traverse_grids_visits"
    except (AttributeError, ImportError, RuntimeError, NotImplementedError):
        visits = plain_lattice_points(o, d, est.aabbs, near, far, step, 0.0)
        out["visits_source"] = "closed form (every lattice point between first entry and last exit)"
    out["visits"] = visits
    from nerfaccel_plugin._ext import build as _b

    out["ext"] = f"{_b.source_dir()} -> {_b.get_module('cpp').__file__}"
    out["threads"] = torch.get_num_threads()
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _measure_in(tree: Path, args, sources: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    if sources:
        env["NERFACCEL_BENCH_SOURCES"] = str(tree / "cuda")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure-only",
        "--rays",
        str(args.rays),
        "--res",
        str(args.res),
        "--repeat",
        str(args.repeat),
        "--threads",
        str(args.threads),
    ]
    res = subprocess.run(cmd, cwd=str(tree), env=env, check=True, capture_output=True, text=True)
    return json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])


def compare(commit: str, args) -> tuple[dict, dict]:
    """Baseline and this checkout measured alternately (``--rounds`` rounds, each a fresh process; the fastest
    round of each is kept), so load changes on a shared machine hit both alike."""
    tmp = Path(tempfile.mkdtemp(prefix="nerfaccel-bench-"))
    wt = tmp / "wt"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), commit], check=True, capture_output=True
    )
    try:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for key, tree, sources in (("old", wt, True), ("new", ROOT, False)):
                out = _measure_in(tree, args, sources)
                assert str(tree) in out["module"], f"the {key} run imported {out['module']}"
                assert str(tree) in out["ext"], f"the {key} run loaded {out['ext']}, not that tree's kernels"
                if key not in best or out["seconds"] < best[key]["seconds"]:
                    best[key] = out
        return best["old"], best["new"]
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False, capture_output=True
        )


def gpu_rows(n_rays: int, res: int, repeat: int) -> list[str]:
    sys.path.insert(0, str(HERE))
    from _bench_util import time_fn

    from nerfaccel_plugin.grid import traverse_grids_samples

    try:
        import nerfacc  # noqa: F401 - comparison only, never used by the library

        have_nerfacc = True
    except ImportError:
        have_nerfacc = False
    rows = [
        "| case | nerfaccel (ms) | nerfacc (ms) | nerfacc / nerfaccel | samples (ours / nerfacc) |",
        "|---|---:|---:|---:|---:|",
    ]
    o, d = (x.cuda() for x in rays(n_rays))
    for cone, levels in ((0.0, 1), (1 / 256, 4)):
        b = lego_like_grid(res, levels).cuda()
        base = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
        aabbs = torch.stack([(base * 2**lvl) for lvl in range(levels)]).cuda()
        step = 3.0 * math.sqrt(3.0) / 1024
        near, far = torch.zeros(n_rays, device="cuda"), torch.full((n_rays,), 1e10, device="cuda")
        ours = time_fn(lambda: traverse_grids_samples(o, d, b, aabbs, near, far, step, cone), "cuda", repeat)
        n_ours = traverse_grids_samples(o, d, b, aabbs, near, far, step, cone)[0].numel()
        theirs, n_theirs = float("nan"), -1
        if have_nerfacc:
            import nerfacc

            def run():
                return nerfacc.traverse_grids(o, d, b, aabbs, near, far, step_size=step, cone_angle=cone)

            try:
                theirs = time_fn(run, "cuda", repeat)
                n_theirs = int(run()[1].vals.numel())
            except Exception as err:  # noqa: BLE001 - report, do not fail the other rows
                print(f"nerfacc failed: {err}", file=sys.stderr)
        rows.append(
            f"| cone {cone:.4g}, {levels} level(s) | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | "
            f"{theirs / ours:.2f} | {n_ours} / {n_theirs} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rays", type=int, default=4096)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating baseline / this checkout rounds")
    ap.add_argument("--baseline", default="5033a15", help="commit to compare with on the CPU, or 'none'")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.measure_only:
        print(json.dumps(measure_cpu_sampling(args.rays, args.res, args.repeat, args.threads)))
        return
    sys.path.insert(0, str(HERE))
    from _bench_util import header, load_average

    if args.device == "cuda":
        head = header("traverse_grids on CUDA vs nerfacc", "cuda", [f"load average: {load_average()}"])
        lines = [head, *gpu_rows(args.rays, args.res, args.repeat)]
    else:
        if args.threads > 0:  # the header names this process's thread count: that of the measurements
            torch.set_num_threads(args.threads)
        if args.baseline != "none":
            old, new = compare(args.baseline, args)
            rows = [(f"baseline {args.baseline}", old), ("this checkout", new)]
        else:
            new = measure_cpu_sampling(args.rays, args.res, args.repeat, args.threads)
            rows = [("this checkout", new)]
        lines = [
            header(
                "OccGridEstimator.sampling on the CPU (no field function)",
                "cpu",
                [f"load average at the end: {load_average()} (2 cores)"],
            ),
            f"Scene: lego-like {args.res}^3 grid, {new['occupied'] * 100:.1f}% occupied, {args.rays} rays from a "
            f"radius-4 sphere, step = diagonal / 1024, cone 0, 1 level; {new['threads']} torch threads. Times: "
            f"fastest of {args.repeat} calls, fastest of {args.rounds} alternating rounds (one process each) per code.",
            "",
            "| code | min (ms) | median (ms) | samples | lattice points evaluated | evaluated / sample "
            "| speed-up (min) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        ref_s = rows[0][1]["seconds"]
        for name, r in rows:
            lines.append(
                f"| {name} | {r['seconds'] * 1e3:.1f} | {r['median'] * 1e3:.1f} | {r['samples']} | "
                f"{r['visits']} | "
                f"{r['visits'] / max(r['samples'], 1):.2f} | {ref_s / r['seconds']:.2f}x |"
            )
        lines.append("")
        lines.append("Lattice points: " + "; ".join(f"{n}: {r['visits_source']}" for n, r in rows) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
