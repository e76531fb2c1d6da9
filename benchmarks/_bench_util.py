"""Helpers shared by bench_ops.py and bench_backends.py: timing, inputs, machine description, result headers.

Timing: ``warmup`` untimed calls, then ``repeat`` timed calls, median. On CUDA each timed call is bracketed by
CUDA events recorded on the current stream and the host waits on the end event *after* it was recorded, so the
wait is outside the timed region; the time is what the GPU spent between the two events, including any gaps where
it waited for the host (launch overhead and host syncs inside the op are part of the op's cost). On the CPU it is
``time.perf_counter`` around the call.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: torch.device | str, repeat: int, warmup: int = 2) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls."""
    device = torch.device(device)
    for _ in range(max(1, warmup)):
        fn()
    sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(repeat):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()  # after end.record(): not part of the timed region
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_bwd(fn: Callable[..., Any], inputs: Sequence[torch.Tensor], grad_outputs: str | int = "all"):
    """A thunk running ``fn(*inputs)`` then backward from fixed random cotangents (made once, on the first call,
    outside the timed calls), so the time is the op's own forward and backward, not a loss built around it. The
    thunk returns the inputs' gradients.

    ``grad_outputs``: ``"all"`` (every floating output that requires grad) or the number of leading outputs that
    get a cotangent (``1``: only the weights of ``render_weight_from_*``, as ``rendering`` uses them).
    """
    cotangents: list[torch.Tensor] = []

    def run() -> None:
        xs = [x.detach().requires_grad_() for x in inputs]
        outs = fn(*xs)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        if grad_outputs != "all":
            outs = outs[: int(grad_outputs)]
        outs = [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
        if not cotangents:
            g = torch.Generator(device=outs[0].device).manual_seed(1)
            cotangents.extend(torch.rand(o.shape, generator=g, device=o.device, dtype=o.dtype) for o in outs)
        torch.autograd.backward(outs, cotangents)
        return [x.grad for x in xs]

    return run


def packed_layout(n_rays: int, spp: int, device: torch.device | str, seed: int = 0):
    """Variable samples per ray (uniform in [spp/2, 3spp/2], every 16th ray empty), sorted by ray.

    Returns ``(packed_info, ray_indices, t_starts, t_ends, n_samples)``; ``t`` increases along each ray.
    """
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(spp // 2, spp * 3 // 2 + 1, (n_rays,), generator=g)
    counts[:: max(1, n_rays // 16)] = 0
    starts = torch.cumsum(counts, 0) - counts
    packed_info = torch.stack([starts, counts], -1).to(device)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts).to(device)
    n = int(counts.sum())
    # Per-ray increasing t: position within the ray times a step, plus a random start.
    pos = torch.arange(n) - torch.repeat_interleave(starts, counts)
    step = 4.0 / max(1, spp)
    t0 = (torch.repeat_interleave(torch.rand(n_rays, generator=g), counts) + pos * step).float()
    t0 = t0.to(device)
    return packed_info, ray_indices, t0, t0 + step, n


def commit() -> str:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out + (" (working tree has uncommitted changes)" if dirty else "")
    except Exception:
        return "unknown"


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def machine(device: torch.device | str) -> str:
    device = torch.device(device)
    host = f"{cpu_name()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
            f"CUDA {torch.version.cuda}); host {host}"
        )
    return host


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def header(title: str, device: torch.device | str, extra: Sequence[str] = ()) -> str:
    lines = [
        f"# {title}",
        "",
        f"- machine: {machine(device)}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {commit()}",
        f"- torch: {torch.__version__}",
        *[f"- {line}" for line in extra],
        "",
    ]
    return "\n".join(lines)


def copy_bandwidth(device: torch.device | str, nbytes: int, repeat: int = 10) -> tuple[float, float]:
    """Measured memory bandwidth: a device-to-device copy of ``nbytes``; (bytes read + written) / time.

    Returns ``(bytes_per_second, seconds)``.
    """
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sec = time_fn(lambda: dst.copy_(src), device, repeat, warmup=3)
    moved = 2 * src.numel() * 4
    return moved / sec, sec
