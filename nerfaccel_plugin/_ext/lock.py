"""The build lock: one build per cache directory at a time, never a lock left behind by a killed build.

Concurrent builds are serialized with ``<kind>-<key>.lock``: an advisory ``flock`` on POSIX (released by
the kernel when its holder dies, so a killed build never leaves a lock behind; the file holds the builder's
PID, host and start time for diagnostics only). Where ``flock`` is unavailable the file's existence is the
lock, and one left by a dead build (dead PID on this host, unreadable for 30 s, or older than
``NERFACCEL_EXT_LOCK_STALE_S`` seconds, default 3600) is broken atomically (renamed aside and checked to
still be the lock judged stale). Waiting never exceeds that age plus a minute.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks (released by the kernel when the holder dies)
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lock-file protocol below
    fcntl = None  # type: ignore[assignment]

from . import ExtensionUnavailable

ENV_STALE = "NERFACCEL_EXT_LOCK_STALE_S"


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
