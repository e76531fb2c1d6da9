"""Two-process DDP training on the CPU (gloo): every rank must end with the identical occupancy grid."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_two_process_ddp_keeps_grids_equal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_ns_methods import keep_extension_cache

    env: dict = {}
    keep_extension_cache(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from nerfaccel_plugin.method_configs.lego import nerfaccel_lego

    from nerfaccel_plugin.dataparsers import NerfaccelBlenderDataParserConfig
    from nerfaccel_plugin.models.distributed import train_distributed_cpu
    from nerfaccel_plugin.scene import get_scene

    data = Path(get_scene(resolution=24, views=12))
    cfg = copy.deepcopy(nerfaccel_lego.config)
    cfg.machine.device_type = "cpu"
    cfg.mixed_precision = False
    cfg.vis = "tensorboard"
    cfg.output_dir = tmp_path / "out"
    cfg.max_num_iterations = 12
    cfg.steps_per_save = 100
    cfg.steps_per_eval_batch = cfg.steps_per_eval_image = 1000
    cfg.pipeline.datamanager.dataparser = NerfaccelBlenderDataParserConfig(data=data)
    cfg.pipeline.target_num_samples = 2048
    cfg.pipeline.min_rays_per_batch, cfg.pipeline.max_rays_per_batch = 32, 128
    m = cfg.pipeline.model
    m.num_levels, m.max_res, m.log2_hashmap_size, m.grid_resolution = 4, 64, 12, 32
    m.occ_warmup_steps, m.occ_update_every = 4, 2

    dump = tmp_path / "grids"
    dump.mkdir()
    train_distributed_cpu(cfg, world_size=2, dump_dir=dump)

    g0 = torch.load(dump / "grid-rank0.pt")
    g1 = torch.load(dump / "grid-rank1.pt")
    assert set(g0) == set(g1) and "binaries" in g0 and "occs" in g0
    for key in g0:
        assert torch.equal(g0[key], g1[key]), key
    assert g0["binaries"].any()
    _assert_same_params(dump)


def _assert_same_params(dump: Path) -> None:
    p0, p1 = torch.load(dump / "params-rank0.pt"), torch.load(dump / "params-rank1.pt")
    assert set(p0) == set(p1) and p0
    for key in p0:
        assert torch.allclose(p0[key], p1[key], rtol=1e-5, atol=1e-6), key


def test_two_process_ddp_with_proposal_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nerfaccel-360 under DDP: the proposal loss is part of the forward, so DDP sees the proposal networks'
    gradients (computing it outside the forward made DDP fail with "mark a variable ready only once")."""
    from test_ns_methods import keep_extension_cache

    env: dict = {}
    keep_extension_cache(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from nerfaccel_plugin.method_configs import method_config

    from nerfaccel_plugin.dataparsers import NerfaccelBlenderDataParserConfig
    from nerfaccel_plugin.models.distributed import train_distributed_cpu
    from nerfaccel_plugin.scene import get_scene

    data = Path(get_scene(resolution=24, views=12))
    cfg = method_config("nerfaccel-360", "cpu")
    cfg.vis = "tensorboard"
    cfg.output_dir = tmp_path / "out"
    cfg.max_num_iterations = 8
    cfg.steps_per_save = 100
    cfg.steps_per_eval_batch = cfg.steps_per_eval_image = 1000
    cfg.pipeline.datamanager.dataparser = NerfaccelBlenderDataParserConfig(data=data)
    cfg.pipeline.target_num_samples = 2048
    cfg.pipeline.min_rays_per_batch, cfg.pipeline.max_rays_per_batch = 32, 128
    m = cfg.pipeline.model
    m.num_levels, m.max_res, m.log2_hashmap_size = 4, 64, 12
    m.num_proposal_samples, m.num_samples = (32, 16), 16
    m.proposal_max_res, m.proposal_log2_hashmap_size = (32, 64), 10
    m.proposal_near_plane, m.proposal_far_plane = 1.0, 10.0

    dump = tmp_path / "dump"
    dump.mkdir()
    train_distributed_cpu(cfg, world_size=2, dump_dir=dump)
    _assert_same_params(dump)
    assert any(k.startswith("sampler.proposal_networks") for k in torch.load(dump / "params-rank0.pt"))
