"""nerfaccel: fast NeRF sampling and packed volume rendering.

A drop-in for nerfacc 0.5's public API (change ``import nerfacc`` to ``import nerfaccel_plugin as
nerfacc``), plus scene contraction, a distortion loss, and backend reporting. Every op runs on any
torch device through a pure-PyTorch reference and uses compiled kernels where available; see
:func:`backend_info`.
"""

from . import _moved
from ._backend import backend_info
from ._validation import value_checks
from .contraction import contract, uncontract
from .data_specs import RayIntervals, RaySamples
from .estimators.occ_grid import OccGridEstimator
from .estimators.prop_net import PropNetEstimator, get_proposal_requires_grad_fn
from .grid import ray_aabb_intersect, traverse_grids
from .losses import distortion
from .pack import pack_info, unpack_info
from .pdf import importance_sampling, searchsorted
from .scan import exclusive_prod, exclusive_sum, inclusive_prod, inclusive_sum
from .version import __version__
from .volrend import (
    accumulate_along_rays,
    render_transmittance_from_alpha,
    render_transmittance_from_density,
    render_visibility_from_alpha,
    render_visibility_from_density,
    render_weight_from_alpha,
    render_weight_from_density,
    rendering,
)

__all__ = [
    "__version__",
    "backend_info",
    "value_checks",
    "inclusive_prod",
    "exclusive_prod",
    "inclusive_sum",
    "exclusive_sum",
    "pack_info",
    "unpack_info",
    "render_visibility_from_alpha",
    "render_visibility_from_density",
    "render_weight_from_alpha",
    "render_weight_from_density",
    "render_transmittance_from_alpha",
    "render_transmittance_from_density",
    "accumulate_along_rays",
    "rendering",
    "distortion",
    "importance_sampling",
    "searchsorted",
    "RayIntervals",
    "RaySamples",
    "ray_aabb_intersect",
    "traverse_grids",
    "contract",
    "uncontract",
    "OccGridEstimator",
    "PropNetEstimator",
    "get_proposal_requires_grad_fn",
]

_moved.install()  # old import paths of the Nerfstudio glue (moved to nerfaccel_plugin.ns) keep working
