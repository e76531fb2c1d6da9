"""``nerfaccel-scene``: writes the embedded brick scene as a Blender (NeRF-synthetic) or D-NeRF data set.

Examples::

    nerfaccel-scene --out data/bricks                     # static, 100/20/20 views at 160 px
    nerfaccel-scene --out data/bricks-dyn --dynamic       # D-NeRF layout with per-frame time
    nerfaccel-scene --out data/bricks-hd --resolution 400 --views 200 --supersample 2
    nerfaccel-scene                                       # fill the cache and print its folder
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .cache import ensure_scene
from .writer import DEFAULT_RESOLUTION, DEFAULT_VIEWS, SceneSpec, check_complete, generate_scene


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``nerfaccel-scene``."""
    p = argparse.ArgumentParser(
        prog="nerfaccel-scene",
        description="Render the embedded procedural brick scene into the NeRF-synthetic (Blender) layout, "
        "or the D-NeRF layout with --dynamic.",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the nerfaccel scene cache)")
    p.add_argument("--dynamic", action="store_true", help="D-NeRF variant: moving parts and a time per frame")
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, help="image width = height in pixels")
    p.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="number of training views")
    p.add_argument("--val-views", type=int, default=None, help="validation views (default: views // 5)")
    p.add_argument("--test-views", type=int, default=None, help="test views (default: views // 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random camera positions")
    p.add_argument("--supersample", type=int, default=1, help="anti-aliasing: N x N rays per pixel (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nerfaccel-scene`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    spec = SceneSpec(
        dynamic=args.dynamic,
        resolution=args.resolution,
        views=args.views,
        val_views=args.val_views,
        test_views=args.test_views,
        seed=args.seed,
        supersample=args.supersample,
    )
    try:
        spec.validate()
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    counts = spec.counts()
    label = f"{'dynamic' if spec.dynamic else 'static'} scene, {spec.resolution} px, " + ", ".join(
        f"{v} {k}" for k, v in counts.items()
    )
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task(label, total=sum(counts.values()))

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if args.out is None:
            folder = ensure_scene(
                spec, announce=lambda line: bar.console.print(line, soft_wrap=True), progress=progress
            )
        else:
            folder = generate_scene(args.out, spec, progress=progress)
    if not check_complete(folder, spec):
        console.print(f"[red]error:[/red] {folder} is incomplete")
        return 1
    console.print(f"{label}: {folder} ({time.perf_counter() - start:.1f} s)")
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
