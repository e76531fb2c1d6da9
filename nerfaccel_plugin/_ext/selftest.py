"""First-use self-test of a compiled kernel set on a device.

The first time a process uses an extension's kernels on a device, every primitive op they provide runs on small
random inputs (including empty rays and one-sample rays) against the PyTorch reference
(:mod:`nerfaccel_plugin._torch_impl`) on that same device, forward and, for the differentiable ops, backward. It
takes well under a second. A mismatch turns that backend off for the device (the dispatcher then uses the
reference) with ONE warning naming the op and its max error; the outcome is recorded in the extension cache
(``selftest-<kind>-<source hash>[-triton<hash>]-<device>.json``, the Triton sources counted on CUDA), so later
processes with the same build and device skip the test and reuse the verdict. ``NERFACCEL_SELFTEST=0`` skips the
test; :func:`nerfaccel_plugin.backend_info` shows the outcome.

The dispatcher calls :func:`gate` (one small function; the new dispatcher's per-device disable hook can call it
from ``kernel_for(op_name, device)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ENV_VAR = "NERFACCEL_SELFTEST"
_TOL = {"rtol": 1e-4, "atol": 1e-5}


@dataclass
class Outcome:
    """Result of the self-test of one kernel set on one device.

    Attributes:
        passed: Whether every op matched the reference.
        status: ``"passed"``, ``"failed"``, ``"skipped"`` (NERFACCEL_SELFTEST=0) or ``"error"`` (the test itself
            could not run, e.g. an op raised; treated as failed).
        failed_op: The first op that mismatched (or raised), else ``""``.
        max_error: Its max absolute error (``inf`` for a shape/dtype mismatch or an exception).
        detail: Human-readable summary.
        seconds: How long the test took.
        cached: Whether the verdict was read from the extension cache.
        errors: Max absolute error per op.
    """

    passed: bool
    status: str
    failed_op: str = ""
    max_error: float = 0.0
    detail: str = ""
    seconds: float = 0.0
    cached: bool = False
    errors: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for backend_info()."""
        if self.status == "skipped":
            return f"skipped ({ENV_VAR}=0)"
        src = ", cached verdict" if self.cached else f", {self.seconds * 1e3:.0f} ms"
        if self.passed:
            return f"passed ({len(self.errors)} ops{src})"
        return f"FAILED: {self.failed_op} max error {self.max_error:.3g}{src}"


_lock = threading.Lock()
_outcomes: dict[tuple[str, str], Outcome] = {}
_warned: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------
# Inputs (small, random, with empty and one-sample rays)
# ---------------------------------------------------------------------------------------------
def _packed(counts: list[int], device: torch.device) -> tuple[torch.Tensor, int]:
    c = torch.tensor(counts, dtype=torch.long)
    starts = torch.cumsum(c, 0) - c
    return torch.stack([starts, c], -1).to(device), int(c.sum())


_COUNTS = [0, 1, 3, 0, 7, 1, 12, 0, 2]


def _cases(device: torch.device, gen: torch.Generator) -> dict[str, list[tuple[tuple, tuple[int, ...]]]]:
    """``{op: [(args, indices of the args to differentiate), ...]}`` for every primitive."""

    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=gen, dtype=dtype).to(device)

    pi, n = _packed(_COUNTS, device)
    pi0, _ = _packed([], device)
    pi_empty, _ = _packed([0, 0], device)
    ray_ids = torch.repeat_interleave(torch.arange(len(_COUNTS), device=device), pi[:, 1])
    t0 = rand(n)
    t1 = t0 + rand(n) * 0.1
    cases: dict[str, list[tuple[tuple, tuple[int, ...]]]] = {}
    for name in ("_inclusive_sum", "_exclusive_sum", "_inclusive_prod", "_exclusive_prod"):
        cases[name] = [((rand(n), pi), (0,)), ((rand(0), pi0), (0,)), ((rand(0), pi_empty), (0,))]
    cases["_render_weight_from_density"] = [
        ((t0, t1, rand(n) * 5, pi), (0, 1, 2)),
        ((rand(0), rand(0), rand(0), pi0), (0, 1, 2)),
    ]
    cases["_render_weight_from_alpha"] = [((rand(n) * 0.9, pi), (0,)), ((rand(0), pi_empty), (0,))]
    shuffled = ray_ids[torch.randperm(n, generator=gen).to(device)] if n else ray_ids
    cases["_accumulate_along_rays"] = [
        ((rand(n), rand(n, 3), ray_ids, len(_COUNTS)), (0, 1)),
        ((rand(n), None, shuffled, len(_COUNTS)), (0,)),
        ((rand(0), rand(0, 3), ray_ids[:0], 2), (0, 1)),
    ]
    o = (rand(24, 3) - 0.5) * 3
    d = torch.nn.functional.normalize(rand(24, 3) - 0.5, dim=-1)
    aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [-0.5, -0.2, -0.5, 0.5, 0.7, 0.5]], device=device)
    cases["_ray_aabb_intersect"] = [
        ((o, d, aabbs, 0.0, 1e10, -1.0), ()),
        ((o[:0], d[:0], aabbs, 0.0, 1e10, 0.0), ()),
    ]
    binaries = (torch.rand(2, 6, 6, 6, generator=gen) > 0.5).to(device)
    grid_aabbs = torch.tensor([[-1.0, -1, -1, 1, 1, 1], [-2.0, -2, -2, 2, 2, 2]], device=device)
    near, far = rand(8) * 0.2, torch.full((8,), 1e10, device=device)
    o8, d8 = o[:8], d[:8]
    # float64 rays: the kernels march in the rays' precision and match the reference exactly in float64 (float32
    # samples may differ within the documented tolerance, docs/traversal.md, which an exact comparison would flag)
    o8, d8, grid_aabbs, near, far = (t.double() for t in (o8, d8, grid_aabbs, near, far))
    cases["_traverse_grids"] = [
        ((o8, d8, binaries, grid_aabbs, near, far, 0.1, 0.0), ()),
        ((o8, d8, binaries, grid_aabbs, near, far, 0.05, 0.1), ()),
        ((o8[:0], d8[:0], binaries, grid_aabbs, near[:0], far[:0], 0.1, 0.0), ()),
    ]
    vals = (rand(n) + ray_ids.float()).sort().values if n else rand(0)
    q_counts = [2, 0, 4, 1, 3, 0, 5, 2, 1]
    qpi, nq = _packed(q_counts, device)
    cases["_searchsorted"] = [((vals, pi, rand(nq) * len(_COUNTS), qpi), ())]
    w = rand(n)
    cdfs = torch.zeros(n, device=device)
    for r, (s, c) in enumerate(pi.tolist()):
        del r
        if c:
            cdfs[s : s + c] = torch.cumsum(w[s : s + c], 0) - w[s]
    n_per_ray = torch.tensor([2, 0, 3, 1, 4, 0, 5, 2, 1], device=device)
    cases["_importance_sampling"] = [((t0.sort().values, cdfs, pi, n_per_ray, rand(len(_COUNTS))), ())]
    aabb = torch.tensor([-1.0, -2.0, -0.5, 1.0, 2.0, 1.5], device=device)
    pts = (rand(32, 3) - 0.5) * 6
    cases["_contract"] = [((pts, aabb, "l2"), (0,)), ((pts, aabb, "linf"), (0,)), ((pts[:0], aabb, "l2"), (0,))]
    inner = 0.5 + (rand(32, 3) - 0.5) * 0.4
    cases["_uncontract"] = [((inner, aabb, "l2"), (0,)), ((inner, aabb, "linf"), (0,))]
    occs = rand(64)
    occs[::7] = -1.0
    cases["_grid_ema_update"] = [((occs, torch.randint(0, 64, (20,), generator=gen).to(device), rand(20), 0.9), ())]
    return cases


def _flat(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute error, ``inf`` on a shape/dtype mismatch or a value outside the tolerance pattern."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    if not a.is_floating_point():
        return float((a.long() - b.long()).abs().max()) if a.dtype != torch.bool else float((a != b).sum())
    nan_ok = torch.isnan(a) == torch.isnan(b)
    if not bool(nan_ok.all()):
        return float("inf")
    diff = (a.double() - b.double()).abs().nan_to_num(0.0)
    return float(diff.max())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    try:
        torch.testing.assert_close(a, b, equal_nan=True, **_TOL)
    except AssertionError:
        return False
    return True


def _run_case(
    ker: Callable, ref: Callable, args: tuple, diff: tuple[int, ...], gen: torch.Generator
) -> tuple[bool, float]:
    """Kernel vs reference on one input: forward, and backward (shared random cotangents) w.r.t. ``args[diff]``."""

    def prep(i, a):
        if i in diff and isinstance(a, torch.Tensor):
            return a.detach().clone().requires_grad_()
        return a

    ka, ra = [prep(i, a) for i, a in enumerate(args)], [prep(i, a) for i, a in enumerate(args)]
    with torch.enable_grad():
        k_out, r_out = _flat(ker(*ka)), _flat(ref(*ra))
        ok, err = len(k_out) == len(r_out), 0.0
        for k, r in zip(k_out, r_out, strict=False):
            err = max(err, _max_err(k.detach(), r.detach()))
            ok = ok and _close(k.detach(), r.detach())
        if not ok:
            return False, err if err > 0 else float("inf")
        if not diff:
            return True, err
        k_in = [a for a in ka if isinstance(a, torch.Tensor) and a.requires_grad]
        r_in = [a for a in ra if isinstance(a, torch.Tensor) and a.requires_grad]
        pairs = [(k, r) for k, r in zip(k_out, r_out, strict=True) if r.is_floating_point() and r.requires_grad]
        if not pairs or not k_in:
            return ok, err
        cots = [torch.randn(r.shape, generator=gen, dtype=r.dtype).to(r.device) for _, r in pairs]
        k_loss = sum((k * c).sum() for (k, _), c in zip(pairs, cots, strict=True))
        r_loss = sum((r * c).sum() for (_, r), c in zip(pairs, cots, strict=True))
        k_g = torch.autograd.grad(k_loss, k_in, allow_unused=True) if k_loss.requires_grad else [None] * len(k_in)
        r_g = torch.autograd.grad(r_loss, r_in, allow_unused=True) if r_loss.requires_grad else [None] * len(r_in)
    for kg, rg, x in zip(k_g, r_g, r_in, strict=True):
        kg = torch.zeros_like(x) if kg is None else kg
        rg = torch.zeros_like(x) if rg is None else rg
        err = max(err, _max_err(kg, rg))
        ok = ok and _close(kg, rg)
    return ok, err


def run(ops: Any, device: torch.device | str, names: list[str] | None = None) -> Outcome:
    """Runs every op of ``ops`` (a backend namespace) against the reference on ``device``.

    Args:
        ops: Object exposing the primitives (``available_ops`` lists them), e.g. ``_ext.load_backend("cpp")``.
        device: Where to run (the reference runs there too).
        names: Restrict to these ops (default: all available).

    Returns:
        The :class:`Outcome` (not cached; see :func:`gate`).
    """
    import torch._dynamo  # noqa: F401, PLC0415 - imported by the first call of any custom op anyway; not timed

    from .. import _torch_impl  # noqa: PLC0415

    device = torch.device(device)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(1234)
    cases = _cases(device, gen)
    available = getattr(ops, "available_ops", set(cases))
    names = [n for n in (names or list(cases)) if n in available and n in cases]
    errors: dict[str, float] = {}
    for name in names:
        ker, ref = getattr(ops, name), getattr(_torch_impl, name)
        worst = 0.0
        for args, diff in cases[name]:
            try:
                ok, err = _run_case(ker, ref, args, diff, gen)
            except Exception as exc:  # noqa: BLE001 - a kernel that raises on valid input fails the test
                errors[name] = float("inf")
                return Outcome(
                    False, "error", name, float("inf"), f"{name} raised {type(exc).__name__}: {exc}"[:300],
                    time.perf_counter() - start, errors=errors,
                )  # fmt: skip
            worst = max(worst, err)
            if not ok:
                errors[name] = max(worst, err)
                return Outcome(
                    False, "failed", name, errors[name],
                    f"{name} differs from the PyTorch reference (max abs error {errors[name]:.3g})",
                    time.perf_counter() - start, errors=errors,
                )  # fmt: skip
        errors[name] = worst
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Outcome(True, "passed", "", 0.0, f"{len(names)} ops match", time.perf_counter() - start, errors=errors)


# ---------------------------------------------------------------------------------------------
# Hash encoding (Triton on CUDA): its own small check, used when its kernels are registered
# ---------------------------------------------------------------------------------------------
def hash_reference(x: torch.Tensor, table: torch.Tensor, scales: torch.Tensor, table_size: int) -> torch.Tensor:
    """Nerfstudio's ``HashEncoding.pytorch_fwd`` written out in PyTorch (corners, hash, Python's %, trilinear)."""
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


def run_hash(fwd: Callable, bwd: Callable, device: torch.device | str) -> Outcome:
    """Checks hash-encoding kernels ``fwd(x, table, scales, table_size)`` / ``bwd(grad, x, table, scales,
    table_size, need_x_grad)`` against :func:`hash_reference` on ``device`` (forward, table and position gradients,
    with points outside the unit cube and on grid vertices; plus zero points).

    Args:
        fwd: Forward kernel.
        bwd: Backward kernel.
        device: Where to run.

    Returns:
        The :class:`Outcome` (``failed_op`` is ``hash_encode`` / ``hash_encode_backward``).
    """
    device = torch.device(device)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(7)
    table_size, levels = 64, 3
    x = torch.rand(203, 3, generator=g) * 1.4 - 0.2
    x[:3] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.25, 0.5, 0.75]])
    x = x.to(device).requires_grad_()
    table = torch.randn(levels * table_size, 2, generator=g).to(device).requires_grad_()
    scales = torch.tensor([4.0, 9.0, 17.0], device=device)
    try:
        with torch.enable_grad():
            ref = hash_reference(x, table, scales, table_size)
            cot = torch.randn(ref.shape, generator=g).to(device)
            gx_ref, gt_ref = torch.autograd.grad(ref, (x, table), cot)
        y = fwd(x.detach(), table.detach(), scales, table_size)
        gt, gx = bwd(cot, x.detach(), table.detach(), scales, table_size, True)
        empty = fwd(x[:0].detach(), table.detach(), scales, table_size)
    except Exception as exc:  # noqa: BLE001 - a kernel that raises fails the test
        return Outcome(False, "error", "hash_encode", float("inf"), f"hash_encode raised {type(exc).__name__}: {exc}")
    errors = {"hash_encode": _max_err(y, ref.detach()), "hash_encode_backward": max(_max_err(gt, gt_ref),
              _max_err(gx, gx_ref) / max(1.0, float(gx_ref.abs().max())))}  # fmt: skip
    if empty.shape != (0, levels * 2):
        errors["hash_encode"] = float("inf")
    limits = {"hash_encode": 1e-5, "hash_encode_backward": 1e-4}
    seconds = time.perf_counter() - start
    for name, err in errors.items():
        if not err <= limits[name]:
            return Outcome(False, "failed", name, err, f"{name} differs from Nerfstudio's math (max error {err:.3g})",
                           seconds, errors=errors)  # fmt: skip
    return Outcome(True, "passed", detail="hash kernels match", seconds=seconds, errors=errors)


# ---------------------------------------------------------------------------------------------
# Cache and dispatcher hook
# ---------------------------------------------------------------------------------------------
def device_tag(device: torch.device | str) -> str:
    """A file-name-safe identity of the device model (``cpu`` or e.g. ``cuda-NVIDIA_H100_80GB_HBM3-sm90``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"cuda-{name}-sm{major}{minor}")


def triton_sources_hash(root: Path | None = None) -> str:
    """Short hash of the Triton kernels' sources (``nerfaccel_plugin/_triton/*.py``), "" without them."""
    root = root or Path(__file__).resolve().parent.parent / "_triton"
    digest = hashlib.sha256()
    files = sorted(root.glob("*.py")) if root.is_dir() else []
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12] if files else ""


def cache_file(kind: str, module: Any, device: torch.device | str) -> Path:
    """Where the verdict for extension ``kind`` (this build) on ``device`` is recorded. On CUDA devices some ops are
    served by the Triton kernels, so their sources are part of the key too."""
    from . import build  # noqa: PLC0415

    key = str(getattr(module, "source_hash", "") or "unknown")
    if torch.device(device).type == "cuda":
        key += "-triton" + (triton_sources_hash() or "none")
    return build.cache_root() / f"selftest-{kind}-{key}-{device_tag(device)}.json"


def _read(path: Path) -> Outcome | None:
    try:
        data = json.loads(path.read_text())
        return Outcome(**{**data, "cached": True})
    except (OSError, ValueError, TypeError):
        return None


def _write(path: Path, outcome: Outcome) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        data = asdict(outcome)
        data["errors"] = {k: (v if v != float("inf") else 1e300) for k, v in data["errors"].items()}
        if data["max_error"] == float("inf"):
            data["max_error"] = 1e300
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only cache only costs a repeated test in the next process
        pass


def enabled() -> bool:
    """False when ``NERFACCEL_SELFTEST=0``."""
    return os.environ.get(ENV_VAR, "1").strip() != "0"


def gate(kind: str, ops: Any, device: torch.device | str, module: Any = None) -> Outcome:
    """The dispatcher's hook: whether kernel set ``kind`` may serve ``device`` (tested once per process and build).

    Runs the self-test the first time (or reads the recorded verdict), warns once on failure.

    Args:
        kind: ``"cpp"`` or ``"cuda"``.
        ops: The backend namespace (primitives).
        device: The device the kernels will serve.
        module: The loaded extension module (its ``source_hash`` keys the cache); default: loaded from ``kind``.

    Returns:
        The :class:`Outcome`; ``passed`` False means: use the reference on this device.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (kind, str(device))
    outcome = _outcomes.get(key)
    if outcome is not None:
        return outcome
    with _lock:
        outcome = _outcomes.get(key)
        if outcome is not None:
            return outcome
        if not enabled():
            outcome = Outcome(True, "skipped", detail=f"{ENV_VAR}=0")
        else:
            if module is None:
                from . import build  # noqa: PLC0415

                module = build.get_module(kind)
            path = cache_file(kind, module, device)
            outcome = _read(path)
            if outcome is None:
                outcome = run(ops, device)
                _write(path, outcome)
        _outcomes[key] = outcome
    if not outcome.passed and key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"nerfaccel: the {kind} kernels failed their self-test on {device} ({device_tag(device)}): "
            f"{outcome.failed_op} max error {outcome.max_error:.3g} ({outcome.detail}); using the PyTorch "
            f"reference on this device (correct, slower). Please report this with backend_info(). The verdict is "
            f"cached; delete {cache_file(kind, module, device)} to retest, or set {ENV_VAR}=0 to skip the test.",
            RuntimeWarning,
            stacklevel=3,
        )
    return outcome


def outcome_for(kind: str, device: torch.device | str) -> Outcome | None:
    """The outcome already established in this process (None if the kernels were not used on ``device`` yet)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _outcomes.get((kind, str(device)))


def reset() -> None:
    """Forgets this process's outcomes (tests); the cache files stay."""
    with _lock:
        _outcomes.clear()
        _warned.clear()
