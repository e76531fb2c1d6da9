"""Triton CUDA kernels (each family in its own module; imported only where Triton and a GPU are used)."""
