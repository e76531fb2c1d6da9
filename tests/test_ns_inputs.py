"""Bad input gives a clear error naming the file or option, before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nerfaccel_plugin.ns.dataparsers import (
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


# --- the image-path rule of Nerfstudio's Blender / D-NeRF parsers -------------------------------------------------


def test_image_path_mirrors_nerfstudio(scene: Path, tmp_path: Path) -> None:
    """The checks must look at the files Nerfstudio's parser loads: every "./" removed, ".png" always appended
    (``r_2.png`` is read as ``r_2.png.png``). The old rule checked ``r_2.png`` and the parser then failed."""
    from nerfstudio.data.dataparsers.blender_dataparser import Blender, BlenderDataParserConfig

    from nerfaccel_plugin.ns.dataparsers.blender import _image_path

    data = copy_scene(scene, tmp_path)
    meta = json.loads((data / "transforms_train.json").read_text())
    source = data / "train" / "r_0.png"
    variants = ["./train/r_0", "train/r_1", "./train/r_2.png", "./train/./r_3", "train/x./r_4"]
    meta["frames"] = meta["frames"][: len(variants)]
    for frame, file_path in zip(meta["frames"], variants, strict=True):
        frame["file_path"] = file_path
        target = data / Path(file_path.replace("./", "") + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy(source, target)
    (data / "transforms_train.json").write_text(json.dumps(meta))
    for split in ("val", "test"):
        (data / f"transforms_{split}.json").unlink(missing_ok=True)

    loaded = Blender(BlenderDataParserConfig(data=data))._generate_dataparser_outputs("train").image_filenames
    assert [_image_path(data, f["file_path"]) for f in meta["frames"]] == list(loaded)
    validate_blender_folder(data)  # passes: every file the parser loads is there
    (data / "train" / "r_2.png.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"r_2\.png\.png"):
        validate_blender_folder(data)


# --- nerfstudio-data (nerfaccel-ngp, nerfaccel-360) ---------------------------------------------------------------


def make_nerfstudio_folder(scene: Path, dst: Path) -> Path:
    """The embedded scene as a nerfstudio-data folder (``transforms.json`` + ``images/``, as ns-process-data)."""
    import math

    meta = json.loads((scene / "transforms_train.json").read_text())
    (dst / "images").mkdir(parents=True)
    frames = []
    for i, frame in enumerate(meta["frames"]):
        shutil.copy(scene / (frame["file_path"].replace("./", "") + ".png"), dst / "images" / f"frame_{i:05d}.png")
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": frame["transform_matrix"]})
    from PIL import Image

    with Image.open(dst / "images" / "frame_00000.png") as img:
        w, h = img.size
    focal = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
    transforms = {"fl_x": focal, "fl_y": focal, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
    (dst / "transforms.json").write_text(json.dumps(transforms))
    return dst


def test_nerfstudio_folder_good(scene: Path, tmp_path: Path) -> None:
    from nerfaccel_plugin.ns.dataparsers import NerfaccelNerfstudioDataParserConfig, validate_nerfstudio_folder

    data = make_nerfstudio_folder(scene, tmp_path / "capture")
    validate_nerfstudio_folder(data)
    validate_nerfstudio_folder(data / "transforms.json")  # the transforms file itself, as Nerfstudio accepts
    outputs = NerfaccelNerfstudioDataParserConfig(data=data).setup().get_dataparser_outputs("train")
    assert outputs.image_filenames and all(Path(f).is_file() for f in outputs.image_filenames)


def test_nerfstudio_folder_without_transforms(tmp_path: Path) -> None:
    from nerfaccel_plugin.ns.dataparsers import NerfaccelNerfstudioDataParserConfig, validate_dataparser_inputs

    (tmp_path / "nodata").mkdir()
    with pytest.raises(FileNotFoundError, match=r"transforms\.json.*ns-process-data"):
        NerfaccelNerfstudioDataParserConfig(data=tmp_path / "nodata")
    with pytest.raises(FileNotFoundError, match="does-not-exist.*--data"):
        NerfaccelNerfstudioDataParserConfig(data=tmp_path / "does-not-exist")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    with pytest.raises(FileNotFoundError, match=r"transforms\.json"):  # Nerfstudio's own config too (subcommand)
        validate_dataparser_inputs(NerfstudioDataParserConfig(), tmp_path / "nodata")


def test_nerfstudio_folder_missing_or_broken_image(scene: Path, tmp_path: Path) -> None:
    from nerfaccel_plugin.ns.dataparsers import NerfaccelNerfstudioDataParserConfig, validate_nerfstudio_folder

    data = make_nerfstudio_folder(scene, tmp_path / "capture")
    (data / "images" / "frame_00003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"frame_00003\.png \(frame 3 of"):
        NerfaccelNerfstudioDataParserConfig(data=data)  # at the command line, before the dataloader
    shutil.copy(data / "images" / "frame_00001.png", data / "images" / "frame_00003.png")
    image = data / "images" / "frame_00002.png"
    image.write_bytes(image.read_bytes()[:-40])
    NerfaccelNerfstudioDataParserConfig(data=data)  # the header is fine ...
    with pytest.raises(ValueError, match=r"frame_00002\.png.*unreadable"):
        validate_nerfstudio_folder(data, check_images="full")  # ... the full decode is not


def test_nerfstudio_folder_downscaled_images_are_checked(scene: Path, tmp_path: Path) -> None:
    """With ``--downscale-factor 2`` the parser reads ``images_2/``; the checks follow it."""
    from nerfaccel_plugin.ns.dataparsers import NerfaccelNerfstudioDataParserConfig

    data = make_nerfstudio_folder(scene, tmp_path / "capture")
    with pytest.raises(FileNotFoundError, match=r"images_2/frame_00000\.png"):
        NerfaccelNerfstudioDataParserConfig(data=data, downscale_factor=2)
    shutil.copytree(data / "images", data / "images_2")
    NerfaccelNerfstudioDataParserConfig(data=data, downscale_factor=2)


def test_nerfstudio_bad_transforms(scene: Path, tmp_path: Path) -> None:
    from nerfaccel_plugin.ns.dataparsers import validate_nerfstudio_folder

    data = make_nerfstudio_folder(scene, tmp_path / "capture")
    meta = json.loads((data / "transforms.json").read_text())
    del meta["fl_x"]
    (data / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="frame 0 has no fl_x"):
        validate_nerfstudio_folder(data)
    (data / "transforms.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"Cannot read transforms file .*transforms\.json"):
        validate_nerfstudio_folder(data)


def test_nerfstudio_empty_scene_box_names_the_option(scene: Path, tmp_path: Path) -> None:
    from nerfaccel_plugin.ns.dataparsers import NerfaccelNerfstudioDataParserConfig

    with pytest.raises(ValueError, match=r"--pipeline\.datamanager\.dataparser\.scene-scale must be > 0"):
        NerfaccelNerfstudioDataParserConfig(scene_scale=0.0)


def _main_without_training(config, monkeypatch) -> None:
    """Nerfstudio's ``ns-train`` main (print, save config, launch) with the launch replaced: nothing trains."""
    from nerfstudio.scripts import train

    def launch(**_):
        raise AssertionError("training must not start")

    monkeypatch.setattr(train, "launch", launch)
    train.main(config)


@pytest.mark.parametrize("method", ["nerfaccel-ngp", "nerfaccel-360", "nerfaccel-lego"])
def test_broken_image_found_before_anything_is_written(method: str, scene: Path, tmp_path, monkeypatch) -> None:
    """A truncated image passes the quick header check at the command line; the full decode runs before
    ``ns-train`` writes config.yml (it used to run later, in the dataparser, after the output folder existed)."""
    from nerfaccel_plugin.method_configs import method_config

    if method == "nerfaccel-lego":
        data = copy_scene(scene, tmp_path)
        image = data / "train" / "r_2.png"
    else:
        data = make_nerfstudio_folder(scene, tmp_path / "capture")
        image = data / "images" / "frame_00002.png"
    image.write_bytes(image.read_bytes()[:-40])
    cfg = method_config(method, "cpu")
    cfg.data, cfg.output_dir, cfg.vis = data, tmp_path / "out", "tensorboard"  # ns-train --data DATA
    with pytest.raises(ValueError, match=f"{image.name}.*unreadable"):
        _main_without_training(cfg, monkeypatch)
    assert not (tmp_path / "out").exists()


def test_good_data_is_checked_once(scene: Path, tmp_path, monkeypatch) -> None:
    """The full check before config.yml is the one the parser would run: it is not repeated in-process."""
    from nerfaccel_plugin.method_configs import method_config

    from nerfaccel_plugin.ns.dataparsers import blender, validate_dataparser_inputs

    data = copy_scene(scene, tmp_path)
    cfg = method_config("nerfaccel-lego", "cpu")
    calls = []
    real = blender.validate_blender_folder
    monkeypatch.setattr(blender, "validate_blender_folder", lambda *a, **k: calls.append(a) or real(*a, **k))
    validate_dataparser_inputs(cfg.pipeline.datamanager.dataparser, data)
    cfg.pipeline.datamanager.dataparser.data = data
    cfg.pipeline.datamanager.dataparser.setup().get_dataparser_outputs("train")
    assert len(calls) == 1


def test_cli_ngp_without_transforms_writes_nothing(tmp_path: Path) -> None:
    """``ns-train nerfaccel-ngp --data DIR`` on a folder without transforms.json: an error naming it, no output
    folder (Nerfstudio's ``--data`` alias bypasses the dataparser's own checks; the trainer config checks it)."""
    import os
    import subprocess
    import sys

    (tmp_path / "nodata").mkdir()
    from test_ns_methods import keep_extension_cache

    env = dict(os.environ)
    keep_extension_cache(env)
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ns-train"), "nerfaccel-ngp", "--vis", "tensorboard",
         "--output-dir", str(tmp_path / "out"), "--data", str(tmp_path / "nodata")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "transforms.json" in text and "FileNotFoundError" in text, text[-3000:]
    assert not (tmp_path / "out").exists()


# --- poses, field of view, image sizes and channels, time: checked before anything is written ----------------------


def _edit_transforms(data: Path, split: str, edit) -> None:
    path = data / f"transforms_{split}.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _frame_image(data: Path, split: str, index: int) -> Path:
    frame = json.loads((data / f"transforms_{split}.json").read_text())["frames"][index]
    return data / (frame["file_path"].replace("./", "") + ".png")


def _set(meta: dict, path: tuple, value) -> None:
    target = meta
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _resize_image(data: Path, split: str, index: int, size=None, mode=None) -> Path:
    from PIL import Image

    image = _frame_image(data, split, index)
    with Image.open(image) as img:
        out = img.convert(mode) if mode else img.copy()
    if size:
        out = out.resize(size)
    out.save(image)
    return image


def _nan_pose(d: Path) -> None:
    _edit_transforms(d, "train", lambda m: _set(m, ("frames", 2, "transform_matrix", 0, 3), float("nan")))


def _pose_3x4(d: Path) -> None:
    _edit_transforms(
        d, "train", lambda m: _set(m, ("frames", 1, "transform_matrix"), m["frames"][1]["transform_matrix"][:3])
    )


def _text_in_pose(d: Path) -> None:
    _edit_transforms(d, "train", lambda m: _set(m, ("frames", 0, "transform_matrix", 1, 1), "x"))


BAD_INPUTS = {
    # case: (edit of the copied scene, words the error must contain)
    "nan-pose": (_nan_pose, ["transforms_train.json", "frame 2", "NaN or infinite"]),
    "3x4-pose": (_pose_3x4, ["frame 1", "3x4", "[0, 0, 0, 1]"]),
    "string-pose-entry": (_text_in_pose, ["frame 0", "not numbers"]),
    "zero-fov": (
        lambda d: _edit_transforms(d, "train", lambda m: m.update(camera_angle_x=0)),
        ["transforms_train.json", "camera_angle_x", "(0, pi)"],
    ),
    "text-fov": (
        lambda d: _edit_transforms(d, "train", lambda m: m.update(camera_angle_x="wide")),
        ["transforms_train.json", "camera_angle_x", "must be a number"],
    ),
    "mixed-sizes": (lambda d: _resize_image(d, "train", 3, size=(8, 8)), ["differ in size or channels", "8x8"]),
    "mixed-channels": (
        lambda d: _resize_image(d, "train", 2, mode="RGB"),
        ["differ in size or channels", "RGB", "RGBA"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named(case: str, scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    edit, words = BAD_INPUTS[case]
    edit(data)
    with pytest.raises(ValueError) as err:
        validate_blender_folder(data)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_singular_rotation_is_not_a_pose(scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    zero = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
    _edit_transforms(data, "val", lambda m: _set(m, ("frames", 0, "transform_matrix"), zero))
    with pytest.raises(ValueError, match="transforms_val.json: frame 0 .*singular"):
        validate_blender_folder(data)


def test_mixed_sizes_name_two_files(scene: Path, tmp_path: Path) -> None:
    data = copy_scene(scene, tmp_path)
    odd = _resize_image(data, "train", 3, size=(8, 8))
    with pytest.raises(ValueError) as err:
        validate_blender_folder(data, check_images="header")
    assert str(odd) in str(err.value) and str(_frame_image(data, "train", 0)) in str(err.value)


def test_time_values_for_a_static_method_warn_once(tmp_path_factory, tmp_path: Path) -> None:
    import os
    import warnings

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-dyn"))
    try:
        from nerfaccel_plugin.scene import get_scene

        dynamic = Path(get_scene(dynamic=True, resolution=16, views=5))
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
    data = copy_scene(dynamic, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate_blender_folder(data, need_time=False, check_images="none")
        validate_blender_folder(data, need_time=False, check_images="none")
    messages = [str(w.message) for w in caught if "ignores it" in str(w.message)]
    assert len(messages) == 1 and "nerfaccel-dnerf" in messages[0]
    validate_blender_folder(data, need_time=True, check_images="none")  # the dynamic method uses them
    _edit_transforms(data, "train", lambda m: _set(m, ("frames", 1, "time"), "noon"))
    with pytest.raises(ValueError, match="frame 1 `time` must be a finite number"):
        validate_blender_folder(data, need_time=True, check_images="none")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["nan-pose", "zero-fov", "text-fov", "3x4-pose", "mixed-sizes", "mixed-channels"])
def test_cli_bad_input_stops_before_config_is_written(case: str, scene: Path, tmp_path: Path) -> None:
    """The real ``ns-train`` with ``--data``: the error names the problem, and no run folder (no config.yml)."""
    import os
    import subprocess
    import sys

    from test_ns_methods import keep_extension_cache

    data = copy_scene(scene, tmp_path)
    edit, words = BAD_INPUTS[case]
    edit(data)
    env = dict(os.environ)
    keep_extension_cache(env)
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ns-train"), "nerfaccel-lego", "--vis", "tensorboard",
         "--output-dir", str(tmp_path / "out"), "--data", str(data)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    for word in words:
        assert word in proc.stdout + proc.stderr, (word, proc.stderr[-3000:])
    assert not list(tmp_path.glob("out/**/config.yml")) and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_dnerf_without_time_stops_before_config_is_written(scene: Path, tmp_path: Path) -> None:
    """A static folder (no `time`) given to the dynamic method: an error naming the file, nothing written."""
    import os
    import subprocess
    import sys

    from test_ns_methods import keep_extension_cache

    env = dict(os.environ)
    keep_extension_cache(env)
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ns-train"), "nerfaccel-dnerf", "--vis", "tensorboard",
         "--output-dir", str(tmp_path / "out"), "--data", str(scene)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "has no `time`" in proc.stdout + proc.stderr and "transforms_train.json" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()
