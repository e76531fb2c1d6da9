"""The fused CPU hash-encoding kernel against Nerfstudio's own PyTorch ``HashEncoding`` (the reference).

Forward values, table gradients and position gradients must match Nerfstudio's code on random points
(inside and outside the unit cube, on grid vertices), for several level counts, table sizes and feature
widths, in float32 and float64; plus gradcheck, opcheck, torch.compile, the fallbacks and bad input.
"""

from __future__ import annotations

import copy

import pytest
import torch
from nerfstudio.field_components.encodings import HashEncoding

from nerfaccel_plugin.ns.fields.hash_encoding import (
    NerfaccelHashEncoding,
    hash_encode,
    hash_kernel_available,
    use_nerfaccel_hash_encoding,
)


@pytest.fixture(autouse=True)
def need_kernel(cpp, reset_backend):  # noqa: ARG001 - cpp skips (or fails under CI) without the extension
    if not hash_kernel_available():
        pytest.skip("the C++ extension is not the active CPU backend")


@pytest.fixture(scope="module")
def cpp():
    from nerfaccel_plugin import _ext

    try:
        return _ext.load_backend("cpp")
    except _ext.ExtensionUnavailable as err:
        import os

        if os.environ.get("NERFACCEL_REQUIRE_EXT") == "1":
            pytest.fail(f"the cpp extension must build here (NERFACCEL_REQUIRE_EXT=1): {err}")
        pytest.skip(f"cpp extension unavailable: {err}")


def pair(levels: int, log2: int, features: int, dtype=torch.float32, max_res: int = 256):
    torch.manual_seed(levels * 100 + log2 * 10 + features)
    ref = HashEncoding(
        num_levels=levels, min_res=4, max_res=max_res, log2_hashmap_size=log2, features_per_level=features,
        hash_init_scale=0.5, implementation="torch",
    ).to(dtype)  # fmt: skip
    ours = copy.deepcopy(ref)
    assert use_nerfaccel_hash_encoding(ours) == 1 and isinstance(ours, NerfaccelHashEncoding)
    return ref, ours


def points(n: int, dtype=torch.float32) -> torch.Tensor:
    x = torch.rand(n, 3, dtype=dtype) * 1.4 - 0.2  # outside [0, 1] too: negative corners hash like Python's %
    x[:8] = torch.tensor(
        [
            [0.0, 0, 0],
            [1, 1, 1],
            [0.5, 0.25, 0.75],
            [0.0, 1, 0.5],
            [1, 0, 0],
            [0.125, 0, 1],
            [-0.25, 0.5, 1.25],
            [0.75, 0.75, 0],
        ],
        dtype=dtype,
    )  # fmt: skip - on grid vertices
    return x


@pytest.mark.parametrize(
    "levels,log2,features,dtype",
    [(1, 4, 1, torch.float32), (4, 8, 2, torch.float32), (8, 12, 4, torch.float32), (16, 14, 2, torch.float32),
     (3, 6, 2, torch.float64)],
)  # fmt: skip
def test_matches_nerfstudio_forward_and_backward(levels, log2, features, dtype):
    ref, ours = pair(levels, log2, features, dtype)
    x = points(3000, dtype)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y_ours, y_ref, **tol)
    cot = torch.randn_like(y_ref)
    y_ref.backward(cot)
    y_ours.backward(cot)
    torch.testing.assert_close(ours.hash_table.grad, ref.hash_table.grad, **tol)
    # The position gradient sums large cancelling terms (scale x table differences); in float32 the summation
    # order shows at ~1e-5 of the largest gradient, so the tolerance follows it (float64 is checked tightly).
    scale = float(x_ref.grad.abs().max())
    x_tol = dict(rtol=1e-4, atol=2e-5 * scale) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12 * scale)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, **x_tol)


def test_batch_shapes_and_empty_input():
    ref, ours = pair(4, 8, 2)
    x = torch.rand(5, 7, 3)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    assert ours(torch.empty(0, 3)).shape == (0, 8)


def test_table_gradient_without_position_gradient():
    _, ours = pair(4, 8, 2)
    ours(torch.rand(100, 3)).sum().backward()
    assert ours.hash_table.grad is not None and bool(ours.hash_table.grad.abs().sum() > 0)


def test_gradcheck():
    torch.manual_seed(0)
    table = (torch.rand(2 * 16, 2, dtype=torch.float64) - 0.5).requires_grad_()
    scales = torch.tensor([3.0, 7.0], dtype=torch.float64)
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()  # away from cell faces
    assert torch.autograd.gradcheck(lambda a, b: hash_encode(a, b, scales, 16), (x, table))


def test_opcheck():
    table = torch.rand(2 * 16, 2)
    scales = torch.tensor([3.0, 7.0])
    torch.library.opcheck(torch.ops.nerfaccel.hash_encode_fwd, (torch.rand(10, 3), table, scales, 16))
    torch.library.opcheck(
        torch.ops.nerfaccel.hash_encode_fwd, (torch.rand(10, 3, requires_grad=True), table.requires_grad_(), scales, 16)
    )


def test_torch_compile_smoke():
    ref, ours = pair(4, 8, 2)
    x = torch.rand(64, 3)
    compiled = torch.compile(lambda p: ours(p).square().sum(), backend="aot_eager")
    compiled(x).backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.hash_table.grad, ref.hash_table.grad, rtol=1e-5, atol=1e-6)


def test_second_derivative_explains_itself():
    _, ours = pair(2, 6, 2)
    x = torch.rand(8, 3, requires_grad=True)
    (g,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="NERFACCEL_HASH_KERNEL=0"):
        g.sum().backward()


def test_switches_off(monkeypatch):
    ref, ours = pair(4, 8, 2)
    monkeypatch.setenv("NERFACCEL_HASH_KERNEL", "0")
    assert not hash_kernel_available()
    x = torch.rand(50, 3, requires_grad=True)
    (g,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)  # Nerfstudio's path: twice differentiable
    g.sum().backward()
    torch.testing.assert_close(ours(x), ref(x))


def test_forced_torch_backend_uses_nerfstudio_code(monkeypatch, reset_backend):
    ref, ours = pair(4, 8, 2)
    monkeypatch.setenv("NERFACCEL_BACKEND", "torch")
    reset_backend.reset()
    assert not hash_kernel_available()
    x = torch.rand(50, 3, requires_grad=True)
    (g,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)  # the kernel has no double backward
    g.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)  # Nerfstudio's own code: identical


def test_state_dict_is_unchanged():
    ref, ours = pair(4, 8, 2)
    assert list(ref.state_dict()) == list(ours.state_dict())
    fresh = HashEncoding(num_levels=4, min_res=4, max_res=256, log2_hashmap_size=8, hash_init_scale=0.5,
                         implementation="torch")  # fmt: skip
    fresh.load_state_dict(ours.state_dict())
    assert use_nerfaccel_hash_encoding(ours) == 0  # already switched


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="`table` must have shape"):
        hash_encode(torch.rand(4, 3), torch.rand(10, 2), torch.tensor([2.0, 4.0]), 16)
    with pytest.raises(ValueError, match="`x` must have shape"):
        hash_encode(torch.rand(4, 2), torch.rand(32, 2), torch.tensor([2.0, 4.0]), 16)


def test_nerfaccel_model_uses_the_kernel_on_cpu():
    from nerfstudio.data.scene_box import SceneBox

    from nerfaccel_plugin.ns.models import HashFieldConfig, NerfaccelModelConfig, OccupancySamplerConfig

    box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    small = dict(num_levels=4, max_res=64, log2_hashmap_size=10)
    configs = [
        NerfaccelModelConfig(field=HashFieldConfig(**small, cpu_hash_kernel=kernel), sampler=OccupancySamplerConfig(16))
        for kernel in (True, False)
    ]
    for cfg in configs:
        model = cfg.setup(scene_box=box, num_train_data=2)
        kinds = {type(m) for m in model.modules() if isinstance(m, HashEncoding)}
        assert kinds == ({NerfaccelHashEncoding} if cfg.cpu_hash_kernel else {HashEncoding})
