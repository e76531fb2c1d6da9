"""Test PSNR versus training time of the nerfaccel methods (and Nerfstudio's instant-ngp on a GPU).

Trains in-process with Nerfstudio's trainer. The clock only runs during training iterations (each one is
synchronised on a GPU); it is paused for every evaluation. Two kinds of evaluation:

* at each ``--times`` (training seconds): the whole test split (or ``--test-views`` of it) -> the table rows;
* every ``--eval-every`` seconds (5 on a GPU, 30 on the CPU): a fixed, evenly spaced subset of ``--eval-views``
  test views -> a PSNR curve, from which the time to reach ``--psnr-target`` is interpolated linearly between
  the two evaluations that bracket the first crossing (same subset for every method).

Every method trains with its own learning-rate schedule fitted to ``--steps`` iterations (default: the
method's configured length) and stops there even if time is left. Prints a table and writes JSON + markdown
(machine, date, commit, data resolution, background treatment, schedules, backends, GPU memory per method).

Examples::

    # Blender lego (default data: ../shared/data/blender/lego-400), GPU or CPU
    python benchmarks/bench_train.py --times 60 120 300
    # the embedded scene on the CPU (the ">= 25 dB in <= 5 min on 2 cores" target)
    python benchmarks/bench_train.py --embedded --times 60 150 300
    # dynamic scene
    python benchmarks/bench_train.py --method nerfaccel-dnerf --data ../shared/data/dnerf/lego --times 120 300
    # CPU smoke test of the whole script, instant-ngp path included, written to /tmp
    python benchmarks/bench_train.py --embedded --times 5 10 --eval-every 2.5 --eval-views 2 --test-views 3 \\
        --steps 15 --baseline-steps 5 --baseline-on-cpu --out /tmp/bench-smoke

On a GPU, ``--baseline`` (default on, except for nerfaccel-dnerf) also trains Nerfstudio's
``instant-ngp-bounded`` on the same data, with the same background treatment, LPIPS switched off (its
weights are not downloaded), and reports the ratio of the times to reach the PSNR target.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = {
    "nerfaccel-lego": REPO / ".." / "shared" / "data" / "blender" / "lego-400",
    "nerfaccel-vanilla": REPO / ".." / "shared" / "data" / "blender" / "lego-400",
    "nerfaccel-dnerf": REPO / ".." / "shared" / "data" / "dnerf" / "lego",
}
BASELINE = "instant-ngp-bounded"
FULL_RESOLUTION = 800
"""Image size of the original Blender / D-NeRF scenes, for which the GPU quality targets are stated."""
GIB = 2**30


# --- machine --------------------------------------------------------------------------------------------------


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
        info["cuda"] = torch.version.cuda
    for name in ("nerfstudio", "nerfacc", "tinycudann"):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        try:
            __import__(name)
        except Exception as err:  # noqa: BLE001 - absent or broken: report it, do not fail the benchmark
            version = f"{version} (import fails: {type(err).__name__})" if version else None
        info[name] = version
    return info


def _warm_up_extensions(cuda: bool) -> None:
    """Builds / loads every compiled extension before any clock starts (first use can JIT-compile for minutes)."""
    import nerfaccel_plugin

    nerfaccel_plugin.backend_info()
    if cuda:
        torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")  # context, cuBLAS
        try:
            from nerfacc.cuda import _backend as nerfacc_backend  # nerfacc 0.5 JIT-builds its CUDA ops here

            if nerfacc_backend._C is None:
                print("warning: nerfacc's CUDA extension did not load; instant-ngp will fail", file=sys.stderr)
        except ImportError:
            pass
        torch.cuda.synchronize()


# --- configs --------------------------------------------------------------------------------------------------


def _schedule_info(cfg) -> dict:
    """The iteration cap and each optimizer group's learning-rate schedule, for the report."""
    groups = {}
    for name, group in cfg.optimizers.items():
        sched = group.get("scheduler")
        groups[name] = {
            "lr": group["optimizer"].lr,
            "scheduler": type(sched).__name__ if sched is not None else None,
            "lr_final": getattr(sched, "lr_final", None),
            "warmup_steps": getattr(sched, "warmup_steps", None),
            "decay_steps": getattr(sched, "max_steps", None),
        }
    return {"max_num_iterations": cfg.max_num_iterations, "optimizers": groups}


def _fit_ours_schedule(cfg, steps: int) -> None:
    """What ``nerfaccel_plugin/ns/trainer.make_trainer_config`` builds for ``steps`` iterations: the decay ends at the
    last step and the warm-up is ``min(100, steps // 10)``."""
    for group in cfg.optimizers.values():
        sched = group.get("scheduler")
        if sched is not None:
            if sched.max_steps != cfg.max_num_iterations:
                raise RuntimeError(f"expected the schedule to end at max_num_iterations, got {sched}")
            sched.max_steps = steps
            sched.warmup_steps = min(100, steps // 10)
    cfg.max_num_iterations = steps


def _fit_baseline_schedule(cfg, steps: int, mode: str) -> None:
    """instant-ngp-bounded trains 30k steps with a decay that would end at 200k. ``scaled`` keeps that shape
    (decay length x steps / 30k, so the run ends at the same point of its decay); ``matched`` decays to its
    ``lr_final`` at the last step, like ours."""
    old = cfg.max_num_iterations
    for group in cfg.optimizers.values():
        sched = group.get("scheduler")
        if sched is None:
            continue
        if mode == "scaled":
            sched.max_steps = max(1, round(sched.max_steps * steps / old))
        else:
            sched.max_steps = steps
        sched.warmup_steps = round(sched.warmup_steps * steps / old)
    cfg.max_num_iterations = steps


def _nerfaccel_config(method: str, data: Path | None, embedded: bool, background: str, steps: int | None):
    from nerfaccel_plugin.method_configs import method_config

    from nerfaccel_plugin.ns.dataparsers import NerfaccelBlenderDataParserConfig, NerfaccelDNeRFDataParserConfig

    cfg = method_config(method)  # a fresh config with this machine's (GPU or CPU) defaults
    dynamic = method == "nerfaccel-dnerf"
    parser_cls = NerfaccelDNeRFDataParserConfig if dynamic else NerfaccelBlenderDataParserConfig
    if embedded:
        from nerfaccel_plugin.scene import get_scene

        data = Path(get_scene(dynamic=dynamic))
    cfg.pipeline.datamanager.dataparser = parser_cls(data=data, alpha_color=None)  # RGBA kept
    cfg.pipeline.model.background_color = background
    cfg.pipeline.model.eval_background_color = "white"
    if steps is not None:
        _fit_ours_schedule(cfg, steps)
    return cfg


def _ngp_config(data: Path, background: str, steps: int | None, schedule_mode: str, cpu_smoke: bool):
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    cfg = copy.deepcopy(method_configs[BASELINE])
    # Same data treatment as ours: RGBA kept (alpha_color=None), the model composites the ground truth on
    # its own training background ("random": a random colour per ray, "white": white), white at evaluation.
    cfg.pipeline.datamanager.dataparser = BlenderDataParserConfig(data=data, alpha_color=None)
    cfg.pipeline.model.background_color = background
    if steps is not None:
        _fit_baseline_schedule(cfg, steps, schedule_mode)
    if cpu_smoke:  # CPU-sized, like nerfaccel_plugin/ns/trainer.apply_cpu_defaults; a smoke test, not a measurement
        cfg.machine.device_type = "cpu"
        cfg.mixed_precision = False
        cfg.pipeline.datamanager.train_num_rays_per_batch = 512
        cfg.pipeline.target_num_samples = 1 << 14
        cfg.pipeline.max_num_samples_per_ray = 64
        model = cfg.pipeline.model
        model.eval_num_rays_per_chunk = 4096
        model.sampler.grid_resolution = 64
        model.field.max_res, model.field.log2_hashmap_size = 512, 17
        model.sampler.render_step_size = 3.0 * math.sqrt(3.0) / 256
    return cfg


@contextlib.contextmanager
def _no_lpips() -> Iterator[None]:
    """LPIPS switched off while instant-ngp is built: its AlexNet weights would be downloaded."""
    import torchmetrics.image.lpip as lpip_mod

    class _NoLPIPS(torch.nn.Module):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def forward(self, *args, **kwargs) -> torch.Tensor:
            return torch.tensor(float("nan"))

    saved = lpip_mod.LearnedPerceptualImagePatchSimilarity
    lpip_mod.LearnedPerceptualImagePatchSimilarity = _NoLPIPS  # type: ignore[misc]
    try:
        yield
    finally:
        lpip_mod.LearnedPerceptualImagePatchSimilarity = saved  # type: ignore[misc]


@contextlib.contextmanager
def _nerfacc_shim() -> Iterator[None]:
    """Nerfstudio's instant-ngp on nerfaccel's drop-in API instead of nerfacc (whose ops are CUDA-only), for the
    CPU smoke test of the baseline path."""
    import nerfstudio.model_components.renderers as renderers
    import nerfstudio.models.instant_ngp as instant_ngp

    import nerfaccel_plugin

    saved = instant_ngp.nerfacc, renderers.nerfacc
    instant_ngp.nerfacc = renderers.nerfacc = nerfaccel_plugin
    try:
        yield
    finally:
        instant_ngp.nerfacc, renderers.nerfacc = saved


@contextlib.contextmanager
def _white_eval_background() -> Iterator[None]:
    """instant-ngp with ``background_color="random"`` renders and blends the ground truth on black at evaluation;
    this puts both on white, the evaluation background of ours."""
    from nerfstudio.model_components.renderers import background_color_override_context

    with background_color_override_context(torch.ones(3)):
        yield


# --- what ran -------------------------------------------------------------------------------------------------


def _backends(model) -> dict:
    """Which implementation runs the hash encoding and the MLPs of ``model`` (tiny-cuda-nn, torch, or nerfaccel's
    fused CPU kernel), and the nerfaccel op backend for the model's device."""
    from nerfstudio.field_components.encodings import HashEncoding
    from nerfstudio.field_components.mlp import MLP, MLPWithHashEncoding

    from nerfaccel_plugin.ns.fields.hash_encoding import NerfaccelHashEncoding, hash_kernel_available

    def is_tcnn(module) -> bool:
        return module is not None and type(module).__module__.split(".")[0] == "tinycudann"

    device = next(model.parameters()).device
    encodings, mlps = set(), set()
    for m in model.modules():
        if isinstance(m, MLPWithHashEncoding) and is_tcnn(getattr(m, "model", None)):
            encodings.add("tiny-cuda-nn (fused with the MLP)")
            mlps.add("tiny-cuda-nn")
        elif isinstance(m, HashEncoding):
            if is_tcnn(m.tcnn_encoding):
                encodings.add("tiny-cuda-nn")
            elif isinstance(m, NerfaccelHashEncoding) and device.type == "cpu" and hash_kernel_available():
                encodings.add("nerfaccel fused CPU kernel")
            else:
                encodings.add("torch")
        elif isinstance(m, MLP):
            mlps.add("tiny-cuda-nn" if is_tcnn(m.tcnn_encoding) else "torch")
    info = {
        "device": str(device),
        "hash_encoding": ", ".join(sorted(encodings)) or "none",
        "mlp": ", ".join(sorted(mlps)) or "none",
    }
    if hasattr(model, "hash_implementation"):
        info["hash_implementation_option"] = model.hash_implementation
    return info


def _data_info(pipeline, n_eval: list[int]) -> dict:
    dm = pipeline.datamanager

    def sizes(dataset) -> dict:
        cams = dataset.cameras
        w = sorted({int(x) for x in cams.width.flatten().tolist()})
        h = sorted({int(x) for x in cams.height.flatten().tolist()})
        return {"views": len(dataset), "width": w[0] if len(w) == 1 else w, "height": h[0] if len(h) == 1 else h}

    train, test = sizes(dm.train_dataset), sizes(dm.eval_dataset)
    test["evaluated_views"] = len(n_eval)
    return {"train": train, "test": test}


# --- training and evaluation ----------------------------------------------------------------------------------


@dataclass
class _Memory:
    """Peak GPU memory per phase (setup / training / evaluation), reset at the start of each phase."""

    cuda: bool
    before_setup: float = 0.0
    peaks: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.cuda:
            yield
            return
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        try:
            yield
        finally:
            torch.cuda.synchronize()
            alloc, reserved = torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB
            old = self.peaks.get(name, (0.0, 0.0))
            self.peaks[name] = (max(old[0], alloc), max(old[1], reserved))
            if name != "train":  # cached blocks of setup / evaluation must not count as training's reserve
                torch.cuda.empty_cache()

    def train_peak(self) -> float:
        """Peak allocated during setup and training so far (GiB)."""
        return max(self.peaks.get("setup", (0.0,))[0], self.peaks.get("train", (0.0,))[0])

    def summary(self) -> dict:
        out = {"allocated_before_setup_gib": round(self.before_setup, 3)}
        for name, (alloc, reserved) in self.peaks.items():
            out[f"{name}_peak_allocated_gib"] = round(alloc, 3)
            out[f"{name}_peak_reserved_gib"] = round(reserved, 3)
        return out


def _spread(indices: list[int], k: int) -> list[int]:
    """``k`` evenly spaced entries of ``indices`` (all of them when ``k <= 0`` or ``k >= len``)."""
    n = len(indices)
    if k <= 0 or k >= n:
        return list(indices)
    return [indices[(i * n) // k] for i in range(k)]


def _evaluate(pipeline, indices: list[int], context: Callable[[], contextlib.AbstractContextManager]) -> dict:
    """Per-image test metrics, computed as Nerfstudio's ``get_average_eval_image_metrics`` does."""
    from nerfstudio.data.utils.dataloaders import FixedIndicesEvalDataloader

    dm = pipeline.datamanager
    loader = FixedIndicesEvalDataloader(input_dataset=dm.eval_dataset, image_indices=tuple(indices), device=dm.device)
    pipeline.eval()
    out = {}
    try:
        with context():
            for index, (camera, batch) in zip(indices, loader, strict=True):
                outputs = pipeline.model.get_outputs_for_camera(camera=camera)
                metrics, _ = pipeline.model.get_image_metrics_and_images(outputs, batch)
                out[index] = (float(metrics["psnr"]), float(metrics.get("ssim", float("nan"))))
    finally:
        pipeline.train()
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def run(
    cfg,
    times: list[float],
    label: str,
    eval_every: float,
    eval_views: int,
    test_views: int,
    eval_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict:
    """Trains ``cfg`` until each of ``times`` (training seconds) or its last iteration, whichever comes first.

    Returns:
        ``rows`` (whole evaluated test set at each of ``times``), ``curve`` (subset PSNR every ``eval_every``
        seconds and at each of ``times``), and what ran (schedule, backends, data, GPU memory, wall times).
    """
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    cfg.vis = "tensorboard"
    cfg.set_timestamp()
    max_steps = int(cfg.max_num_iterations)
    cuda = torch.cuda.is_available() and cfg.machine.device_type == "cuda"
    memory = _Memory(cuda)
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        memory.before_setup = torch.cuda.memory_allocated() / GIB
    wall = time.perf_counter()
    with memory.phase("setup"):
        trainer = cfg.setup(local_rank=0, world_size=1)
        trainer.setup(test_mode="test")
    pipeline = trainer.pipeline
    all_views = _spread(list(range(len(pipeline.datamanager.eval_dataset))), test_views)
    subset = _spread(all_views, eval_views)
    info = {
        "schedule": _schedule_info(cfg),
        "backends": _backends(pipeline.model),
        "data": _data_info(pipeline, all_views),
        "mixed_precision": bool(cfg.mixed_precision),
        "eval_subset": subset,
    }

    # evaluation points: every eval_every seconds (subset) plus the reported times (whole set)
    report = sorted(set(times))
    points = set(report)
    if eval_every > 0:
        points |= {round(k * eval_every, 6) for k in range(1, int(report[-1] / eval_every + 1e-9) + 1)}
    rows, curve, step, elapsed, eval_wall, last = [], [], 0, 0.0, 0.0, None
    for target in sorted(points):
        if step >= max_steps and target not in report:
            continue  # schedule finished: the model no longer changes
        with memory.phase("train"):
            while elapsed < target and step < max_steps:
                start = time.perf_counter()
                trainer.step = step
                pipeline.train()
                for cb in trainer.callbacks:
                    cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
                trainer.train_iteration(step)
                for cb in trainer.callbacks:
                    cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
                if cuda:
                    torch.cuda.synchronize()
                elapsed += time.perf_counter() - start
                step += 1
        full = target in report
        unchanged = last is not None and last[0] == step  # no iteration since the last evaluation
        if unchanged and not full:
            continue
        start = time.perf_counter()
        if unchanged and last[2]:
            metrics = last[1]
        else:
            with memory.phase("eval"):
                metrics = _evaluate(pipeline, all_views if full else subset, eval_context)
            last = (step, metrics, full)
        eval_wall += time.perf_counter() - start
        subset_psnr = round(_mean(metrics[i][0] for i in subset), 3)
        point = {"train_seconds": round(elapsed, 2), "steps": step, "psnr_subset": subset_psnr}
        if not curve or curve[-1]["steps"] != step:
            curve.append(point)
        if full:
            row = {
                "method": label,
                "requested_seconds": target,
                "train_seconds": round(elapsed, 1),
                "steps": step,
                "schedule_fraction": round(step / max_steps, 3),
                "psnr": round(_mean(metrics[i][0] for i in all_views), 3),
                "ssim": round(_mean(metrics[i][1] for i in all_views), 4),
                "psnr_subset": point["psnr_subset"],
            }
            if cuda:
                row["gpu_train_peak_allocated_gib"] = round(memory.train_peak(), 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
        else:
            print(json.dumps({"method": label, **point}), flush=True)
    info["gpu_memory"] = memory.summary() if cuda else None
    info["wall_seconds"] = {"total": round(time.perf_counter() - wall, 1), "evaluation": round(eval_wall, 1)}
    info["final_steps"], info["final_train_seconds"] = step, round(elapsed, 1)
    del trainer, pipeline
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"rows": rows, "curve": curve, **info}


# --- time to a PSNR target ------------------------------------------------------------------------------------


def time_to_psnr(curve: list[dict], target: float, key: str = "psnr_subset") -> dict:
    """Training seconds at which ``curve`` first reaches ``target`` dB, interpolated linearly in time between the
    two evaluations that bracket the crossing.

    Returns:
        ``{"kind": "interpolated", "seconds": t, "between": [[t0, p0], [t1, p1]]}``; ``"upper_bound"`` (reached at
        the first evaluation, ``seconds`` is its time); or ``"not_reached"`` (``seconds`` is ``None`` and
        ``after`` is the last evaluated time, a lower bound).
    """
    for i, point in enumerate(curve):
        if point[key] >= target:
            t1, p1 = point["train_seconds"], point[key]
            if i == 0:
                return {"kind": "upper_bound", "seconds": t1, "between": [[0.0, None], [t1, p1]]}
            t0, p0 = curve[i - 1]["train_seconds"], curve[i - 1][key]
            t = t0 + (target - p0) * (t1 - t0) / (p1 - p0) if p1 > p0 else t1
            return {"kind": "interpolated", "seconds": round(t, 2), "between": [[t0, p0], [t1, p1]]}
    return {"kind": "not_reached", "seconds": None, "after": curve[-1]["train_seconds"] if curve else 0.0}


def _interval(result: dict) -> tuple[float, float]:
    if result["kind"] == "interpolated":
        return result["seconds"], result["seconds"]
    if result["kind"] == "upper_bound":
        return 0.0, result["seconds"]
    return result["after"], math.inf


def time_ratio(theirs: dict, ours: dict) -> dict | None:
    """``theirs / ours`` of two :func:`time_to_psnr` results, as an interval ``[low, high]`` (equal when both are
    interpolated); ``None`` when nothing can be said (ours not reached and theirs not bounded above)."""
    t_lo, t_hi = _interval(theirs)
    o_lo, o_hi = _interval(ours)
    low = t_lo / o_hi if o_hi not in (0.0, math.inf) else (0.0 if o_hi == math.inf else math.inf)
    high = t_hi / o_lo if o_lo > 0 else math.inf
    if low == 0.0 and high == math.inf:
        return None
    return {"low": round(low, 3), "high": None if high == math.inf else round(high, 3)}


def _ratio_text(ratio: dict | None) -> str:
    if ratio is None:
        return "undetermined"
    low, high = ratio["low"], ratio["high"]
    if high is not None and abs(high - low) < 1e-9:
        return f"{low:.2f}x"
    if high is None:
        return f">= {low:.2f}x"
    if low == 0.0:
        return f"<= {high:.2f}x"
    return f"between {low:.2f}x and {high:.2f}x"


# --- report ---------------------------------------------------------------------------------------------------


def _res_text(d: dict) -> str:
    w, h = d["width"], d["height"]
    return f"{w}x{h} px" if isinstance(w, int) and isinstance(h, int) else f"{w} x {h} px"


def _schedule_text(s: dict) -> str:
    parts = []
    for name, g in s["optimizers"].items():
        final = f" -> {g['lr_final']:g}" if g["lr_final"] is not None else ""
        parts.append(f"{name}: lr {g['lr']:g}{final}, warm-up {g['warmup_steps']}, decay over {g['decay_steps']}")
    return f"{s['max_num_iterations']} iterations ({'; '.join(parts)})"


def markdown(result: dict) -> str:
    """The result as a markdown table with its machine, date, commit and what exactly ran."""
    m = result["machine"]
    device = m.get("gpu") or f"CPU ({m['cpu_count']} logical cores, {m['cpu_threads']} torch threads)"
    target = result["psnr_target"]
    runs = result["runs"]
    first = next(iter(runs.values()))
    train, test = first["data"]["train"], first["data"]["test"]
    res = _res_text(train)
    full = all(d.get(k) == FULL_RESOLUTION for d in (train, test) for k in ("width", "height"))
    res_note = "" if full else f" — **not** the {FULL_RESOLUTION} px full resolution the GPU targets are stated for"
    lines = [
        f"# {result['method']} on {result['data']} at {res}",
        "",
        f"- device: {device}; {m['platform']}; torch {m['torch']}",
        f"- date: {result['date']}",
        f"- commit: {result['commit']}",
        f"- data: {train['views']} train views at {res}, {test['evaluated_views']} of {test['views']} test views "
        f"at {_res_text(test)}{res_note}",
        f"- background: {result['background_text']}",
        f"- steps: {result['steps_text']}",
        f"- evaluation (not counted as training time): whole evaluated test set at {result['times']} s; "
        f"{len(first['eval_subset'])} test view(s) (indices {first['eval_subset']}) "
        + (f"every {result['eval_every']} s" if result["eval_every"] > 0 else "at those times only")
        + " for the time to the target",
    ]
    if result.get("cpu_smoke"):
        lines.append(
            "- **CPU smoke test of the instant-ngp path (nerfaccel's ops in place of nerfacc, CPU-sized "
            "settings): not a measurement**"
        )
    for name, r in runs.items():
        b = r["backends"]
        lines.append(
            f"- {name}: {_schedule_text(r['schedule'])}; hash encoding: {b['hash_encoding']}; MLP: {b['mlp']}; "
            f"ops: {r['ops_backend']}; mixed precision: {r['mixed_precision']}; wall {r['wall_seconds']['total']} s "
            f"({r['wall_seconds']['evaluation']} s evaluating)"
        )
    lines += [
        "",
        "| method | requested s | train s | steps | of schedule | test PSNR | SSIM | subset PSNR | GPU peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        for row in r["rows"]:
            mem = row.get("gpu_train_peak_allocated_gib", "-")
            lines.append(
                f"| {name} | {row['requested_seconds']:g} | {row['train_seconds']} | {row['steps']} | "
                f"{row['schedule_fraction']:.0%} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['psnr_subset']:.2f} | "
                f"{mem} |"
            )
    if any(r["gpu_memory"] for r in runs.values()):
        lines.append("")
        lines.append(
            "GPU peak = memory allocated by torch during setup and training up to that row (the CUDA context "
            "and allocator slack are extra; see the reserved figures below)."
        )
    if any(r["gpu_memory"] for r in runs.values()):
        lines += [
            "",
            "| method | before setup GiB | setup peak alloc / reserved | train peak alloc / reserved | "
            "eval peak alloc / reserved |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in runs.items():
            g = r["gpu_memory"] or {}

            def pair(phase: str, g: dict = g) -> str:
                a, b = g.get(f"{phase}_peak_allocated_gib"), g.get(f"{phase}_peak_reserved_gib")
                return "-" if a is None else f"{a} / {b}"

            lines.append(
                f"| {name} | {g.get('allocated_before_setup_gib', '-')} | {pair('setup')} | {pair('train')} | "
                f"{pair('eval')} |"
            )
    lines += ["", f"Time to {target} dB (subset PSNR, linear interpolation between evaluations):", ""]
    for name, t in result["time_to_psnr_target"].items():
        if t["kind"] == "interpolated":
            (t0, p0), (t1, p1) = t["between"]
            lines.append(f"- {name}: {t['seconds']} s (between {t0} s at {p0:.2f} dB and {t1} s at {p1:.2f} dB)")
        elif t["kind"] == "upper_bound":
            lines.append(f"- {name}: <= {t['seconds']} s (already reached at the first evaluation)")
        else:
            lines.append(f"- {name}: not reached in {t['after']} s of training")
    if "time_ratio" in result:
        lines.append(f"- time to {target} dB, {BASELINE} / {result['method']}: {_ratio_text(result['time_ratio'])}")
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="nerfaccel-lego")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: ../shared/data/...)")
    parser.add_argument("--embedded", action="store_true", help="train on the embedded scene instead")
    parser.add_argument(
        "--times",
        type=float,
        nargs="+",
        default=[60, 120, 300],
        help="training seconds at which the whole test set is evaluated",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="iterations: every method's schedule is fitted to this many and training stops there "
        "(default: each method's configured length)",
    )
    parser.add_argument(
        "--baseline-steps",
        type=int,
        default=None,
        help=f"iterations of {BASELINE} (default: --steps, or its configured 30000 without --steps); "
        "give each method the iterations it manages in the time budget",
    )
    parser.add_argument(
        "--baseline-schedule",
        choices=("scaled", "matched"),
        default="scaled",
        help=f"with --baseline-steps / --steps: {BASELINE} keeps its decay shape scaled to the new "
        "length (scaled), or decays to its final rate at the last step like ours (matched)",
    )
    parser.add_argument(
        "--background",
        choices=("random", "white"),
        default="random",
        help="training background of both methods (RGBA data, evaluated on white)",
    )
    parser.add_argument(
        "--eval-every",
        type=float,
        default=None,
        help="training seconds between subset evaluations for the time to the target (0: only at --times; "
        "default 5 on a GPU, 30 on the CPU)",
    )
    parser.add_argument("--eval-views", type=int, default=10, help="test views in that subset (0: all)")
    parser.add_argument(
        "--test-views", type=int, default=0, help="evaluate only this many evenly spaced test views at --times (0: all)"
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also run Nerfstudio's {BASELINE} (default: on a GPU, not for nerfaccel-dnerf)",
    )
    parser.add_argument(
        "--baseline-on-cpu",
        action="store_true",
        help="smoke test only: run the baseline on the CPU through nerfaccel's nerfacc-compatible "
        "ops with CPU-sized settings",
    )
    parser.add_argument(
        "--psnr-target",
        type=float,
        default=None,
        help="report the time to reach this PSNR (default 33 dB, 25 dB with --embedded)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tag", default=None, help="name of the result file")
    args = parser.parse_args(argv)
    if args.psnr_target is None:
        args.psnr_target = 25.0 if args.embedded else 33.0
    for name in ("steps", "baseline_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.baseline_steps is None:
        args.baseline_steps = args.steps
    if args.eval_every is None:
        args.eval_every = 5.0 if torch.cuda.is_available() else 30.0

    data = args.data or DEFAULT_DATA.get(args.method)
    if not args.embedded and (data is None or not Path(data).exists()):
        print(f"data folder {data} not found; pass --data PATH or --embedded", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    dynamic = args.method == "nerfaccel-dnerf"
    baseline = args.baseline if args.baseline is not None else ((cuda or args.baseline_on_cpu) and not dynamic)
    cpu_smoke = baseline and not cuda
    if cpu_smoke and not args.baseline_on_cpu:
        print(f"{BASELINE} needs a GPU (nerfacc's ops); pass --baseline-on-cpu for a smoke test", file=sys.stderr)
        return 2
    if baseline and dynamic:
        print(f"{BASELINE} is a static-scene method; no baseline for {args.method}", file=sys.stderr)
        return 2
    os.environ.setdefault("NERFACCEL_NO_LPIPS", "1")  # LPIPS is not reported; keep the evaluation cheap
    _warm_up_extensions(cuda)

    import nerfaccel_plugin

    ops = nerfaccel_plugin.backend_info()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "nerfaccel-bench"
    times = sorted(set(args.times))
    common = dict(times=times, eval_every=args.eval_every, eval_views=args.eval_views, test_views=args.test_views)
    ours_cfg = _nerfaccel_config(args.method, data, args.embedded, args.background, args.steps)
    ours_cfg.output_dir = work
    data_path = Path(ours_cfg.pipeline.datamanager.dataparser.data)
    runs = {args.method: run(ours_cfg, label=args.method, **common)}
    device_type = ours_cfg.machine.device_type
    runs[args.method]["ops_backend"] = f"nerfaccel {ops[device_type]['backend']} ({ops[device_type]['ops']})"
    if baseline:
        ngp_cfg = _ngp_config(data_path, args.background, args.baseline_steps, args.baseline_schedule, cpu_smoke)
        ngp_cfg.output_dir = work
        shim = _nerfacc_shim() if cpu_smoke else contextlib.nullcontext()
        eval_ctx = _white_eval_background if args.background == "random" else contextlib.nullcontext
        with shim, _no_lpips():
            runs[BASELINE] = run(ngp_cfg, label=BASELINE, eval_context=eval_ctx, **common)
        import nerfacc

        runs[BASELINE]["ops_backend"] = (
            f"nerfaccel {ops['cpu']['backend']} through the nerfacc API (smoke)"
            if cpu_smoke
            else f"nerfacc {getattr(nerfacc, '__version__', '?')} CUDA"
        )
        for ours, theirs in zip(runs[args.method]["rows"], runs[BASELINE]["rows"], strict=True):
            ours["psnr_minus_baseline"] = round(ours["psnr"] - theirs["psnr"], 3)

    background_text = {
        "random": "RGBA kept (alpha_color=None) for both methods; training composites prediction and ground truth "
        "on a random colour per ray (instant-ngp: background_color='random'); evaluation on white for both",
        "white": "RGBA kept (alpha_color=None) for both methods; training and evaluation composite on white",
    }[args.background]
    steps_text = f"{args.method}: " + (
        "its configured length"
        if args.steps is None
        else f"--steps {args.steps} (decay ends at the last step, "
        "warm-up min(100, steps/10), as nerfaccel_plugin/ns/trainer.py builds it)"
    )
    if baseline:
        steps_text += f"; {BASELINE}: " + (
            "its configured length (Nerfstudio's defaults)"
            if args.baseline_steps is None
            else f"{args.baseline_steps} (--baseline-schedule {args.baseline_schedule})"
        )
    steps_text += "; training stops at the last iteration even if time is left"
    tt = {name: time_to_psnr(r["curve"], args.psnr_target) for name, r in runs.items()}
    result = {
        "benchmark": "bench_train",
        "method": args.method,
        "data": "embedded" if args.embedded else os.path.relpath(Path(data).resolve(), REPO),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": _machine(),
        "cpu_smoke": cpu_smoke,
        "times": times,
        "steps": args.steps,
        "steps_text": steps_text,
        "baseline_steps": args.baseline_steps if baseline else None,
        "baseline_schedule": args.baseline_schedule if baseline and args.baseline_steps is not None else None,
        "background": args.background,
        "background_text": background_text,
        "eval_every": args.eval_every,
        "eval_views": args.eval_views,
        "psnr_target": args.psnr_target,
        "time_to_psnr_target": tt,
        "runs": runs,
    }
    if baseline:
        result["time_ratio"] = time_ratio(tt[BASELINE], tt[args.method])
    args.out.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if cuda else "cpu"
    tag = args.tag or f"train-{args.method}-{'embedded' if args.embedded else Path(data).name}-{kind}"
    path = args.out / f"{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    path.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
