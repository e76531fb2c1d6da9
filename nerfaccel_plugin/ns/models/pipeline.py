"""Training pipeline of the nerfaccel methods: a dynamic ray count and torch.distributed on CPU or GPU."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch
import torch.distributed as dist
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.dynamic_batch import DynamicBatchPipeline, DynamicBatchPipelineConfig
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import compat as ns_compat


def set_current_cuda_device(device: Union[str, torch.device]) -> None:
    """Makes ``device`` the current CUDA device when it names one by index (``cuda:1``).

    Nerfstudio never sets the current device, and tiny-cuda-nn and ``.cuda()`` calls allocate on it, so each DDP
    rank (``cuda:<local_rank>``) must set its own. ``eval_setup`` (``ns-eval``, ``ns-viewer``, ``ns-render``,
    ``ns-export``) passes a bare ``torch.device("cuda")``, which ``torch.cuda.set_device`` rejects (``ValueError``);
    there the current device is already the right one, so nothing is changed.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None and torch.cuda.is_available():
        torch.cuda.set_device(dev)


def needs_unused_parameter_search(model: Model) -> bool:
    """Whether DDP must look for parameters without a gradient in a step (``find_unused_parameters``).

    Only the proposal sampler leaves parameters out of some steps: its proposal networks run without gradients
    on the steps the gradient schedule skips. Every occupancy-grid field uses all its parameters in each
    training forward (``tests/test_model_parts.py`` checks it), and the search costs a graph traversal per step.
    """
    from .nerfaccel_model import ProposalSampler

    return isinstance(getattr(model, "sampler", None), ProposalSampler)


_BACKEND_NAMES = {"tcnn": "tiny-cuda-nn", "torch": "torch"}


def _backend_mismatch_message(trained: str, here: str, choice: str) -> str:
    """Why a checkpoint of the ``trained`` backend cannot load into a ``here`` model, and what to change."""
    text = (
        f"This checkpoint's field was trained with the {_BACKEND_NAMES[trained]} hash grid / MLPs, but this model "
        f"uses {_BACKEND_NAMES[here]}"
    )
    if choice != "auto":
        text += (
            f" (hash_implementation: {choice} in its config). For ns-eval / ns-viewer / ns-render / ns-export set "
            "`hash_implementation: auto` under `pipeline: model: field:` in the run's config.yml; when resuming, pass "
            f"`--pipeline.model.field.hash-implementation {trained}` (or auto) to ns-train."
        )
    else:
        text += "."
    if trained == "tcnn":
        text += " A tiny-cuda-nn checkpoint needs `tinycudann` installed and a CUDA GPU wherever it is loaded."
    return text + " Train with --pipeline.model.field.hash-implementation torch for checkpoints that load anywhere."


@dataclass
class NerfaccelPipelineConfig(DynamicBatchPipelineConfig):
    """Pipeline that adapts the number of rays per batch to hit a target number of samples."""

    _target: type = field(default_factory=lambda: NerfaccelPipeline)
    target_num_samples: int = 1 << 18
    """Samples per training batch the ray count is tuned for (256k on a GPU; the CPU configs use less). Empty
    space costs nothing with the occupancy grid, so a fixed sample budget keeps every step equally expensive."""
    max_num_samples_per_ray: int = 1 << 10
    """Used only for the first batch: ``target_num_samples / max_num_samples_per_ray`` rays."""
    min_rays_per_batch: int = 256
    """Lower bound of the dynamic ray count."""
    max_rays_per_batch: int = 1 << 16
    """Upper bound of the dynamic ray count (avoids huge batches while the grid is nearly empty)."""


class NerfaccelPipeline(DynamicBatchPipeline):
    """Nerfstudio pipeline with a bounded dynamic ray count; DDP works with ``gloo`` on the CPU too.

    Args:
        config: Pipeline configuration.
        device: Device of the model.
        test_mode: ``"val"``, ``"test"`` or ``"inference"``.
        world_size: Number of processes.
        local_rank: Rank on this machine.
        grad_scaler: Gradient scaler (mixed precision).
    """

    config: NerfaccelPipelineConfig

    def __init__(
        self,
        config: NerfaccelPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[torch.cuda.amp.GradScaler] = None,
    ) -> None:
        # Build everything single-process, then wrap for DDP ourselves: Nerfstudio passes GPU device ids,
        # which DDP rejects for CPU modules.
        set_current_cuda_device(device)
        super().__init__(config, device, test_mode, 1, local_rank, grad_scaler)
        self.world_size = world_size
        self.datamanager.world_size = world_size
        if torch.device(device).type == "cpu" and test_mode == "val":
            ns_compat.announce_cpu(self.dynamic_num_rays_per_batch)
        if world_size > 1:
            on_gpu = torch.device(device).type == "cuda"
            self._model = typing.cast(
                Model,
                # broadcast_buffers=False: the occupancy grid is all-reduced by its update, so re-sending every
                # buffer (grid and its coordinate tables, ~100 MB at 128^3) each step would be pure overhead.
                DDP(
                    self._model,
                    device_ids=[local_rank] if on_gpu else None,
                    find_unused_parameters=needs_unused_parameter_search(self._model),
                    broadcast_buffers=False,
                ),
            )
            if on_gpu:
                dist.barrier(device_ids=[local_rank])
            else:
                dist.barrier()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = None) -> None:
        """Nerfstudio's loading, after matching the model's hash-grid backend to the checkpoint's.

        tiny-cuda-nn and torch fields store different parameters; Nerfstudio would fall back to a non-strict
        load and silently keep a randomly initialised field next to a loaded grid. With
        ``hash_implementation: auto`` the backend follows the checkpoint (a torch checkpoint opened on a GPU
        machine with tiny-cuda-nn rebuilds the field on torch); an explicit choice that does not match it, or a
        tiny-cuda-nn checkpoint where tiny-cuda-nn cannot run, stops with an explanation.
        """
        from .nerfaccel_model import NerfaccelModel, state_dict_hash_backend

        model = self.model
        model_keys = [k for k in state_dict if k.startswith("_model.")]
        if model_keys and isinstance(model, NerfaccelModel):
            trained = state_dict_hash_backend(model_keys)
            here = state_dict_hash_backend(model.state_dict())
            choice = model.config.hash_implementation
            if trained != here and choice == "auto" and self.world_size == 1:
                model.rebuild_for_hash_implementation(trained)
                here = state_dict_hash_backend(model.state_dict())
                if here == trained:
                    ns_compat.CONSOLE.print(
                        f"nerfaccel: the checkpoint was trained with the {_BACKEND_NAMES[trained]} hash grid; "
                        "the field uses it too (hash-implementation auto)."
                    )
            if trained != here:
                raise ValueError(_backend_mismatch_message(trained, here, choice))
        super().load_state_dict(state_dict, strict)

    def _update_dynamic_num_rays_per_batch(self, num_samples_per_batch: int) -> None:
        """Scales the ray count towards the sample target, within ``[min_rays_per_batch, max_rays_per_batch]``.

        Under DDP every rank uses the mean sample count, so all ranks draw the same number of rays.
        """
        n = float(max(int(num_samples_per_batch), 1))
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            t = torch.tensor([n], dtype=torch.float64, device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t)
            n = float(t.item()) / self.world_size
        rays = int(self.dynamic_num_rays_per_batch * (self.config.target_num_samples / n))
        self.dynamic_num_rays_per_batch = max(self.config.min_rays_per_batch, min(self.config.max_rays_per_batch, rays))
