"""A CUDA toolkit from PyPI wheels, for machines with a CUDA build of torch but no system toolkit.

``pip install nerfaccel[cuda]`` installs NVIDIA's wheels matched to ``torch.version.cuda`` (13.0):
``nvidia-cuda-nvcc`` (nvcc, ptxas, fatbinary, nvlink), ``nvidia-nvvm`` (cicc, libdevice), ``nvidia-cuda-crt`` and
``nvidia-cuda-cccl`` (headers), next to ``nvidia-cuda-runtime`` (headers, libcudart) which torch already brings.
CUDA 13 wheels install into one ``site-packages/nvidia/cu13`` folder; CUDA 12 wheels into one folder per component
(``nvidia/cuda_nvcc``, ``nvidia/cuda_runtime``, ...). Either way the folder lacks what torch's extension builder
expects of a ``CUDA_HOME``: an unversioned ``libcudart.so`` under ``lib64``. :func:`assemble` therefore builds a
small ``CUDA_HOME``-like tree of symlinks in nerfaccel's cache (``bin``, ``nvvm``, ``include``, ``lib64`` merged
from every component, plus ``libcudart.so``) and :func:`pypi_cuda_home` returns it. The extension build uses it
only when ``CUDA_HOME`` / ``CUDA_PATH`` are unset, no ``nvcc`` is on ``PATH`` and ``/usr/local/cuda`` has none
(``build._setup_cuda_home``).

``python -m nerfaccel_plugin._ext.toolkit`` prints what it finds.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import shutil
import sys
from pathlib import Path

# The wheels of the ``cuda`` extra, per CUDA major version (torch.version.cuda picks the line).
WHEELS = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl", "nvidia-cuda-runtime")
_CU12_COMPONENTS = ("cuda_nvcc", "cuda_runtime", "cuda_cccl", "cuda_crt", "nvvm", "cuda_nvrtc")
_PARTS = ("bin", "nvvm", "include", "lib", "lib64")


def _nvidia_dirs() -> list[Path]:
    """Every ``site-packages/nvidia`` folder on ``sys.path`` (a namespace package, possibly split)."""
    out: list[Path] = []
    for entry in sys.path:
        d = Path(entry or ".") / "nvidia"
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def _torch_cuda_major() -> str | None:
    try:
        import torch  # noqa: PLC0415

        return torch.version.cuda.split(".")[0] if torch.version.cuda else None
    except ImportError:  # pragma: no cover - torch is a dependency
        return None


def component_roots(major: str | None = None) -> list[Path]:
    """Folders of installed NVIDIA wheels that may hold toolkit parts, nvcc's folder first.

    Args:
        major: CUDA major version (default: torch's).

    Returns:
        Candidate roots (each with some of ``bin``, ``include``, ``lib``, ``nvvm``); empty when none are installed.
    """
    major = major or _torch_cuda_major()
    roots: list[Path] = []
    for base in _nvidia_dirs():
        cands = [base / f"cu{major}"] if major else []
        cands += [base / c for c in _CU12_COMPONENTS]
        roots += [c for c in cands if c.is_dir() and c not in roots]
    roots.sort(key=lambda r: not (r / "bin" / "nvcc").is_file())
    return roots


def find_nvcc(major: str | None = None) -> Path | None:
    """The ``nvcc`` of the installed ``nvidia-cuda-nvcc`` wheel, or None.

    Args:
        major: CUDA major version (default: torch's).

    Returns:
        Path of nvcc, or None.
    """
    for root in component_roots(major):
        if (root / "bin" / "nvcc").is_file():
            return root / "bin" / "nvcc"
    return None


def missing_parts(major: str | None = None) -> list[str]:
    """What a build needs and the installed wheels lack (empty when the PyPI toolkit is complete).

    Args:
        major: CUDA major version (default: torch's).

    Returns:
        Descriptions naming the wheel that provides each missing part.
    """
    roots = component_roots(major)

    def has(rel: str) -> bool:
        return any((r / rel).exists() for r in roots)

    checks = [
        ("bin/nvcc", "nvcc (nvidia-cuda-nvcc)"),
        ("bin/ptxas", "ptxas (nvidia-cuda-nvcc)"),
        ("nvvm/bin/cicc", "cicc (nvidia-nvvm)"),
        ("include/cuda_runtime.h", "cuda_runtime.h (nvidia-cuda-runtime)"),
        ("include/crt/host_config.h", "crt/host_config.h (nvidia-cuda-crt)"),
    ]
    missing = [what for rel, what in checks if not has(rel)]
    if not (has("include/cccl/cuda/std/version") or has("include/cuda/std/version")):
        missing.append("libcu++ / CUB headers (nvidia-cuda-cccl)")
    if not any((r / "lib").is_dir() and any((r / "lib").glob("libcudart.so*")) for r in roots):
        missing.append("libcudart (nvidia-cuda-runtime)")
    return missing


def install_hint(major: str | None = None) -> str:
    """The pip command that installs the PyPI toolkit matching torch's CUDA version."""
    try:
        import torch  # noqa: PLC0415

        version = torch.version.cuda or "13.0"
    except ImportError:  # pragma: no cover
        version = "13.0"
    pins = " ".join(f'"{w}=={version}.*"' for w in WHEELS)
    return f'pip install "nerfaccel[cuda]"  (or: pip install {pins})'


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        return
    dst.symlink_to(src)


def _merge(roots: list[Path], part: str, dst: Path) -> None:
    """Symlinks every entry of ``root/part`` (first root wins) into the folder ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for root in roots:
        src = root / part
        if not src.is_dir():
            continue
        for entry in src.iterdir():
            _link(entry, dst / entry.name)


def assemble(dest_root: Path | None = None, major: str | None = None) -> Path | None:
    """Builds (once) a ``CUDA_HOME``-like tree of symlinks to the PyPI toolkit; returns it, or None when incomplete.

    Args:
        dest_root: Where to put the tree (default: nerfaccel's extension cache root).
        major: CUDA major version (default: torch's).

    Returns:
        The tree's path (``bin/nvcc``, ``nvvm``, ``include``, ``lib64/libcudart.so``), or None.
    """
    roots = component_roots(major)
    if not roots or missing_parts(major):
        return None
    if dest_root is None:
        keys = sys.modules.get(f"{__package__}.keys") if __package__ else None
        if keys is None:  # loaded on its own by keys.py under setup.py: the caller's module is keys itself
            keys = sys.modules.get("_nerfaccel_keys") or importlib.import_module("nerfaccel_plugin._ext.keys")
        dest_root = keys.cache_root()
    ident = hashlib.sha256("\n".join(str(r.resolve()) for r in roots).encode()).hexdigest()[:12]
    tree = Path(dest_root) / f"cuda-toolkit-pypi-{ident}"
    done = tree / ".complete"
    if done.is_file() and (tree / "bin" / "nvcc").exists():
        return tree
    tmp = tree.with_name(tree.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for part in ("bin", "include"):
        _merge(roots, part, tmp / part)
    nvcc_root = next(r for r in roots if (r / "bin" / "nvcc").is_file())
    for root in [nvcc_root, *roots]:  # nvcc.profile looks for nvvm next to bin
        if (root / "nvvm").is_dir():
            _link(root / "nvvm", tmp / "nvvm")
            break
    _merge(roots, "lib", tmp / "lib64")
    lib64 = tmp / "lib64"
    for lib in ("cudart", "cudadevrt", "nvrtc"):  # the unversioned names the linker wants
        unversioned = lib64 / f"lib{lib}.so"
        if not unversioned.exists():
            versioned = sorted(p for p in lib64.glob(f"lib{lib}.so.*") if p.name.count(".") == 2)
            if versioned:
                _link(versioned[0].resolve(), unversioned)
    (tmp / "lib").symlink_to("lib64")  # relative: the tree is renamed below
    (tmp / ".complete").write_text("\n".join(str(r) for r in roots) + "\n")
    try:
        tmp.rename(tree)
    except OSError:  # another process won the race: use its tree
        shutil.rmtree(tmp, ignore_errors=True)
    return tree


def pypi_cuda_home() -> str | None:
    """The assembled PyPI toolkit as a ``CUDA_HOME`` (None when the ``cuda`` extra is not installed)."""
    tree = assemble()
    return str(tree) if tree is not None else None


def missing_compiler_message(cxx: str) -> str:
    """Exactly what to install when there is no host C++ compiler (nvcc needs one too).

    Args:
        cxx: The compiler that was looked for (``$CXX`` or ``c++``).

    Returns:
        A message naming the package for this system.
    """
    how = "install a C++ compiler"
    try:
        release = platform.freedesktop_os_release()
        ids = {release.get("ID", "")} | set(release.get("ID_LIKE", "").split())
    except OSError:
        ids = set()
    if ids & {"debian", "ubuntu"}:
        how = "sudo apt-get install g++   (Debian/Ubuntu; or build-essential)"
    elif ids & {"fedora", "rhel", "centos"}:
        how = "sudo dnf install gcc-c++   (Fedora/RHEL)"
    elif ids & {"arch"}:
        how = "sudo pacman -S gcc"
    elif ids & {"opensuse", "suse"}:
        how = "sudo zypper install gcc-c++"
    elif sys.platform == "darwin":
        how = "xcode-select --install"
    conda = ""
    if os.environ.get("CONDA_PREFIX"):
        conda = " In a conda environment: conda install -c conda-forge gxx_linux-64"
    return (
        f"no C++ compiler: '{cxx}' is not on PATH. The extensions need one (nvcc too, as its host compiler): "
        f"{how}; or set CXX to an installed g++/clang++.{conda} Without it nerfaccel runs its pure-PyTorch backend."
    )


def _main() -> None:
    major = _torch_cuda_major()
    print(f"torch CUDA: {major or 'none (CPU build of torch)'}")
    print(f"component roots: {[str(r) for r in component_roots(major)] or 'none'}")
    missing = missing_parts(major)
    print(f"missing: {missing or 'nothing'}")
    if missing:
        print(f"install with: {install_hint(major)}")
    tree = assemble(major=major)
    print(f"CUDA_HOME tree: {tree}")


if __name__ == "__main__":
    _main()
