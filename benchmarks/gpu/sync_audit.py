"""Sync audit: one training step per sampler with ``torch.cuda.set_sync_debug_mode("warn")``.

Each step (occupancy-grid sampler, proposal sampler) runs a tiny MLP field through nerfaccel's public API (sampling,
rendering, backward, estimator update) after a warm-up step, with PyTorch warning on every host-device
synchronisation; the warnings (with the line of nerfaccel code that caused each) are counted and written as JSON.
Needs no Nerfstudio. ``--dry-run`` builds everything on the CPU and reports the audit as skipped.

    python benchmarks/gpu/sync_audit.py --out $OUT/sync-audit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path

import torch

import nerfaccel_plugin as nacc

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


class Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return torch.sigmoid(out[..., :3]), torch.nn.functional.softplus(out[..., 3])


def rays(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3
    d = torch.nn.functional.normalize((torch.rand(n, 3, generator=g) - 0.5) - o, dim=-1)
    return o.to(device), d.to(device)


def occ_step(device: torch.device, field: Field, est, opt, step: int) -> None:
    o, d = rays(4096, device)

    def sigma_fn(t0, t1, ri):
        x = o[ri] + d[ri] * ((t0 + t1) / 2)[:, None]
        return field(x)[1]

    def rgb_sigma_fn(t0, t1, ri):
        x = o[ri] + d[ri] * ((t0 + t1) / 2)[:, None]
        return field(x)

    est.update_every_n_steps(step, occ_eval_fn=lambda x: field(x)[1][:, None] * 0.01, occ_thre=0.01, n=1)
    ri, t0, t1 = est.sampling(o, d, sigma_fn=sigma_fn, render_step_size=0.02, near_plane=0.0, far_plane=10.0)
    rgb, _, _, _ = nacc.rendering(t0, t1, ri, n_rays=o.shape[0], rgb_sigma_fn=rgb_sigma_fn)
    opt.zero_grad()
    rgb.square().mean().backward()
    opt.step()


def prop_step(device: torch.device, field: Field, props, est, opt, step: int) -> None:
    o, d = rays(4096, device)

    def prop_sigma_fn(t0, t1, fn):
        x = o[:, None, :] + d[:, None, :] * ((t0 + t1) / 2)[..., None]
        return fn(x)[1]

    def rgb_sigma_fn(t0, t1, ri):
        x = o[:, None, :] + d[:, None, :] * ((t0 + t1) / 2)[..., None]
        return field(x)

    t0, t1 = est.sampling(
        prop_sigma_fns=[lambda a, b, p=p: prop_sigma_fn(a, b, p) for p in props], prop_samples=[32],
        num_samples=48, n_rays=o.shape[0], near_plane=0.1, far_plane=6.0, sampling_type="lindisp",
        stratified=True, requires_grad=True,
    )  # fmt: skip
    rgb, _, _, extras = nacc.rendering(t0, t1, None, rgb_sigma_fn=rgb_sigma_fn)
    opt.zero_grad()
    loss = rgb.square().mean()
    loss.backward()
    est.update_every_n_steps(extras["trans"], True, loss_scaler=1.0)
    opt.step()


def audit(name: str, fn, device: torch.device) -> dict:
    fn(0)  # warm-up: first-use builds, self-test, allocator growth are not audited
    torch.cuda.synchronize()
    records: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(1)
            torch.cuda.current_stream().query()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" not in str(w.message).lower():
            continue
        records.append({"message": str(w.message)[:200], "where": f"{w.filename}:{w.lineno}"})
    ours = [r for r in records if "nerfaccel_plugin" in r["where"]]
    return {"sampler": name, "syncs": len(records), "syncs_in_nerfaccel": len(ours), "records": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="set up on the CPU and report skipped")
    args = parser.parse_args(argv)
    if args.dry_run or not torch.cuda.is_available():
        device = torch.device("cpu")
        field = Field()
        est = nacc.OccGridEstimator(roi_aabb=AABB, resolution=32, levels=1)
        opt = torch.optim.Adam(field.parameters(), 1e-3)
        occ_step(device, field, est, opt, 0)  # the setup runs (CPU), the audit itself needs a GPU
        props = [Field()]
        popt = torch.optim.Adam([*field.parameters(), *props[0].parameters()], 1e-3)
        prop_step(device, field, props, nacc.PropNetEstimator(popt), popt, 0)
        print("sync audit: SKIPPED (no GPU: torch.cuda.is_available() is False); setup ran on the CPU")
        return 0
    device = torch.device("cuda")
    results = []
    field = Field().to(device)
    est = nacc.OccGridEstimator(roi_aabb=AABB.to(device), resolution=64, levels=1).to(device)
    opt = torch.optim.Adam(field.parameters(), 1e-3)
    results.append(audit("occupancy grid", lambda s: occ_step(device, field, est, opt, s), device))
    field2 = Field().to(device)
    props = [Field().to(device)]
    popt = torch.optim.Adam([*field2.parameters(), *props[0].parameters()], 1e-3)
    pest = nacc.PropNetEstimator(popt).to(device)
    results.append(audit("proposal", lambda s: prop_step(device, field2, props, pest, popt, s), device))
    for r in results:
        print(f"{r['sampler']}: {r['syncs']} syncs ({r['syncs_in_nerfaccel']} from nerfaccel code)")
        for rec in r["records"][:20]:
            print(f"    {rec['where']}: {rec['message'][:100]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001 - the stage reports the traceback
        traceback.print_exc()
        sys.exit(1)
