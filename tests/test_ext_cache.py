"""A damaged extension cache never kills a process: it is detected before loading, rebuilt once, or explained.

Each case copies a real build into a scratch ``NERFACCEL_EXT_DIR``, damages it (truncated, empty, random bytes,
overwritten with the right size, an old marker without a hash) and loads it in a fresh process. The rebuild in
those processes is the real code path up to the compiler: ``_run_build`` is replaced by a copy of the good module
file (compiling takes a minute); everything else (the COMPLETE record, the lock, the checks, the import) is real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nerfaccel_plugin import _ext
from nerfaccel_plugin._ext import build


@pytest.fixture(scope="module")
def good_build() -> tuple[Path, str]:
    """The directory and key of a real, verified CPU build (built or found in the session's cache)."""
    if build._toolchain_problem("cpp"):
        pytest.skip(f"no toolchain: {build._toolchain_problem('cpp')}")
    try:
        module = build.get_module("cpp")
    except _ext.ExtensionUnavailable as err:
        pytest.skip(f"the cpp extension is unavailable here: {err}")
    path = Path(module.__file__)
    if path.parent.name.startswith("cpp-"):
        return path.parent, path.parent.name.split("-", 1)[1]
    pytest.skip("the cpp extension is prebuilt into the package, not cached")


def _scratch_cache(tmp_path: Path, good: tuple[Path, str]) -> tuple[Path, Path, Path]:
    """A copy of the good build in a scratch cache; returns (cache root, build dir, module file)."""
    directory, key = good
    root = tmp_path / "cache"
    copy = root / directory.name
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("*.o", "*.ninja*", ".ninja*", "lock"))
    module = build._module_file(copy, build.module_name("cpp", key))
    assert module is not None and build.check_cached(copy, module.name.split(".")[0])[0] == module
    return root, copy, module


_LOAD = """
import sys, shutil, warnings
from pathlib import Path
warnings.simplefilter("always")
from nerfaccel_plugin._ext import build, ExtensionUnavailable
good, mode = Path(sys.argv[1]), sys.argv[2]
calls = []
def fake_build(kind, key, arch, directory, name, quiet):
    calls.append(kind)
    if mode == "fail":
        raise ExtensionUnavailable("building the cpp extension failed (simulated compiler error); full log: x")
    shutil.copy(good, directory / good.name)
build._run_build = fake_build
try:
    module = build.get_module("cpp")
    print("LOADED", module.source_hash)
except ExtensionUnavailable as err:
    print("UNAVAILABLE", err.reason)
print("BUILDS", len(calls))
print("STATUS", build.status("cpp"))
"""


def _load_in_child(root: Path, good_file: Path, mode: str = "copy") -> subprocess.CompletedProcess:
    env = {**os.environ, build.ENV_EXT_DIR: str(root)}
    return subprocess.run(
        [sys.executable, "-c", _LOAD, str(good_file), mode], capture_output=True, text=True, env=env, timeout=600
    )


def _damage(module: Path, how: str) -> None:
    data = module.read_bytes()
    if how == "truncated":
        module.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        module.write_bytes(b"")
    elif how == "random":
        module.write_bytes(os.urandom(len(data)))
    elif how == "same-size-overwrite":
        module.write_bytes(data[:4096] + bytes(len(data) - 4096))
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "empty", "random", "same-size-overwrite"])
def test_damaged_cached_module_is_rebuilt_not_loaded(tmp_path, good_build, how):
    """The COMPLETE marker records size and SHA-256; a file that differs is rebuilt once, never mapped (a truncated
    .so mapped by dlopen killed every process with SIGBUS)."""
    root, directory, module = _scratch_cache(tmp_path, good_build)
    good = tmp_path / module.name
    shutil.copy(module, good)
    _damage(module, how)
    out = _load_in_child(root, good)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert f"LOADED {good_build[1]}" in out.stdout and "BUILDS 1" in out.stdout, out.stdout + out.stderr
    assert "STATUS rebuilt" in out.stdout
    assert "is damaged" in out.stderr and str(module) in out.stderr
    assert build.check_cached(directory, module.name.split(".")[0])[0] is not None  # healthy again, recorded


def test_failed_rebuild_falls_back_with_one_warning(tmp_path, good_build):
    root, _, module = _scratch_cache(tmp_path, good_build)
    _damage(module, "truncated")
    out = _load_in_child(root, module, mode="fail")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "UNAVAILABLE" in out.stdout and "BUILDS 1" in out.stdout
    assert out.stderr.count("Falling back to the pure-PyTorch backend") == 1, out.stderr


def test_marker_without_hash_is_probed_in_a_child(tmp_path, good_build):
    """A COMPLETE written by an older nerfaccel (no size, no hash): a truncated module is caught by importing it in
    a child process (which may die; this one does not); a good one is used and its marker upgraded."""
    root, directory, module = _scratch_cache(tmp_path, good_build)
    marker = directory / "COMPLETE"
    legacy = {k: v for k, v in json.loads(marker.read_text()).items() if k not in ("size", "sha256", "file")}
    marker.write_text(json.dumps(legacy))
    good = tmp_path / module.name
    shutil.copy(module, good)
    out = _load_in_child(root, good)
    assert out.returncode == 0 and "BUILDS 0" in out.stdout and "STATUS cached" in out.stdout, out.stdout + out.stderr
    assert "sha256" in json.loads(marker.read_text())  # upgraded
    marker.write_text(json.dumps(legacy))
    _damage(module, "truncated")
    out = _load_in_child(root, good)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BUILDS 1" in out.stdout and f"LOADED {good_build[1]}" in out.stdout, out.stdout + out.stderr


def test_module_that_is_not_this_build_is_refused(tmp_path, good_build):
    """A file that passes the size and hash check but is not the build of this key is refused before use: under
    another name it lacks the module's init symbol (dlopen fails cleanly), and its `source_hash` must be the key."""
    root, directory, module = _scratch_cache(tmp_path, good_build)
    key = good_build[1]
    other = root / f"cpp-{'0' * 16}"
    other.mkdir()
    name = build.module_name("cpp", "0" * 16)
    shutil.copy(module, other / f"{name}.so")
    build._write_complete(other, other / f"{name}.so", key="0" * 16, arch=None)
    path, why = build.check_cached(other, name)
    assert path is not None and why is None  # the file itself is intact
    loaded, why = build._load_verified(name, path, "0" * 16)
    assert loaded is None and "cannot be loaded" in why and "PyInit" in why
    loaded, why = build._load_verified(build.module_name("cpp", key), module, "f" * 16)
    assert loaded is None and f"built for key {key}" in why


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_cli_check_reports_damage_without_crashing(tmp_path, good_build, how):
    root, directory, module = _scratch_cache(tmp_path, good_build)
    env = {**os.environ, build.ENV_EXT_DIR: str(root)}
    cmd = [sys.executable, "-m", "nerfaccel_plugin._ext.cli", "--check", "--cpu"]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0 and "cpp : ok" in ok.stdout, ok.stdout + ok.stderr
    _damage(module, how)
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "DAMAGED" in bad.stdout and str(module) in bad.stdout and "nerfaccel-build --cpu" in bad.stdout


def test_cli_build_rebuilds_a_damaged_cache(monkeypatch, tmp_path, good_build, capsys):
    """Plain `nerfaccel-build` no longer reports a damaged build as cached: it rebuilds it."""
    root, directory, module = _scratch_cache(tmp_path, good_build)
    good = tmp_path / module.name
    shutil.copy(module, good)
    _damage(module, "truncated")
    monkeypatch.setenv(build.ENV_EXT_DIR, str(root))
    calls: list = []

    def fake_build(kind, key, arch, d, name, quiet):
        calls.append(kind)
        shutil.copy(good, d / good.name)

    monkeypatch.setattr(build, "_run_build", fake_build)
    from nerfaccel_plugin._ext import cli

    assert cli.main(["--cpu", "--quiet"]) == 0
    assert calls == ["cpp"]
    assert build.check_cached(directory, module.name.split(".")[0])[0] == module


def test_loading_a_cached_build_does_not_import_the_compiler_machinery(tmp_path, good_build):
    """A verified cached build loads without torch.utils.cpp_extension (slow to import, and its CUDA-home probe
    printed "No CUDA runtime is found" on every run of a machine without a GPU)."""
    root, _, _ = _scratch_cache(tmp_path, good_build)
    code = (
        "import sys\n"
        "from nerfaccel_plugin._ext import build\n"
        "build.get_module('cpp')\n"
        "print(build.status('cpp'), 'torch.utils.cpp_extension' in sys.modules)\n"
    )
    env = {**os.environ, build.ENV_EXT_DIR: str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "cached" and out.stdout.split()[-1] == "False", out.stdout
    assert "No CUDA runtime" not in out.stderr
