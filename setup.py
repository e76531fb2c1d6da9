"""Packaging glue that pyproject.toml cannot express on its own.

``method_configs/`` and ``cuda/`` live at the top of the repository (see the design card) but are
installed inside the package namespace as ``nerfaccel_plugin.method_configs`` and
``nerfaccel_plugin.csrc`` so that nothing is installed as a bare top-level module.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["nerfaccel_plugin", "nerfaccel_plugin.*"])
packages += ["nerfaccel_plugin.method_configs", "nerfaccel_plugin.csrc"]

setup(
    packages=packages,
    package_dir={
        "nerfaccel_plugin": "nerfaccel_plugin",
        "nerfaccel_plugin.method_configs": "method_configs",
        "nerfaccel_plugin.csrc": "cuda",
    },
    package_data={"nerfaccel_plugin.csrc": ["*.h", "*.cuh", "*.cpp", "*.cu", "*.hpp", "**/*.h", "**/*.cuh", "**/*.cpp", "**/*.cu"]},
    include_package_data=True,
)
