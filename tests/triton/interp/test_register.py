"""register(): the Triton kernels behind torch.library ops with the schemas of docs/triton.md (a test-only
namespace, "cpu" device under the interpreter), checked with opcheck; and the scan combines' associativity
(the GPU evaluates scans as trees, the interpreter sequentially)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from nerfaccel_plugin import _torch_impl as ref
from nerfaccel_plugin._triton import _common
from nerfaccel_plugin._triton.register import OP_NAMES, SCHEMAS, register

NS = "nerfaccel_triton_test"

_lib = None


def _define():
    global _lib
    if _lib is not None:
        return
    _lib = torch.library.Library(NS, "DEF")
    for name, schema in SCHEMAS.items():
        _lib.define(name + schema)
    like = torch.empty_like

    def fake_acc_fwd(weights, values, ray_indices, n_rays):
        return weights.new_empty((n_rays, 1 if values is None else values.shape[-1]))

    def fake_acc_bwd(grad_out, weights, values, ray_indices, need_w, need_v):
        gw = like(weights) if need_w else weights.new_empty((0,))
        gv = like(values) if (need_v and values is not None) else weights.new_empty((0,))
        return gw, gv

    def fake_density_bwd(gw, gt, ga, ts, te, sg, tr, al, pi, covers_all, need_t):
        gts = like(sg) if need_t else sg.new_empty((0,))
        return gts, like(gts), like(sg)

    fakes = {
        "scan_fwd": lambda x, pi, prod, exc: like(x),
        "scan_bwd": lambda g, x, y, pi, prod, exc: like(x),
        "render_weight_from_density_fwd": lambda ts, te, sg, pi, covers_all=False: (like(sg), like(sg), like(sg)),
        "render_weight_from_density_bwd": fake_density_bwd,
        "render_weight_from_alpha_fwd": lambda al, pi: (like(al), like(al)),
        "render_weight_from_alpha_bwd": lambda gw, gt, al, tr, pi: like(al),
        "accumulate_along_rays_fwd": fake_acc_fwd,
        "accumulate_along_rays_bwd": fake_acc_bwd,
    }
    for name, fn in fakes.items():
        torch.library.register_fake(f"{NS}::{name}", fn, lib=_lib)
    assert register(NS, "cpu") == [f"{NS}::{n}" for n in OP_NAMES]


def _inputs():
    gen = torch.Generator().manual_seed(7)
    pi = torch.tensor([[0, 3], [3, 0], [4, 13], [17, 1]])  # sample 3 and 18.. lie outside every chunk
    n = 20
    ts = torch.rand(n, generator=gen)
    te = ts + 0.3 * torch.rand(n, generator=gen)
    sg = 2 * torch.rand(n, generator=gen)
    return gen, pi, n, ts, te, sg


def test_registered_ops_match_reference():
    _define()
    ops = getattr(torch.ops, NS)
    gen, pi, n, ts, te, sg = _inputs()
    w, t, a = ops.render_weight_from_density_fwd(ts, te, sg, pi)
    for got, want in zip((w, t, a), ref._render_weight_from_density(ts, te, sg, pi), strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(ops.scan_fwd(sg, pi, True, True), ref._exclusive_prod(sg, pi))
    torch.testing.assert_close(ops.render_weight_from_alpha_fwd(a, pi)[0], ref._render_weight_from_alpha(a, pi)[0])
    idx = torch.randint(0, 5, (n,), generator=gen)
    torch.testing.assert_close(
        ops.accumulate_along_rays_fwd(w, None, idx, 5), ref._accumulate_along_rays(w, None, idx, 5)
    )
    g = ops.render_weight_from_density_bwd(torch.ones(n), None, None, ts, te, sg, t, a, pi, False, False)
    assert g[0].shape == (0,) and g[1].shape == (0,) and g[2].shape == (n,)


def test_opcheck():
    _define()
    ops = getattr(torch.ops, NS)
    gen, pi, n, ts, te, sg = _inputs()
    w, t, a = ops.render_weight_from_density_fwd(ts, te, sg, pi)
    idx = torch.randint(0, 5, (n,), generator=gen)
    vals = torch.rand(n, 3, generator=gen)
    batched = sg.reshape(4, 5)
    cases = {
        "scan_fwd": [(sg, pi, False, True), (batched, None, True, False)],
        "scan_bwd": [(te, sg, ops.scan_fwd(sg, pi, True, False), pi, True, False)],
        "render_weight_from_density_fwd": [
            (ts, te, sg, pi, False),
            (ts.reshape(4, 5), te.reshape(4, 5), batched, None),
        ],
        "render_weight_from_density_bwd": [(te, None, ts, ts, te, sg, t, a, pi, False, True)],
        "render_weight_from_alpha_fwd": [(a, pi)],
        "render_weight_from_alpha_bwd": [(None, te, a, t, pi)],
        "accumulate_along_rays_fwd": [(w, vals, idx, 5)],
        "accumulate_along_rays_bwd": [(torch.rand(5, 3, generator=gen), w, vals, idx, True, False)],
    }
    for name, arg_sets in cases.items():
        for args in arg_sets:
            torch.library.opcheck(
                getattr(ops, name), args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration")
            )


def _assoc_kernel_fn(a_ptr, b_ptr, f_ptr, out_ptr, KIND: tl.constexpr, N: tl.constexpr):
    i = tl.arange(0, N)
    a0, b0, f0 = tl.load(a_ptr + i), tl.load(b_ptr + i), tl.load(f_ptr + i)
    a1, b1, f1 = tl.load(a_ptr + N + i), tl.load(b_ptr + N + i), tl.load(f_ptr + N + i)
    a2, b2, f2 = tl.load(a_ptr + 2 * N + i), tl.load(b_ptr + 2 * N + i), tl.load(f_ptr + 2 * N + i)
    if KIND == 0:
        lb, lf = _common._seg_add(*_common._seg_add(b0, f0, b1, f1), b2, f2)
        rb, rf = _common._seg_add(b0, f0, *_common._seg_add(b1, f1, b2, f2))
        la, ra = lb, rb
    elif KIND == 1:
        la, lf = _common._seg_mul(*_common._seg_mul(a0, f0, a1, f1), a2, f2)
        ra, rf = _common._seg_mul(a0, f0, *_common._seg_mul(a1, f1, a2, f2))
        lb, rb = la, ra
    else:
        la, lb, lf = _common._seg_affine(*_common._seg_affine(a0, b0, f0, a1, b1, f1), a2, b2, f2)
        ra, rb, rf = _common._seg_affine(a0, b0, f0, *_common._seg_affine(a1, b1, f1, a2, b2, f2))
    tl.store(out_ptr + i, la - ra)
    tl.store(out_ptr + N + i, lb - rb)
    tl.store(out_ptr + 2 * N + i, (lf - rf).to(out_ptr.dtype.element_ty))


_assoc_kernel = triton.jit(_assoc_kernel_fn)  # TRITON_INTERPRET=1 is set (conftest.py)


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_combines_are_associative(kind):
    """(x . y) . z == x . (y . z) for every reset pattern: the GPU's tree order gives the interpreter's result."""
    gen = torch.Generator().manual_seed(kind)
    n = 64
    a = torch.randint(-3, 4, (3 * n,), generator=gen).double()  # small integers: exact arithmetic both ways
    b = torch.randint(-3, 4, (3 * n,), generator=gen).double()
    f = torch.tensor([(i >> s) & 1 for s in range(3) for i in range(n)], dtype=torch.int32)  # all 8 patterns
    out = torch.empty(3 * n, dtype=torch.float64)
    _assoc_kernel[(1,)](a, b, f, out, KIND=kind, N=n)
    assert out.abs().max() == 0
