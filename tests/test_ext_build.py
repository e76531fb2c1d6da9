"""The extension build machinery: cache location and keys, stale-lock recovery, failure fallback, CLI.

None of these tests compiles the real kernels (the failing build compiles one broken file and stops at
its first line), so they are fast and run without a CUDA toolkit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from nerfaccel_plugin import _ext
from nerfaccel_plugin._ext import build
from nerfaccel_plugin._ext import keys as ext_keys


def test_import_is_cheap_and_never_compiles():
    code = (
        "import sys, nerfaccel_plugin._ext as e; "
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'importing _ext loaded the compiler machinery'; "
        "print(e.build_status('cpp'), e.build_status('cuda'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["not", "attempted", "not", "attempted"]


@pytest.mark.parametrize(
    "arch, cap, runs",
    [
        ("9.0", (9, 0), True),
        ("9.0", (8, 0), False),
        ("9.0", (10, 0), False),  # machine code does not cross major versions
        ("8.0", (8, 6), True),  # ... but runs on later minors
        ("8.6", (8, 0), False),
        ("9.0+PTX", (10, 0), True),  # PTX is compiled by the driver for newer GPUs
        ("9.0+PTX", (8, 6), False),
        ("8.0;9.0", (9, 0), True),
        ("7.5 8.6+PTX", (8, 9), True),
        ("9.0a", (9, 0), True),
        ("", (9, 0), False),
    ],
)
def test_arch_runs_on(arch, cap, runs):
    assert build.arch_runs_on(arch, cap) is runs


def test_prebuilt_cuda_for_another_gpu_is_not_used(monkeypatch):
    """An ahead-of-time CUDA build without code for the visible GPU is skipped (then built for it), not loaded."""
    import types

    module = types.SimpleNamespace(cuda_arch="8.0_8.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    assert not build._prebuilt_cuda_runs_here(module)
    module.cuda_arch = "8.0_9.0"
    assert build._prebuilt_cuda_runs_here(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module.cuda_arch = "8.0"
    assert build._prebuilt_cuda_runs_here(module)  # no GPU: nothing to check against


def test_cache_root_respects_env(monkeypatch, tmp_path):
    monkeypatch.delenv(build.ENV_EXT_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "nerfaccel" / "ext"
    monkeypatch.setenv(build.ENV_EXT_DIR, str(tmp_path / "custom"))
    assert build.cache_root() == tmp_path / "custom"
    assert build.build_dir("cpp").parent == tmp_path / "custom"


def test_cache_key_tracks_sources_and_arch(tmp_path):
    src = tmp_path / "src"
    (src / "include" / "nerfaccel").mkdir(parents=True)
    for name in ["bindings.cpp", "csrc/grid.cpp", "cpu/grid_cpu.cpp", "gpu/grid.cu", "include/nerfaccel/grid.h"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("// v1\n")
    key = build.cache_key("cpp", root=src)
    assert key == build.cache_key("cpp", root=src)
    (src / "include" / "nerfaccel" / "grid.h").write_text("// v2\n")
    assert build.cache_key("cpp", root=src) != key
    (src / "cpu" / "grid_cpu.cpp").write_text("// v2\n")
    assert build.cache_key("cpp", root=src) != key
    assert build.sources("cpp", src) == [src / "bindings.cpp", src / "csrc" / "grid.cpp", src / "cpu" / "grid_cpu.cpp"]
    assert build.sources("cuda", src) == [src / "bindings.cpp", src / "csrc" / "grid.cpp", src / "gpu" / "grid.cu"]
    assert build.cache_key("cuda", root=src, arch="8.6") != build.cache_key("cuda", root=src, arch="9.0")


def _write_lock(path: Path, pid: int, age: float = 0.0, host: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "time": time.time() - age}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# Both lock protocols: flock (POSIX) and the lock-file protocol used where flock is unavailable.
LOCK_MODES = [
    pytest.param(True, id="flock", marks=pytest.mark.skipif(build.fcntl is None, reason="no fcntl")),
    pytest.param(False, id="lockfile"),
]


def _lock(path: Path, use_flock: bool, **kwargs) -> build.BuildLock:
    lock = build.BuildLock(path, **kwargs)
    lock.use_flock = use_flock
    return lock


@pytest.mark.parametrize("use_flock", LOCK_MODES)
def test_stale_lock_from_dead_process_is_cleared(tmp_path, use_flock):
    lock_path = tmp_path / "cpp-x.lock"
    _write_lock(lock_path, _dead_pid())
    assert build.lock_is_stale(lock_path)[0]
    lock = _lock(lock_path, use_flock, timeout=5)
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert lock.acquire()
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_path.exists()
    assert list(tmp_path.iterdir()) == []  # nothing left aside either


@pytest.mark.parametrize("use_flock", LOCK_MODES)
def test_old_lock_is_cleared_even_if_pid_alive(tmp_path, use_flock):
    lock_path = tmp_path / "cpp-x.lock"
    _write_lock(lock_path, os.getpid(), age=7200)
    lock = _lock(lock_path, use_flock, timeout=5, stale_after=3600)
    with pytest.warns(RuntimeWarning, match="older than"):
        assert lock.acquire()
    lock.release()


@pytest.mark.parametrize("use_flock", LOCK_MODES)
def test_live_lock_times_out_instead_of_hanging(tmp_path, use_flock):
    lock_path = tmp_path / "cpp-x.lock"
    holder = _lock(lock_path, use_flock, timeout=5)
    assert holder.acquire()  # held by a live process (this one, through another lock object)
    lock = _lock(lock_path, use_flock, timeout=0.5, stale_after=3600)
    start = time.monotonic()
    with pytest.raises(_ext.ExtensionUnavailable, match="timed out"):
        lock.acquire()
    assert time.monotonic() - start < 30
    assert lock_path.exists()  # someone else's lock is left alone
    holder.release()
    assert lock.acquire()
    lock.release()


_HOLD_AND_WAIT = """
import sys, time
from pathlib import Path
from nerfaccel_plugin._ext import build
lock = build.BuildLock(Path(sys.argv[1]), timeout=10)
lock.use_flock = sys.argv[2] == "1"
assert lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("use_flock", LOCK_MODES)
def test_lock_of_a_killed_build_does_not_block(tmp_path, use_flock):
    """A builder killed while holding the lock (SIGKILL: no cleanup) does not make the next build wait."""
    lock_path = tmp_path / "cpp-x.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_WAIT, str(lock_path), "1" if use_flock else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        waiter = _lock(lock_path, use_flock, timeout=0.3)
        with pytest.raises(_ext.ExtensionUnavailable, match="timed out"):
            waiter.acquire()  # alive: waited for
    finally:
        proc.kill()
        proc.wait()
    assert lock_path.exists()  # the killed process left its file
    lock = _lock(lock_path, use_flock, timeout=5)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert lock.acquire()
    assert time.monotonic() - start < 5
    lock.release()


@pytest.mark.skipif(build.fcntl is None, reason="no fcntl")
def test_flock_waiter_retries_on_the_new_file_after_release(tmp_path):
    """The holder removes the file on release; a waiter that locked the removed file must not think it holds."""
    import threading

    lock_path = tmp_path / "cpp-x.lock"
    holder = _lock(lock_path, True, timeout=5)
    assert holder.acquire()
    waiter = _lock(lock_path, True, timeout=20)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.acquire()))
    thread.start()
    time.sleep(0.6)
    holder.release()
    thread.join(20)
    assert result == [True]
    assert os.fstat(waiter._fd).st_ino == os.stat(lock_path).st_ino  # it locks the file at the path
    third = _lock(lock_path, True, timeout=0.3)
    with pytest.raises(_ext.ExtensionUnavailable, match="timed out"):
        third.acquire()
    waiter.release()
    assert not lock_path.exists()


@pytest.mark.parametrize("text", ["", "not json {", "[1, 2]", "5", '"str"', '{"pid": "x", "time": "soon"}', "\xff\xfe"])
def test_unreadable_lock_contents_fall_back_to_mtime(tmp_path, text):
    """Invalid, non-object or half-written JSON neither crashes nor counts as stale at once: the file's age decides."""
    lock_path = tmp_path / "cpp-x.lock"
    lock_path.write_bytes(text.encode("latin-1"))
    stale, why = build.lock_is_stale(lock_path, stale_after=3600)
    assert not stale, why  # just created: someone may be writing it
    old = time.time() - 60
    os.utime(lock_path, (old, old))
    stale, why = build.lock_is_stale(lock_path, stale_after=3600)
    assert stale and "unreadable" in why  # no owner after 30 s: its builder died before writing it
    old = time.time() - 7200
    os.utime(lock_path, (old, old))
    stale, why = build.lock_is_stale(lock_path, stale_after=3600)
    assert stale and "older than" in why


def test_breaking_a_stale_lock_never_deletes_a_fresh_one(tmp_path):
    """Lock-file protocol race: between judging a lock stale and removing it, another waiter may have broken it and
    taken a fresh lock. The break renames the file aside, sees it is not the one judged stale, and hands it back."""
    lock_path = tmp_path / "cpp-x.lock"
    _write_lock(lock_path, _dead_pid())
    judged = lock_path.read_bytes(), lock_path.stat()
    assert build.lock_is_stale(lock_path)[0]
    # ... meanwhile another waiter breaks the stale lock and takes the lock:
    other = _lock(lock_path, False, timeout=5)
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert other.acquire()
    fresh = lock_path.read_bytes()
    # ... and only now does our break of the (old) stale lock run:
    waiter = _lock(lock_path, False, timeout=0.3)
    waiter._break(judged[0], judged[1], "its process is gone")
    assert lock_path.read_bytes() == fresh  # the other waiter's lock is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpp-x.lock"]
    with pytest.raises(_ext.ExtensionUnavailable, match="timed out"):
        waiter.acquire()
    other.release()
    assert not lock_path.exists()


def test_waiting_stops_when_other_build_finishes(tmp_path):
    lock_path = tmp_path / "cpp-x.lock"
    holder = build.BuildLock(lock_path, timeout=5)
    assert holder.acquire()
    lock = build.BuildLock(lock_path, timeout=30)
    assert lock.acquire(done=lambda: True) is False
    holder.release()


@pytest.fixture
def isolated_build(monkeypatch, tmp_path):
    """Runs the loader against a scratch cache and forgets its in-process state afterwards."""
    saved = (dict(build._modules), dict(build._failures), dict(build._status))
    monkeypatch.setenv(build.ENV_EXT_DIR, str(tmp_path / "cache"))
    build._modules.clear()
    build._failures.clear()
    build._status.clear()
    yield tmp_path
    build._modules.clear()
    build._failures.clear()
    build._status.clear()
    build._modules.update(saved[0])
    build._failures.update(saved[1])
    build._status.update(saved[2])


def test_failed_build_warns_once_and_raises(monkeypatch, isolated_build):
    if build._toolchain_problem("cpp"):
        pytest.skip(f"no toolchain: {build._toolchain_problem('cpp')}")
    src = isolated_build / "broken"
    (src / "include").mkdir(parents=True)
    (src / "bindings.cpp").write_text("#error nerfaccel-test-broken-source\n")
    (src / "csrc").mkdir()
    (src / "csrc" / "grid.cpp").write_text("#error nerfaccel-test-broken-source\n")
    monkeypatch.setattr(build, "source_dir", lambda: src)
    monkeypatch.setattr(build, "_prebuilt", lambda kind: None)
    with pytest.warns(RuntimeWarning, match="full log") as record:
        with pytest.raises(_ext.ExtensionUnavailable) as err:
            build.get_module("cpp")
    assert len([w for w in record if "full log" in str(w.message)]) == 1
    log = Path(str(err.value).split("full log: ")[1].split()[0])
    assert log.is_file() and "nerfaccel-test-broken-source" in log.read_text()
    assert "failed" in _ext.build_status("cpp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second attempt must not warn again (nor rebuild)
        with pytest.raises(_ext.ExtensionUnavailable):
            _ext.load_backend("cpp")
    assert not list((isolated_build / "cache").glob("*.lock"))  # the lock was released


def test_missing_toolchain_is_explained(monkeypatch, isolated_build):
    monkeypatch.setenv("CXX", "definitely-not-a-compiler-xyz")
    monkeypatch.setattr(build, "_prebuilt", lambda kind: None)
    with pytest.raises(_ext.ExtensionUnavailable, match="no C\\+\\+ compiler"):
        build.get_module("cpp")


def test_dispatch_falls_back_to_torch_when_extension_fails(monkeypatch, reset_backend):
    from nerfaccel_plugin import _torch_impl

    def fail(kind):
        raise _ext.ExtensionUnavailable(f"{kind}: simulated failure")

    monkeypatch.delenv("NERFACCEL_BACKEND", raising=False)
    monkeypatch.setattr(_ext, "load_backend", fail)
    with pytest.warns(RuntimeWarning, match="simulated failure"):
        op = reset_backend.get_op("_render_weight_from_alpha", "cpu")
    assert op is _torch_impl._render_weight_from_alpha
    alphas = torch.rand(6)
    w, _ = op(alphas, torch.tensor([[0, 6]]))
    assert w.shape == (6,)


def test_cli_reports_failure(monkeypatch, capsys, isolated_build):
    monkeypatch.setenv("CXX", "definitely-not-a-compiler-xyz")
    from nerfaccel_plugin._ext import cli

    assert cli.main(["--cpu", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "cpp" in out and "FAILED" in out and "compiler" in out


# ---------------------------------------------------------------------------------------------
# Interrupted and failed builds, toolchain in the key, forced backends
# ---------------------------------------------------------------------------------------------
def _fake_old_torch_load(calls: list):
    """cpp_extension.load as torch <= 2.5 does it: the existence of <build_directory>/lock is the lock (FileBaton),
    waited on without a timeout. Raises instead of hanging, so the test fails rather than blocks."""
    from torch.utils.file_baton import FileBaton

    def load(**kwargs):
        baton = FileBaton(os.path.join(kwargs["build_directory"], "lock"))
        if not baton.try_acquire():
            raise AssertionError("torch <= 2.5 would wait forever here on the leftover <dir>/lock")
        try:
            calls.append(sorted(os.listdir(kwargs["build_directory"])))
        finally:
            baton.release()

    return load


def test_build_killed_midway_does_not_hang_the_next_one(monkeypatch, isolated_build):
    """A build killed inside cpp_extension.load leaves <dir>/lock and objects, and no COMPLETE: the next build starts
    from an empty directory instead of waiting forever on that lock (torch <= 2.5) or trusting the objects."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(build, "_toolchain_problem", lambda kind: None)
    calls: list = []
    monkeypatch.setattr(cpp_extension, "load", _fake_old_torch_load(calls))
    directory = build.build_dir("cpp")
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")  # torch's own lock, left by the killed build
    (directory / "cpu_ops.o").write_text("half-written object")
    out = build.compile_extension("cpp", quiet=True)
    assert out == directory
    assert calls == [["lock"]]  # the build ran, in a directory holding nothing but its own (new) lock
    assert (directory / "COMPLETE").is_file()
    assert not (directory / "lock").exists() and not (directory / "cpu_ops.o").exists()
    assert not list(directory.parent.glob("*.lock"))


def test_failed_build_is_remembered_across_processes(monkeypatch, isolated_build):
    """A FAILED marker (with the log's path) stops later processes from rebuilding; they explain once and fall
    back. `nerfaccel-build --force` retries."""
    if build._toolchain_problem("cpp"):
        pytest.skip(f"no toolchain: {build._toolchain_problem('cpp')}")
    src = isolated_build / "broken"
    (src / "include").mkdir(parents=True)
    (src / "bindings.cpp").write_text("#error nerfaccel-test-broken-source\n")
    (src / "csrc").mkdir()
    (src / "csrc" / "grid.cpp").write_text("#error nerfaccel-test-broken-source\n")
    monkeypatch.setattr(build, "source_dir", lambda: src)
    monkeypatch.setattr(build, "_prebuilt", lambda kind: None)
    flags, key = list(build.LD_FLAGS), build.jit_key("cpp")
    with pytest.warns(RuntimeWarning, match="full log"):
        with pytest.raises(_ext.ExtensionUnavailable):
            build.get_module("cpp")
    # cpp_extension.load appends to the ldflags list it gets: it must not be ours (the key would change)
    assert build.LD_FLAGS == flags and build.jit_key("cpp") == key
    directory = build.build_dir("cpp")
    marker = json.loads((directory / "FAILED").read_text())
    assert Path(marker["log"]) == directory / "build.log" and "nerfaccel-test-broken-source" in marker["error"]
    assert "nerfaccel-test-broken-source" in (directory / "build.log").read_text()

    # A later process: no new compilation, one warning with the log's path, then the fallback.
    script = (
        "import sys, warnings\n"
        "from pathlib import Path\n"
        "from nerfaccel_plugin._ext import build, ExtensionUnavailable\n"
        f"build.source_dir = lambda: Path({str(src)!r})\n"
        "build._prebuilt = lambda kind: None\n"
        "def rebuild(*a, **k): sys.exit('rebuilt although an earlier build failed')\n"
        "build._run_build = rebuild\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(2):\n"
        "        try:\n"
        "            build.get_module('cpp')\n"
        "        except ExtensionUnavailable as err:\n"
        "            reason = err.reason\n"
        "print(len([x for x in w if 'earlier run' in str(x.message)]))\n"
        "print(reason)\n"
    )
    env = {**os.environ, build.ENV_EXT_DIR: os.environ[build.ENV_EXT_DIR]}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    n_warnings, reason = out.stdout.strip().splitlines()
    assert n_warnings == "1"
    assert "earlier run" in reason and str(directory / "build.log") in reason and "--force" in reason

    from nerfaccel_plugin._ext import cli

    monkeypatch.setattr(build, "_run_build", lambda *a, **k: pytest.fail("rebuilt without --force"))
    assert cli.main(["--cpu", "--quiet"]) == 1
    calls: list = []
    monkeypatch.setattr(build, "_run_build", lambda *a, **k: calls.append(a))
    assert cli.main(["--cpu", "--quiet", "--force"]) == 0  # forced: retried (here: a build that succeeds)
    assert len(calls) == 1
    assert (directory / "COMPLETE").is_file() and not (directory / "FAILED").exists()


def test_cache_key_tracks_the_toolchain(monkeypatch, tmp_path):
    """The lazy-build cache is keyed by the compilers' --version and CUDA_HOME (run once per process); the identity
    of a prebuilt binary is not (it must survive a compiler upgrade)."""
    src = tmp_path / "src"
    (src / "include" / "nerfaccel").mkdir(parents=True)
    for name in ["bindings.cpp", "csrc/grid.cpp", "cpu/grid_cpu.cpp", "gpu/grid.cu", "include/nerfaccel/grid.h"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("// v1\n")
    versions = {"c++": "g++ (GCC) 12.2.0", "nvcc": "Cuda compilation tools, release 12.4"}
    calls: list[str] = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd[0])
        name = "nvcc" if cmd[0].endswith("nvcc") else "c++"
        return subprocess.CompletedProcess(cmd, 0, stdout=versions[name], stderr="")

    monkeypatch.setattr(ext_keys.subprocess, "run", fake_run)
    monkeypatch.setattr(ext_keys, "_tool_versions", {})
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("CUDA_HOME", "/opt/cuda-a")
    keys = {kind: build.cache_key(kind, root=src, arch="9.0", toolchain=True) for kind in ("cpp", "cuda")}
    plain = {kind: build.cache_key(kind, root=src, arch="9.0") for kind in ("cpp", "cuda")}
    assert build.cache_key("cpp", root=src, toolchain=True) == keys["cpp"]
    assert len(calls) == 2  # one --version per compiler, however often the key is computed
    monkeypatch.setattr(ext_keys, "_tool_versions", {})
    versions["c++"] = "g++ (GCC) 13.1.0"
    assert build.cache_key("cpp", root=src, toolchain=True) != keys["cpp"]
    assert build.cache_key("cpp", root=src) == plain["cpp"]
    versions["c++"] = "g++ (GCC) 12.2.0"
    versions["nvcc"] = "Cuda compilation tools, release 12.8"
    monkeypatch.setattr(ext_keys, "_tool_versions", {})
    assert build.cache_key("cuda", root=src, arch="9.0", toolchain=True) != keys["cuda"]
    versions["nvcc"] = "Cuda compilation tools, release 12.4"
    assert build.cache_key("cuda", root=src, arch="9.0", toolchain=True) != keys["cuda"]  # (still cached: 12.8)
    monkeypatch.setattr(ext_keys, "_tool_versions", {})
    assert build.cache_key("cuda", root=src, arch="9.0", toolchain=True) == keys["cuda"]
    monkeypatch.setenv("CUDA_HOME", "/opt/cuda-b")
    assert build.cache_key("cuda", root=src, arch="9.0", toolchain=True) != keys["cuda"]
    assert build.cache_key("cuda", root=src, arch="9.0") == plain["cuda"]
    assert build.cache_key("cpp", root=src, toolchain=True) == keys["cpp"]  # CUDA_HOME does not matter for the CPU


def test_forced_backend_without_the_primitive_is_an_error(monkeypatch, reset_backend):
    """NERFACCEL_BACKEND=cpp|cuda never falls back silently, also not per op."""
    from nerfaccel_plugin import _ops, _torch_impl

    monkeypatch.setattr(reset_backend, "_load_extension", lambda kind: None)
    monkeypatch.setattr(reset_backend, "_has_kernel", lambda op, device_type: op == "scan_fwd")
    monkeypatch.setenv("NERFACCEL_BACKEND", "cpp")
    assert reset_backend.get_op("_inclusive_sum", "cpu") is _ops._inclusive_sum
    with pytest.raises(reset_backend.BackendError, match="no cpu kernel for 'searchsorted'"):
        reset_backend.get_op("_searchsorted", "cpu")
    monkeypatch.delenv("NERFACCEL_BACKEND")
    assert reset_backend.get_op("_searchsorted", "cpu") is _torch_impl._searchsorted  # auto: per-op fallback
