"""Shared building blocks of the nerfaccel method configs (GPU and CPU defaults)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Literal

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig

from nerfaccel_plugin.ns import console
from nerfaccel_plugin.ns.checkpoints import NerfaccelTrainer, check_resume_source, install_eval_hook, pick_checkpoint
from nerfaccel_plugin.ns.compat import FloatExponentialDecaySchedulerConfig, default_device_type
from nerfaccel_plugin.ns.datamanager import NerfaccelDataManagerConfig
from nerfaccel_plugin.ns.models import NerfaccelModelConfig, NerfaccelPipelineConfig
from nerfaccel_plugin.ns.models.config import HashFieldConfig, OccupancySamplerConfig, TimeHashFieldConfig

ON_GPU = default_device_type() == "cuda"
"""Whether the configs are built for a GPU; without one every method picks the CPU and CPU-sized batches."""


CPU_HASH_GRID = {"num_levels": 8, "max_res": 512, "log2_hashmap_size": 17}
"""Hash grid on the CPU: Nerfstudio's torch ``HashEncoding`` is ~5x faster with these than with the GPU
defaults (16 levels, 2048, 2^19; measured on 2 cores), which matters more there than the finest detail."""


def apply_cpu_defaults(model: NerfaccelModelConfig) -> None:
    """CPU-sized model defaults: a 64^3 occupancy grid, 256 marching steps across the scene box, a smaller
    hash grid (:data:`CPU_HASH_GRID`) and 4096-ray render chunks. Command-line options still override them."""
    model.eval_num_rays_per_chunk = 4096
    if isinstance(model.sampler, OccupancySamplerConfig):
        model.sampler.samples_per_diagonal = min(model.sampler.samples_per_diagonal, 256)
        model.sampler.grid_resolution = min(model.sampler.grid_resolution, 64)
    if isinstance(model.field, (HashFieldConfig, TimeHashFieldConfig)):
        for key, value in CPU_HASH_GRID.items():
            setattr(model.field, key, min(getattr(model.field, key), value))


@dataclass
class NerfaccelTrainerConfig(TrainerConfig):
    """Nerfstudio's ``TrainerConfig``; without ``--data`` the output folder is named after the dataparser's data.

    Nerfstudio names runs after ``--data`` and falls back to ``outputs/unnamed/``. Our dataparsers carry their
    own default (``data/blender/lego``) and may fall back to the embedded scene, so the run is filed under
    ``outputs/lego/`` or ``outputs/nerfaccel-scene/`` (``nerfaccel-scene-dynamic``) instead.

    Its trainer saves checkpoints atomically and resumes from the newest readable one (:mod:`.checkpoints`).
    """

    _target: type = field(default_factory=lambda: NerfaccelTrainer)

    def __setstate__(self, state: dict) -> None:
        """Loading a run's ``config.yml`` (``ns-eval``, ``ns-render``, ``ns-viewer``): our console settings apply."""
        console.install()
        install_eval_hook()  # eval_setup loads this config, then eval_load_checkpoint picks the checkpoint
        self.__dict__.update(state)

    def set_experiment_name(self) -> None:
        if self.experiment_name is None and self.pipeline.datamanager.data is None:
            parser = self.pipeline.datamanager.dataparser
            data = getattr(parser, "data", None)
            if data is not None:
                data = Path(data)
                if not data.exists() and getattr(parser, "embedded_fallback", False):
                    dynamic = "dnerf" in type(parser).__name__.lower()
                    self.experiment_name = "nerfaccel-scene-dynamic" if dynamic else "nerfaccel-scene"
                else:
                    self.experiment_name = (data.parent if data.is_file() else data).name or "unnamed"
        super().set_experiment_name()

    def save_config(self) -> None:
        """Checks the data (folder, transforms, every image decoded, scene box) and only then writes config.yml.

        ``ns-train`` saves the config before it builds the dataparser; a bad folder used to leave a half-written
        ``outputs/...`` run behind and fail later (a bare ``FileNotFoundError``, or inside the dataloader).
        """
        from nerfaccel_plugin.ns.dataparsers import validate_dataparser_inputs

        datamanager = self.pipeline.datamanager
        data = getattr(datamanager, "data", None) or self.data  # --data overrides the dataparser's, as Nerfstudio
        validate_dataparser_inputs(datamanager.dataparser, data)
        check_resume_source(self)  # a resume that cannot load must not leave a new run folder behind
        super().save_config()

    def setup(self, **kwargs):
        """The trainer; with ``hash-implementation auto`` and a checkpoint to resume from, the hash-grid backend
        follows the checkpoint, decided before the optimizers are built from the field's parameters."""
        follow_checkpoint_hash_backend(self)
        return super().setup(**kwargs)


def checkpoint_to_load(config: TrainerConfig) -> Path | None:
    """The checkpoint Nerfstudio's trainer will resume from (``--load-dir`` latest or ``--load-step``, or
    ``--load-checkpoint``), ``None`` when it trains from scratch or the file is not there."""
    if config.load_dir is not None:
        load_dir = Path(config.load_dir)
        if config.load_step is not None:
            path = load_dir / f"step-{config.load_step:09d}.ckpt"
        else:
            try:  # the newest readable one, as the trainer picks it
                path = pick_checkpoint(load_dir)[0]
            except Exception:  # noqa: BLE001 - the trainer's own load reports it
                path = None
    else:
        path = Path(config.load_checkpoint) if config.load_checkpoint is not None else None
    return path if path is not None and path.is_file() else None


def follow_checkpoint_hash_backend(config: TrainerConfig) -> None:
    """``auto`` hash grid + a torch-backend checkpoint to resume: use torch (tiny-cuda-nn would be picked on a GPU
    machine and the checkpoint could not load). A tiny-cuda-nn checkpoint is left to ``auto``, which picks
    tiny-cuda-nn wherever it can run; elsewhere loading explains that it needs it."""
    model = config.pipeline.model
    if not isinstance(model, NerfaccelModelConfig) or getattr(model.field, "hash_implementation", None) != "auto":
        return
    path = checkpoint_to_load(config)
    if path is None:
        return
    import torch

    from nerfaccel_plugin.ns.models.nerfaccel_model import state_dict_hash_backend

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["pipeline"]
    except Exception:  # noqa: BLE001 - the trainer's own load reports an unreadable checkpoint
        return
    if state_dict_hash_backend(k for k in state if k.startswith("_model.")) == "torch":
        model.field.hash_implementation = "torch"


if console.running_our_method():  # ns-train nerfaccel-...: upstream noise filtered, no warning shown twice
    from nerfaccel_plugin.ns.threads import reexec_with_passive_openmp

    reexec_with_passive_openmp()  # CPU only: OpenMP threads that sleep instead of spinning (restarts the command)
    console.install()


def make_trainer_config(
    method_name: str,
    dataparser: DataParserConfig,
    model: NerfaccelModelConfig,
    gpu_steps: int,
    cpu_steps: int,
    lr: float = 1e-2,
    lr_final: float = 1e-3,
    eps: float = 1e-15,
    weight_decay: float = 0.0,
    gpu_target_samples: int = 1 << 18,
    cpu_target_samples: int = 1 << 14,
    proposal: bool = False,
    on_gpu: bool | None = None,
) -> NerfaccelTrainerConfig:
    """A Nerfstudio ``TrainerConfig`` for one nerfaccel method.

    Args:
        method_name: Name shown by Nerfstudio (and the output folder).
        dataparser: Dataparser config.
        model: Model config.
        gpu_steps: Training iterations on a GPU.
        cpu_steps: Training iterations on the CPU (a few minutes on 2 cores).
        lr: Initial Adam learning rate (warmed up linearly over 100 steps).
        lr_final: Learning rate reached at the last step (exponential decay).
        eps: Adam epsilon (1e-15 as instant-ngp for hash grids).
        weight_decay: Adam weight decay.
        gpu_target_samples: Samples per batch on a GPU (the dynamic ray count follows it).
        cpu_target_samples: Samples per batch on the CPU.
        proposal: Add the ``proposal_networks`` optimizer group.
        on_gpu: Build the GPU (True) or CPU (False) defaults; ``None`` picks by the machine (:data:`ON_GPU`).

    Returns:
        The trainer config. A builder for either variant is kept for :func:`method_config`.
    """
    arguments = dict(locals())
    arguments["model"], arguments["dataparser"] = copy.deepcopy(model), copy.deepcopy(dataparser)
    _BUILDERS[method_name] = lambda gpu: make_trainer_config(**{**copy.deepcopy(arguments), "on_gpu": gpu})
    device_type = default_device_type() if on_gpu is None else ("cuda" if on_gpu else "cpu")
    ON_GPU = device_type == "cuda"  # noqa: N806 - shadows the module default for this config
    model = copy.deepcopy(model)
    steps = gpu_steps if ON_GPU else cpu_steps
    target = gpu_target_samples if ON_GPU else cpu_target_samples
    if not ON_GPU:
        apply_cpu_defaults(model)

    def group() -> dict:
        return {
            "optimizer": AdamOptimizerConfig(lr=lr, eps=eps, weight_decay=weight_decay),
            "scheduler": FloatExponentialDecaySchedulerConfig(
                lr_final=lr_final, warmup_steps=min(100, steps // 10), max_steps=steps
            ),
        }

    optimizers = {"fields": group()}
    if proposal:
        optimizers["proposal_networks"] = group()
    return NerfaccelTrainerConfig(
        method_name=method_name,
        steps_per_eval_batch=500,
        steps_per_eval_image=500 if ON_GPU else 1000,
        steps_per_eval_all_images=1_000_000,
        steps_per_save=2000 if ON_GPU else 500,
        max_num_iterations=steps,
        mixed_precision=ON_GPU,
        save_only_latest_checkpoint=True,
        pipeline=NerfaccelPipelineConfig(
            datamanager=NerfaccelDataManagerConfig(
                dataparser=dataparser,
                train_num_rays_per_batch=4096 if ON_GPU else 512,
                eval_num_rays_per_batch=4096 if ON_GPU else 512,
            ),
            model=model,
            target_num_samples=target,
            max_num_samples_per_ray=1024 if ON_GPU else 64,
            max_rays_per_batch=1 << 16 if ON_GPU else 2048,
            min_rays_per_batch=256,
        ),
        optimizers=optimizers,
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15 if ON_GPU else 1 << 12),
        vis="viewer",
        machine=MachineConfig(device_type=device_type),
    )


_BUILDERS: dict[str, Callable[[bool], NerfaccelTrainerConfig]] = {}


def registered_methods() -> dict[str, EntryPoint]:
    """This package's Nerfstudio methods: the ``nerfstudio.method_configs`` entry points whose module is ours
    (as installed from ``pyproject.toml``), by method name."""
    return {
        ep.name: ep
        for ep in entry_points(group="nerfstudio.method_configs")
        if ep.value.split(":", 1)[0].startswith("nerfaccel_plugin.")
    }


def method_config(method_name: str, device_type: Literal["cuda", "cpu"] | None = None) -> NerfaccelTrainerConfig:
    """A fresh trainer config of a registered nerfaccel method, with the GPU or the CPU defaults.

    The registered configs are built once, for the machine they are imported on; this builds either variant
    on any machine (e.g. CPU-sized settings for a test on a machine that has a GPU).

    Args:
        method_name: A method registered by this package (:func:`registered_methods`), e.g.
            ``"nerfaccel-lego"``.
        device_type: ``"cuda"`` for the GPU defaults, ``"cpu"`` for the CPU defaults, ``None`` for this machine's.

    Returns:
        A new config; changing it does not touch the registered one.
    """
    for name, entry_point in registered_methods().items():  # loading an entry point registers its builder
        if name not in _BUILDERS:
            entry_point.load()

    if method_name not in _BUILDERS:
        raise ValueError(f"unknown method {method_name!r}; expected one of {sorted(_BUILDERS)}")
    if device_type not in (None, "cuda", "cpu"):
        raise ValueError(f"device_type must be 'cuda', 'cpu' or None, got {device_type!r}")
    return _BUILDERS[method_name](ON_GPU if device_type is None else device_type == "cuda")
