"""A small CUDA parity run for compute-sanitizer: every compiled op on small inputs (the self-test's, with empty and
one-sample rays) against the PyTorch reference on the GPU, plus the Triton hash kernels (forward and backward)
against Nerfstudio's math written out in PyTorch. Exit 1 on a mismatch. ``--dry-run``: CPU build, no GPU.

    compute-sanitizer --tool memcheck python benchmarks/gpu/parity_small.py
"""

from __future__ import annotations

import argparse
import sys

import torch


def hash_reference(x, table, scales, table_size):
    """Nerfstudio's HashEncoding.pytorch_fwd written out (corners, hash, Python's %, trilinear)."""
    levels = scales.shape[0]
    s = x[:, None, :] * scales[:, None]
    lo, hi = torch.floor(s).int(), torch.ceil(s).int()
    o = s - lo
    primes = torch.tensor([1, 2654435761, 805459861], device=x.device)
    out = 0
    for k in range(8):
        bits = torch.tensor([(k >> a) & 1 for a in range(3)], dtype=torch.bool, device=x.device)
        c = torch.where(bits, hi, lo).long() * primes
        h = (c[..., 0] ^ c[..., 1] ^ c[..., 2]) % table_size + torch.arange(levels, device=x.device) * table_size
        out = out + torch.where(bits, o, 1 - o).prod(-1, keepdim=True) * table[h]
    return out.flatten(1)


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

        g = torch.Generator().manual_seed(0)
        table_size, levels = 64, 3
        x = (torch.rand(257, 3, generator=g) * 1.4 - 0.2).cuda().requires_grad_()
        table = torch.randn(levels * table_size, 2, generator=g).cuda().requires_grad_()
        scales = torch.tensor([4.0, 9.0, 17.0], device="cuda")
        ref = hash_reference(x, table, scales, table_size)
        cot = torch.randn_like(ref)
        gx_ref, gt_ref = torch.autograd.grad(ref, (x, table), cot)
        y = th.hash_encode_fwd(x.detach(), table.detach(), scales, table_size)
        gt, gx = th.hash_encode_bwd(cot, x.detach(), table.detach(), scales, table_size, True)
        errs = [(y - ref).abs().max().item(), (gt - gt_ref).abs().max().item(), (gx - gx_ref).abs().max().item()]
        tol = [1e-5, 1e-4, 1e-3 * max(1.0, gx_ref.abs().max().item())]
        hash_ok = all(e <= t for e, t in zip(errs, tol, strict=True))
        print(f"triton hash (fwd, d table, d x) max errors: {errs} -> {'ok' if hash_ok else 'MISMATCH'}")
        ok = ok and hash_ok
        torch.cuda.synchronize()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
