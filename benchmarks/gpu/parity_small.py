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
    from nerfaccel_plugin._ext import load_backend, selftest

    kind, device = ("cpp", "cpu") if args.dry_run or not torch.cuda.is_available() else ("cuda", "cuda")
    outcome = selftest.run(load_backend(kind), device)
    print(f"{kind} ops on {device}: {outcome.summary()} {outcome.detail}")
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
