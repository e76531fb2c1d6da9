"""The registered methods' defaults, GPU and CPU variants, against what the README documents.

The registered configs are built for the machine they are imported on; :func:`method_config` builds either
variant anywhere, so both are checked here on a CPU-only machine too.
"""

from __future__ import annotations

import pytest
from nerfaccel_plugin.method_configs import method_config

from nerfaccel_plugin.ns.models import (
    HashFieldConfig,
    MlpFieldConfig,
    OccupancySamplerConfig,
    ProposalSamplerConfig,
    TimeHashFieldConfig,
)

METHODS = ["nerfaccel-lego", "nerfaccel-ngp", "nerfaccel-360", "nerfaccel-vanilla", "nerfaccel-dnerf"]


@pytest.mark.parametrize("name", METHODS)
def test_gpu_and_cpu_variants(name):
    gpu, cpu = method_config(name, "cuda"), method_config(name, "cpu")
    vanilla = name == "nerfaccel-vanilla"
    assert gpu.method_name == cpu.method_name == name
    assert (gpu.machine.device_type, cpu.machine.device_type) == ("cuda", "cpu")
    assert (gpu.mixed_precision, cpu.mixed_precision) == (True, False)
    steps = {"nerfaccel-dnerf": 30000, "nerfaccel-vanilla": 50000}.get(name, 20000)
    assert gpu.max_num_iterations == steps
    assert cpu.max_num_iterations == (2000 if vanilla else 4000)
    assert gpu.pipeline.target_num_samples == (1 << 16 if vanilla else 1 << 18)
    assert cpu.pipeline.target_num_samples == (1 << 13 if vanilla else 1 << 14)
    assert (cpu.pipeline.min_rays_per_batch, cpu.pipeline.max_rays_per_batch) == (256, 2048)
    g, c = gpu.pipeline.model, cpu.pipeline.model
    assert c.eval_num_rays_per_chunk == 4096
    assert g.background_color == "random"
    if isinstance(g.sampler, OccupancySamplerConfig):
        gs, cs = g.sampler, c.sampler
        assert (gs.update_every, gs.warmup_steps, gs.occ_thre, gs.ema_decay) == (16, 256, 0.01, 0.95)
        assert (gs.early_stop_eps, gs.eval_march_steps) == (1e-4, 64)
        assert (gs.grid_resolution, cs.grid_resolution) == (128, 64)
        assert gs.samples_per_diagonal == (500 if vanilla else 1000)
        assert cs.samples_per_diagonal == 256
    if isinstance(g.field, (HashFieldConfig, TimeHashFieldConfig)):
        assert (g.field.num_levels, g.field.max_res, g.field.log2_hashmap_size) == (16, 2048, 19)
        assert (c.field.num_levels, c.field.max_res, c.field.log2_hashmap_size) == (8, 512, 17)
    lr = gpu.optimizers["fields"]["optimizer"].lr
    assert lr == (5e-4 if vanilla else 1e-2)


def test_per_method_sampling_settings():
    lego = method_config("nerfaccel-lego", "cuda").pipeline.model
    assert type(lego.field) is HashFieldConfig and type(lego.sampler) is OccupancySamplerConfig
    assert (lego.sampler.grid_levels, lego.field.contraction, lego.sampler.cone_angle) == (1, "none", 0.0)
    ngp = method_config("nerfaccel-ngp", "cuda").pipeline.model
    assert type(ngp.field) is HashFieldConfig and type(ngp.sampler) is OccupancySamplerConfig
    assert (ngp.sampler.grid_levels, ngp.field.contraction, ngp.sampler.cone_angle) == (4, "linf", 1 / 256)
    m360 = method_config("nerfaccel-360", "cuda")
    model = m360.pipeline.model
    assert type(model.sampler) is ProposalSamplerConfig and model.field.contraction == "l2"
    assert (tuple(model.sampler.num_proposal_samples), model.sampler.num_samples) == ((256, 96), 48)
    assert "proposal_networks" in m360.optimizers
    vanilla = method_config("nerfaccel-vanilla", "cuda").pipeline.model
    assert type(vanilla.field) is MlpFieldConfig and type(vanilla.sampler) is OccupancySamplerConfig
    dnerf = method_config("nerfaccel-dnerf", "cuda").pipeline.model
    assert type(dnerf.field) is TimeHashFieldConfig and type(dnerf.sampler) is OccupancySamplerConfig
    assert dnerf.field.grid_time_samples >= 1


def test_methods_come_from_the_entry_points():
    """method_config() knows exactly the methods pyproject.toml registers (no hand-kept list)."""
    from importlib.metadata import entry_points

    from nerfaccel_plugin.ns.trainer import registered_methods

    ours = {ep.name for ep in entry_points(group="nerfstudio.method_configs") if ep.value.startswith("nerfaccel_")}
    assert set(registered_methods()) == ours == set(METHODS)
    for name in METHODS:
        assert method_config(name, "cpu").method_name == name


def _help(name: str) -> str:
    """``ns-train <name> --help`` as tyro prints it for the registered config (in-process)."""
    import contextlib
    import io

    import tyro

    config = method_config(name, "cpu")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        tyro.cli(type(config), default=config, args=["--help"])
    return out.getvalue()


# Options of each part, as the command line spells them; a method's --help lists exactly those of its parts.
PART_OPTIONS = {
    "hash": "--pipeline.model.field.log2-hashmap-size",
    "mlp": "--pipeline.model.field.position-frequencies",
    "time": "--pipeline.model.field.time-frequencies",
    "contraction": "--pipeline.model.field.contraction",
    "occupancy": "--pipeline.model.sampler.grid-resolution",
    "proposal": "--pipeline.model.sampler.num-proposal-samples",
}
PARTS = {
    "nerfaccel-lego": {"hash", "contraction", "occupancy"},
    "nerfaccel-ngp": {"hash", "contraction", "occupancy"},
    "nerfaccel-360": {"hash", "contraction", "proposal"},
    "nerfaccel-vanilla": {"mlp", "contraction", "occupancy"},
    "nerfaccel-dnerf": {"hash", "time", "occupancy"},
}


@pytest.mark.parametrize("name", METHODS)
def test_help_lists_only_the_options_of_the_method(name):
    text = _help(name)
    for part, option in PART_OPTIONS.items():
        assert (option in text) == (part in PARTS[name]), (name, option)
    # no switch between parts, none of the old flat names, and none of Nerfstudio's options that do nothing here
    for old in ("--pipeline.model.field-type", "--pipeline.model.sampler ", "--pipeline.model.mlp-", "proposal-max"):
        assert old not in text
    for unused in ("enable-collider", "collider-params", "loss-coefficients"):
        assert f"--pipeline.model.{unused}" not in text, unused


def test_configs_are_independent_copies():
    """Changing a built config touches neither the registered one nor the next one built."""
    from nerfaccel_plugin.method_configs.lego import nerfaccel_lego

    registered = nerfaccel_lego.config.pipeline.model.sampler.grid_resolution
    cfg = method_config("nerfaccel-lego", "cpu")
    cfg.pipeline.model.sampler.grid_resolution = 7
    cfg.pipeline.datamanager.dataparser.scale_factor = 3.0
    again = method_config("nerfaccel-lego", "cpu")
    assert again.pipeline.model.sampler.grid_resolution == 64
    assert again.pipeline.datamanager.dataparser.scale_factor != 3.0
    assert nerfaccel_lego.config.pipeline.model.sampler.grid_resolution == registered


def test_default_variant_follows_the_machine():
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert method_config("nerfaccel-lego").machine.device_type == expected


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown method 'nerfaccel-nope'.*nerfaccel-lego"):
        method_config("nerfaccel-nope")
    with pytest.raises(ValueError, match="device_type must be 'cuda', 'cpu' or None"):
        method_config("nerfaccel-lego", "mps")  # type: ignore[arg-type]
