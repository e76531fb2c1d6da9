"""Nerfstudio's ``VanillaDataManager`` with its data-loader workers sized to the machine.

Nerfstudio starts ``4 x world_size`` loader workers whatever the machine, which on a 2-core machine oversubscribes
the cores and makes PyTorch warn ("This DataLoader will create 4 worker processes ... suggested max ... is 2").
:class:`NerfaccelDataManagerConfig` takes ``num_workers`` (default: that number, capped at the cores this process
may run on).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

from nerfstudio.data.datamanagers import base_datamanager
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

_LOADERS = ("CacheDataloader", "FixedIndicesEvalDataloader", "RandIndicesEvalDataloader")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def default_num_workers(world_size: int) -> int:
    """Nerfstudio's ``4 x world_size`` loader workers, capped at the available cores.

    Args:
        world_size: Processes training together.

    Returns:
        The number of workers per data loader.
    """
    return max(0, min(4 * max(1, world_size), available_cores()))


@contextmanager
def _loader_workers(num_workers: int) -> Iterator[None]:
    """Makes the data loaders that the base data manager builds in its setup use ``num_workers`` workers."""
    saved = {name: getattr(base_datamanager, name) for name in _LOADERS}

    def sized(cls):
        def make(*args, **kwargs):
            if "num_workers" in kwargs:
                kwargs["num_workers"] = num_workers
            return cls(*args, **kwargs)

        return make

    try:
        for name, cls in saved.items():
            setattr(base_datamanager, name, sized(cls))
        yield
    finally:
        for name, cls in saved.items():
            setattr(base_datamanager, name, cls)


class NerfaccelDataManager(VanillaDataManager[InputDataset]):
    """``VanillaDataManager`` whose data loaders use :attr:`NerfaccelDataManagerConfig.num_workers` workers."""

    config: NerfaccelDataManagerConfig

    def _num_workers(self) -> int:
        n = getattr(self.config, "num_workers", None)  # a config.yml from before this option: the default
        return default_num_workers(self.world_size) if n is None else n

    def setup_train(self) -> None:
        """Nerfstudio's training data loader, with the configured number of workers."""
        with _loader_workers(self._num_workers()):
            super().setup_train()

    def setup_eval(self) -> None:
        """Nerfstudio's evaluation data loaders, with the configured number of workers."""
        with _loader_workers(self._num_workers()):
            super().setup_eval()


@dataclass
class NerfaccelDataManagerConfig(VanillaDataManagerConfig):
    """``VanillaDataManagerConfig`` plus the number of data-loader workers."""

    _target: type = field(default_factory=lambda: NerfaccelDataManager)
    num_workers: Optional[int] = None
    """Workers per data loader; ``None``: Nerfstudio's 4 per process, capped at the cores available."""
