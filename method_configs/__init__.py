"""Registered Nerfstudio methods, one module each (installed as ``nerfaccel_plugin.method_configs``).

:func:`method_config` builds a fresh config of any method with the GPU or the CPU defaults.
"""

from nerfaccel_plugin.ns.trainer import method_config

__all__ = ["method_config"]
