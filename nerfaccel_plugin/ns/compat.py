"""Compatibility fixes between Nerfstudio 1.1.x, current PyTorch and machines without a GPU or internet.

Three problems are handled here, all at import time of the plugin's models (which Nerfstudio imports
whenever it reads one of our ``config.yml`` files, so ``ns-eval``, ``ns-viewer``, ``ns-render`` and
``ns-train --load-dir`` all get the fixes):

* **Checkpoints and ``weights_only``.** Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``.
  Nerfstudio 1.1.5's learning-rate schedulers compute rates with numpy, so numpy float scalars end up in
  the scheduler state of every checkpoint and the load fails with "Unsupported global:
  numpy.core.multiarray.scalar". Our methods use :class:`FloatExponentialDecayScheduler` (plain Python
  floats) so their checkpoints hold no numpy objects at all; in addition :func:`register_safe_globals`
  allow-lists exactly the numpy scalar reconstructor and the float/int dtypes (pure data, no code
  execution), which also lets checkpoints of Nerfstudio's own methods load. Nothing turns
  ``weights_only`` off.
* **Device.** Nerfstudio defaults to CUDA and fails without a GPU. :func:`default_device_type` picks
  ``"cuda"`` when available and ``"cpu"`` otherwise; the method configs use it.
* **Offline metrics.** Nerfstudio's LPIPS downloads AlexNet weights on first use. :func:`make_lpips`
  returns the metric only when the weights are already on disk and otherwise returns ``None`` after
  printing one line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from rich.console import Console

CONSOLE = Console(width=120)

_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
_LPIPS_WARNED = False
_CPU_WARNED = False


def _numpy_safe_globals() -> list:
    """Numpy objects that appear in Nerfstudio checkpoints; all are inert data types."""
    found = []
    for mod_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["scalar"])
        except ImportError:  # pragma: no cover - depends on the numpy version
            continue
        scalar = getattr(mod, "scalar", None)
        if scalar is not None:
            found.append((scalar, f"{mod_name}.scalar"))
    found.append(np.dtype)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_cls = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_cls is not None:
            found.append(dtype_cls)
    return found


def register_safe_globals() -> None:
    """Allow-lists the numpy scalar types found in Nerfstudio checkpoints for ``torch.load(weights_only=True)``.

    Idempotent. Does nothing on torch versions without ``torch.serialization.add_safe_globals``.
    """
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # pragma: no cover - torch < 2.4
        return
    add(_numpy_safe_globals())


def default_device_type() -> Literal["cuda", "cpu"]:
    """``"cuda"`` when a CUDA GPU is usable, otherwise ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def announce_cpu(batch_rays: int) -> None:
    """Prints once per process that training runs on the CPU with a CPU-sized batch."""
    global _CPU_WARNED
    if _CPU_WARNED:
        return
    _CPU_WARNED = True
    CONSOLE.print(
        f"[bold yellow]nerfaccel: no CUDA GPU found - training on the CPU with a CPU-sized batch "
        f"(about {batch_rays} rays per step).[/bold yellow]"
    )


def lpips_weights_available() -> bool:
    """Whether the AlexNet weights LPIPS needs are already in torch's hub cache (nothing is downloaded)."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / _ALEXNET_FILE).is_file()


def make_lpips() -> Optional[torch.nn.Module]:
    """Nerfstudio's LPIPS metric if its weights are on disk, else ``None`` (announced once, no download).

    Set ``NERFACCEL_NO_LPIPS=1`` to skip LPIPS even when the weights are present.
    """
    global _LPIPS_WARNED
    if os.environ.get("NERFACCEL_NO_LPIPS", "") not in ("", "0") or not lpips_weights_available():
        if not _LPIPS_WARNED:
            _LPIPS_WARNED = True
            CONSOLE.print(
                "nerfaccel: LPIPS skipped (AlexNet weights not found in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}; nothing is downloaded)."
            )
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(normalize=True)


# --- A scheduler whose state holds Python floats only --------------------------------------------------------

from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig  # noqa: E402


@dataclass
class FloatExponentialDecaySchedulerConfig(SchedulerConfig):
    """Exponential learning-rate decay with optional linear warm-up, computed with Python floats.

    Same schedule shape as Nerfstudio's ``ExponentialDecaySchedulerConfig`` (log-linear from ``lr_init``
    to ``lr_final`` over ``max_steps``), but the scheduler's state dict holds no numpy scalars, so
    checkpoints load with ``torch.load(weights_only=True)``.
    """

    _target: type = field(default_factory=lambda: FloatExponentialDecayScheduler)
    lr_pre_warmup: float = 1e-8
    """Learning rate at step 0 when ``warmup_steps > 0``."""
    lr_final: Optional[float] = None
    """Learning rate at ``max_steps``; ``None`` keeps the initial rate constant."""
    warmup_steps: int = 0
    """Steps of linear warm-up from ``lr_pre_warmup`` to the optimizer's rate."""
    max_steps: int = 100000
    """Step at which ``lr_final`` is reached (held afterwards)."""


class FloatExponentialDecayScheduler(Scheduler):
    """Scheduler for :class:`FloatExponentialDecaySchedulerConfig`."""

    config: FloatExponentialDecaySchedulerConfig

    def get_scheduler(self, optimizer: torch.optim.Optimizer, lr_init: float) -> torch.optim.lr_scheduler.LRScheduler:
        """Builds a ``LambdaLR`` whose factors are Python floats.

        Args:
            optimizer: The optimizer to schedule.
            lr_init: The optimizer's initial learning rate.

        Returns:
            The scheduler.
        """
        cfg = self.config
        lr_final = float(lr_init if cfg.lr_final is None else cfg.lr_final)
        lr_init = float(lr_init)

        def factor(step: int) -> float:
            if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
                lr = cfg.lr_pre_warmup + (lr_init - cfg.lr_pre_warmup) * step / cfg.warmup_steps
            else:
                span = max(cfg.max_steps - cfg.warmup_steps, 1)
                t = min(max((step - cfg.warmup_steps) / span, 0.0), 1.0)
                lr = math.exp(math.log(lr_init) * (1.0 - t) + math.log(lr_final) * t)
            return float(lr / lr_init)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


register_safe_globals()
