"""The Triton hash-encoding kernels against Nerfstudio's own torch ``HashEncoding`` (the reference).

On a machine without a GPU the kernels run under Triton's interpreter on CPU tensors (the same kernel source the
GPU compiles); on a GPU the same checks also run on CUDA tensors. Forward values, table gradients (atomics) and
position gradients must match Nerfstudio's autograd, for several level counts, table sizes, feature widths and
dtypes (float32/float64 positions, half tables); points inside and outside the unit cube and on grid vertices.
Also: checkpoints are interchangeable, bad input is explained, the kernels AOT-compile for sm_80/86/89/90 without
spilling, and :func:`register` installs CUDA kernels on the hash ops.
"""

from __future__ import annotations

import copy

import pytest
import torch
from nerfstudio.field_components.encodings import HashEncoding

pytest.importorskip("triton")

from nerfaccel_plugin._triton import hash as th  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = ["interpret"] + (["cuda"] if CUDA else [])


def encoding(levels: int, log2: int, features: int, dtype=torch.float32, max_res: int = 128, seed: int = 0):
    torch.manual_seed(seed + levels * 100 + log2 * 10 + features)
    return HashEncoding(
        num_levels=levels, min_res=4, max_res=max_res, log2_hashmap_size=log2, features_per_level=features,
        hash_init_scale=0.5, implementation="torch",
    ).to(dtype)  # fmt: skip


def points(n: int, dtype=torch.float32) -> torch.Tensor:
    x = torch.rand(n, 3, dtype=dtype) * 1.4 - 0.2  # outside [0, 1] too: negative corners hash like Python's %
    vertices = torch.tensor(
        [[0.0, 0, 0], [1, 1, 1], [0.5, 0.25, 0.75], [0.0, 1, 0.5], [-0.25, 0.5, 1.25], [0.75, 0.75, 0]], dtype=dtype
    )  # on grid vertices: floor == ceil
    x[: len(vertices)] = vertices
    return x


def run(device: str, fn, *args, **kwargs):
    """Runs a kernel wrapper on CPU tensors under the interpreter, or on CUDA tensors."""
    if device == "interpret":
        return fn(*args, interpret=True, **kwargs)
    moved = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    out = fn(*moved, **kwargs)
    return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()


def reference(enc: HashEncoding, x: torch.Tensor, cot: torch.Tensor | None = None):
    enc = copy.deepcopy(enc)
    xr = x.clone().requires_grad_()
    y = enc(xr)
    if cot is None:
        cot = torch.randn_like(y)
    y.backward(cot)
    return y.detach(), cot, enc.hash_table.grad, xr.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "levels,log2,features,dtype",
    [(1, 4, 1, torch.float32), (4, 8, 2, torch.float32), (6, 10, 4, torch.float32), (3, 6, 2, torch.float64)],
)  # fmt: skip
def test_matches_nerfstudio(device, levels, log2, features, dtype):
    enc = encoding(levels, log2, features, dtype)
    x = points(400, dtype)
    y_ref, cot, g_table_ref, g_x_ref = reference(enc, x)
    table, scales = enc.hash_table.detach(), enc.scalings.to(dtype)
    y = run(device, th.hash_encode_fwd, x, table, scales, enc.hash_table_size)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert y.dtype == dtype
    torch.testing.assert_close(y, y_ref, **tol)
    g_table, g_x = run(device, th.hash_encode_bwd, cot, x, table, scales, enc.hash_table_size, True)
    torch.testing.assert_close(g_table, g_table_ref, **tol)
    # The position gradient sums cancelling terms (scale x table differences): float32 rounding shows at ~1e-5
    # of the largest entry, so the tolerance follows it (float64 is checked tightly).
    big = float(g_x_ref.abs().max())
    x_tol = dict(rtol=1e-4, atol=2e-5 * big) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12 * big)
    torch.testing.assert_close(g_x, g_x_ref, **x_tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("table_dtype", [torch.float16, torch.bfloat16])
def test_half_tables(device, table_dtype):
    """A half table with float32 positions: Nerfstudio promotes to float32; so do we (gradients in the table's
    dtype, accumulated in float32)."""
    enc = encoding(4, 8, 2)
    enc.hash_table.data = enc.hash_table.data.to(table_dtype)
    x = points(300)
    y_ref, cot, g_table_ref, g_x_ref = reference(enc, x)
    assert y_ref.dtype == torch.float32
    table, scales = enc.hash_table.detach(), enc.scalings.float()
    y = run(device, th.hash_encode_fwd, x, table, scales, enc.hash_table_size)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    g_table, g_x = run(device, th.hash_encode_bwd, cot, x, table, scales, enc.hash_table_size, True)
    assert g_table.dtype == table_dtype
    # Nerfstudio's index_put accumulates in the half dtype; ours in float32 then rounds once: compare at half
    # precision.
    torch.testing.assert_close(g_table.float(), g_table_ref.float(), rtol=2e-2, atol=2e-2 * float(cot.abs().max()))
    torch.testing.assert_close(g_x, g_x_ref, rtol=1e-3, atol=1e-4 * float(g_x_ref.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
def test_no_position_gradient_and_empty_input(device):
    enc = encoding(2, 6, 2)
    table, scales = enc.hash_table.detach(), enc.scalings.float()
    x = points(50)
    cot = torch.randn(50, 4)
    g_table, g_x = run(device, th.hash_encode_bwd, cot, x, table, scales, enc.hash_table_size, False)
    assert g_x.shape == (0,) and g_table.shape == table.shape and bool(g_table.abs().sum() > 0)
    y = run(device, th.hash_encode_fwd, torch.empty(0, 3), table, scales, enc.hash_table_size)
    assert y.shape == (0, 4)
    g_table, g_x = run(device, th.hash_encode_bwd, torch.empty(0, 4), torch.empty(0, 3), table, scales, 64, True)
    assert g_x.shape == (0, 3) and not bool(g_table.any())


def test_non_power_of_two_table_size_and_negative_hashes():
    """Python's % (non-negative remainder) on a table size where the 64-bit hash's sign matters."""
    torch.manual_seed(3)
    table_size, levels = 37, 3
    table = torch.randn(levels * table_size, 2)
    scales = torch.tensor([3.0, 11.0, 29.0])
    x = torch.rand(200, 3) * 4 - 2
    xr = x.clone().requires_grad_()
    tr = table.clone().requires_grad_()
    # Nerfstudio's math written out (its module fixes table_size to 2**k): corners, hash, Python's %, trilinear.
    s = xr[:, None, :] * scales[:, None]
    lo, hi = torch.floor(s).int(), torch.ceil(s).int()
    o = s - lo
    out = 0
    for k in range(8):
        bits = torch.tensor([(k >> a) & 1 for a in range(3)], dtype=torch.bool)
        c = torch.where(bits, hi, lo).long() * torch.tensor([1, 2654435761, 805459861])
        h = (c[..., 0] ^ c[..., 1] ^ c[..., 2]) % table_size + torch.arange(levels) * table_size
        w = torch.where(bits, o, 1 - o).prod(-1, keepdim=True)
        out = out + w * tr[h]
    y_ref = out.flatten(1)
    cot = torch.randn_like(y_ref)
    y_ref.backward(cot)
    y = th.hash_encode_fwd(x, table, scales, table_size, interpret=True)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-5, atol=1e-6)
    g_table, g_x = th.hash_encode_bwd(cot, x, table, scales, table_size, True, interpret=True)
    torch.testing.assert_close(g_table, tr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_x, xr.grad, rtol=1e-4, atol=1e-4 * float(xr.grad.abs().max()))


def test_bad_input_names_the_problem():
    table, scales = torch.rand(32, 2), torch.tensor([2.0, 4.0])
    with pytest.raises(ValueError, match=r"points `x` of shape \(n, 3\)"):
        th.hash_encode_fwd(torch.rand(4, 2), table, scales, 16, interpret=True)
    with pytest.raises(ValueError, match="levels \\* table_size"):
        th.hash_encode_fwd(torch.rand(4, 3), torch.rand(10, 2), scales, 16, interpret=True)
    with pytest.raises(TypeError, match="floating"):
        th.hash_encode_fwd(torch.rand(4, 3), table.long(), scales, 16, interpret=True)
    with pytest.raises(ValueError, match="`grad` must have shape"):
        th.hash_encode_bwd(torch.rand(4, 3), torch.rand(4, 3), table, scales, 16, True, interpret=True)


def _trained(module: HashEncoding, steps: int = 3) -> HashEncoding:
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        module(torch.rand(256, 3)).square().sum().backward()
        opt.step()
    return module


def test_checkpoints_are_interchangeable_with_nerfstudio():
    """A state dict trained through our kernels (CPU: the C++ kernel via NerfaccelHashEncoding, when built) loads
    into Nerfstudio's torch encoding and gives the same features as our Triton kernel; and the other way round."""
    from nerfaccel_plugin.fields.hash_encoding import use_nerfaccel_hash_encoding

    ours = encoding(4, 8, 2)
    use_nerfaccel_hash_encoding(ours)
    _trained(ours)
    theirs = encoding(4, 8, 2, seed=99)
    theirs.load_state_dict(ours.state_dict())
    x = points(200)
    y_triton = th.hash_encode_fwd(x, ours.hash_table.detach(), ours.scalings.float(), 256, interpret=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), y_triton, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours(x), y_triton, rtol=1e-5, atol=1e-6)

    ns_trained = _trained(encoding(4, 8, 2, seed=5))
    mine = encoding(4, 8, 2, seed=7)
    use_nerfaccel_hash_encoding(mine)
    mine.load_state_dict(ns_trained.state_dict())
    assert list(mine.state_dict()) == list(ns_trained.state_dict()) == ["hash_table"]
    y_triton = th.hash_encode_fwd(x, mine.hash_table.detach(), mine.scalings.float(), 256, interpret=True)
    with torch.no_grad():
        torch.testing.assert_close(y_triton, ns_trained(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine(x), ns_trained(x), rtol=1e-5, atol=1e-6)


def test_register_installs_cuda_kernels():
    """register() adds CUDA kernels to ops defined elsewhere (schemas untouched), by name."""
    name = "nerfaccel_hash_test"

    @torch.library.custom_op(f"{name}::fwd", mutates_args=(), device_types=("cpu",))
    def fwd(x: torch.Tensor, table: torch.Tensor, scales: torch.Tensor, table_size: int) -> torch.Tensor:
        return x.new_empty(0)

    @torch.library.custom_op(f"{name}::bwd", mutates_args=(), device_types=("cpu",))
    def bwd(
        grad: torch.Tensor, x: torch.Tensor, table: torch.Tensor, scales: torch.Tensor, table_size: int,
        need_x_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        return x.new_empty(0), x.new_empty(0)

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert not has(f"{name}::fwd", "CUDA")
    th.register(f"{name}::fwd", f"{name}::bwd")
    assert has(f"{name}::fwd", "CUDA") and has(f"{name}::bwd", "CUDA")


@pytest.mark.parametrize("cc", [80, 86, 89, 90])
def test_aot_compiles_without_spills(cc):
    """Both kernels compile for each target architecture (no GPU needed) and fit in registers."""
    for which in ("fwd", "bwd"):
        k = th.aot_compile(cc, which, "fp16" if which == "bwd" else "fp32")
        usage = th.resource_usage(k.asm["ptx"], cc)
        assert 0 < usage["registers"] <= 128, usage
        assert usage["spill_stores"] == 0 and usage["spill_loads"] == 0, usage


def test_hash_selftest_passes_and_catches_a_broken_kernel():
    """The first-use check of the hash kernels (run on CUDA before they are registered): our kernels pass (here under
    the interpreter), a kernel with a wrong position gradient or a wrong hash is caught and named."""
    import functools

    from nerfaccel_plugin._ext import selftest

    fwd = functools.partial(th.hash_encode_fwd, interpret=True)
    bwd = functools.partial(th.hash_encode_bwd, interpret=True)
    ok = selftest.run_hash(fwd, bwd, "cpu")
    assert ok.passed, ok.detail

    def bad_bwd(*args):
        g_table, g_x = bwd(*args)
        return g_table, g_x * 1.01

    out = selftest.run_hash(fwd, bad_bwd, "cpu")
    assert not out.passed and out.failed_op == "hash_encode_backward"

    def bad_fwd(x, table, scales, table_size):  # corners off by one on the first axis
        return fwd(x + torch.tensor([1.0, 0, 0]) / scales.max(), table, scales, table_size)

    out = selftest.run_hash(bad_fwd, bwd, "cpu")
    assert not out.passed and out.status == "failed" and out.failed_op == "hash_encode" and "max error" in out.summary()
