"""Training pipeline of the nerfaccel methods: a dynamic ray count and torch.distributed on CPU or GPU."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.dynamic_batch import DynamicBatchPipeline, DynamicBatchPipelineConfig
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import ns_compat


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
        if torch.device(device).type == "cuda" and torch.cuda.is_available():
            # Nerfstudio never sets the current device; tiny-cuda-nn and .cuda() calls allocate on it.
            torch.cuda.set_device(torch.device(device))
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
                    find_unused_parameters=True,
                    broadcast_buffers=False,
                ),
            )
            if on_gpu:
                dist.barrier(device_ids=[local_rank])
            else:
                dist.barrier()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = None) -> None:
        """Nerfstudio's loading, after checking the checkpoint was trained with this model's hash-grid backend.

        tiny-cuda-nn and torch fields store different parameters; Nerfstudio would fall back to a non-strict
        load and silently keep a randomly initialised field next to a loaded grid.
        """
        model_keys = [k for k in state_dict if k.startswith("_model.")]
        ckpt_tcnn = any("tcnn_encoding" in k for k in model_keys)
        ours_tcnn = any("tcnn_encoding" in k for k in self.model.state_dict())
        if model_keys and ckpt_tcnn != ours_tcnn:
            trained, here = ("tiny-cuda-nn", "torch") if ckpt_tcnn else ("torch", "tiny-cuda-nn")
            raise ValueError(
                f"This checkpoint's field was trained with the {trained} hash grid / MLPs, but this model uses "
                f"{here}. Load it where the same backend is used (tiny-cuda-nn needs `tinycudann` and a GPU), or "
                f"set --pipeline.model.hash-implementation {'tcnn' if ckpt_tcnn else 'torch'}; train with "
                "--pipeline.model.hash-implementation torch for checkpoints that load anywhere."
            )
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
