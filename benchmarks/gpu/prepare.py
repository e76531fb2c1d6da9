"""``gpu_check.sh --prepare``: everything the GPU check needs that the GPU machine cannot fetch or should not build,
into one git-ignored folder carried to the device (``.gpu_carry``, at most 64 MiB with everything else carried).

* ``prebuilt/``: nerfaccel's CPU and CUDA (sm_90 by default) extensions built ahead of time as the package's
  prebuilt modules (``nerfaccel_plugin/_ext/_C_cpu*.so``, ``_C_cuda*.so``; ``gpu_check.sh`` copies them into the
  checkout; they are used when their source hash matches);
* ``site/nerfacc``: nerfacc 0.5.3 (``pip download``) with its CUDA extension built here as ``nerfacc/csrc*.so``
  (nerfacc imports ``nerfacc.csrc`` before trying a JIT build);
* ``wheels/``: Nerfstudio's wheel without dependencies (the GPU image has no Nerfstudio; the hash tests import its
  ``HashEncoding``);
* ``data/lego-400``: the lego-400 train split, transforms files and a subset of the test views (``--test-views``),
  when a data folder is given and it fits;
* ``manifest.json``: Python / torch / CUDA versions the binaries were built with, sizes. A binary only imports
  under the same Python minor version and torch ABI: ``gpu_check.sh`` compares and, on a mismatch, builds on the
  GPU machine instead (its own stage, timed). Pass ``--python`` to build with an interpreter matching the GPU
  image (Python 3.12, torch 2.11+cu130 as last read).

    python benchmarks/gpu/prepare.py --data ../shared/data/blender/lego-400
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMIT_MIB = 60  # leaves room under the device tool's 64 MiB for everything carried


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})}, cwd=cwd)


def versions(python: str) -> dict:
    code = (
        "import json, sys, sysconfig, torch; print(json.dumps({'python': '%d.%d' % sys.version_info[:2], "
        "'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX')}))"
    )
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def build_ours(python: str, carry: Path, arch: str) -> None:
    out = carry / "prebuilt"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        run(
            [python, "setup.py", "-q", "build_ext", "--build-lib", str(out), "--build-temp", tmp],
            env={"NERFACCEL_BUILD_EXT": "cpu,cuda", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count())},
            cwd=REPO,
        )


def _cuda_home(python: str) -> str:
    """A toolkit for nerfacc's build: the PyPI wheels' tree when installed (the system toolkit may lack the cuBLAS
    headers nerfacc's includes pull in), else nerfaccel's choice; torch alone may guess wrong from an nvcc wrapper on
    PATH (e.g. /usr/local/bin/nvcc -> CUDA_HOME=/usr/local)."""
    code = (  # the PyPI tree first: its include/ also holds the cuBLAS headers torch's ATen/cuda headers need
        "from nerfaccel_plugin._ext import build, toolkit; print(toolkit.pypi_cuda_home() or build.cuda_home())"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, cwd=REPO).stdout
    return out.strip().splitlines()[-1]


def build_nerfacc(python: str, carry: Path, arch: str, version: str) -> None:
    site = carry / "site"
    shutil.rmtree(site / "nerfacc", ignore_errors=True)
    site.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run([python, "-m", "pip", "download", "-q", "--no-deps", f"nerfacc=={version}", "-d", tmp])
        wheel = next(Path(tmp).glob("nerfacc-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("nerfacc/"):
                    z.extract(name, site)
        code = (
            "import glob, os, shutil, sys\n"
            "from torch.utils.cpp_extension import load\n"
            "p = os.path.join(sys.argv[1], 'nerfacc', 'cuda')\n"
            "srcs = glob.glob(os.path.join(p, 'csrc', '*.cu')) + glob.glob(os.path.join(p, 'csrc', '*.cpp'))\n"
            "m = load(name='csrc', sources=srcs, extra_cflags=['-O3'], extra_cuda_cflags=['-O3'],\n"
            "         build_directory=sys.argv[2], verbose=False)\n"
            "shutil.copy(m.__file__, os.path.join(sys.argv[1], 'nerfacc', os.path.basename(m.__file__)))\n"
            "print('nerfacc csrc:', m.__file__)\n"
        )
        env = {"TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count()), "CUDA_HOME": _cuda_home(python)}
        run([python, "-c", code, str(site), tmp], env=env)


def strip_debug(root: Path) -> None:
    """Drops debug info from the built modules (-g builds are ~40x larger; the carry limit is 64 MiB)."""
    if shutil.which("strip") is None:
        return
    for so in root.rglob("*.so"):
        subprocess.run(["strip", "--strip-debug", str(so)], check=False)


def fetch_wheels(python: str, carry: Path, nerfstudio: str) -> None:
    wheels = carry / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    run([python, "-m", "pip", "download", "-q", "--no-deps", f"nerfstudio=={nerfstudio}", "-d", str(wheels)])


def copy_data(src: Path, carry: Path, test_views: int) -> None:
    dst = carry / "data" / "lego-400"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copytree(src / "train", dst / "train")
    shutil.copy(src / "transforms_train.json", dst)
    for split in ("test", "val"):
        meta = json.loads((src / f"transforms_{split}.json").read_text())
        frames = meta["frames"]
        keep = [frames[int(i * len(frames) / test_views)] for i in range(test_views)] if test_views else []
        (dst / split).mkdir()
        for f in keep:
            name = Path(f["file_path"]).name + ".png"
            shutil.copy(src / split / name, dst / split / name)
        (dst / f"transforms_{split}.json").write_text(json.dumps({**meta, "frames": keep}))


def size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carry", type=Path, default=REPO / ".gpu_carry")
    parser.add_argument("--python", default=sys.executable, help="interpreter (with torch) to build with")
    parser.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST of the GPU machine (H100/H200: 9.0)")
    parser.add_argument("--data", type=Path, default=None, help="lego-400 folder to copy (train + test subset)")
    parser.add_argument("--test-views", type=int, default=10)
    parser.add_argument("--nerfacc", default="0.5.3")
    parser.add_argument("--nerfstudio", default="1.1.5")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "nerfacc", "wheels", "data"])
    args = parser.parse_args(argv)
    carry = args.carry.resolve()
    carry.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    steps = [
        ("ours", lambda: build_ours(args.python, carry, args.arch)),
        ("nerfacc", lambda: build_nerfacc(args.python, carry, args.arch, args.nerfacc)),
        ("wheels", lambda: fetch_wheels(args.python, carry, args.nerfstudio)),
    ]
    if args.data is not None:
        steps.append(("data", lambda: copy_data(args.data, carry, args.test_views)))
    for name, fn in steps:
        if name in args.skip:
            continue
        start = time.monotonic()
        try:
            fn()
        except subprocess.CalledProcessError as err:  # report, keep the other steps
            failures[name] = f"{err.cmd[:2]} exited {err.returncode} (output above)"
            print(f"prepare: {name} FAILED: {failures[name]}", flush=True)
            continue
        if name in ("ours", "nerfacc"):
            strip_debug(carry / ("prebuilt" if name == "ours" else "site"))
        timings[name] = round(time.monotonic() - start, 1)
        print(f"prepare: {name} done in {timings[name]} s", flush=True)
    sizes = {p.name: round(size_mib(p), 2) for p in carry.iterdir() if p.is_dir()}
    manifest = {
        **versions(args.python), "arch": args.arch, "nerfacc": args.nerfacc, "nerfstudio": args.nerfstudio,
        "sizes_mib": sizes, "seconds": timings, "failed": failures,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip
    (carry / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = size_mib(carry)
    print(json.dumps(manifest, indent=1))
    print(f"prepare: {carry} holds {total:.1f} MiB (limit {LIMIT_MIB} MiB)")
    if failures:
        print(f"error: failed steps: {failures}")
        return 1
    if total > LIMIT_MIB:
        print(f"error: {carry} is {total:.1f} MiB, over {LIMIT_MIB} MiB: use fewer --test-views or skip data")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
