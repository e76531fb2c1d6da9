"""Building and loading the compiled extensions (cache keys: :mod:`.keys`; the build lock: :mod:`.lock`).

Every build starts from an empty directory, so nothing a killed build left there (objects, torch's own
``<dir>/lock``) is reused.

A failed build writes ``build.log`` and a ``FAILED`` marker in its directory, warns once per process with
the log's path, and makes :func:`get_module` raise :class:`ExtensionUnavailable` (dispatch then falls back
to PyTorch). Later processes honour the marker (no new attempt) until ``nerfaccel-build --force``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
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
    import_cpp_extension,
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


def _module_file(directory: Path, name: str) -> Path | None:
    """The module file of a build directory (whatever its state), or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES + [".so"]:
        path = directory / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def file_digest(path: Path) -> tuple[int, str]:
    """Size in bytes and SHA-256 (hex) of a file.

    Args:
        path: The file.

    Returns:
        ``(size, sha256)``.
    """
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _read_complete(directory: Path) -> dict | None:
    """The ``COMPLETE`` marker's contents ({} when unreadable), or None without one."""
    try:
        info = json.loads((directory / "COMPLETE").read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        info = {}
    return info if isinstance(info, dict) else {}


def _write_complete(directory: Path, path: Path | None, **fields: Any) -> None:
    """Writes the ``COMPLETE`` marker (atomically: temporary file, then rename) with the module's size and hash."""
    info = {**fields, "time": time.time()}
    if path is not None:
        size, sha = file_digest(path)
        info.update(file=path.name, size=size, sha256=sha)
    tmp = directory / f".COMPLETE.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, directory / "COMPLETE")


def _probe_import(name: str, path: Path, key: str | None = None, timeout: float = 300) -> str | None:
    """Imports module file ``path`` in a child process; returns why it failed (a crash included), or None.

    Used where the file's integrity is not known (a marker written by an older nerfaccel, ``nerfaccel-build
    --check``): a damaged file can kill the process that maps it (SIGBUS), which must not be ours.
    """
    import subprocess
    import sys

    code = (
        "import sys, importlib.machinery, importlib.util, torch\n"
        "name, path = sys.argv[1], sys.argv[2]\n"
        "loader = importlib.machinery.ExtensionFileLoader(name, path)\n"
        "spec = importlib.util.spec_from_file_location(name, path, loader=loader)\n"
        "m = importlib.util.module_from_spec(spec); loader.exec_module(m)\n"
        "print(getattr(m, 'source_hash', ''))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, name, str(path)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"cannot run a probe import ({type(err).__name__}: {err})"
    if out.returncode != 0:
        lines = (out.stderr or "").strip().splitlines()
        if out.returncode < 0:
            import signal

            try:
                sig = signal.Signals(-out.returncode).name
            except ValueError:
                sig = str(-out.returncode)
            return f"importing it kills the process ({sig})"
        return f"it cannot be imported ({lines[-1][:200] if lines else f'exit {out.returncode}'})"
    found = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if key is not None and found != key:
        return f"it was built for key {found or '(none)'}, not {key}"
    return None


def check_cached(directory: Path, name: str) -> tuple[Path | None, str | None]:
    """Verifies a cached build before anything loads it.

    ``COMPLETE`` records the module file's size and SHA-256; both must match the file (a truncated or overwritten
    file is never mapped: loading one can kill the process with SIGBUS). A marker from an older nerfaccel, without
    them, is checked by importing the file in a child process and then upgraded.

    Args:
        directory: The build directory.
        name: The module name (:func:`module_name`).

    Returns:
        ``(path, None)`` for a verified module, ``(None, None)`` when there is no complete build, and
        ``(None, why)`` when there is one but it is damaged.
    """
    info = _read_complete(directory)
    if info is None:
        return None, None
    path = _module_file(directory, name)
    if path is None:
        return None, f"{directory / 'COMPLETE'} exists but the module file {name}.so is missing"
    size, sha = info.get("size"), info.get("sha256")
    if size is None or sha is None:  # a marker written before the hash was recorded
        why = _probe_import(name, path, key=info.get("key"))
        if why is not None:
            return None, f"{path}: {why}"
        _write_complete(directory, path, **{k: v for k, v in info.items() if k != "time"})
        return path, None
    try:
        actual_size, actual_sha = file_digest(path)
    except OSError as err:
        return None, f"{path} cannot be read ({err})"
    if actual_size != size:
        return None, f"{path} has {actual_size} bytes, its COMPLETE marker records {size} (truncated or replaced)"
    if actual_sha != sha:
        return None, f"{path} does not match the SHA-256 its COMPLETE marker records (overwritten or damaged)"
    return path, None


def _built_file(directory: Path, name: str) -> Path | None:
    """The verified module file of a complete build (:func:`check_cached`), or None."""
    return check_cached(directory, name)[0]


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


def compile_extension(
    kind: str, arch: str | None = None, force: bool = False, quiet: bool = False, reject: str | None = None
) -> Path:
    """Compiles extension ``kind`` into the cache (if not already there) and returns its directory.

    Args:
        kind: ``"cpp"`` or ``"cuda"``.
        arch: CUDA architectures (``TORCH_CUDA_ARCH_LIST`` syntax), default :func:`cuda_arch_list`.
        force: Rebuild even if a complete build is cached, or an earlier build failed.
        quiet: No spinner and no progress lines.
        reject: SHA-256 of a module file that verified but failed to load: a cached build with this hash is
            rebuilt (one that another process has rebuilt meanwhile is kept).

    Returns:
        The build directory; its ``COMPLETE`` marker records the module file's size and SHA-256. A damaged
        cached build (see :func:`check_cached`) is rebuilt.

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
        path, damaged = check_cached(directory, name)
        if path is not None:
            return reject is None or (_read_complete(directory) or {}).get("sha256") != reject
        if damaged is not None:
            return False  # rebuilt below, under the lock
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
        _write_complete(directory, _module_file(directory, name), key=key, arch=arch)
    finally:
        lock.release()
    return directory


def _run_build(kind: str, key: str, arch: str | None, directory: Path, name: str, quiet: bool) -> None:
    cpp_extension = import_cpp_extension()

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
        elif not _is_tty(sys.stderr):  # logs, CI, nohup: no spinner, so say what the wait is
            print(
                f"nerfaccel: compiling nerfaccel's C++ kernels ({kind}), first use only, about a minute",
                file=sys.stderr,
                flush=True,
            )
            cpp_extension.load(**kwargs)
            print(
                f"nerfaccel: compiled the {kind} kernels in {time.monotonic() - start:.0f} s -> {directory}",
                file=sys.stderr,
                flush=True,
            )
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


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
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


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower() and "Error building extension" not in line:
            return line.strip()[:200]
    return text.strip().splitlines()[0][:200] if text.strip() else "unknown error"


def _load_verified(name: str, path: Path, key: str) -> tuple[ModuleType | None, str | None]:
    """Imports a module file that passed :func:`check_cached`; returns ``(module, None)`` or ``(None, why)``."""
    try:
        module = _import_file(name, path)
    except (ImportError, OSError) as err:
        return None, f"{path} cannot be loaded ({err})"
    found = getattr(module, "source_hash", None)
    if found is None:
        return None, f"{path} lacks the symbol `source_hash`"
    if found != key:
        return None, f"{path} was built for key {found}, not {key}"
    return module, None


def _load_cached_or_build(kind: str) -> ModuleType:
    """The lazily built extension: the verified cached build, else a build now. A damaged cached build (size,
    hash, loading or its key symbol) is rebuilt once under the lock; if that fails, ExtensionUnavailable."""
    arch = cuda_arch_list() if kind == "cuda" else None
    key = jit_key(kind, arch=arch)
    name = module_name(kind, key)
    directory = build_dir(kind, key)
    path, damaged = check_cached(directory, name)
    reject = None
    if path is not None:
        module, damaged = _load_verified(name, path, key)
        if module is not None:
            _status[kind] = f"cached ({directory})"
            return module
        reject = (_read_complete(directory) or {}).get("sha256")
    if damaged is not None:
        print(f"nerfaccel: the cached {kind} extension is damaged ({damaged}); rebuilding it.", file=sys.stderr)
    directory = compile_extension(kind, arch=arch, reject=reject)
    path, why = check_cached(directory, name)
    what = "rebuilding the damaged" if damaged is not None else "building the"
    if path is None:
        raise ExtensionUnavailable(f"{what} {kind} extension failed: {why or f'no module file in {directory}'}")
    module, why = _load_verified(name, path, key)
    if module is None:
        raise ExtensionUnavailable(f"{what} {kind} extension failed: {why}")
    _status[kind] = f"{'rebuilt' if damaged is not None else 'built'} ({directory})"
    return module


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
                module = _load_cached_or_build(kind)
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
