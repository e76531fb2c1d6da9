"""Cache keys of the compiled extensions: sources, flags, toolchain identity and cache location.

An extension is compiled lazily, once, into a cache directory keyed by a hash of the kernel sources,
the torch and CUDA versions, the Python version, the compiler flags, (for CUDA) the target
architectures, and the toolchain (``--version`` of the C++ compiler and of nvcc, ``CUDA_HOME``):

``$NERFACCEL_EXT_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/nerfaccel/ext``, then ``<kind>-<key>/``.

This module imports only the standard library at import time and nothing from its package: ``setup.py`` loads
it as a standalone file for :func:`cache_key`, :func:`sources`, :func:`defines` and the flags.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ENV_EXT_DIR = "NERFACCEL_EXT_DIR"
DEFAULT_CUDA_ARCH = "9.0"


def _libmvec() -> bool:
    """Whether glibc's vector math library can be linked (x86-64 Linux): SIMD exp/expf for the CPU kernels."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return False
    import ctypes.util

    return ctypes.util.find_library("mvec") is not None


_MVEC = _libmvec()
# -fvisibility=hidden: the inline header math binds locally (no PLT calls between our own functions); only
# PyInit_* is exported (pybind11 marks it).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fvisibility=hidden", "-DNERFACCEL_EXT"]
CXX_FLAGS += ["-DNERFACCEL_LIBMVEC"] if _MVEC else []
LD_FLAGS = ["-fopenmp"] + (["-lmvec"] if _MVEC else [])
# -fmad=false: no fused multiply-adds, like -ffp-contract=off for the CPU build, so both builds round the shared
# math the same way (traversal's sample positions and the per-ray sums match the reference exactly).
NVCC_FLAGS = ["-O3", "-DNERFACCEL_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo", "-fmad=false"]

# Translation units: the build metadata, the checked entry points of every op family (both builds), and the
# launchers of the build's device (cuda/cpu/*_cpu.cpp or cuda/gpu/*.cu). See docs/kernels.md.
_LAUNCHERS = {"cpp": ("cpu", "*_cpu.cpp"), "cuda": ("gpu", "*.cu")}


def source_dir() -> Path:
    """Directory of the kernel sources (``cuda/`` in a checkout, ``nerfaccel_plugin/csrc`` installed)."""
    try:
        from importlib.resources import files

        root = Path(str(files("nerfaccel_plugin.csrc")))
        if (root / "bindings.cpp").is_file():
            return root
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "cuda"  # source checkout (setup.py)


def sources(kind: str, root: Path | None = None) -> list[Path]:
    """Translation units of extension ``kind``."""
    root = root or source_dir()
    folder, pattern = _LAUNCHERS[kind]
    return [root / "bindings.cpp", *sorted((root / "csrc").glob("*.cpp")), *sorted((root / folder).glob(pattern))]


def _hashed_files(kind: str, root: Path) -> list[Path]:
    headers = sorted(root.rglob("*.h")) + sorted(root.rglob("*.cuh"))
    return sources(kind, root) + headers


def cuda_arch_list() -> str:
    """Target architectures: ``TORCH_CUDA_ARCH_LIST``, else the visible GPUs, else ``9.0``."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    try:
        import torch

        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            return ";".join(f"{major}.{minor}" for major, minor in caps)
    except Exception:  # pragma: no cover - defensive: any CUDA init problem means "no GPU"
        pass
    return DEFAULT_CUDA_ARCH


def cache_key(kind: str, root: Path | None = None, arch: str | None = None, toolchain: bool = False) -> str:
    """Hash of everything that changes the binary: sources, versions, flags, CUDA architectures.

    Args:
        kind: ``"cpp"`` or ``"cuda"``.
        root: Source directory (default :func:`source_dir`).
        arch: CUDA architectures (default :func:`cuda_arch_list`; CUDA only).
        toolchain: Also hash :func:`toolchain_id` (the compilers' ``--version`` and ``CUDA_HOME``). The
            cache directories of lazy builds use it; the identity of a prebuilt binary (``setup.py``, checked
            by :func:`get_module`) does not, so a prebuilt extension survives a compiler upgrade.
    """
    import torch

    root = root or source_dir()
    h = hashlib.sha256()
    for path in _hashed_files(kind, root):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    parts = [
        kind,
        torch.__version__,
        str(torch.version.cuda),
        sys.version.split()[0],
        platform.machine(),
        " ".join(CXX_FLAGS + LD_FLAGS),
        os.environ.get("CXX", ""),
    ]
    if kind == "cuda":
        parts += [" ".join(NVCC_FLAGS), arch or cuda_arch_list()]
    if toolchain:
        parts.append(toolchain_id(kind))
    h.update("\n".join(parts).encode())
    return h.hexdigest()[:16]


def jit_key(kind: str, arch: str | None = None) -> str:
    """Key of the lazy-build cache directory: :func:`cache_key` including the toolchain."""
    return cache_key(kind, arch=arch, toolchain=True)


_tool_versions: dict[str, str] = {}


def _tool_version(exe: str) -> str:
    """Output of ``exe --version`` (run once per process and executable), or why it could not run."""
    version = _tool_versions.get(exe)
    if version is None:
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120, check=False)
            version = (out.stdout + out.stderr).strip() or f"{exe}: no version output"
        except (OSError, subprocess.SubprocessError) as err:
            version = f"{exe}: cannot run ({type(err).__name__})"
        _tool_versions[exe] = version
    return version


def cuda_home() -> str:
    """The CUDA toolkit torch's extension builder uses: ``CUDA_HOME`` / ``CUDA_PATH``, nvcc on PATH, else
    ``/usr/local/cuda`` (empty when there is none)."""
    _setup_cuda_home()
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        return str(Path(nvcc).resolve().parents[1])
    return "/usr/local/cuda" if Path("/usr/local/cuda").is_dir() else ""


def toolchain_id(kind: str) -> str:
    """The compilers that build extension ``kind``: their paths and ``--version`` output, and ``CUDA_HOME``.

    A compiler upgrade (or another ``CXX`` / ``CUDA_HOME``) therefore selects a new cache directory instead of
    reusing objects and binaries from the old one. The ``--version`` calls run once per process.
    """
    cxx = os.environ.get("CXX", "c++")
    parts = [f"CXX={cxx}", _tool_version(shutil.which(cxx) or cxx)]
    if kind == "cuda":
        home = cuda_home()
        nvcc = str(Path(home) / "bin" / "nvcc") if home else (shutil.which("nvcc") or "nvcc")
        parts += [f"CUDA_HOME={home}", _tool_version(nvcc)]
        for var in ("CC", "CUDAHOSTCXX", "NVCC_CCBIN", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS"):
            parts.append(f"{var}={os.environ.get(var, '')}")
    return "\n".join(parts)


def cache_root() -> Path:
    """Root of the extension cache (``NERFACCEL_EXT_DIR``, else under ``XDG_CACHE_HOME`` or ``~/.cache``)."""
    env = os.environ.get(ENV_EXT_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nerfaccel" / "ext"


def build_dir(kind: str, key: str | None = None) -> Path:
    """Cache directory of extension ``kind`` for the current sources and toolchain."""
    return cache_root() / f"{kind}-{key or jit_key(kind)}"


def module_name(kind: str, key: str) -> str:
    return f"nerfaccel_{kind}_{key}"


def defines(key: str, arch: str | None) -> list[str]:
    """Macros recording the cache key and CUDA architectures in the binary (stringified in bindings.cpp)."""
    out = [f"-DNERFACCEL_SOURCE_HASH={key}"]
    if arch:
        out.append(f"-DNERFACCEL_CUDA_ARCH={arch.replace(';', '_').replace(' ', '_')}")
    return out


def _decode_arch(value: str | None) -> str | None:
    return value.replace("_", ";") if value else None


def arch_runs_on(arch_list: str, capability: tuple[int, int]) -> bool:
    """Whether a binary built for ``arch_list`` (``TORCH_CUDA_ARCH_LIST`` syntax) has code for a GPU.

    Machine code for X.y runs on X.z with z >= y; PTX (``+PTX``) for X.y is compiled by the driver for any
    newer GPU. ``"9.0;8.6+PTX"`` therefore runs on 9.0, 8.6, 8.9 and anything newer than 8.6, not on 8.0.
    """
    major, minor = capability
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        try:
            e_major, e_minor = (int(x) for x in entry.removesuffix("+PTX").rstrip("af").split("."))
        except ValueError:
            continue
        if (e_major == major and e_minor <= minor) or (ptx and (e_major, e_minor) <= (major, minor)):
            return True
    return False


def _toolkit():
    """:mod:`.toolkit` (the CUDA toolkit from PyPI wheels), also when setup.py loaded this file on its own."""
    if __package__:
        return importlib.import_module(".toolkit", __package__)
    spec = importlib.util.spec_from_file_location("_nerfaccel_toolkit", Path(__file__).with_name("toolkit.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup_cuda_home() -> None:
    """Points torch at /usr/local/cuda when CUDA_HOME is unset (nvcc on PATH may be a bare symlink); with neither
    nor nvcc on PATH, at the toolkit from PyPI wheels (``pip install nerfaccel[cuda]``, see :mod:`.toolkit`)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    default = Path("/usr/local/cuda")
    home = str(default) if (default / "bin" / "nvcc").exists() else None
    if home is None and shutil.which("nvcc") is None:
        home = _toolkit().pypi_cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
        if "torch.utils.cpp_extension" in sys.modules:
            sys.modules["torch.utils.cpp_extension"].CUDA_HOME = home


def import_cpp_extension():
    """``torch.utils.cpp_extension``, imported without its import-time CUDA-home probe line.

    On a machine without a GPU that import logs ``No CUDA runtime is found, using CUDA_HOME=...`` although
    nothing is wrong (the CPU build needs no CUDA; a CUDA build needs only the toolkit). The logger is raised to
    ERROR for the import only; anything that actually fails later is still reported.

    Returns:
        The ``torch.utils.cpp_extension`` module.
    """
    import logging

    name = "torch.utils.cpp_extension"
    if name in sys.modules:
        return sys.modules[name]
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def toolchain_problem(kind: str) -> str | None:
    """Why extension ``kind`` cannot be compiled here, or None.

    Args:
        kind: ``"cpp"`` or ``"cuda"``.

    Returns:
        A short reason naming the missing tool and the fix, or None when the toolchain is complete.
    """
    _setup_cuda_home()
    import torch

    cpp_extension = import_cpp_extension()

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return _toolkit().missing_compiler_message(cxx)
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed (pip install ninja)"
    if kind == "cuda":
        if torch.version.cuda is None:
            return "this torch build has no CUDA support"
        if cpp_extension.CUDA_HOME is None:
            return (
                "no CUDA toolkit found: install nvcc and the headers from PyPI with "
                f"{_toolkit().install_hint()}, or set CUDA_HOME to a CUDA installation with nvcc"
            )
    return None
