"""Kernel sources (CUDA and C++), shipped inside the wheel as ``nerfaccel_plugin.csrc``."""
