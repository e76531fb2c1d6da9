"""Base class of the estimators."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AbstractEstimator(nn.Module):
    """An ``nn.Module`` that proposes samples along rays and is updated during training."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_dummy", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """The device of the estimator's buffers (follows ``.to()`` / ``.cuda()``).

        Returns:
            The device.
        """
        return self._dummy.device

    def sampling(self, *args: Any, **kwargs: Any) -> Any:
        """Proposes samples along rays; implemented by subclasses.

        Args:
            *args: Subclass-specific.
            **kwargs: Subclass-specific.

        Returns:
            Subclass-specific samples.
        """
        raise NotImplementedError

    def update_every_n_steps(self, *args: Any, **kwargs: Any) -> Any:
        """Updates the estimator during training; implemented by subclasses.

        Args:
            *args: Subclass-specific.
            **kwargs: Subclass-specific.

        Returns:
            Subclass-specific.
        """
        raise NotImplementedError
