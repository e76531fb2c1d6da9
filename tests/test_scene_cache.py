"""The scene cache (``get_scene``) and the ``nerfaccel-scene`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerfaccel_plugin.scene import cache as cache_mod
from nerfaccel_plugin.scene import cli, get_scene
from nerfaccel_plugin.scene.cache import cache_root, ensure_scene, scene_name
from nerfaccel_plugin.scene.writer import MANIFEST, SceneSpec, check_complete, generate_scene

SMALL = {"resolution": 20, "views": 5}
GENERATING = "Generating the embedded brick scene"


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    return root


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".old-")))


def test_cache_root_respects_xdg(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "nerfaccel" / "scenes"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "nerfaccel" / "scenes"


def test_get_scene_generates_once_then_reuses(xdg: Path, capsys, monkeypatch) -> None:
    path = get_scene(**SMALL)
    assert path.parent == xdg / "nerfaccel" / "scenes"
    assert check_complete(path, SceneSpec(**SMALL))
    for split in ("train", "val", "test"):
        assert (path / f"transforms_{split}.json").exists()
    err = capsys.readouterr().err
    assert err.count(GENERATING) == 1 and len(err.strip().splitlines()) == 1

    def boom(*args, **kwargs):
        raise AssertionError("must not regenerate a complete scene")

    monkeypatch.setattr(cache_mod, "generate_scene", boom)
    assert get_scene(**SMALL) == path
    assert capsys.readouterr().err == ""
    # different options live in different folders
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    dyn = get_scene(dynamic=True, **SMALL)
    assert dyn != path and check_complete(dyn, SceneSpec(dynamic=True, **SMALL))
    assert json.loads((dyn / "transforms_train.json").read_text())["frames"][0]["time"] == 0.0


def test_get_scene_regenerates_corrupted_copy(xdg: Path, capsys) -> None:
    path = get_scene(**SMALL)
    good = (path / "train" / "r_2.png").read_bytes()
    (path / "train" / "r_2.png").write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert get_scene(**SMALL) == path
    assert GENERATING in capsys.readouterr().err
    assert check_complete(path) and (path / "train" / "r_2.png").read_bytes() == good
    assert _leftovers(path.parent) == []


def test_get_scene_recovers_from_half_written_folders(xdg: Path) -> None:
    spec = SceneSpec(**SMALL)
    root = cache_root()
    name = scene_name(spec)
    # what a killed run could leave: a partial temporary folder of a dead process and a final folder
    # without a manifest (e.g. copied by hand)
    dead = root / f".tmp-{name}-999999999-deadbeef"
    generate_scene(dead, spec)
    (dead / MANIFEST).unlink()
    final = root / name
    final.mkdir(parents=True)
    (final / "transforms_train.json").write_text('{"camera_angle_x": 0.69, "frames": [')
    path = get_scene(**SMALL)
    assert path == final and check_complete(path, spec)
    assert _leftovers(root) == []


def test_failed_generation_leaves_no_scene(xdg: Path, monkeypatch) -> None:
    def failing(out, spec, progress=None):
        (Path(out) / "train").mkdir(parents=True)
        (Path(out) / "train" / "r_0.png").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "generate_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        get_scene(**SMALL)
    root = cache_root()
    assert not (root / scene_name(SceneSpec(**SMALL))).exists()
    assert _leftovers(root) == []
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert check_complete(get_scene(**SMALL))


def test_lost_rename_race_uses_the_winner(xdg: Path, monkeypatch) -> None:
    """Without the lock, a process that finishes second keeps the first one's complete copy."""
    spec = SceneSpec(**SMALL)
    final = cache_root() / scene_name(spec)
    monkeypatch.setattr(cache_mod, "fcntl", None)

    def racing(out, spec_, progress=None):
        generate_scene(out, spec_, progress)
        generate_scene(final, spec_)  # the other process finishes meanwhile
        (final / "winner").write_text("1")

    monkeypatch.setattr(cache_mod, "generate_scene", racing)
    assert ensure_scene(spec) == final
    assert (final / "winner").exists() and check_complete(final, spec)
    assert _leftovers(final.parent) == []


def _run_get_scene(env: dict, views: int) -> subprocess.Popen:
    code = (
        "from nerfaccel_plugin.scene import get_scene;"
        f"print('PATH', get_scene(resolution=16, views={views}), flush=True)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_processes_share_the_cache_and_survive_a_kill(xdg: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg)}
    spec = SceneSpec(resolution=16, views=300)
    root = xdg / "nerfaccel" / "scenes"
    final = root / scene_name(spec)
    # 1. kill a generator in the middle of writing
    proc = _run_get_scene(env, 300)
    deadline = time.time() + 60
    while time.time() < deadline and not any(root.glob(f".tmp-{final.name}-*/train/r_3.png")):
        time.sleep(0.05)
    assert any(root.glob(f".tmp-{final.name}-*/train/*.png")), "generator did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not final.exists()
    # 2. two processes start at once: both get the same complete folder, generated once
    small = SceneSpec(resolution=16, views=30)
    procs = [_run_get_scene(env, 30) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {line.split(" ", 1)[1] for out, _ in outs for line in out.splitlines() if line.startswith("PATH ")}
    assert paths == {str(root / scene_name(small))}
    assert sum(err.count(GENERATING) for _, err in outs) == 1
    assert check_complete(root / scene_name(small), small)
    # 3. the killed run's leftovers do not poison the cache: the next call generates and cleans up
    assert ensure_scene(spec) == final and check_complete(final, spec)
    assert _leftovers(root) == []


def test_cli_writes_dynamic_variant(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dyn"
    assert cli.main(["--out", str(out), "--dynamic", "--resolution", "24", "--views", "6", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert check_complete(out, SceneSpec(dynamic=True, resolution=24, views=6))
    counts = {"train": 6, "val": 1, "test": 1}
    for split, n in counts.items():
        frames = json.loads((out / f"transforms_{split}.json").read_text())["frames"]
        assert len(frames) == n and all("time" in f for f in frames)
        with Image.open(out / split / "r_0.png") as im:
            assert im.size == (24, 24) and im.mode == "RGBA"


def test_cli_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "static"
    args = ["--out", str(out), "--resolution", "32", "--views", "4", "--val-views", "2", "--test-views", "3"]
    assert cli.main([*args, "--seed", "3", "--supersample", "2"]) == 0
    err = capsys.readouterr().err
    assert "9/9" in err  # the progress bar reached the end
    spec = SceneSpec(resolution=32, views=4, val_views=2, test_views=3, seed=3, supersample=2)
    assert check_complete(out, spec)
    frames = {s: json.loads((out / f"transforms_{s}.json").read_text())["frames"] for s in ("train", "val", "test")}
    assert [len(f) for f in frames.values()] == [4, 2, 3]
    assert not any("time" in f for f in frames["train"])
    alpha = np.concatenate([np.asarray(Image.open(p))[..., 3].ravel() for p in (out / "train").glob("*.png")])
    assert ((alpha > 0) & (alpha < 255)).any()  # anti-aliased edges with --supersample
    assert cli.main(["--out", str(tmp_path / "bad"), "--resolution", "2"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["--no-such-option"])


def test_cli_without_out_fills_the_cache(xdg: Path, capsys) -> None:
    assert cli.main(["--resolution", "20", "--views", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(printed) == cache_root() / scene_name(SceneSpec(**SMALL))
    assert get_scene(**SMALL) == Path(printed)


def test_console_script_is_declared() -> None:
    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "nerfaccel-scene"]
    assert len(eps) == 1 and eps[0].value == "nerfaccel_plugin.scene.cli:main"
    assert eps[0].load() is cli.main


def test_unwritable_cache_falls_back_to_temp(tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(cache_mod.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    path = get_scene(**SMALL)
    assert path.parent == tmp_path / "tmp" / f"nerfaccel-scenes-{os.getuid()}"
    assert check_complete(path, SceneSpec(**SMALL))
    err = capsys.readouterr().err
    assert "not writable" in err and GENERATING in err
