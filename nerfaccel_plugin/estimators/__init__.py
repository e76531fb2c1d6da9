"""Transmittance estimators that decide where to sample along rays."""

from .base import AbstractEstimator
from .occ_grid import OccGridEstimator
from .prop_net import PropNetEstimator, get_proposal_requires_grad_fn

__all__ = ["AbstractEstimator", "OccGridEstimator", "PropNetEstimator", "get_proposal_requires_grad_fn"]
