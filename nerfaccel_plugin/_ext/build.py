"""Building and loading the compiled extensions (cache keys: :mod:`.keys`; the build lock: :mod:`.lock`).

Every build starts from an empty directory, so nothing a killed build left there (objects, torch's own
``<dir>/lock``) is reused.

A failed build writes ``build.log`` and a ``FAILED`` marker in its directory, warns once per process with
the log's path, and makes :func:`get_module` raise :class:`ExtensionUnavailable` (dispatch then falls back
to PyTorch). Later processes honour the marker (no new attempt) until ``nerfaccel-build --force``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from . import ExtensionUnavailable
from .keys import (  # noqa: F401 - re-exported: the public names of the former single-module build.py
    CXX_FLAGS,
    DEFAULT_CUDA_ARCH,
    ENV_EXT_DIR,
    LD_FLAGS,
    NVCC_FLAGS,
    _decode_arch,
    _setup_cuda_home,
    arch_runs_on,
    build_dir,
    cache_key,
    cache_root,
    cuda_arch_list,
    cuda_home,
    defines,
    jit_key,
    module_name,
    source_dir,
    sources,
    toolchain_id,
    toolchain_problem,
)
from .lock import ENV_STALE, BuildLock, fcntl, lock_is_stale  # noqa: F401 - re-exported

ENV_VERBOSE = "NERFACCEL_EXT_VERBOSE"

_PREBUILT = {"cpp": "nerfaccel_plugin._ext._C_cpu", "cuda": "nerfaccel_plugin._ext._C_cuda"}

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}
_status: dict[str, str] = {}


def _toolchain_problem(kind: str) -> str | None:
    """Why extension ``kind`` cannot be compiled here, or None (:func:`.keys.toolchain_problem`)."""
    return toolchain_problem(kind)


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


def _failed_marker(directory: Path) -> dict | None:
    """Contents of the ``FAILED`` marker of a build directory ({} when unreadable), or None without one."""
    try:
        info = json.loads((directory / "FAILED").read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        info = {}
    return info if isinstance(info, dict) else {}


def _raise_if_failed_before(kind: str, directory: Path) -> None:
    info = _failed_marker(directory)
    if info is None:
        return
    log = info.get("log") or directory / "build.log"
    first = info.get("error") or "see the log"
    raise ExtensionUnavailable(
        f"building the {kind} extension failed in an earlier run ({first}); full log: {log} "
        f"(not retried until `nerfaccel-build --force`, or delete {directory})"
    )


def compile_extension(kind: str, arch: str | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Compiles extension ``kind`` into the cache (if not already there) and returns its directory.

    Args:
        kind: ``"cpp"`` or ``"cuda"``.
        arch: CUDA architectures (``TORCH_CUDA_ARCH_LIST`` syntax), default :func:`cuda_arch_list`.
        force: Rebuild even if a complete build is cached, or an earlier build failed.
        quiet: No spinner.

    Raises:
        ExtensionUnavailable: The toolchain is missing, the compilation failed (see ``build.log``), or it failed
            in an earlier run (its ``FAILED`` marker; not retried unless ``force``).
    """
    problem = _toolchain_problem(kind)
    if problem:
        raise ExtensionUnavailable(f"cannot build the {kind} extension: {problem}")
    arch = (arch or cuda_arch_list()) if kind == "cuda" else None
    key = jit_key(kind, arch=arch)
    directory = build_dir(kind, key)
    name = module_name(kind, key)

    def finished() -> bool:
        if force:
            return False
        if _built_file(directory, name) is not None:
            return True
        _raise_if_failed_before(kind, directory)
        return False

    if finished():
        return directory
    lock = BuildLock(directory.with_name(directory.name + ".lock"))
    if not lock.acquire(done=finished):
        return directory  # another process finished the build while we waited
    try:
        if finished():
            return directory
        # Start from an empty directory: whatever is here is incomplete (a build that was killed or failed) or
        # being replaced (force). torch's cpp_extension.load takes its own lock, <dir>/lock; up to torch 2.5 that
        # lock is the file's existence, without a timeout, so one left by a killed build would hang this build
        # forever; and ninja would trust the objects of an interrupted or older build.
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            _run_build(kind, key, arch, directory, name, quiet)
        except ExtensionUnavailable as err:
            marker = {"error": getattr(err, "first_error", None), "log": str(directory / "build.log")}
            (directory / "FAILED").write_text(json.dumps({**marker, "time": time.time()}))
            raise
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
        # (copies: cpp_extension.load appends torch's libraries to the lists it is given, which would change
        # LD_FLAGS, and with it every cache key computed later in this process)
        "extra_ldflags": list(LD_FLAGS),
        "build_directory": str(directory),
        "verbose": os.environ.get(ENV_VERBOSE, "") == "1",
        "with_cuda": kind == "cuda",
        "is_python_module": True,
    }
    if kind == "cuda":
        kwargs["extra_cuda_cflags"] = list(NVCC_FLAGS) + define
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
        failure = ExtensionUnavailable(f"building the {kind} extension failed ({first}); full log: {log}")
        failure.first_error = first  # type: ignore[attr-defined]
        raise failure from err
    finally:
        if arch:
            if saved_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved_arch
    log.write_text(f"{what}: built in {time.monotonic() - start:.1f} s\n")


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
                key = jit_key(kind, arch=arch)
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
