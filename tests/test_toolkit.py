"""The CUDA toolkit from PyPI wheels (nerfaccel_plugin/_ext/toolkit.py), on fake wheel layouts (no GPU, no nvcc run).

The real build with the wheels and the system toolkit hidden is .ci/build_cuda_pypi.sh.
"""

from __future__ import annotations

import sys

import pytest

from nerfaccel_plugin._ext import build, toolkit


def fake_wheels(root, layout: str = "cu13"):
    """The files the toolkit wheels install (empty stand-ins)."""
    if layout == "cu13":
        parts = {p: root / "nvidia" / "cu13" for p in ("nvcc", "nvvm", "crt", "cccl", "runtime")}
    else:  # CUDA 12: one folder per component
        parts = {
            "nvcc": root / "nvidia" / "cuda_nvcc", "nvvm": root / "nvidia" / "cuda_nvcc",
            "crt": root / "nvidia" / "cuda_nvcc", "cccl": root / "nvidia" / "cuda_cccl",
            "runtime": root / "nvidia" / "cuda_runtime",
        }  # fmt: skip
    files = {
        "nvcc": ["bin/nvcc", "bin/ptxas", "bin/nvcc.profile"],
        "nvvm": ["nvvm/bin/cicc", "nvvm/libdevice/libdevice.10.bc"],
        "crt": ["include/crt/host_config.h"],
        "cccl": ["include/cccl/cuda/std/version" if layout == "cu13" else "include/cuda/std/version"],
        "runtime": ["include/cuda_runtime.h", "lib/libcudart.so.13", "lib/libcudadevrt.a"],
    }
    for part, rels in files.items():
        for rel in rels:
            path = parts[part] / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    return root


@pytest.mark.parametrize("layout", ["cu13", "cu12"])
def test_assembles_a_cuda_home_tree(tmp_path, monkeypatch, layout):
    site = fake_wheels(tmp_path / "site", layout)
    monkeypatch.setattr(sys, "path", [str(site)])
    major = "13" if layout == "cu13" else "12"
    assert toolkit.missing_parts(major) == []
    assert toolkit.find_nvcc(major) is not None
    tree = toolkit.assemble(tmp_path / "cache", major)
    assert tree is not None
    for rel in ("bin/nvcc", "bin/ptxas", "nvvm/bin/cicc", "include/cuda_runtime.h", "include/crt/host_config.h",
                "lib64/libcudart.so", "lib/libcudart.so"):  # fmt: skip
        assert (tree / rel).exists(), rel
    assert (tree / "lib64" / "libcudart.so").resolve().name == "libcudart.so.13"
    assert toolkit.assemble(tmp_path / "cache", major) == tree  # built once, then reused


def test_missing_wheels_are_named(tmp_path, monkeypatch):
    site = fake_wheels(tmp_path / "site")
    (site / "nvidia" / "cu13" / "nvvm" / "bin" / "cicc").unlink()
    (site / "nvidia" / "cu13" / "include" / "crt" / "host_config.h").unlink()
    monkeypatch.setattr(sys, "path", [str(site)])
    missing = toolkit.missing_parts("13")
    assert any("nvidia-nvvm" in m for m in missing) and any("nvidia-cuda-crt" in m for m in missing)
    assert toolkit.assemble(tmp_path / "cache", "13") is None
    assert "nerfaccel[cuda]" in toolkit.install_hint()


def test_no_wheels_no_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert toolkit.component_roots("13") == [] and toolkit.assemble(tmp_path / "cache", "13") is None


def test_no_compiler_says_what_to_install(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    problem = build._toolchain_problem("cpp")
    assert problem is not None and "no-such-c++-compiler" in problem
    assert any(hint in problem for hint in ("apt-get install g++", "dnf install gcc-c++", "pacman -S gcc",
                                             "zypper install gcc-c++", "xcode-select", "install a C++ compiler"))


def test_cuda_home_prefers_the_system_toolkit(monkeypatch, tmp_path):
    """With CUDA_HOME set, the PyPI tree is not consulted."""
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(toolkit, "pypi_cuda_home", lambda: pytest.fail("must not be consulted"))
    assert build.cuda_home() == str(tmp_path)
