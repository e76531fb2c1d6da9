"""Building, caching and loading the compiled extensions.

An extension is compiled lazily, once, into a cache directory keyed by a hash of the kernel sources,
the torch and CUDA versions, the Python version, the compiler flags and (for CUDA) the target
architectures:

``$NERFACCEL_EXT_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/nerfaccel/ext``, then ``<kind>-<key>/``.

Concurrent builds are serialized with a lock file holding the builder's PID, host and start time. A
lock left by a killed build is detected (dead PID on this host, or older than
``NERFACCEL_EXT_LOCK_STALE_S`` seconds, default 3600) and cleared, so waiting can never hang forever.
A failed build writes ``build.log`` in its directory, warns once with that path, and makes
:func:`get_module` raise :class:`ExtensionUnavailable` (dispatch then falls back to PyTorch).

This module imports only the standard library at import time (``setup.py`` reuses :func:`cache_key`).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

try:  # normal import as part of the package
    from . import ExtensionUnavailable
except ImportError:  # loaded standalone by setup.py

    class ExtensionUnavailable(RuntimeError):  # type: ignore[no-redef]
        """Stand-in used when this file is loaded outside the package (setup.py)."""


ENV_EXT_DIR = "NERFACCEL_EXT_DIR"
ENV_STALE = "NERFACCEL_EXT_LOCK_STALE_S"
ENV_VERBOSE = "NERFACCEL_EXT_VERBOSE"
DEFAULT_CUDA_ARCH = "9.0"


def _libmvec() -> bool:
    """Whether glibc's vector math library can be linked (x86-64 Linux): SIMD exp/expf for the CPU kernels."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return False
    import ctypes.util

    return ctypes.util.find_library("mvec") is not None


_MVEC = _libmvec()
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-DNERFACCEL_EXT"] + (["-DNERFACCEL_LIBMVEC"] if _MVEC else [])
LD_FLAGS = ["-fopenmp"] + (["-lmvec"] if _MVEC else [])
# -fmad=false: no fused multiply-adds, like -ffp-contract=off for the CPU build, so both builds round the shared
# math the same way (traversal's sample positions and the per-ray sums match the reference exactly).
NVCC_FLAGS = ["-O3", "-DNERFACCEL_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo", "-fmad=false"]

_SOURCES = {"cpp": ["bindings.cpp", "cpu_ops.cpp"], "cuda": ["bindings.cpp", "cuda_ops.cu"]}
_PREBUILT = {"cpp": "nerfaccel_plugin._ext._C_cpu", "cuda": "nerfaccel_plugin._ext._C_cuda"}

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}
_status: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# Sources and cache keys
# ---------------------------------------------------------------------------------------------
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
    return [root / name for name in _SOURCES[kind]]


def _hashed_files(kind: str, root: Path) -> list[Path]:
    headers = sorted((root / "include").rglob("*.h")) + sorted((root / "include").rglob("*.cuh"))
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


def cache_key(kind: str, root: Path | None = None, arch: str | None = None) -> str:
    """Hash of everything that changes the binary: sources, versions, flags, CUDA architectures."""
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
    h.update("\n".join(parts).encode())
    return h.hexdigest()[:16]


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
    return cache_root() / f"{kind}-{key or cache_key(kind)}"


def module_name(kind: str, key: str) -> str:
    return f"nerfaccel_{kind}_{key}"


# ---------------------------------------------------------------------------------------------
# Lock
# ---------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_is_stale(lock_path: Path, stale_after: float | None = None) -> tuple[bool, str]:
    """Whether the lock at ``lock_path`` was left by a dead or too-old build, and why."""
    stale_after = float(os.environ.get(ENV_STALE, "3600")) if stale_after is None else stale_after
    try:
        info = json.loads(lock_path.read_text() or "{}")
        mtime = lock_path.stat().st_mtime
    except FileNotFoundError:
        return False, "gone"
    except (OSError, ValueError):
        info, mtime = {}, None
    started = float(info.get("time", mtime if mtime is not None else 0.0))
    age = time.time() - started
    if age > stale_after:
        return True, f"older than {stale_after:.0f} s"
    pid, host = int(info.get("pid", -1)), info.get("host")
    if host == socket.gethostname() and not _pid_alive(pid):
        return True, f"its process {pid} is gone"
    if not info and age > 30:  # unreadable lock that was never completed
        return True, "unreadable"
    return False, f"held by pid {pid} on {host}"


class BuildLock:
    """Exclusive lock file with stale-lock recovery; never waits longer than ``timeout`` seconds."""

    def __init__(self, path: Path, timeout: float | None = None, stale_after: float | None = None) -> None:
        self.path = path
        self.stale_after = float(os.environ.get(ENV_STALE, "3600")) if stale_after is None else stale_after
        self.timeout = self.stale_after + 60 if timeout is None else timeout
        self.held = False

    def acquire(self, done: Any = None) -> bool:
        """Takes the lock. Returns False without locking if ``done()`` turns true while waiting."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                stale, why = lock_is_stale(self.path, self.stale_after)
                if stale:
                    warnings.warn(
                        f"nerfaccel: removing stale build lock {self.path} ({why}).", RuntimeWarning, stacklevel=2
                    )
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                if done is not None and done():
                    return False
                if time.monotonic() > deadline:
                    raise ExtensionUnavailable(
                        f"timed out after {self.timeout:.0f} s waiting for the build lock {self.path} ({why}); "
                        "remove it if no build is running"
                    ) from None
                time.sleep(0.25)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
            self.held = True
            return True

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------
def _import_file(name: str, path: Path) -> ModuleType:
    import torch  # noqa: F401 - the extension links against libtorch, which must be loaded first

    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    if spec is None:  # pragma: no cover
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _built_file(directory: Path, name: str) -> Path | None:
    if not (directory / "COMPLETE").is_file():
        return None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES + [".so"]:
        path = directory / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def _toolchain_problem(kind: str) -> str | None:
    """Why extension ``kind`` cannot be compiled here, or None."""
    _setup_cuda_home()
    import torch
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ('{cxx}' not found; install g++ or set CXX)"
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed (pip install ninja)"
    if kind == "cuda":
        if torch.version.cuda is None:
            return "this torch build has no CUDA support"
        if cpp_extension.CUDA_HOME is None:
            return "no CUDA toolkit found (set CUDA_HOME to a CUDA installation with nvcc)"
    return None


def _prebuilt(kind: str) -> ModuleType | None:
    """The extension built ahead of time into the package, when it matches the current sources."""
    name = _PREBUILT[kind]
    if importlib.util.find_spec(name) is None:
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    if kind == "cuda" and not _prebuilt_cuda_runs_here(module):
        return None
    try:
        expected = cache_key(kind, arch=_decode_arch(getattr(module, "cuda_arch", None)))
    except OSError:  # sources not shipped: trust the prebuilt binary
        return module
    return module if getattr(module, "source_hash", None) == expected else None


def compile_extension(kind: str, arch: str | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Compiles extension ``kind`` into the cache (if not already there) and returns its directory.

    Args:
        kind: ``"cpp"`` or ``"cuda"``.
        arch: CUDA architectures (``TORCH_CUDA_ARCH_LIST`` syntax), default :func:`cuda_arch_list`.
        force: Rebuild even if a complete build is cached.
        quiet: No spinner.

    Raises:
        ExtensionUnavailable: The toolchain is missing or the compilation failed (see ``build.log``).
    """
    problem = _toolchain_problem(kind)
    if problem:
        raise ExtensionUnavailable(f"cannot build the {kind} extension: {problem}")
    arch = (arch or cuda_arch_list()) if kind == "cuda" else None
    key = cache_key(kind, arch=arch)
    directory = build_dir(kind, key)
    name = module_name(kind, key)
    if not force and _built_file(directory, name) is not None:
        return directory
    lock = BuildLock(directory.with_name(directory.name + ".lock"))
    if not lock.acquire(done=lambda: not force and _built_file(directory, name) is not None):
        return directory  # another process finished the build while we waited
    try:
        if not force and _built_file(directory, name) is not None:
            return directory
        if force and directory.exists():
            shutil.rmtree(directory)  # ninja would otherwise consider the old objects up to date
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "COMPLETE").unlink(missing_ok=True)
        _run_build(kind, key, arch, directory, name, quiet)
        (directory / "COMPLETE").write_text(json.dumps({"key": key, "arch": arch, "time": time.time()}))
    finally:
        lock.release()
    return directory


def _run_build(kind: str, key: str, arch: str | None, directory: Path, name: str, quiet: bool) -> None:
    from torch.utils import cpp_extension

    root = source_dir()
    define = defines(key, arch)
    kwargs: dict[str, Any] = {
        "name": name,
        "sources": [str(p) for p in sources(kind, root)],
        "extra_include_paths": [str(root / "include")],
        "extra_cflags": CXX_FLAGS + define + (["-DNERFACCEL_WITH_CUDA"] if kind == "cuda" else []),
        "extra_ldflags": LD_FLAGS,
        "build_directory": str(directory),
        "verbose": os.environ.get(ENV_VERBOSE, "") == "1",
        "with_cuda": kind == "cuda",
        "is_python_module": True,
    }
    if kind == "cuda":
        kwargs["extra_cuda_cflags"] = NVCC_FLAGS + define
    log = directory / "build.log"
    saved_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    start = time.monotonic()
    what = f"nerfaccel: compiling the {kind} extension" + (f" for sm {arch}" if arch else "")
    try:
        if quiet:
            cpp_extension.load(**kwargs)
        else:
            from rich.console import Console

            console = Console(stderr=True)
            with console.status(f"{what} (first use only; about a minute)...", spinner="dots"):
                cpp_extension.load(**kwargs)
            console.print(f"{what}: done in {time.monotonic() - start:.0f} s -> {directory}")
    except Exception as err:
        log.write_text(f"{what}\nsources: {kwargs['sources']}\n\n{err}\n")
        first = _first_error_line(str(err))
        raise ExtensionUnavailable(f"building the {kind} extension failed ({first}); full log: {log}") from err
    finally:
        if arch:
            if saved_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved_arch
    log.write_text(f"{what}: built in {time.monotonic() - start:.1f} s\n")


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


def _prebuilt_cuda_runs_here(module: ModuleType) -> bool:
    """A prebuilt CUDA extension is only used when it has code for every visible GPU (else it is rebuilt)."""
    arch = _decode_arch(getattr(module, "cuda_arch", None))
    if not arch:
        return True
    try:
        import torch

        if not torch.cuda.is_available():
            return True
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    except Exception:  # pragma: no cover - defensive: any CUDA init problem means "no GPU"
        return True
    return all(arch_runs_on(arch, cap) for cap in caps)


def _setup_cuda_home() -> None:
    """Points torch at /usr/local/cuda when CUDA_HOME is unset (nvcc on PATH may be a bare symlink)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    default = Path("/usr/local/cuda")
    if (default / "bin" / "nvcc").exists():
        os.environ["CUDA_HOME"] = str(default)
        if "torch.utils.cpp_extension" in sys.modules:
            sys.modules["torch.utils.cpp_extension"].CUDA_HOME = str(default)


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower() and "Error building extension" not in line:
            return line.strip()[:200]
    return text.strip().splitlines()[0][:200] if text.strip() else "unknown error"


def get_module(kind: str) -> ModuleType:
    """The loaded extension ``kind`` (prebuilt, cached, or compiled now), cached in this process.

    Raises:
        ExtensionUnavailable: It cannot be built or loaded. A build failure warns once per process.
    """
    module = _modules.get(kind)
    if module is not None:
        return module
    with _lock:
        if kind in _modules:
            return _modules[kind]
        if kind in _failures:
            raise ExtensionUnavailable(_failures[kind])
        try:
            module = _prebuilt(kind)
            if module is not None:
                _status[kind] = f"prebuilt ({module.__file__})"
            else:
                arch = cuda_arch_list() if kind == "cuda" else None
                key = cache_key(kind, arch=arch)
                directory = build_dir(kind, key)
                cached = _built_file(directory, module_name(kind, key)) is not None
                directory = compile_extension(kind, arch=arch)
                path = _built_file(directory, module_name(kind, key))
                if path is None:
                    raise ExtensionUnavailable(f"the {kind} extension build left no module in {directory}")
                try:
                    module = _import_file(module_name(kind, key), path)
                except ImportError as err:
                    raise ExtensionUnavailable(f"the {kind} extension was built but cannot be imported: {err}") from err
                _status[kind] = f"{'cached' if cached else 'built'} ({directory})"
        except ExtensionUnavailable as err:
            _failures[kind] = err.reason
            _status[kind] = f"failed: {err.reason}"
            if "failed" in err.reason:
                warnings.warn(
                    f"nerfaccel: {err.reason}. Falling back to the pure-PyTorch backend.", RuntimeWarning, stacklevel=3
                )
            raise
        _modules[kind] = module
        return module


def status(kind: str) -> str:
    """Short text for ``backend_info()``: not attempted, prebuilt/cached/built (path), or failed (why)."""
    return _status.get(kind, "not attempted")


def reset() -> None:
    """Forgets loaded modules and failures of this process (tests)."""
    with _lock:
        _modules.clear()
        _failures.clear()
        _status.clear()
