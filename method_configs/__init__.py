"""Registered Nerfstudio methods, one module each (installed as ``nerfaccel_plugin.method_configs``)."""
