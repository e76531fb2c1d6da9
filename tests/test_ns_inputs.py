"""Bad input gives a clear error naming the file or option, before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nerfaccel_plugin.dataparsers import (
    NerfaccelBlenderDataParserConfig,
    NerfaccelDNeRFDataParserConfig,
    validate_blender_folder,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        from nerfaccel_plugin.scene import get_scene

        return Path(get_scene(resolution=16, views=5))
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old


def copy_scene(scene: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "scene"
    shutil.copytree(scene, dst)
    return dst


def test_good_folder_passes(scene: Path) -> None:
    validate_blender_folder(scene)
    outputs = NerfaccelBlenderDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    frames = json.loads((scene / "transforms_train.json").read_text())["frames"]
    assert len(outputs.image_filenames) == len(frames) > 0
    assert all(Path(f).is_file() for f in outputs.image_filenames)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist.*--data"):
        NerfaccelBlenderDataParserConfig(data=tmp_path / "does-not-exist")


def test_no_transforms_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="transforms_train.json"):
        NerfaccelBlenderDataParserConfig(data=tmp_path / "empty")


def test_unparsable_transforms(scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    (data / "transforms_val.json").write_text("{not json")
    with pytest.raises(ValueError, match="transforms_val.json"):
        validate_blender_folder(data)


def test_missing_image(scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    frame = json.loads((data / "transforms_train.json").read_text())["frames"][1]
    image = data / (frame["file_path"].replace("./", "", 1) + ".png")
    image.unlink()
    with pytest.raises(FileNotFoundError, match=image.name):
        NerfaccelBlenderDataParserConfig(data=data)


def test_unreadable_image(scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    frame = json.loads((data / "transforms_train.json").read_text())["frames"][0]
    image = data / (frame["file_path"].replace("./", "", 1) + ".png")
    image.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=f"{image.name}.*unreadable"):
        validate_blender_folder(data)
    with pytest.raises(ValueError, match=f"{image.name}.*unreadable"):
        NerfaccelBlenderDataParserConfig(data=data)


def test_truncated_image_caught_by_the_full_check(scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    frame = json.loads((data / "transforms_train.json").read_text())["frames"][2]
    image = data / (frame["file_path"].replace("./", "", 1) + ".png")
    image.write_bytes(image.read_bytes()[:-40])
    with pytest.raises(ValueError, match=f"{image.name}.*unreadable"):
        validate_blender_folder(data, check_images="full")


def test_dnerf_needs_time(scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    meta = json.loads((data / "transforms_train.json").read_text())
    for frame in meta["frames"]:
        frame.pop("time", None)
    (data / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="time"):
        NerfaccelDNeRFDataParserConfig(data=data)


def test_empty_scene_box(scene: Path) -> None:
    with pytest.raises(ValueError, match="scene-bound"):
        NerfaccelBlenderDataParserConfig(data=scene, scene_bound=0.0)


def test_cli_bad_data_writes_nothing(tmp_path: Path) -> None:
    """``ns-train`` with a folder lacking transforms fails naming the file, and writes no output folder."""
    import os
    import subprocess
    import sys

    (tmp_path / "nodata").mkdir()
    from test_ns_methods import keep_extension_cache

    env = dict(os.environ)
    keep_extension_cache(env)
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ns-train"), "nerfaccel-lego", "--vis", "tensorboard",
         "--output-dir", str(tmp_path / "out"), "nerfaccel-blender-data", "--data", str(tmp_path / "nodata")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "transforms_train.json" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()
