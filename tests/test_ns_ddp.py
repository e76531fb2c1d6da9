"""Two-process DDP training on the CPU (gloo): every rank must end with the identical occupancy grid.

``nerfaccel-lego`` goes through Nerfstudio's own ``ns-train`` code path (``scripts/train.py``: ``main`` ->
``launch`` -> ``_distributed_worker`` -> ``train_loop``); only the launcher's two CUDA asserts are answered, inside
the spawned workers and only for the launcher module. ``nerfaccel-360`` uses :func:`train_distributed_cpu`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from nerfstudio.scripts import train as ns_train

pytestmark = pytest.mark.slow

_NS_WORKER = ns_train._distributed_worker
_NS_TRAIN_LOOP = ns_train.train_loop


class _LauncherCuda:
    """``torch.cuda`` as the launcher sees it: available, with enough devices for its asserts."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 64

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _LauncherTorch:
    cuda = _LauncherCuda()

    def __getattr__(self, name):
        return getattr(torch, name)


def _cpu_distributed_worker(local_rank: int, *args):
    """Nerfstudio's ``_distributed_worker`` (gloo for ``device_type cpu``) with its CUDA asserts answered: the
    shim replaces ``torch`` in the launcher module only, so the trainer and the model see the real machine."""
    torch.set_num_threads(1)
    ns_train.torch = _LauncherTorch()
    try:
        return _NS_WORKER(local_rank, *args)
    finally:
        ns_train.torch = torch


def _train_loop_and_dump(local_rank: int, world_size: int, config, global_rank: int = 0) -> None:
    """Nerfstudio's ``train_loop``; afterwards this rank's grid and parameters are saved for comparison."""
    made = []
    setup = config.setup

    def setup_and_keep(**kwargs):
        made.append(setup(**kwargs))
        return made[-1]

    object.__setattr__(config, "setup", setup_and_keep)
    _NS_TRAIN_LOOP(local_rank, world_size, config, global_rank)
    model = made[0].pipeline.model
    dump = Path(config.output_dir) / "dump"
    dump.mkdir(exist_ok=True)
    grid = {k: v.detach().cpu() for k, v in model.occupancy_grid.state_dict().items()}
    torch.save(grid, dump / f"grid-rank{global_rank}.pt")
    torch.save({k: v.detach().cpu() for k, v in model.named_parameters()}, dump / f"params-rank{global_rank}.pt")


def test_nerfstudio_launcher_ddp_keeps_grids_equal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ns-train nerfaccel-lego --machine.num-devices 2 --machine.device-type cpu`` through Nerfstudio's launcher:
    two gloo ranks, no unused-parameter search (occupancy model), identical grids and weights at the end."""
    from test_ns_methods import keep_extension_cache

    env: dict = {}
    keep_extension_cache(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from nerfaccel_plugin.method_configs.lego import nerfaccel_lego

    from nerfaccel_plugin.scene import get_scene

    data = Path(get_scene(resolution=24, views=12))
    cfg = copy.deepcopy(nerfaccel_lego.config)
    cfg.machine.device_type, cfg.machine.num_devices = "cpu", 2
    cfg.mixed_precision = False
    cfg.vis = "tensorboard"
    cfg.output_dir = tmp_path / "out"
    cfg.data = data  # ns-train's --data
    cfg.max_num_iterations = 12
    cfg.steps_per_save = 11
    cfg.steps_per_eval_batch = cfg.steps_per_eval_image = 1000
    cfg.pipeline.target_num_samples = 2048
    cfg.pipeline.min_rays_per_batch, cfg.pipeline.max_rays_per_batch = 32, 128
    m = cfg.pipeline.model
    m.field.num_levels, m.field.max_res, m.field.log2_hashmap_size, m.sampler.grid_resolution = 4, 64, 12, 32
    m.sampler.warmup_steps, m.sampler.update_every = 4, 2

    monkeypatch.setattr(ns_train, "_distributed_worker", _cpu_distributed_worker)
    monkeypatch.setattr(ns_train, "train_loop", _train_loop_and_dump)
    ns_train.main(cfg)  # what ns-train runs after parsing the command line

    dump = tmp_path / "out" / "dump"
    g0 = torch.load(dump / "grid-rank0.pt")
    g1 = torch.load(dump / "grid-rank1.pt")
    assert set(g0) == set(g1) and "binaries" in g0 and "occs" in g0
    for key in g0:
        assert torch.equal(g0[key], g1[key]), key
    assert g0["binaries"].any()
    _assert_same_params(dump)
    runs = list((tmp_path / "out").glob("*/nerfaccel-lego/*"))
    assert len(runs) == 1 and (runs[0] / "config.yml").is_file()
    assert sorted(p.name for p in (runs[0] / "nerfstudio_models").glob("*.ckpt")) == ["step-000000011.ckpt"]


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

    from nerfaccel_plugin.ns.dataparsers import NerfaccelBlenderDataParserConfig
    from nerfaccel_plugin.ns.models.distributed import train_distributed_cpu
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
    m.field.num_levels, m.field.max_res, m.field.log2_hashmap_size = 4, 64, 12
    m.sampler.num_proposal_samples, m.sampler.num_samples = (32, 16), 16
    m.sampler.max_res, m.sampler.log2_hashmap_size = (32, 64), 10
    m.sampler.near_plane, m.sampler.far_plane = 1.0, 10.0

    dump = tmp_path / "dump"
    dump.mkdir()
    train_distributed_cpu(cfg, world_size=2, dump_dir=dump)
    _assert_same_params(dump)
    assert any(k.startswith("sampler.proposal_networks") for k in torch.load(dump / "params-rank0.pt"))
