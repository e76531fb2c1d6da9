"""This checkout's C++ CPU kernels against an older commit's, row by row of ``bench_backends.py``.

Usage::

    python benchmarks/bench_vs_commit.py                                    # vs 5033a15, 2 rounds
    python benchmarks/bench_vs_commit.py --commit 5033a15 --rounds 3 --out benchmarks/results/cpu-vs-5033a15.md

The old commit's own ``bench_backends.py`` runs inside a temporary ``git worktree`` of that commit, on that commit's
``nerfaccel_plugin`` and kernel sources (its extension is built into the normal cache on first use); this checkout's
``bench_backends.py`` runs as usual. Both with ``--no-nerfacc`` and the same ``--only`` groups and ``--repeat``,
alternating for ``--rounds`` rounds (one process each), so load changes on a shared machine hit both alike. Per row:
the fastest median over the rounds of the ``ours cpp`` column; rows present in only one of the two are listed apart.
Rows named differently across versions are not matched.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Runs an old commit's bench_backends.py on that commit's package and kernel sources.
_OLD_RUNNER = """
import runpy, sys
from pathlib import Path
wt = Path(sys.argv[1])
sys.path.insert(0, str(wt))
sys.path.insert(0, str(wt / "benchmarks"))
import nerfaccel_plugin
assert str(wt) in nerfaccel_plugin.__file__, nerfaccel_plugin.__file__
from nerfaccel_plugin._ext import build
build.source_dir = lambda: wt / "cuda"
script = wt / "benchmarks" / "bench_backends.py"
sys.argv = [str(script)] + sys.argv[2:]
runpy.run_path(str(script), run_name="__main__")
"""


def parse_rows(text: str) -> dict[tuple[str, str], float]:
    """(op, form) -> ms of the ``ours ...`` column of every table in a bench_backends.py markdown file."""
    rows: dict[tuple[str, str], float] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("| group"):
            header = [c.strip() for c in line.strip().strip("|").split("|")]
            continue
        if header is None or not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(header):
            continue
        row = dict(zip(header, cells, strict=True))
        ours = next((k for k in header if k.startswith("ours")), None)
        try:
            rows[(row["op"], row["form"])] = float(row[ours]) if ours else float("nan")
        except (KeyError, ValueError):
            continue
    return rows


def _run(cmd: list[str], env: dict[str, str], out: Path) -> dict[tuple[str, str], float]:
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return parse_rows(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", default="5033a15")
    ap.add_argument("--only", nargs="+", default=["rendering", "scan", "sampling", "other"])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="nerfaccel-vs-"))
    wt = tmp / "wt"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), args.commit], check=True,
                   capture_output=True)
    runner = tmp / "run_old.py"
    runner.write_text(_OLD_RUNNER)
    common = ["--only", *args.only, "--repeat", str(args.repeat), "--no-nerfacc"]
    env_old = dict(os.environ, PYTHONPATH=str(wt))
    env_new = dict(os.environ)
    old: list[dict] = []
    new: list[dict] = []
    try:
        for r in range(args.rounds):
            o, n = tmp / f"old{r}.md", tmp / f"new{r}.md"
            old.append(_run([sys.executable, str(runner), str(wt), *common, "--out", str(o)], env_old, o))
            new.append(_run([sys.executable, str(HERE / "bench_backends.py"), *common, "--out", str(n)], env_new, n))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False,
                       capture_output=True)

    def best(runs: list[dict], key) -> float:
        return min(run[key] for run in runs if key in run)

    both = sorted(set(old[0]) & set(new[0]))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    lines = [
        f"# C++ CPU kernels: this checkout vs {args.commit}",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- this checkout: {head.stdout.strip()}; groups: {' '.join(args.only)}; median of {args.repeat} calls, "
        f"fastest of {args.rounds} alternating rounds per code",
        f"- load average at the end: {', '.join(f'{x:.2f}' if isinstance(x, float) else x for x in load)}",
        "",
        f"| op | form | {args.commit} (ms) | this checkout (ms) | speed-up |",
        "|---|---|---:|---:|---:|",
    ]
    slower = []
    for key in both:
        a, b = best(old, key), best(new, key)
        ratio = a / b if b > 0 else float("inf")
        if ratio < 1:
            slower.append(key)
        lines.append(f"| {key[0]} | {key[1]} | {a:.3f} | {b:.3f} | {ratio:.2f}x |")
    only_old = sorted(set(old[0]) - set(new[0]))
    only_new = sorted(set(new[0]) - set(old[0]))
    lines += ["", f"Rows slower than {args.commit}: " + (", ".join(f"{k[0]} ({k[1]})" for k in slower) or "none")]
    if only_old or only_new:
        lines += ["", f"Only in {args.commit}: " + (", ".join(f"{k[0]} ({k[1]})" for k in only_old) or "-"),
                  "Only in this checkout: " + (", ".join(f"{k[0]} ({k[1]})" for k in only_new) or "-")]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
