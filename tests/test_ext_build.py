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
    for name in ["bindings.cpp", "cpu_ops.cpp", "cuda_ops.cu", "include/nerfaccel/math.h"]:
        (src / name).write_text("// v1\n")
    key = build.cache_key("cpp", root=src)
    assert key == build.cache_key("cpp", root=src)
    (src / "include" / "nerfaccel" / "math.h").write_text("// v2\n")
    assert build.cache_key("cpp", root=src) != key
    assert build.cache_key("cuda", root=src, arch="8.6") != build.cache_key("cuda", root=src, arch="9.0")


def _write_lock(path: Path, pid: int, age: float = 0.0, host: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "time": time.time() - age}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_from_dead_process_is_cleared(tmp_path):
    lock_path = tmp_path / "cpp-x.lock"
    _write_lock(lock_path, _dead_pid())
    assert build.lock_is_stale(lock_path)[0]
    lock = build.BuildLock(lock_path, timeout=5)
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert lock.acquire()
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_path.exists()


def test_old_lock_is_cleared_even_if_pid_alive(tmp_path):
    lock_path = tmp_path / "cpp-x.lock"
    _write_lock(lock_path, os.getpid(), age=7200)
    lock = build.BuildLock(lock_path, timeout=5, stale_after=3600)
    with pytest.warns(RuntimeWarning, match="older than"):
        assert lock.acquire()
    lock.release()


def test_live_lock_times_out_instead_of_hanging(tmp_path):
    lock_path = tmp_path / "cpp-x.lock"
    _write_lock(lock_path, os.getpid())  # held by a live process (this one)
    lock = build.BuildLock(lock_path, timeout=0.5, stale_after=3600)
    start = time.monotonic()
    with pytest.raises(_ext.ExtensionUnavailable, match="timed out"):
        lock.acquire()
    assert time.monotonic() - start < 30
    assert lock_path.exists()  # someone else's lock is left alone


def test_waiting_stops_when_other_build_finishes(tmp_path):
    lock_path = tmp_path / "cpp-x.lock"
    _write_lock(lock_path, os.getpid())
    lock = build.BuildLock(lock_path, timeout=30)
    assert lock.acquire(done=lambda: True) is False


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
    (src / "cpu_ops.cpp").write_text("#error nerfaccel-test-broken-source\n")
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
