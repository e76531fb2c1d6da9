"""Backends side by side on identical inputs: PyTorch vs C++ on the CPU; CUDA vs nerfacc 0.5.2 on a GPU.

Usage::

    python benchmarks/bench_backends.py                                   # CPU: torch vs cpp, 4096 rays x ~64
    python benchmarks/bench_backends.py --out benchmarks/results/backends-cpu.md
    python benchmarks/bench_backends.py --device cuda \\
        --out benchmarks/results/backends-cuda.md                         # CUDA vs nerfacc, 131072 rays x ~128
    python benchmarks/bench_backends.py --device cuda --torch             # also the PyTorch backend on the GPU
    python benchmarks/bench_backends.py --device cuda --only rendering scan
    python benchmarks/bench_backends.py --device cuda --backend triton \\
        --layout geo30 4096x48 4096x96 131072x128                        # Triton kernels for the segmented ops

Layouts (``--layout``, one table each): ``default`` (--rays x ~--spp, uniform counts), ``geo30`` (2^18 rays,
geometric counts of mean 30 capped at 256, 30% empty), ``4096x48``, ``4096x96``, ``131072x128``. Traversal rows
come once per ``--traversal cone:levels`` (default cone 0 with 1 level and cone 1/256 with 4 levels). Next to our
time: "B/sample model" (bytes the Triton kernels move per item, modelled in docs/triton.md; --backend triton only)
and "B/sample min" (the minimum); on a GPU also the modelled bytes as a share of the measured copy bandwidth.

Every row calls the *public API* the same way for both libraries: one recipe ``api -> thunk`` is built once with
``nerfaccel_plugin`` and once with ``nerfacc`` (same functions, same arguments: the same ``packed_info`` or
``ray_indices`` + ``n_rays``, the same batched tensors, the same estimator settings). Our backend is forced per
column with ``NERFACCEL_BACKEND`` (``torch`` / ``cpp`` / ``cuda``), so a missing extension raises instead of
silently timing the reference. Our input value checks (``NERFACCEL_SKIP_VALUE_CHECKS``) are off unless
``--value-checks``: nerfacc does none, and on a GPU each check is a host sync.

Timing: warm-up calls, then the median of ``--repeat`` calls; on CUDA with CUDA events (the host waits after the
end event, outside the timed region). "fwd+bwd" = forward, then backward from fixed random cotangents (for
``render_weight_from_*`` only on the weights, as ``rendering`` uses them). Ratios: ``other time / ours`` (higher is
faster for us). "max |diff|": the largest difference between our and nerfacc's outputs (forward rows) or input
gradients (fwd+bwd rows) on the same inputs, as a check that both did the same work; "-" for random rows.

Targets (GPU, vs nerfacc, at >= 1e7 samples): traversal >= 1.5x, rendering fwd+bwd >= 2x and >= 60% of the card's
measured copy bandwidth, importance sampling >= 1.5x, scans >= 1x. Bandwidth: the bytes the op must at least read
and write (listed per row in the footnotes) / our time, as a share of a large device-to-device copy's
(bytes read + written) / time on the same device.

On the CPU nerfacc runs only its batched (padded) forms, accumulation and the grid update (its packed ops,
traversal and sampling are CUDA-only); those rows get a nerfacc column there too. nerfacc is used only here and in
the parity tests; the library never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_util as bu  # noqa: E402

import nerfaccel_plugin as ours  # noqa: E402

TARGETS = {"traversal": 1.5, "rendering": 2.0, "sampling": 1.5, "scan": 1.0}
BW_TARGET = 0.60
BW_MIN_SAMPLES = 10**7
F32, I64 = 4, 8


@dataclass
class Case:
    group: str
    name: str
    form: str  # packed | ray_indices | batched | rays | cells
    make: Callable[[Any], Callable[[], Any]]  # api module -> thunk
    items: int  # samples (or rays / cells) the op processes
    target: bool = True  # the group's target applies to this row
    nerfacc: bool = True  # nerfacc has this op
    nerfacc_cpu: bool = False  # nerfacc runs it on CPU tensors
    compare: bool = True  # deterministic: compare our output with nerfacc's
    min_bytes: int | None = None
    bytes_doc: str = ""
    model_bytes: int | None = None  # modelled bytes the Triton kernels move (--backend triton)


def _layout_bytes(form: str, n: int, r: int, passes: int) -> int:
    """Bytes of the sample layout the op must read: packed_info (16 B per ray) per pass; ray_indices (8 B per
    sample) once, plus a 16 B per-ray layout written by the forward and read by the backward pass (32 B per ray);
    nothing for batched."""
    if form == "packed":
        return 2 * I64 * r * passes
    if form == "ray_indices":
        return I64 * n + (4 * I64 * r if passes > 1 else 0)
    return 0


# Layout presets: (rays, samples per ray, count distribution). "default" takes --rays/--spp.
LAYOUTS = {
    "default": (None, None, "uniform"),
    "geo30": (2**18, 30, "geometric"),  # geometric counts, mean 30, capped at 256, 30% of the rays empty
    "4096x48": (4096, 48, "uniform"),
    "4096x96": (4096, 96, "uniform"),
    "131072x128": (131072, 128, "uniform"),
}


def make_layout(dist: str, n_rays: int, spp: int, device: torch.device, seed: int = 0):
    """``(packed_info, ray_indices, t_starts, t_ends, n)``; ``uniform``: as ``_bench_util.packed_layout``
    (counts uniform in [spp/2, 3spp/2], every 16th ray empty); ``geometric``: counts geometric with mean ``spp``
    (before the cap), capped at 256, 30% of the rays empty."""
    if dist == "uniform":
        return bu.packed_layout(n_rays, spp, device, seed)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n_rays, generator=g, dtype=torch.float64).clamp(min=1e-12)
    counts = (torch.floor(torch.log(u) / torch.log1p(torch.tensor(-1.0 / spp, dtype=torch.float64))) + 1).long()
    counts = counts.clamp(1, 256)
    counts[torch.rand(n_rays, generator=g) < 0.3] = 0
    starts = torch.cumsum(counts, 0) - counts
    packed_info = torch.stack([starts, counts], -1).to(device)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts).to(device)
    n = int(counts.sum())
    pos = torch.arange(n) - torch.repeat_interleave(starts, counts)
    step = 4.0 / max(1, spp)
    t0 = (torch.repeat_interleave(torch.rand(n_rays, generator=g), counts) + pos * step).float().to(device)
    return packed_info, ray_indices, t0, t0 + step, n


# Triton kernels (docs/triton.md): floats read + written per sample, as (phase 1, phase 3) of the three-phase
# scans. Phase 1 reads only each tile's last segment (the samples after its last ray start): a fraction
# min(1, mean count / 1024) of the inputs; phase 3 reads the inputs and writes the outputs. Loads shifted by one
# sample hit the cache and are not counted. A packed layout costs each op call a zeroed int32 chunk-end mark (4 B
# written) read in both phases (8 B), plus 20 B per ray (packed_info read, mark scattered); ray_indices go through
# pack_info first (8 B per sample read, 16 B per ray written, once per fwd+bwd). Estimates, not measurements.
_TRITON_FLOATS = {
    "render_weight_from_density fwd": (3, 6, 1),  # ts, te, sg (phase 1); ts, te, sg read, w, T, a written
    "render_weight_from_density fwd+bwd": (6, 13, 2),  # + bwd (gw only): T, gw, a; T, gw, a, ts, te, sg, g_sigma
    "render_weight_from_alpha fwd": (1, 3, 1),  # a; a read, w, T written
    "render_weight_from_alpha fwd+bwd": (3, 7, 2),  # + bwd: a, gw; a, gw, T read, g_alpha written
    "sum fwd": (1, 2, 1),
    "sum fwd+bwd": (2, 4, 2),
    "prod fwd": (1, 2, 1),
    "prod fwd+bwd": (3, 6, 2),  # + bwd: x, g; x, g, y read, g_x written
}
TRITON_BLOCK = 1024


def triton_model_bytes(name: str, form: str, n: int, r: int, mean_count: float) -> int | None:
    """Modelled bytes moved by the Triton kernels for a row, or None when the row has no model."""
    key = name
    for op in ("inclusive_", "exclusive_"):
        key = key.replace(op, "")
    if name.startswith("accumulate_along_rays"):
        # fwd: w, 3 values, index; bwd: index, w, values, go (per ray, cached), g_w and g_values written; the
        # output (zeroed, then atomics) and go: 3 floats per ray each
        return (8 * F32 + 2 * I64) * n + 3 * 3 * F32 * r
    if key not in _TRITON_FLOATS:
        return None
    p1, p3, calls = _TRITON_FLOATS[key]
    total = int((p1 * min(1.0, mean_count / TRITON_BLOCK) + p3) * F32 * n)
    if form in ("packed", "ray_indices"):
        total += calls * (12 * n + 20 * r)
    if form == "ray_indices":
        total += I64 * n + 2 * I64 * r
    return total


def build_cases(args, device: torch.device) -> tuple[list[Case], dict]:
    r, spp, res = args.rays, args.spp, args.res
    g = torch.Generator().manual_seed(0)
    _, ray_indices, t0, t1, n = make_layout(args.dist, r, spp, device)
    # packed_info as users get it (from pack_info, like the samplers' output), for both libraries: ours marks it as
    # tiling the samples, which lets our CUDA density kernels skip a pass.
    packed_info = ours.pack_info(ray_indices, r)
    rays_o = (torch.rand(r, 3, generator=g) * 0.2 - 0.1).to(device)
    d = torch.randn(r, 3, generator=g)
    rays_d = (d / d.norm(dim=-1, keepdim=True)).to(device)
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], device=device)
    max_levels = max(levels for _, levels in args.traversal)
    binaries_all = (torch.rand(max_levels, res, res, res, generator=g) > 0.7).to(device)
    near = torch.zeros(r, device=device)
    far = torch.full((r,), 1e10, device=device)
    sigmas = (torch.rand(n, generator=g) * 5).to(device)
    alphas = (torch.rand(n, generator=g) * 0.1).to(device)
    rgbs = torch.rand(n, 3, generator=g).to(device)
    # Batched (padded) layout: r rays x spp samples.
    tb = torch.sort(torch.rand(r, spp + 1, generator=g) * 4, dim=-1).values.to(device)
    t0b, t1b = tb[:, :-1].contiguous(), tb[:, 1:].contiguous()
    sigmas_b = (torch.rand(r, spp, generator=g) * 5).to(device)
    alphas_b = (torch.rand(r, spp, generator=g) * 0.1).to(device)
    rgbs_b = torch.rand(r, spp, 3, generator=g).to(device)
    nb = r * spp
    step = args.step
    cases: list[Case] = []

    def field_sigma(t_starts, t_ends, ray_idx):
        return ((t_starts + t_ends) * 3.0).sin().abs() * 20.0

    def occ_est(api):  # the grid-update row: the first traversal configuration's grid
        est = api.OccGridEstimator(roi_aabb=aabb, resolution=res, levels=1).to(device)
        est.binaries.copy_(binaries_all[:1].contiguous().view(est.binaries.shape))
        return est

    # ---- traversal (one set of rows per --traversal cone:levels) ------------------------------------------------
    n_travs: dict[str, int] = {}
    for cone, levels in args.traversal:
        binaries = binaries_all[:levels].contiguous()
        center, half = (aabb[:3] + aabb[3:]) / 2, (aabb[3:] - aabb[:3]) / 2
        aabbs = torch.stack([torch.cat([center - half * 2**i, center + half * 2**i]) for i in range(levels)])
        tag = f"cone {cone:g}, {levels} level{'s' if levels > 1 else ''}"

        def occ_est_l(api, levels=levels, binaries=binaries):
            est = api.OccGridEstimator(roi_aabb=aabb, resolution=res, levels=levels).to(device)
            est.binaries.copy_(binaries.view(est.binaries.shape))
            return est

        try:
            args_t = (rays_o, rays_d, binaries, aabbs, near, far, step, cone)
            n_trav = ours.traverse_grids(*args_t)[1].vals.numel()
        except Exception as err:  # reported again in the traversal rows
            print(f"traverse_grids failed while sizing the inputs: {err}", flush=True)
            n_trav = -1
        n_travs[tag] = n_trav
        cases.append(
            Case(
                "traversal",
                f"traverse_grids ({tag})",
                "rays",
                lambda api, a=(rays_o, rays_d, binaries, aabbs, near, far, step, cone): lambda: api.traverse_grids(*a),
                n_trav,
            )
        )

        def sampling_plain(api, occ_est=occ_est_l, cone=cone):
            est = occ_est(api)
            return lambda: est.sampling(rays_o, rays_d, render_step_size=step, near_plane=0.0, cone_angle=cone)

        cases.append(Case("traversal", f"OccGridEstimator.sampling ({tag})", "rays", sampling_plain, n_trav))

        def sampling_sigma(api, occ_est=occ_est_l, cone=cone):
            est = occ_est(api)
            return lambda: est.sampling(
                rays_o, rays_d, sigma_fn=field_sigma, render_step_size=step, near_plane=0.0, cone_angle=cone
            )

        cases.append(Case("traversal", f"OccGridEstimator.sampling + sigma_fn ({tag})", "rays", sampling_sigma, n_trav))

    # ---- rendering -----------------------------------------------------------------------------------------
    for form in ("packed", "ray_indices", "batched"):
        if form == "batched":
            ts, te, sg, al, m, cpu_ok = t0b, t1b, sigmas_b, alphas_b, nb, True
            kw: dict = {}
        else:
            ts, te, sg, al, m, cpu_ok = t0, t1, sigmas, alphas, n, False
            kw = {"packed_info": packed_info} if form == "packed" else {"ray_indices": ray_indices, "n_rays": r}

        def dens(api, ts=ts, te=te, kw=kw):
            return lambda s: api.render_weight_from_density(ts, te, s, **kw)

        def alph(api, kw=kw):
            return lambda a: api.render_weight_from_alpha(a, **kw)

        cases += [
            Case(
                "rendering",
                "render_weight_from_density fwd",
                form,
                lambda api, dens=dens, sg=sg: (lambda f: lambda: f(sg))(dens(api)),
                m,
                target=False,
                nerfacc_cpu=cpu_ok,
                min_bytes=6 * F32 * m + _layout_bytes(form, m, r, 1),
                bytes_doc="reads t_starts, t_ends, sigmas; writes weights, trans, alphas (6 floats/sample)",
            ),
            Case(
                "rendering",
                "render_weight_from_density fwd+bwd",
                form,
                lambda api, dens=dens, sg=sg: bu.fwd_bwd(dens(api), [sg], grad_outputs=1),
                m,
                nerfacc_cpu=cpu_ok,
                min_bytes=11 * F32 * m + _layout_bytes(form, m, r, 2),
                bytes_doc="fwd 6 floats/sample; bwd reads dL/dweights, t_starts, t_ends, sigmas, writes dL/dsigmas "
                "(5): 11 floats/sample",
            ),
            Case(
                "rendering",
                "render_weight_from_alpha fwd",
                form,
                lambda api, alph=alph, al=al: (lambda f: lambda: f(al))(alph(api)),
                m,
                target=False,
                nerfacc_cpu=cpu_ok,
                min_bytes=3 * F32 * m + _layout_bytes(form, m, r, 1),
                bytes_doc="reads alphas; writes weights, trans (3 floats/sample)",
            ),
            Case(
                "rendering",
                "render_weight_from_alpha fwd+bwd",
                form,
                lambda api, alph=alph, al=al: bu.fwd_bwd(alph(api), [al], grad_outputs=1),
                m,
                nerfacc_cpu=cpu_ok,
                min_bytes=6 * F32 * m + _layout_bytes(form, m, r, 2),
                bytes_doc="fwd 3 floats/sample; bwd reads dL/dweights, alphas, writes dL/dalphas (3): 6 floats/sample",
            ),
        ]

    def rendering_case(api, batched: bool):
        if batched:

            def fn(rgb, s):
                c, o, dpt, _ = api.rendering(t0b, t1b, rgb_sigma_fn=lambda *_: (rgb, s))
                return c, o, dpt

            return bu.fwd_bwd(fn, [rgbs_b, sigmas_b])

        def fn(rgb, s):
            c, o, dpt, _ = api.rendering(t0, t1, ray_indices, r, rgb_sigma_fn=lambda *_: (rgb, s))
            return c, o, dpt

        return bu.fwd_bwd(fn, [rgbs, sigmas])

    cases.append(
        Case("rendering", "rendering (rgb_sigma_fn) fwd+bwd", "ray_indices", lambda api: rendering_case(api, False), n)
    )
    cases.append(
        Case(
            "rendering",
            "rendering (rgb_sigma_fn) fwd+bwd",
            "batched",
            lambda api: rendering_case(api, True),
            nb,
            nerfacc_cpu=True,
        )
    )

    # ---- importance sampling -------------------------------------------------------------------------------
    cdf_b = torch.rand(r, spp + 1, generator=g).cumsum(-1)
    cdf_b = ((cdf_b - cdf_b[:, :1]) / (cdf_b[:, -1:] - cdf_b[:, :1])).to(device)
    edges_b = torch.linspace(0.0, 1.0, spp + 1).expand(r, -1).contiguous().to(device)
    cases.append(
        Case(
            "sampling",
            f"importance_sampling ({spp}+1 edges -> {spp}, stratified)",
            "batched",
            lambda api: (lambda iv: lambda: api.importance_sampling(iv, cdf_b, spp, stratified=True))(
                api.RayIntervals(vals=edges_b)
            ),
            r * spp,
            compare=False,
        )
    )
    cases.append(
        Case(
            "sampling",
            f"importance_sampling ({spp}+1 edges -> {spp})",
            "batched",
            lambda api: (lambda iv: lambda: api.importance_sampling(iv, cdf_b, spp, stratified=False))(
                api.RayIntervals(vals=edges_b)
            ),
            r * spp,
        )
    )
    # Packed: every ray gets its layout's count (at least 1) + 1 edges and is resampled to spp intervals.
    e_counts = packed_info[:, 1].clamp(min=1) + 1
    e_info = torch.stack([torch.cumsum(e_counts, 0) - e_counts, e_counts], -1)
    e_rays = torch.repeat_interleave(torch.arange(r, device=device), e_counts)
    e_pos = torch.arange(e_rays.numel(), device=device) - e_info[e_rays, 0]
    e_frac = e_pos.float() / (e_counts[e_rays] - 1).float()
    edges_p = e_frac.contiguous()
    e_left, e_right = e_pos < e_counts[e_rays] - 1, e_pos > 0
    cdf_p = (e_frac**2).contiguous()
    n_per_ray = torch.full((r,), spp, device=device, dtype=torch.long)
    cases.append(
        Case(
            "sampling",
            f"importance_sampling (-> {spp} per ray)",
            "packed",
            lambda api: (lambda iv: lambda: api.importance_sampling(iv, cdf_p, n_per_ray, stratified=False))(
                api.RayIntervals(vals=edges_p, packed_info=e_info, is_left=e_left, is_right=e_right)
            ),
            r * spp,
        )
    )
    q_vals = torch.sort(torch.rand(r, spp, generator=g), dim=-1).values.reshape(-1).to(device)
    sorted_iv = (e_info, e_left, e_right)
    q_info = torch.stack([torch.arange(r, device=device) * spp, torch.full((r,), spp, device=device)], -1)
    cases.append(
        Case(
            "sampling",
            "searchsorted",
            "packed",
            lambda api: (lambda s, q: lambda: api.searchsorted(s, q))(
                api.RayIntervals(vals=edges_p, packed_info=sorted_iv[0], is_left=sorted_iv[1], is_right=sorted_iv[2]),
                api.RayIntervals(vals=q_vals, packed_info=q_info),
            ),
            r * spp,
            target=False,
        )
    )

    def prop_sigma(t_starts, t_ends):
        return ((t_starts + t_ends) * 2.0).sin().abs() * 5.0

    def prop_case(api, stratified):
        est = api.PropNetEstimator()
        return lambda: est.sampling(
            [prop_sigma, prop_sigma], [256, 96], 48, r, 0.05, 6.0, "lindisp", stratified=stratified
        )

    cases.append(
        Case(
            "sampling",
            "PropNetEstimator.sampling (256, 96 -> 48)",
            "batched",
            lambda api: prop_case(api, False),
            r * 48,
            target=False,
        )
    )

    # ---- scans ---------------------------------------------------------------------------------------------
    prod_in, prod_in_b = 1.0 - alphas, 1.0 - alphas_b
    for op in ("inclusive_sum", "exclusive_sum", "inclusive_prod", "exclusive_prod"):
        x, xb = (sigmas, sigmas_b) if "sum" in op else (prod_in, prod_in_b)
        bwd_reads = 1 if "sum" in op else 2  # a product's backward needs the inputs (or outputs) too
        cases += [
            Case(
                "scan",
                f"{op} fwd",
                "packed",
                lambda api, op=op, x=x: lambda: getattr(api, op)(x, packed_info),
                n,
                min_bytes=2 * F32 * n + _layout_bytes("packed", n, r, 1),
                bytes_doc="reads inputs, writes outputs (2 floats/sample)",
            ),
            Case(
                "scan",
                f"{op} fwd+bwd",
                "packed",
                lambda api, op=op, x=x: bu.fwd_bwd(lambda v: getattr(api, op)(v, packed_info), [x]),
                n,
                min_bytes=(3 + bwd_reads) * F32 * n + _layout_bytes("packed", n, r, 2),
                bytes_doc=f"fwd 2 floats/sample; bwd reads dL/dout{', inputs' if bwd_reads > 1 else ''}, "
                f"writes dL/din ({1 + bwd_reads})",
            ),
            Case(
                "scan",
                f"{op} fwd+bwd",
                "batched",
                lambda api, op=op, xb=xb: bu.fwd_bwd(lambda v: getattr(api, op)(v), [xb]),
                nb,
                nerfacc_cpu=True,
                min_bytes=(3 + bwd_reads) * F32 * nb,
                bytes_doc=f"as packed, no layout ({3 + bwd_reads} floats/sample)",
            ),
        ]

    # ---- other ---------------------------------------------------------------------------------------------
    cases.append(
        Case(
            "other",
            "accumulate_along_rays fwd+bwd",
            "ray_indices",
            lambda api: bu.fwd_bwd(lambda w, v: api.accumulate_along_rays(w, v, ray_indices, r), [alphas, rgbs]),
            n,
            nerfacc_cpu=True,
        )
    )
    cases.append(
        Case("other", "pack_info", "ray_indices", lambda api: lambda: api.pack_info(ray_indices, r), n, compare=True)
    )

    def occ_eval(x):
        return (x * 4.0).sin().prod(dim=-1, keepdim=True).abs() * 0.05

    def grid_update(api):
        est = occ_est(api)
        return lambda: est.update_every_n_steps(step=1024, occ_eval_fn=occ_eval, n=16)

    cases.append(
        Case(
            "other",
            "OccGridEstimator.update_every_n_steps",
            "cells",
            grid_update,
            res**3 // 4,
            nerfacc_cpu=True,
            compare=False,
        )
    )
    pts = (torch.randn(n, 3, generator=g) * 2).to(device)
    cases.append(
        Case(
            "other",
            "contract l2 fwd+bwd",
            "points",
            lambda api: bu.fwd_bwd(lambda x: api.contract(x, aabb, "l2"), [pts]),
            n,
            nerfacc=False,
        )
    )
    cases.append(
        Case(
            "other",
            "distortion fwd+bwd",
            "ray_indices",
            lambda api: bu.fwd_bwd(lambda w: api.distortion(w, t0, t1, ray_indices, r), [alphas]),
            n,
            nerfacc=False,
        )
    )
    for case in cases:
        if args.backend == "triton":
            mean_count = spp if case.form == "batched" else n / max(1, int((packed_info[:, 1] > 0).sum()))
            case.model_bytes = triton_model_bytes(case.name, case.form, case.items, r, mean_count)
        if case.name.startswith("accumulate_along_rays") and case.min_bytes is None:
            case.min_bytes = (8 * F32 + 2 * I64) * n + 3 * 3 * F32 * r
            case.bytes_doc = (
                "fwd reads weights, 3 values, ray index (16 B + 8 B); bwd reads the index, weights, values, writes "
                "their gradients (8 B + 32 B); 36 B per ray for the output and its cotangent"
            )
    data = {"n": n, "n_trav": ", ".join(f"{k}: {v}" for k, v in n_travs.items()), "nb": nb}
    return cases, data


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in _tensors(y)]
    if hasattr(x, "vals") and isinstance(x.vals, torch.Tensor):
        return [x.vals]
    return []


def _max_diff(a, b) -> str:
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb):
        return f"{len(ta)} vs {len(tb)} outputs"
    worst = 0.0
    for x, y in zip(ta, tb, strict=True):
        if x.shape != y.shape:
            return f"shape {tuple(x.shape)} vs {tuple(y.shape)}"
        if x.numel() == 0:
            continue
        if x.dtype == torch.bool or not x.is_floating_point():
            worst = max(worst, float((x.long() != y.long()).sum()))  # count of differing entries
        else:
            worst = max(worst, float((x.double() - y.double()).abs().nan_to_num(nan=float("inf")).max()))
    return f"{worst:.1e}"


def _with_env(values: dict[str, str]):
    class _Env:
        def __enter__(self):
            self.saved = {k: os.environ.get(k) for k in values}
            os.environ.update(values)

        def __exit__(self, *exc):
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return _Env()


def _load_nerfacc(device: torch.device, module: str = "nerfacc"):
    """nerfacc, or ``(None, reason)``. On CUDA also loads (JIT-building on first use) its extension here, so the
    build is not timed. ``module``: another module with the same API in nerfacc's place (a self-test of the
    comparison code: ``nerfaccel_plugin`` compares us with ourselves, on every row, on any device)."""
    if module != "nerfacc":
        return importlib.import_module(module), f"{module} in nerfacc's place (self-test)"
    try:
        import nerfacc  # noqa: PLC0415 - optional, comparison only
    except Exception as err:  # pragma: no cover - optional dependency
        return None, f"nerfacc not importable ({err})"
    if device.type == "cuda":
        try:
            from nerfacc.cuda._backend import _C  # noqa: PLC0415

            if _C is None:
                return None, "nerfacc's CUDA extension is unavailable (no CUDA toolkit?)"
        except Exception as err:  # pragma: no cover
            return None, f"nerfacc's CUDA extension failed to load ({err})"
    return nerfacc, f"nerfacc {getattr(nerfacc, '__version__', '?')}"


def _cuda_fatal(msg: str) -> bool:
    return any(k in msg for k in ("CUDA error", "AcceleratorError", "illegal memory access", "device-side assert"))


def _cell(fn: Callable[[], float]) -> tuple[float | None, str | None]:
    try:
        return fn(), None
    except Exception as err:
        msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]
        return None, msg


def run(args) -> str:
    device = torch.device(args.device)
    kind = "cpp" if device.type == "cpu" else "cuda"
    ours_api = ours
    if args.backend == "triton":
        import _triton_api  # noqa: PLC0415 - imports triton

        ours_api = _triton_api
    env = {"NERFACCEL_SKIP_VALUE_CHECKS": "0" if args.value_checks else "1"}
    nerfacc, nf_reason = _load_nerfacc(device, args.nerfacc_module) if not args.no_nerfacc else (None, "--no-nerfacc")
    any_device = args.nerfacc_module != "nerfacc"
    torch.manual_seed(0)
    with _with_env({**env, "NERFACCEL_BACKEND": kind}):
        cases, data = build_cases(args, device)
    if args.only:
        groups = {c.group for c in cases}
        cases = [c for c in cases if c.group in args.only or any(s not in groups and s in c.name for s in args.only)]
    copy_bps, copy_sec = bu.copy_bandwidth(device, args.copy_mib * 2**20)
    print(
        f"copy bandwidth: {copy_bps / 1e9:.1f} GB/s ({args.copy_mib} MiB device-to-device in {copy_sec * 1e3:.3f} ms)",
        flush=True,
    )
    print(f"nerfacc: {nf_reason}", flush=True)

    head = ["group", "op", "form", "items"]
    if args.torch:
        head += ["torch (ms)", "torch/ours"]
    ours_name = f"triton (+ {kind} for the rest)" if args.backend == "triton" else kind
    head += [f"ours {ours_name} (ms)", "B/sample model", "B/sample min", "nerfacc (ms)", "nerfacc/ours", "target"]
    head += ["vs target", "pass", "max abs diff"]
    head += ["GB/s", "% copy BW", "BW pass", "model % copy BW"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    notes: list[str] = []
    summary: dict[str, list[tuple[str, float | None]]] = {}
    bw_rows: list[tuple[str, float]] = []

    def note(msg: str) -> str:
        if msg not in notes:
            notes.append(msg)
        return f"err[{notes.index(msg) + 1}]"

    print(lines[0], lines[1], sep="\n", flush=True)
    bytes_docs: dict[str, str] = {}
    fatal = ""
    for case in cases:
        label = f"{case.name} ({case.form})"
        with _with_env({**env, "NERFACCEL_BACKEND": kind}):
            ours_thunk, err = _cell(lambda case=case: case.make(ours_api))
            t_ours = None
            if err is None:
                t_ours, err = _cell(lambda: bu.time_fn(ours_thunk, device, args.repeat, args.warmup))
        cells = [case.group, case.name, case.form, str(case.items)]
        if args.torch:
            with _with_env({**env, "NERFACCEL_BACKEND": "torch"}):
                t_ref, err_ref = _cell(lambda case=case: bu.time_fn(case.make(ours), device, args.repeat, args.warmup))
            cells.append(f"{t_ref * 1e3:.2f}" if t_ref is not None else note(err_ref))
            cells.append(f"{t_ref / t_ours:.1f}x" if (t_ref is not None and t_ours) else "-")
        cells.append(f"{t_ours * 1e3:.3f}" if t_ours is not None else note(err))
        per = max(case.items, 1)
        cells.append(f"{case.model_bytes / per:.1f}" if case.model_bytes is not None else "-")
        cells.append(f"{case.min_bytes / per:.1f}" if case.min_bytes is not None else "-")
        nf_ok = nerfacc is not None and case.nerfacc and (device.type == "cuda" or case.nerfacc_cpu or any_device)
        t_nf, ratio, diff = None, None, "-"
        if nf_ok:
            # Under our env too: nerfacc ignores it, and a self-test module then runs exactly as ours does.
            with _with_env({**env, "NERFACCEL_BACKEND": kind}):
                nf_thunk, err_nf = _cell(lambda case=case: case.make(nerfacc))
                if err_nf is None:
                    t_nf, err_nf = _cell(lambda: bu.time_fn(nf_thunk, device, args.repeat, args.warmup))
            if err_nf is not None:
                cells.append(note("nerfacc: " + err_nf))
            else:
                cells.append(f"{t_nf * 1e3:.3f}")
            if t_nf is not None and t_ours:
                ratio = t_nf / t_ours
            if case.compare and t_nf is not None and t_ours is not None:
                torch.manual_seed(0)
                with _with_env({**env, "NERFACCEL_BACKEND": kind}):
                    a, e1 = _cell(lambda: ours_thunk())
                torch.manual_seed(0)
                with _with_env({**env, "NERFACCEL_BACKEND": kind}):
                    b, e2 = _cell(lambda: nf_thunk())
                diff = _max_diff(a, b) if e1 is None and e2 is None else "error"
        else:
            cells.append("-" if case.nerfacc else "n/a")
        cells.append(f"{ratio:.2f}x" if ratio is not None else "-")
        target = TARGETS.get(case.group) if case.target else None
        if target is not None:
            cells.append(f">= {target:g}x")
            cells.append(f"{ratio / target:.2f}" if ratio is not None else "-")
            cells.append(("PASS" if ratio >= target else "FAIL") if ratio is not None else "-")
            summary.setdefault(case.group, []).append((label, ratio))
        else:
            cells += ["-", "-", "-"]
        cells.append(diff)
        model_share = "-"
        if case.model_bytes is not None and t_ours and device.type == "cuda":
            model_share = f"{case.model_bytes / t_ours / copy_bps * 100:.0f}%"
        if case.min_bytes is not None and t_ours:
            bytes_docs.setdefault(f"{case.name}", case.bytes_doc)
            gbs = case.min_bytes / t_ours / 1e9
            share = case.min_bytes / t_ours / copy_bps
            cells += [f"{gbs:.1f}", f"{share * 100:.0f}%"]
            if case.group == "rendering" and case.target:
                if case.items >= BW_MIN_SAMPLES:
                    cells.append("PASS" if share >= BW_TARGET else "FAIL")
                    bw_rows.append((label, share))
                else:
                    cells.append(f"n/a (< {BW_MIN_SAMPLES:.0e} samples)")
            else:
                cells.append("-")
        else:
            cells += ["-", "-", "-"]
        cells.append(model_share)
        row = "| " + " | ".join(cells) + " |"
        lines.append(row)
        print(row, flush=True)
        if device.type == "cuda" and any(_cuda_fatal(m) for m in notes):
            fatal = f"stopped after '{label}': a CUDA error leaves the process's CUDA context unusable"
            print(fatal, flush=True)
            break

    # ---- summary -------------------------------------------------------------------------------------------
    out = [
        "",
        "## Targets",
        "",
        "| target | rows measured | worst row | worst ratio | verdict |",
        "|---|---:|---|---:|---|",
    ]
    for group, target in TARGETS.items():
        rows = summary.get(group, [])
        measured = [(lbl, x) for lbl, x in rows if x is not None]
        if not measured:
            out.append(f"| {group} >= {target:g}x nerfacc | 0 of {len(rows)} | - | - | not measured |")
            continue
        worst = min(measured, key=lambda t: t[1])
        ok = all(x >= target for _, x in measured) and len(measured) == len(rows)
        verdict = "PASS" if ok else ("FAIL" if any(x < target for _, x in measured) else "incomplete")
        out.append(
            f"| {group} >= {target:g}x nerfacc | {len(measured)} of {len(rows)} | {worst[0]} | {worst[1]:.2f}x | "
            f"{verdict} |"
        )
    if bw_rows:
        worst = min(bw_rows, key=lambda t: t[1])
        verdict = "PASS" if worst[1] >= BW_TARGET else "FAIL"
        out.append(
            f"| rendering fwd+bwd >= {BW_TARGET:.0%} of copy bandwidth at >= 1e7 samples | {len(bw_rows)} | "
            f"{worst[0]} | {worst[1]:.0%} | {verdict} |"
        )
    else:
        out.append(
            f"| rendering fwd+bwd >= {BW_TARGET:.0%} of copy bandwidth | 0 | - | - | not measured (needs >= 1e7 "
            "samples) |"
        )
    if device.type != "cuda":
        out += ["", "The targets are for a GPU; on the CPU the nerfacc column covers only its CPU-capable forms."]
    out += ["", "Minimum bytes per row (float32 = 4 B, int64 = 8 B; packed_info 16 B per ray per pass; ray_indices "
            "8 B per sample once, plus 32 B per ray to keep the layout for the backward pass):", ""]  # fmt: skip
    out += [f"- {k}: {v}" for k, v in bytes_docs.items()]
    if notes:
        out += ["", "Errors:", ""] + [f"{i + 1}. {m}" for i, m in enumerate(notes)]
    if fatal:
        out += ["", f"**Incomplete: {fatal}.** Rerun the remaining groups with `--only`."]

    meta = [
        f"layout {args.layout}: {args.rays} rays, ~{args.spp} samples/ray packed ({data['n']} samples; "
        + ("geometric counts, cap 256, 30% of the rays empty" if args.dist == "geometric" else "every 16th ray empty")
        + f"), batched {args.rays} x {args.spp} ({data['nb']} samples), grid {args.res}^3 (30% occupied; samples "
        f"traversed: {data['n_trav']}), step {args.step:.5f}",
        "B/sample model: bytes the Triton kernels move per item as modelled in docs/triton.md (--backend triton "
        "only; estimated, not measured); B/sample min: the minimum bytes per item; model % copy BW: modelled bytes / "
        "time as a share of the measured copy bandwidth (GPU only)",
        f"timing: median of {args.repeat} after {args.warmup} warm-up calls"
        + (", CUDA events" if device.type == "cuda" else ", perf_counter"),
        f"measured copy bandwidth: {copy_bps / 1e9:.1f} GB/s ({args.copy_mib} MiB device-to-device, read + written)",
        f"ours: NERFACCEL_BACKEND={kind}"
        + (", torch column NERFACCEL_BACKEND=torch" if args.torch else "")
        + f"; value checks {'on' if args.value_checks else 'off (NERFACCEL_SKIP_VALUE_CHECKS=1)'}",
        f"nerfacc: {nf_reason}",
        f"load average (1/5/15 min) at the end: {bu.load_average()}",
    ]
    if args.note:
        meta.append(f"note: {args.note}")
    title = f"Backends on {device.type}: nerfaccel {ours_name}" + (" vs nerfacc" if nerfacc is not None else "")
    text = bu.header(title, device, meta) + "\n".join(lines + out) + "\n"
    return text, bool(fatal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rays", type=int, default=None, help="default 4096 on cpu, 131072 on cuda")
    parser.add_argument("--spp", type=int, default=None, help="mean samples per ray; default 64 cpu, 128 cuda")
    parser.add_argument("--res", type=int, default=128, help="occupancy grid resolution")
    parser.add_argument("--step", type=float, default=3**0.5 * 3 / 1024)
    parser.add_argument(
        "--traversal",
        nargs="+",
        default=["0:1", "0.00390625:4"],
        help="traversal rows per cone_angle:levels (default: cone 0 with 1 level, cone 1/256 with 4 levels)",
    )
    parser.add_argument(
        "--layout",
        nargs="+",
        default=["default"],
        choices=list(LAYOUTS),
        help="sample layouts, one table each (--rays/--spp override a preset's sizes): default, geo30 (2^18 rays, "
        "geometric counts of mean 30 "
        "capped at 256, 30%% empty), 4096x48, 4096x96, 131072x128",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "triton"],
        help="ours: the dispatcher's backend (auto), or the Triton kernels for the segmented ops (CUDA, or CPU under "
        "TRITON_INTERPRET=1)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per cell; default 5 cpu, 20 cuda")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first; default 1 cpu, 3 cuda")
    parser.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the PyTorch backend (default: on for cpu, off for cuda)",
    )
    parser.add_argument("--no-nerfacc", action="store_true", help="skip nerfacc")
    parser.add_argument(
        "--nerfacc-module",
        default="nerfacc",
        help="module timed in nerfacc's place; 'nerfaccel_plugin' self-tests the comparison columns on any device",
    )
    parser.add_argument("--value-checks", action="store_true", help="keep our input value checks on")
    parser.add_argument("--only", nargs="+", default=None, help="groups (traversal rendering sampling scan other) or "
                        "substrings of op names")  # fmt: skip
    parser.add_argument("--copy-mib", type=int, default=None, help="size of the bandwidth copy; 2048 cuda, 256 cpu")
    parser.add_argument("--note", default="", help="a line for the results file (e.g. 'machine shared with a build')")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.backend == "triton" and not cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        parser.error("--backend triton runs on CUDA; on the CPU only under TRITON_INTERPRET=1 (slow: use small --rays)")
    try:
        args.traversal = [(float(c), int(lv)) for c, lv in (t.split(":") for t in args.traversal)]
    except ValueError:
        parser.error("--traversal takes cone_angle:levels pairs, e.g. 0:1 0.00390625:4")
    rays_default, spp_default = args.rays, args.spp
    args.repeat = args.repeat or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.torch = (not cuda) if args.torch is None else args.torch
    args.copy_mib = args.copy_mib or (2048 if cuda else 256)
    texts, fatal = [], False
    for layout in args.layout:
        rays, spp, args.dist = LAYOUTS[layout]
        args.layout_name = layout
        # an explicit --rays/--spp overrides the preset (smaller smoke runs of the same distribution)
        args.rays = rays_default or rays or (131072 if cuda else 4096)
        args.spp = spp_default or spp or (128 if cuda else 64)
        print(f"== layout {layout}: {args.rays} rays, ~{args.spp} samples per ray ({args.dist})", flush=True)
        saved = args.layout
        args.layout = layout
        text, bad = run(args)
        args.layout = saved
        texts.append(text)
        fatal = fatal or bad
        if bad:
            break
    text = "\n".join(texts)
    print()
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")
    if fatal:
        sys.exit(3)


if __name__ == "__main__":
    main()
