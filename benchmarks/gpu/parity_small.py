"""A small CUDA parity run for compute-sanitizer: every compiled op on small inputs (the self-test's, with empty and
one-sample rays) against the PyTorch reference on the GPU, plus the Triton hash kernels (forward and backward)
against Nerfstudio's math written out in PyTorch (``selftest.run_hash``). Exit 1 on a mismatch.
``--dry-run``: CPU build, no GPU.

    compute-sanitizer --tool memcheck python benchmarks/gpu/parity_small.py
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    from types import SimpleNamespace

    from nerfaccel_plugin import _backend, _ops
    from nerfaccel_plugin._ext import selftest

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    state = _backend._device(device)  # loads the device's kernels (extension and/or Triton), as the library does
    if not state.loaded:
        print(f"no compiled kernels for {device}: {state.reason}")
        return 1
    # the registered kernels of every op, called as the library calls them (the self-test's own namespace)
    kernels = {
        "_" + c.name: c.fn
        for c in _ops.KERNEL_CALLS.values()
        if c.name != "hash_encode" and _backend._has_kernel(c.op, device)
    }  # fmt: skip
    outcome = selftest.run(SimpleNamespace(available_ops=set(kernels), **kernels), device)
    print(f"{state.backend} kernels ({len(kernels)} ops) on {device}: {outcome.summary()} {outcome.detail}")
    ok = outcome.passed
    if device == "cuda":
        from nerfaccel_plugin._triton import hash as th

        hash_outcome = selftest.run_hash(th.hash_encode_fwd, th.hash_encode_bwd, "cuda")
        print(f"triton hash on cuda: {hash_outcome.summary()} {hash_outcome.errors}")
        ok = ok and hash_outcome.passed
        torch.cuda.synchronize()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
