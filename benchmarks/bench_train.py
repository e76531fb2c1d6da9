"""Test PSNR versus training time of the nerfaccel methods (and Nerfstudio's instant-ngp on a GPU).

Trains in-process with Nerfstudio's trainer, pausing the clock at each requested time to evaluate the test
split (evaluation time is not counted). Prints a table and writes a JSON file to ``benchmarks/results/``
with the machine, date and git commit.

Examples::

    # Blender lego (default data: ../shared/data/blender/lego-400), GPU or CPU
    python benchmarks/bench_train.py --times 60 120 300
    # the embedded scene on the CPU (the ">= 25 dB in <= 5 min on 2 cores" target)
    python benchmarks/bench_train.py --embedded --times 60 150 300
    # dynamic scene
    python benchmarks/bench_train.py --method nerfaccel-dnerf --data ../shared/data/dnerf/lego --times 120 300

On a GPU, ``--baseline`` (default on) also trains Nerfstudio's ``instant-ngp`` on the same data, with LPIPS
switched off (its weights are not downloaded), and prints the time ratio to reach the same PSNR.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = {
    "nerfaccel-lego": REPO / ".." / "shared" / "data" / "blender" / "lego-400",
    "nerfaccel-vanilla": REPO / ".." / "shared" / "data" / "blender" / "lego-400",
    "nerfaccel-dnerf": REPO / ".." / "shared" / "data" / "dnerf" / "lego",
}


def _commit() -> str:
    """Short hash of HEAD, with ``-dirty`` when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    info["cpu_threads"] = torch.get_num_threads()
    info["cpu_count"] = os.cpu_count()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _nerfaccel_config(method: str, data: Path | None, embedded: bool, out: Path):
    from nerfaccel_plugin.method_configs import dnerf, lego, ngp, unbounded, vanilla

    from nerfaccel_plugin.dataparsers import NerfaccelBlenderDataParserConfig, NerfaccelDNeRFDataParserConfig

    specs = {
        "nerfaccel-lego": lego.nerfaccel_lego,
        "nerfaccel-ngp": ngp.nerfaccel_ngp,
        "nerfaccel-360": unbounded.nerfaccel_360,
        "nerfaccel-vanilla": vanilla.nerfaccel_vanilla,
        "nerfaccel-dnerf": dnerf.nerfaccel_dnerf,
    }
    cfg = copy.deepcopy(specs[method].config)
    dynamic = method == "nerfaccel-dnerf"
    parser_cls = NerfaccelDNeRFDataParserConfig if dynamic else NerfaccelBlenderDataParserConfig
    if embedded:
        from nerfaccel_plugin.scene import get_scene

        data = Path(get_scene(dynamic=dynamic))
    cfg.pipeline.datamanager.dataparser = parser_cls(data=data)
    cfg.output_dir = out
    return cfg


def _ngp_config(data: Path, out: Path):
    import torchmetrics.image.lpip as lpip_mod
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    class _NoLPIPS(torch.nn.Module):
        """LPIPS switched off: its AlexNet weights would be downloaded."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def forward(self, *args, **kwargs) -> torch.Tensor:
            return torch.tensor(float("nan"))

    lpip_mod.LearnedPerceptualImagePatchSimilarity = _NoLPIPS  # type: ignore[misc]
    cfg = copy.deepcopy(method_configs["instant-ngp-bounded"])
    cfg.pipeline.datamanager.dataparser = BlenderDataParserConfig(data=data)
    cfg.output_dir = out
    return cfg


def run(cfg, times: list[float], label: str) -> list[dict]:
    """Trains ``cfg`` and evaluates the test split after each training time in ``times`` (seconds)."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    import nerfaccel_plugin

    nerfaccel_plugin.backend_info()  # builds / loads the compiled backend before the clock starts
    cfg.vis = "tensorboard"
    cfg.max_num_iterations = 10**7
    cfg.set_timestamp()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup(test_mode="test")
    cuda = torch.cuda.is_available() and str(trainer.device).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows, step, elapsed = [], 0, 0.0
    for target in sorted(times):
        while elapsed < target:
            start = time.perf_counter()
            trainer.pipeline.train()
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
            trainer.train_iteration(step)
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
            if cuda:
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - start
            step += 1
        trainer.pipeline.eval()
        metrics = trainer.pipeline.get_average_eval_image_metrics(step=step)
        row = {
            "method": label,
            "train_seconds": round(elapsed, 1),
            "steps": step,
            "psnr": round(float(metrics["psnr"]), 3),
            "ssim": round(float(metrics.get("ssim", float("nan"))), 4),
        }
        if cuda:
            row["gpu_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def time_to_psnr(rows: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation that reached ``target`` dB (``None`` if none did).

    An upper bound at the resolution of the evaluation times; pass more ``--times`` for a finer estimate.
    """
    for row in rows:
        if row["psnr"] >= target:
            return row["train_seconds"]
    return None


def markdown(result: dict) -> str:
    """The result as a markdown table with its machine, date and commit."""
    m = result["machine"]
    device = m.get("gpu") or f"CPU ({m['cpu_count']} logical cores, {m['cpu_threads']} torch threads)"
    lines = [
        f"# {result['method']} on {result['data']}",
        "",
        f"- device: {device}; {m['platform']}; torch {m['torch']}",
        f"- date: {result['date']}",
        f"- commit: {result['commit']}",
        "",
        "| method | train s | steps | test PSNR | SSIM | GPU peak GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mem = r.get("gpu_peak_mem_gib", "-")
        lines.append(
            f"| {r['method']} | {r['train_seconds']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {mem} |"
        )
    lines.append("")
    for name, sec in result["seconds_to_psnr_target"].items():
        if sec is None:
            lines.append(f"- {name}: {result['psnr_target']} dB not reached at any evaluation")
        else:
            lines.append(f"- {name}: first evaluation at >= {result['psnr_target']} dB after {sec} s of training")
    ours, theirs = (
        result["seconds_to_psnr_target"].get(result["method"]),
        result["seconds_to_psnr_target"].get("instant-ngp"),
    )
    if ours and theirs:
        lines.append(f"- time to {result['psnr_target']} dB: instant-ngp / {result['method']} = {theirs / ours:.2f}x")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="nerfaccel-lego")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: ../shared/data/...)")
    parser.add_argument("--embedded", action="store_true", help="train on the embedded scene instead")
    parser.add_argument("--times", type=float, nargs="+", default=[60, 120, 300], help="training seconds")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run Nerfstudio's instant-ngp (GPU only)")  # fmt: skip
    parser.add_argument("--psnr-target", type=float, default=None,
                        help="report the time to reach this PSNR (default 33 dB, 25 dB with --embedded)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tag", default=None, help="name of the result file")
    args = parser.parse_args(argv)
    if args.psnr_target is None:
        args.psnr_target = 25.0 if args.embedded else 33.0

    data = args.data or DEFAULT_DATA.get(args.method)
    if not args.embedded and (data is None or not Path(data).exists()):
        print(f"data folder {data} not found; pass --data PATH or --embedded", file=sys.stderr)
        return 2
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "nerfaccel-bench"
    times = sorted(set(args.times))
    rows = run(_nerfaccel_config(args.method, data, args.embedded, work), times, args.method)
    summary = {args.method: time_to_psnr(rows, args.psnr_target)}
    if args.baseline and torch.cuda.is_available() and not args.embedded and args.method != "nerfaccel-dnerf":
        base = run(_ngp_config(Path(data), work), times, "instant-ngp")
        for ours, theirs in zip(rows, base, strict=True):
            ours["psnr_minus_instant_ngp"] = round(ours["psnr"] - theirs["psnr"], 3)
        rows += base
        summary["instant-ngp"] = time_to_psnr(base, args.psnr_target)
    result = {
        "benchmark": "bench_train",
        "method": args.method,
        "data": "embedded" if args.embedded else str(data),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": _machine(),
        "psnr_target": args.psnr_target,
        "seconds_to_psnr_target": summary,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    tag = args.tag or f"train-{args.method}-{'embedded' if args.embedded else Path(data).name}-{device}"
    path = args.out / f"{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    path.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
