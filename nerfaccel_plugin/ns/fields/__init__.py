"""Fields for the nerfaccel methods (thin additions to Nerfstudio's fields)."""

from .contraction import AabbContraction
from .dynamic_field import TimeHashField
from .hash_encoding import NerfaccelHashEncoding, use_nerfaccel_hash_encoding

__all__ = ["AabbContraction", "NerfaccelHashEncoding", "TimeHashField", "use_nerfaccel_hash_encoding"]
