"""Packaging glue that pyproject.toml cannot express on its own.

``method_configs/`` and ``cuda/`` live at the top of the repository (see the design card) but are
installed inside the package namespace as ``nerfaccel_plugin.method_configs`` and
``nerfaccel_plugin.csrc`` so that nothing is installed as a bare top-level module.

Ahead-of-time build of the compiled extensions (otherwise they are built lazily on first use)::

    NERFACCEL_BUILD_EXT=1 pip install --no-build-isolation .      # CPU, plus CUDA if a toolkit is found
    NERFACCEL_BUILD_EXT=cpu pip install --no-build-isolation .    # CPU only
    NERFACCEL_BUILD_EXT=cuda TORCH_CUDA_ARCH_LIST="8.6;9.0" pip install --no-build-isolation .

``--no-build-isolation`` is needed so the build sees the installed torch. The binaries land in
``nerfaccel_plugin/_ext/_C_cpu`` / ``_C_cuda`` and are used when they match the shipped sources.
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

packages = find_packages(include=["nerfaccel_plugin", "nerfaccel_plugin.*"])
# cuda/include/nerfaccel holds only headers; listing it as a package (mapped below) ships it without
# setuptools' "package data directory is not a package" warning.
packages += [
    "nerfaccel_plugin.method_configs",
    "nerfaccel_plugin.csrc",
    "nerfaccel_plugin.csrc.csrc",
    "nerfaccel_plugin.csrc.cpu",
    "nerfaccel_plugin.csrc.gpu",
    "nerfaccel_plugin.csrc.include",
    "nerfaccel_plugin.csrc.include.nerfaccel",
]


def _extensions(mode: str):
    """Extension modules and build command for ``NERFACCEL_BUILD_EXT=mode``."""
    from torch.utils import cpp_extension

    # the cache-key module only (standard library at import; the build-and-load module needs the package)
    spec = importlib.util.spec_from_file_location("_nerfaccel_keys", ROOT / "nerfaccel_plugin" / "_ext" / "keys.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # toolkit.py (the PyPI CUDA toolkit) finds the cache location through it
    spec.loader.exec_module(build)
    build._setup_cuda_home()
    wanted = {"cpp", "cuda"} if mode in ("1", "true", "yes", "all") else set()
    wanted |= {"cpp" for part in mode.split(",") if part.strip() in ("cpu", "cpp")}
    wanted |= {"cuda" for part in mode.split(",") if part.strip() == "cuda"}
    explicit_cuda = "cuda" in mode.split(",")
    src = ROOT / "cuda"
    include = [str(src / "include")]
    exts = []
    if "cpp" in wanted:
        key = build.cache_key("cpp", root=src)
        exts.append(
            cpp_extension.CppExtension(
                "nerfaccel_plugin._ext._C_cpu",
                [str(p.relative_to(ROOT)) for p in build.sources("cpp", src)],
                include_dirs=include,
                extra_compile_args={"cxx": build.CXX_FLAGS + build.defines(key, None)},
                extra_link_args=build.LD_FLAGS,
            )
        )
    if "cuda" in wanted:
        problem = build.toolchain_problem("cuda")
        if problem and explicit_cuda:
            raise RuntimeError(f"NERFACCEL_BUILD_EXT={mode}: cannot build the CUDA extension: {problem}")
        if not problem:
            arch = build.cuda_arch_list()
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
            key = build.cache_key("cuda", root=src, arch=arch)
            defines = build.defines(key, arch)
            exts.append(
                cpp_extension.CUDAExtension(
                    "nerfaccel_plugin._ext._C_cuda",
                    [str(p.relative_to(ROOT)) for p in build.sources("cuda", src)],
                    include_dirs=include,
                    extra_compile_args={
                        "cxx": build.CXX_FLAGS + defines + ["-DNERFACCEL_WITH_CUDA"],
                        "nvcc": build.NVCC_FLAGS + defines,
                    },
                    extra_link_args=build.LD_FLAGS,
                )
            )
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = [], {}
_mode = os.environ.get("NERFACCEL_BUILD_EXT", "").strip().lower()
if _mode and _mode not in ("0", "false", "no"):
    ext_modules, cmdclass = _extensions(_mode)

setup(
    packages=packages,
    package_dir={
        "nerfaccel_plugin": "nerfaccel_plugin",
        "nerfaccel_plugin.method_configs": "method_configs",
        "nerfaccel_plugin.csrc": "cuda",
        "nerfaccel_plugin.csrc.csrc": "cuda/csrc",
        "nerfaccel_plugin.csrc.cpu": "cuda/cpu",
        "nerfaccel_plugin.csrc.gpu": "cuda/gpu",
        "nerfaccel_plugin.csrc.include": "cuda/include",
        "nerfaccel_plugin.csrc.include.nerfaccel": "cuda/include/nerfaccel",
    },
    package_data={
        "nerfaccel_plugin.csrc": ["*.h", "*.cuh", "*.cpp", "*.cu", "*.hpp"],
        "nerfaccel_plugin.csrc.csrc": ["*.cpp"],
        "nerfaccel_plugin.csrc.cpu": ["*.h", "*.cpp"],
        "nerfaccel_plugin.csrc.gpu": ["*.cuh", "*.cu"],
        "nerfaccel_plugin.csrc.include.nerfaccel": ["*.h", "*.cuh", "*.hpp"],
    },
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
