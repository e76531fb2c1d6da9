"""Runs written before the model config was split into parts, and before the Nerfstudio glue moved to
``nerfaccel_plugin.ns``, still load.

The fixture under ``tests/fixtures/old_layout/`` was written by commit 5033a15 (``make_fixture.py`` there regenerates
it): its ``config.yml`` names ``nerfaccel_plugin.models.nerfaccel_model.NerfaccelModelConfig`` (a flat config of 54
options with ``field_type`` / ``sampler`` / ``contraction`` switches), ``nerfaccel_plugin.method_configs._common``,
``nerfaccel_plugin.dataparsers.blender`` and ``nerfaccel_plugin.ns_compat``, and its checkpoint holds that run's
weights and occupancy grid after 8 CPU steps on the embedded scene.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

FIXTURE = Path(__file__).parent / "fixtures" / "old_layout"
CKPT = "step-000000007.ckpt"


def _old_run(tmp: Path) -> Path:
    """The fixture as a run folder under ``tmp`` (its paths pointed there); returns its config.yml."""
    text = (FIXTURE / "config.yml").read_text().replace("@RUN@", str(tmp))
    run = tmp / "outputs" / "nerfaccel-scene" / "nerfaccel-lego" / "old"
    (run / "nerfstudio_models").mkdir(parents=True)
    shutil.copyfile(FIXTURE / CKPT, run / "nerfstudio_models" / CKPT)
    (run / "config.yml").write_text(text)
    return run / "config.yml"


def test_fixture_is_the_old_layout():
    text = (FIXTURE / "config.yml").read_text()
    assert "!!python/object:nerfaccel_plugin.models.nerfaccel_model.NerfaccelModelConfig" in text
    assert "!!python/object:nerfaccel_plugin.method_configs._common.NerfaccelTrainerConfig" in text
    assert "field_type: hash" in text and "sampler: occupancy" in text and "occ_update_every: 2" in text
    assert (FIXTURE / CKPT).stat().st_size < 2 << 20


def test_old_flat_config_becomes_the_parts(tmp_path):
    from nerfaccel_plugin.ns.models import HashFieldConfig, NerfaccelModelConfig, OccupancySamplerConfig
    from nerfaccel_plugin.ns.trainer import NerfaccelTrainerConfig

    config = yaml.load(_old_run(tmp_path).read_text(), Loader=yaml.Loader)
    assert isinstance(config, NerfaccelTrainerConfig)
    model = config.pipeline.model
    assert type(model) is NerfaccelModelConfig
    assert type(model.field) is HashFieldConfig and type(model.sampler) is OccupancySamplerConfig
    assert (model.field.num_levels, model.field.max_res, model.field.log2_hashmap_size) == (2, 32, 10)
    assert (model.field.hidden_dim, model.field.contraction, model.field.hash_implementation) == (16, "none", "auto")
    assert (model.sampler.grid_resolution, model.sampler.update_every, model.sampler.warmup_steps) == (16, 2, 4)
    assert (model.sampler.samples_per_diagonal, model.sampler.eval_march_steps) == (256, 64)
    assert (model.compute_lpips, model.background_color, model.eval_num_rays_per_chunk) == (False, "random", 4096)
    for old in ("field_type", "occ_update_every", "num_proposal_samples", "mlp_num_layers", "contraction"):
        assert old not in vars(model)
    model.validate()
    # written again, it is the new layout and reads back the same
    again = yaml.load(yaml.dump(config), Loader=yaml.Loader)
    assert again.pipeline.model == model


def test_migration_of_each_old_part():
    from nerfaccel_plugin.ns.models import (
        MlpFieldConfig,
        NerfaccelModelConfig,
        ProposalSamplerConfig,
        TimeHashFieldConfig,
    )
    from nerfaccel_plugin.ns.models.config import migrate_flat_options

    new = migrate_flat_options({
        "field_type": "mlp", "sampler": "proposal", "contraction": "l2", "mlp_num_layers": 4,
        "mlp_original_frequencies": False, "num_proposal_samples": [32, 16], "proposal_max_res": [32, 64],
        "proposal_near_plane": 1.0, "distortion_loss_mult": 0.5, "num_levels": 3, "grid_resolution": 7,
    })  # fmt: skip
    assert new["field"] == MlpFieldConfig(num_layers=4, original_frequencies=False, contraction="l2")
    assert new["sampler"] == ProposalSamplerConfig(
        num_proposal_samples=(32, 16), max_res=(32, 64), near_plane=1.0, distortion_loss_mult=0.5
    )
    cfg = NerfaccelModelConfig.__new__(NerfaccelModelConfig)
    cfg.__setstate__({"field_type": "time-hash", "sampler": "occupancy", "occ_time_samples": 3, "contraction": "none"})
    assert cfg.field == TimeHashFieldConfig(grid_time_samples=3) and cfg.value_checks == "auto"
    with pytest.raises(ValueError, match="time-hash.*contraction 'none' only"):
        migrate_flat_options({"field_type": "time-hash", "contraction": "l2"})
    with pytest.raises(ValueError, match="unknown field_type 'grid'"):
        migrate_flat_options({"field_type": "grid"})


def test_eval_setup_loads_the_old_config_and_checkpoint(tmp_path, monkeypatch):
    """What ``ns-eval`` / ``ns-render`` / the viewer do with a run folder: the old run loads and renders."""
    from nerfstudio.utils.eval_utils import eval_setup

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the embedded scene is generated there
    monkeypatch.chdir(tmp_path)  # the dataparser's relative data/blender/lego does not exist: embedded fallback
    config_path = _old_run(tmp_path)
    config, pipeline, ckpt_path, step = eval_setup(config_path, test_mode="test")
    assert ckpt_path.name == CKPT and step == 7
    saved = torch.load(FIXTURE / CKPT, map_location="cpu")["pipeline"]
    state = pipeline.state_dict()
    assert saved and {k.removeprefix("_model.") for k in saved} <= {k.removeprefix("_model.") for k in state}
    for key, value in saved.items():
        assert torch.equal(state[key].cpu(), value.cpu()), key
    assert bool(pipeline.model.occupancy_grid.binaries.any()), "the trained grid was loaded"
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    with torch.no_grad():
        outputs = pipeline.model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (16, 16, 3) and bool(torch.isfinite(outputs["rgb"]).all())


# --- the alias finder of moved modules ---------------------------------------------------------------------------


def test_moved_modules_are_the_same_objects():
    from nerfaccel_plugin import _moved

    for old, new in _moved.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from nerfaccel_plugin.models.nerfaccel_model import NerfaccelModelConfig as old_name

    from nerfaccel_plugin.ns.models import NerfaccelModelConfig

    assert old_name is NerfaccelModelConfig
    assert _moved.new_name("nerfaccel_plugin.fields.dynamic_field") == "nerfaccel_plugin.ns.fields.dynamic_field"
    assert _moved.new_name("nerfaccel_plugin.fieldsx") is None and _moved.new_name("nerfaccel_plugin.grid") is None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("nerfaccel_plugin.models.no_such_module")


def test_old_names_in_a_fresh_interpreter():
    """The aliases work before anything imported the new modules, and resolve to one module object each."""
    code = (
        "import sys\n"
        "import nerfaccel_plugin.dataparsers.blender as old\n"
        "import nerfaccel_plugin.ns.dataparsers.blender as new\n"
        "assert old is new, (old, new)\n"
        "from nerfaccel_plugin.method_configs._common import NerfaccelTrainerConfig\n"
        "from nerfaccel_plugin.ns.trainer import NerfaccelTrainerConfig as T\n"
        "assert NerfaccelTrainerConfig is T\n"
        "import nerfaccel_plugin.ns_compat, nerfaccel_plugin.ns.compat\n"
        "assert sys.modules['nerfaccel_plugin.ns_compat'] is sys.modules['nerfaccel_plugin.ns.compat']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)


def test_the_core_imports_no_nerfstudio():
    """Only ``nerfaccel_plugin.ns`` imports nerfstudio: the nerfacc-compatible core loads without it."""
    code = (
        "import sys, importlib, pathlib\n"
        "import nerfaccel_plugin\n"
        "root = pathlib.Path(nerfaccel_plugin.__file__).parent\n"
        "core = []\n"
        "for path in sorted(root.rglob('*.py')):\n"
        "    parts = path.relative_to(root).with_suffix('').parts\n"
        "    if parts[0] in ('ns', 'method_configs') or '__pycache__' in parts:\n"
        "        continue\n"
        "    parts = parts[:-1] if parts[-1] == '__init__' else parts\n"
        "    core.append('.'.join(('nerfaccel_plugin',) + parts))\n"
        "for name in core:\n"
        "    importlib.import_module(name)\n"
        "assert len(core) > 20 and 'nerfaccel_plugin.scene.cli' in core, core\n"
        "bad = sorted(m for m in sys.modules if m == 'nerfstudio' or m.startswith('nerfstudio.'))\n"
        "assert not bad, bad[:5]\n"
        "print(len(core))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 20
