"""Nerfstudio's PyTorch hash encoding vs nerfaccel's fused kernels, on identical modules and points.

On the CPU nerfaccel runs its C++ kernel; on CUDA (``--device cuda``) its Triton kernels, and a half-table row
is added (``--half``). Timings under Triton's interpreter would be meaningless, so CPU numbers always come from
the C++ kernel.

Usage::

    python benchmarks/bench_hash.py
    python benchmarks/bench_hash.py --points 262144 --out benchmarks/results/hash-cpu.md
    python benchmarks/bench_hash.py --device cuda --points 1048576 --out $OUT/hash-cuda.md

Rows: the CPU configs' grid (8 levels, finest 512, 2^17 entries) and the GPU configs' grid (16 levels, 2048,
2^19), forward only (rendering, grid updates) and forward + backward to the table (training). Median of
``--repeat`` runs after a warm-up; ratios are Nerfstudio time / nerfaccel time.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from nerfstudio.field_components.encodings import HashEncoding

from nerfaccel_plugin.ns.fields.hash_encoding import hash_kernel_available, use_nerfaccel_hash_encoding

CONFIGS = {"CPU configs (8 levels, 512, 2^17)": (8, 512, 17), "GPU configs (16 levels, 2048, 2^19)": (16, 2048, 19)}


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _time(enc: torch.nn.Module, x: torch.Tensor, backward: bool, repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):
        enc.zero_grad(set_to_none=True)
        _sync(x)
        start = time.perf_counter()
        if backward:
            enc(x).sum().backward()
        else:
            with torch.no_grad():
                enc(x)
        _sync(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _commit() -> str:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        head = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=Path(__file__).parent).returncode != 0
        return head.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--device", default="cpu", help="cpu (C++ kernel) or cuda (Triton kernels)")
    parser.add_argument("--half", action="store_true", help="also time float16 tables (CUDA only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    if not hash_kernel_available(device.type):
        what = "the C++ extension is not the active CPU backend" if device.type == "cpu" else "Triton is unavailable"
        raise SystemExit(f"nerfaccel's {device.type} hash kernel is not in use ({what}); see backend_info()")

    torch.manual_seed(0)
    x = torch.rand(args.points, 3, device=device)
    kernel = "C++ kernel" if device.type == "cpu" else "Triton kernels"
    lines = [
        f"# Hash encoding on {device.type.upper()}: Nerfstudio (torch) vs nerfaccel {kernel}",
        "",
        f"- machine: {_machine(device)}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {_commit()}",
        f"- torch: {torch.__version__}; {args.points} points, median of {args.repeat}",
        "",
        "| grid | pass | Nerfstudio (ms) | nerfaccel (ms) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    dtypes = [torch.float32] + ([torch.float16] if args.half and device.type == "cuda" else [])
    for name, (levels, max_res, log2) in CONFIGS.items():
        for table_dtype in dtypes:
            ref = HashEncoding(
                num_levels=levels, min_res=16, max_res=max_res, log2_hashmap_size=log2, implementation="torch"
            ).to(device)
            ref.hash_table.data = ref.hash_table.data.to(table_dtype)
            ours = copy.deepcopy(ref)
            use_nerfaccel_hash_encoding(ours)
            for backward in (False, True):
                a = _time(ref, x, backward, args.repeat)
                b = _time(ours, x, backward, args.repeat)
                label = ("fwd+bwd" if backward else "fwd") + (" (fp16 table)" if table_dtype != torch.float32 else "")
                lines.append(f"| {name} | {label} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.1f}x |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
