"""Correctness of the Triton kernels on a GPU, against the PyTorch reference in float64 (no timing).

    python benchmarks/triton_gpu_check.py                       # CUDA, tiles of 1024, GPU-sized layouts
    TRITON_INTERPRET=1 python benchmarks/triton_gpu_check.py --device cpu --scale 0.01   # self-test, slow

Layouts: packed with geometric counts (mean 30, capped at 256, 30% empty), chunks out of order with samples
outside every chunk, batched 4096 x 48, a 200k-sample ray among short ones (skipped below --scale 1), unsorted ray
indices. Every op, forward and backward (all cotangents), float32 and float64. The float32 kernels are compared
with the float64 reference (tolerance 1e-5 absolute on transmittance/weights, relative on sums); exits 1 on any
mismatch and prints the worst error per check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfaccel_plugin import _torch_impl as ref  # noqa: E402


def layouts(scale: float, gen: torch.Generator):
    out = []
    r = max(16, int(2**18 * scale))
    u = torch.rand(r, generator=gen, dtype=torch.float64).clamp(min=1e-12)
    counts = (torch.floor(torch.log(u) / torch.log1p(torch.tensor(-1 / 30.0, dtype=torch.float64))) + 1).long()
    counts = counts.clamp(1, 256)
    counts[torch.rand(r, generator=gen) < 0.3] = 0
    starts = torch.cumsum(counts, 0) - counts
    out.append(("geo30 packed", torch.stack([starts, counts], -1), int(counts.sum()), None))
    # out of order with gaps
    perm = torch.randperm(r, generator=gen)
    gaps = torch.randint(0, 3, (r,), generator=gen)
    sizes = (counts + gaps)[perm]
    pstarts = torch.empty_like(starts)
    pstarts[perm] = torch.cumsum(sizes, 0) - sizes + gaps[perm]
    out.append(("shuffled with gaps", torch.stack([pstarts, counts], -1), int(sizes.sum()) + 7, None))
    rows = max(8, int(4096 * scale))
    out.append((f"batched {rows}x48", None, rows * 48, (rows, 48)))
    if scale >= 1:
        c = torch.tensor([3, 200_000, 5, 0, 1])
        out.append(("200k ray", torch.stack([torch.cumsum(c, 0) - c, c], -1), int(c.sum()), None))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=float, default=1.0, help="layout size factor (1: GPU sizes)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    from nerfaccel_plugin._triton import accumulate, scan, volrend  # noqa: PLC0415

    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    bad = []

    def check(what, got, want, tol, rel=False):
        got, want = got.detach().double().cpu(), want.detach().double()
        err = (got - want).abs()
        if rel:
            err = err / want.abs().clamp(min=1.0)
        worst = float(err.max()) if err.numel() else 0.0
        ok = worst <= tol and got.shape == want.shape
        print(f"{'ok  ' if ok else 'FAIL'} {what}: max err {worst:.2e} (tol {tol:.0e})", flush=True)
        if not ok:
            bad.append(what)

    for name, pi, n, shape in layouts(args.scale, gen):
        pi_ref = pi if pi is not None else torch.stack([torch.arange(shape[0]) * 48, torch.full((shape[0],), 48)], -1)
        pi_dev = None if pi is None else pi.to(dev)
        shp = shape or (n,)
        ts = torch.rand(n, generator=gen, dtype=torch.float64) * 1e-3
        te = ts + 1e-4 * torch.rand(n, generator=gen, dtype=torch.float64)
        sg = torch.rand(n, generator=gen, dtype=torch.float64) * 1000.0
        al = torch.rand(n, generator=gen, dtype=torch.float64) * 0.05
        x = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
        gs = [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(3)]
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):

            def d(t, dtype=dtype):
                return t.to(dtype).reshape(shp).to(dev)

            leaves = [v.clone().requires_grad_(True) for v in (ts, te, sg)]
            want = ref._render_weight_from_density(*leaves, pi_ref)
            sum((w * g).sum() for w, g in zip(want, gs, strict=True)).backward()
            got = volrend.render_weight_from_density_fwd(d(ts), d(te), d(sg), pi_dev)
            for o, w, nm in zip(got, want, ("weights", "trans", "alphas"), strict=True):
                check(f"{name} {dtype} density {nm}", o.reshape(-1), w, tol)
            gg = volrend.render_weight_from_density_bwd(
                d(gs[0]), d(gs[1]), d(gs[2]), d(ts), d(te), d(sg), got[1], got[2], pi_dev, False, True
            )
            scale_g = float(leaves[2].grad.abs().max()) or 1.0
            check(f"{name} {dtype} density grad sigmas", gg[2].reshape(-1) / scale_g, leaves[2].grad / scale_g, tol)
            a_leaf = al.clone().requires_grad_(True)
            want = ref._render_weight_from_alpha(a_leaf, pi_ref)
            sum((w * g).sum() for w, g in zip(want, gs[:2], strict=True)).backward()
            got = volrend.render_weight_from_alpha_fwd(d(al), pi_dev)
            check(f"{name} {dtype} alpha weights", got[0].reshape(-1), want[0], tol)
            ga = volrend.render_weight_from_alpha_bwd(d(gs[0]), d(gs[1]), d(al), got[1], pi_dev)
            check(f"{name} {dtype} alpha grad", ga.reshape(-1), a_leaf.grad, tol * 10, rel=True)
            for prod, exc, fn in ((False, False, ref._inclusive_sum), (True, True, ref._exclusive_prod)):
                xin = (1 - al) if prod else x
                leaf = xin.clone().requires_grad_(True)
                want = fn(leaf, pi_ref)
                want.backward(gs[0])
                got = scan.scan_fwd(d(xin), pi_dev, prod, exc)
                check(f"{name} {dtype} scan prod={prod} excl={exc}", got.reshape(-1), want, tol, rel=True)
                gx = scan.scan_bwd(d(gs[0]), d(xin), got, pi_dev, prod, exc)
                check(f"{name} {dtype} scan grad prod={prod} excl={exc}", gx.reshape(-1), leaf.grad, tol, rel=True)
        if pi is not None and name.startswith("geo30"):
            r = pi.shape[0]
            idx = torch.randint(0, r, (n,), generator=gen)  # unsorted
            for sort in (True, False):
                ii = idx.sort().values if sort else idx
                w = torch.rand(n, generator=gen, dtype=torch.float64, requires_grad=True)
                v = torch.rand(n, 3, generator=gen, dtype=torch.float64, requires_grad=True)
                want = ref._accumulate_along_rays(w, v, ii, r)
                go = torch.randn(want.shape, generator=gen, dtype=torch.float64)
                want.backward(go)
                got = accumulate.accumulate_along_rays_fwd(w.detach().to(dev), v.detach().to(dev), ii.to(dev), r)
                check(f"accumulate sorted={sort} float64", got, want, 1e-9, rel=True)
                gw, gv = accumulate.accumulate_along_rays_bwd(
                    go.to(dev), w.detach().to(dev), v.detach().to(dev), ii.to(dev), True, True
                )
                got_g = torch.cat([gw, gv.reshape(-1)])
                check(f"accumulate grads sorted={sort}", got_g, torch.cat([w.grad, v.grad.reshape(-1)]), 1e-9)
    print(f"{len(bad)} failures" + (": " + ", ".join(bad) if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
