"""``gpu_check.sh --prepare``: everything the GPU check needs that the GPU machine cannot fetch or should not build,
into one git-ignored folder carried to the device (``.gpu_carry``, at most 64 MiB with everything else carried).

* ``site/nerfacc``: nerfacc 0.5.3 (``pip download``), its CUDA source patched for CUDA 13
  (``build_nerfacc.py``: nvcc 13.0 rejects its ``lerp``); the GPU machine's ``build`` stage compiles it there;
* ``wheels/``: Nerfstudio 1.1.5 and the packages its training path imports that the GPU image lacks
  (``NS_WHEELS``, about 23 MiB, cp312 manylinux wheels; ``gpu_check.sh`` installs them ``--no-deps`` into
  ``/tmp/gpu_check_site``);
* ``prebuilt/`` (only with ``--build``): nerfaccel's CPU and CUDA extensions and nerfacc's ``csrc`` built here.
  Only useful with ``--python`` naming an interpreter that matches the GPU image (Python 3.12, torch
  2.11.0+cu130): a binary imports only under the Python minor version and torch it was built with, and this
  development machine has Python 3.11 / torch 2.14, so by default nothing is prebuilt and the GPU machine builds;
* ``data/lego-400``: the lego-400 train split, transforms files and a subset of the test views (``--test-views``),
  when a data folder is given and it fits;
* ``manifest.json``: Python / torch / CUDA versions the binaries were built with, sizes. A binary only imports
  under the same Python minor version and torch ABI: ``gpu_check.sh`` compares and, on a mismatch, builds on the
  GPU machine instead (its own stage, timed).

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


def build_nerfacc(python: str, carry: Path, arch: str, version: str, compile_here: bool) -> None:
    site = carry / "site"
    with tempfile.TemporaryDirectory() as tmp:
        run([python, "-m", "pip", "download", "-q", "--no-deps", f"nerfacc=={version}", "-d", tmp])
        wheel = next(Path(tmp).glob("nerfacc-*.whl"))
        script = str(REPO / "benchmarks" / "gpu" / "build_nerfacc.py")
        run([python, script, "--site", str(site), "--wheel", str(wheel), "--arch", arch, "--patch-only"])
    if compile_here:
        env = {"TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count()), "CUDA_HOME": _cuda_home(python)}
        run([python, script, "--site", str(site), "--arch", arch], env=env)


def strip_debug(root: Path) -> None:
    """Drops debug info from the built modules (-g builds are ~40x larger; the carry limit is 64 MiB)."""
    if shutil.which("strip") is None:
        return
    for so in root.rglob("*.so"):
        subprocess.run(["strip", "--strip-debug", str(so)], check=False)


# What `import nerfstudio.scripts.train` + the method configs + nerfaccel's ns plugin import that the GPU image
# ("cuda", KINDS.md package list) lacks, measured with sys.modules on this machine (Python 3.11, the versions here);
# fpsample 1.0.2 has no cp312 wheel, 0.3.3 has the function Nerfstudio calls (only imported on our paths).
NS_WHEELS = [
    "nerfstudio==1.1.5", "tyro==1.0.17", "docstring_parser==0.18.0", "viser==0.2.7", "websockets==17.4",
    "msgspec==0.23.0", "gsplat==1.4.0", "pathos==0.3.5", "multiprocess==0.70.19", "dill==0.4.1", "ppft==1.7.8",
    "pyquaternion==0.9.9", "pytorch-msssim==1.0.0", "rawpy==0.28.0", "splines==0.3.0", "tensorly==0.10.0",
    "fpsample==0.3.3", "appdirs==1.4.4", "defusedxml==0.7.1", "PySocks==1.7.1",
]  # fmt: skip
_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64", "any"]


def fetch_wheels(python: str, carry: Path, nerfstudio: str, py_version: str = "3.12") -> None:
    """cp312 wheels (the GPU image's Python) of Nerfstudio and the missing packages of its training path."""
    wheels = carry / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    tag = py_version.replace(".", "")
    names = [f"nerfstudio=={nerfstudio}" if n.startswith("nerfstudio==") else n for n in NS_WHEELS]
    plat = [a for p in _PLATFORMS for a in ("--platform", p)]
    run([python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", py_version,
         "--implementation", "cp", "--abi", f"cp{tag}", *plat, "-d", str(wheels), *names])  # fmt: skip


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
    parser.add_argument("--build", action="store_true", help="also compile ours + nerfacc here (see above)")
    args = parser.parse_args(argv)
    carry = args.carry.resolve()
    carry.mkdir(parents=True, exist_ok=True)
    if not args.build:
        shutil.rmtree(carry / "prebuilt", ignore_errors=True)
        for so in (carry / "site" / "nerfacc").glob("csrc*.so"):
            so.unlink()
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    steps = [
        *([("ours", lambda: build_ours(args.python, carry, args.arch))] if args.build else []),
        ("nerfacc", lambda: build_nerfacc(args.python, carry, args.arch, args.nerfacc, args.build)),
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
        "prebuilt": args.build, "sizes_mib": sizes, "seconds": timings, "failed": failures,
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
