"""The registered methods' defaults, GPU and CPU variants, against what the README documents.

The registered configs are built for the machine they are imported on; :func:`method_config` builds either
variant anywhere, so both are checked here on a CPU-only machine too.
"""

from __future__ import annotations

import pytest
from nerfaccel_plugin.method_configs import method_config

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
    assert (g.occ_update_every, g.occ_warmup_steps, g.occ_thre, g.occ_ema_decay) == (16, 256, 0.01, 0.95)
    assert (g.early_stop_eps, g.eval_march_steps, g.background_color) == (1e-4, 64, "random")
    if g.sampler == "occupancy":
        assert (g.grid_resolution, c.grid_resolution) == (128, 64)
        assert g.samples_per_diagonal == (500 if vanilla else 1000)
        assert c.samples_per_diagonal == 256
    if g.field_type in ("hash", "time-hash"):
        assert (g.num_levels, g.max_res, g.log2_hashmap_size) == (16, 2048, 19)
        assert (c.num_levels, c.max_res, c.log2_hashmap_size) == (8, 512, 17)
    lr = gpu.optimizers["fields"]["optimizer"].lr
    assert lr == (5e-4 if vanilla else 1e-2)


def test_per_method_sampling_settings():
    lego = method_config("nerfaccel-lego", "cuda").pipeline.model
    assert (lego.sampler, lego.grid_levels, lego.contraction, lego.cone_angle) == ("occupancy", 1, "none", 0.0)
    ngp = method_config("nerfaccel-ngp", "cuda").pipeline.model
    assert (ngp.sampler, ngp.grid_levels, ngp.contraction, ngp.cone_angle) == ("occupancy", 4, "linf", 1 / 256)
    m360 = method_config("nerfaccel-360", "cuda")
    assert (m360.pipeline.model.sampler, m360.pipeline.model.contraction) == ("proposal", "l2")
    assert (tuple(m360.pipeline.model.num_proposal_samples), m360.pipeline.model.num_samples) == ((256, 96), 48)
    assert "proposal_networks" in m360.optimizers
    vanilla = method_config("nerfaccel-vanilla", "cuda").pipeline.model
    assert (vanilla.field_type, vanilla.sampler) == ("mlp", "occupancy")
    dnerf = method_config("nerfaccel-dnerf", "cuda").pipeline.model
    assert (dnerf.field_type, dnerf.sampler) == ("time-hash", "occupancy") and dnerf.occ_time_samples >= 1


def test_configs_are_independent_copies():
    """Changing a built config touches neither the registered one nor the next one built."""
    from nerfaccel_plugin.method_configs.lego import nerfaccel_lego

    registered = nerfaccel_lego.config.pipeline.model.grid_resolution
    cfg = method_config("nerfaccel-lego", "cpu")
    cfg.pipeline.model.grid_resolution = 7
    cfg.pipeline.datamanager.dataparser.scale_factor = 3.0
    again = method_config("nerfaccel-lego", "cpu")
    assert again.pipeline.model.grid_resolution == 64
    assert again.pipeline.datamanager.dataparser.scale_factor != 3.0
    assert nerfaccel_lego.config.pipeline.model.grid_resolution == registered


def test_default_variant_follows_the_machine():
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert method_config("nerfaccel-lego").machine.device_type == expected


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown method 'nerfaccel-nope'.*nerfaccel-lego"):
        method_config("nerfaccel-nope")
    with pytest.raises(ValueError, match="device_type must be 'cuda', 'cpu' or None"):
        method_config("nerfaccel-lego", "mps")  # type: ignore[arg-type]
