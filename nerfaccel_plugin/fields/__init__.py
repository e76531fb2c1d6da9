"""Fields for the nerfaccel methods (thin additions to Nerfstudio's fields)."""

from .contraction import AabbContraction
from .dynamic_field import TimeHashField

__all__ = ["AabbContraction", "TimeHashField"]
