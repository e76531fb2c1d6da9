"""Building, caching and loading the compiled extensions.

An extension is compiled lazily, once, into a cache directory keyed by a hash of the kernel sources,
the torch and CUDA versions, the Python version, the compiler flags, (for CUDA) the target
architectures, and the toolchain (``--version`` of the C++ compiler and of nvcc, ``CUDA_HOME``):

``$NERFACCEL_EXT_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/nerfaccel/ext``, then ``<kind>-<key>/``.

Concurrent builds are serialized with ``<kind>-<key>.lock``: an advisory ``flock`` on POSIX (released by
the kernel when its holder dies, so a killed build never leaves a lock behind; the file holds the builder's
PID, host and start time for diagnostics only). Where ``flock`` is unavailable the file's existence is the
lock, and one left by a dead build (dead PID on this host, unreadable for 30 s, or older than
``NERFACCEL_EXT_LOCK_STALE_S`` seconds, default 3600) is broken atomically (renamed aside and checked to
still be the lock judged stale). Waiting never exceeds that age plus a minute. Every build starts from an
empty directory, so nothing a killed build left there (objects, torch's own ``<dir>/lock``) is reused.

A failed build writes ``build.log`` and a ``FAILED`` marker in its directory, warns once per process with
the log's path, and makes :func:`get_module` raise :class:`ExtensionUnavailable` (dispatch then falls back
to PyTorch). Later processes honour the marker (no new attempt) until ``nerfaccel-build --force``.

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
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

try:  # POSIX advisory locks (released by the kernel when the holder dies)
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lock-file protocol below
    fcntl = None  # type: ignore[assignment]

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

# Translation units: the build metadata, the checked entry points of every op family (both builds), and the
# launchers of the build's device (cuda/cpu/*.cpp or cuda/gpu/*.cu). See docs/kernels.md.
_LAUNCHERS = {"cpp": ("cpu", "*_cpu.cpp"), "cuda": ("gpu", "*.cu")}
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


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if out == out else None  # NaN is no time


def _read_lock(path: Path) -> tuple[bytes | None, dict, os.stat_result | None]:
    """Raw bytes (None when the file is gone), parsed JSON object ({} when unreadable) and stat of a lock file."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, {}, None
    except OSError:
        return b"", {}, None
    try:
        info = json.loads(raw.decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        info = {}
    return raw, (info if isinstance(info, dict) else {}), st


def _judge(info: dict, mtime: float | None, stale_after: float) -> tuple[bool, str]:
    """Whether lock contents ``info`` (file modified at ``mtime``) describe a dead or too-old build, and why.

    Unreadable contents (a lock being written, or garbage) fall back to the file's modification time; they are
    stale only once older than ``stale_after``, or after 30 s without a readable owner (the builder writes its
    JSON right after creating the file, so it died in between).
    """
    started = _as_float(info.get("time"))
    if started is None:
        started = mtime if mtime is not None else time.time()
    age = time.time() - started
    if age > stale_after:
        return True, f"older than {stale_after:.0f} s"
    pid, host = _as_int(info.get("pid")), info.get("host")
    if pid is None:
        if age > 30:
            return True, "unreadable for more than 30 s"
        return False, "being written"
    if host == socket.gethostname() and not _pid_alive(pid):
        return True, f"its process {pid} is gone"
    return False, f"held by pid {pid} on {host}"


def lock_is_stale(lock_path: Path, stale_after: float | None = None) -> tuple[bool, str]:
    """Whether the lock file at ``lock_path`` was left by a dead or too-old build, and why (from its contents)."""
    stale_after = float(os.environ.get(ENV_STALE, "3600")) if stale_after is None else stale_after
    raw, info, st = _read_lock(lock_path)
    if raw is None:
        return False, "gone"
    return _judge(info, st.st_mtime if st is not None else None, stale_after)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class BuildLock:
    """Exclusive build lock; never waits longer than ``timeout`` seconds.

    On POSIX it is an ``flock`` on the lock file: the kernel releases it when the holder exits or is killed,
    so there are no stale locks to break. Contents left in the file by a killed holder are only reported. The
    holder removes the file on release (while still locked); a waiter that then locks the removed file
    notices (its inode is no longer the path's) and retries on the new one.

    Without ``flock`` (Windows, file systems that refuse it) the file's existence is the lock: a stale one
    (see :func:`lock_is_stale`) is renamed aside atomically, and removed only if the renamed file is still
    the one judged stale (else it is handed back), so a fresh lock taken in between is never deleted.
    """

    def __init__(self, path: Path, timeout: float | None = None, stale_after: float | None = None) -> None:
        self.path = path
        self.stale_after = float(os.environ.get(ENV_STALE, "3600")) if stale_after is None else stale_after
        self.timeout = self.stale_after + 60 if timeout is None else timeout
        self.held = False
        self.use_flock = fcntl is not None
        self._fd: int | None = None  # flock mode: the locked file
        self._token: bytes | None = None  # lock-file mode: what we wrote

    def _contents(self) -> bytes:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        return json.dumps(info).encode()

    def acquire(self, done: Any = None) -> bool:
        """Takes the lock. Returns False without locking if ``done()`` turns true while waiting."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            got = self._try_flock() if self.use_flock else self._try_exclusive()
            if got:
                self.held = True
                return True
            if got is None:  # the file changed under us: retry at once
                continue
            if done is not None and done():
                return False
            if time.monotonic() > deadline:
                _, why = lock_is_stale(self.path, self.stale_after)
                raise ExtensionUnavailable(
                    f"timed out after {self.timeout:.0f} s waiting for the build lock {self.path} ({why}); "
                    "remove it if no build is running"
                ) from None
            time.sleep(0.25)

    def _try_flock(self) -> bool | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:  # no flock on this file system: fall back to the lock-file protocol
            os.close(fd)
            self.use_flock = False
            return None
        try:
            st = os.fstat(fd)
            if not _same_file(st, os.stat(self.path)):
                raise FileNotFoundError(self.path)
        except FileNotFoundError:  # its holder removed it on release: lock the path's new file instead
            os.close(fd)
            return None
        left = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            left += chunk
        if left.strip():  # a holder died (flock released by the kernel) without removing the file
            try:
                info = json.loads(left.decode())
            except (ValueError, UnicodeDecodeError):
                info = {}
            info = info if isinstance(info, dict) else {}
            stale, why = _judge(info, st.st_mtime, self.stale_after)
            if not stale:
                why = f"left by pid {info.get('pid')} on {info.get('host')}, which no longer holds it"
            warnings.warn(f"nerfaccel: removing stale build lock {self.path} ({why}).", RuntimeWarning, stacklevel=3)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, self._contents())
        self._fd = fd
        return True

    def _try_exclusive(self) -> bool | None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raw, info, st = _read_lock(self.path)
            if raw is None or st is None:
                return None if raw is None else False
            stale, why = _judge(info, st.st_mtime, self.stale_after)
            if stale:
                return self._break(raw, st, why)
            return False
        token = self._contents()
        with os.fdopen(fd, "wb") as f:
            f.write(token)
        self._token = token
        return True

    def _break(self, raw: bytes, st: os.stat_result, why: str) -> bool | None:
        """Removes the lock file judged stale (contents ``raw``, stat ``st``) unless it was replaced meanwhile."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None  # released or broken by someone else: retry
        try:
            moved, moved_st = aside.read_bytes(), aside.stat()
            same = moved == raw and _same_file(moved_st, st) and moved_st.st_mtime_ns == st.st_mtime_ns
        except OSError:
            same = False
        if same:
            warnings.warn(f"nerfaccel: removing stale build lock {self.path} ({why}).", RuntimeWarning, stacklevel=4)
        else:  # a new lock was taken between our check and the rename: hand it back (no-clobber hard link)
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        try:
            aside.unlink()
        except FileNotFoundError:
            pass
        return None

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if _same_file(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)  # while still locked: waiters notice and retry on a new file
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)  # releases the flock
            return
        token, self._token = self._token, None
        try:
            if self.path.read_bytes() == token:  # not if our lock was broken and someone else's is there now
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
