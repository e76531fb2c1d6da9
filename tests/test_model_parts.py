"""Model-level pieces that the end-to-end runs do not pin down: the dynamic field's density at a given time,
RGBA output for ``ns-render`` / ``ns-export``, the hash-grid backend choice and checkpoints of the other backend.
"""

from __future__ import annotations

import pytest
import torch
from nerfstudio.data.scene_box import SceneBox

from nerfaccel_plugin.fields.dynamic_field import TimeHashField
from nerfaccel_plugin.models import NerfaccelModelConfig
from nerfaccel_plugin.models.nerfaccel_model import _hash_implementation

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_time_hash_field_density_fn_uses_the_time():
    """The occupancy grid asks ``density_fn(x, t)``; Nerfstudio's base version drops ``t`` (time 0 always)."""
    from nerfstudio.cameras.rays import Frustums, RaySamples

    torch.manual_seed(0)
    field = TimeHashField(AABB, num_levels=4, max_res=64, log2_hashmap_size=12, implementation="torch")
    x = torch.rand(200, 3) * 1.6 - 0.8
    t0, t1 = torch.zeros(200, 1), torch.ones(200, 1)
    d0, d1 = field.density_fn(x, t0), field.density_fn(x, t1)
    assert not torch.allclose(d0, d1), "the density must depend on the time"
    ones = torch.ones_like(x[:, :1])
    samples = RaySamples(
        frustums=Frustums(origins=x, directions=torch.ones_like(x), starts=0 * ones, ends=0 * ones, pixel_area=ones),
        times=t1,
    )
    torch.testing.assert_close(d1, field.get_density(samples)[0])
    torch.testing.assert_close(field.density_fn(x), d0)  # no time given: time 0


@pytest.fixture(scope="module")
def model():
    cfg = NerfaccelModelConfig(field_type="hash", num_levels=4, max_res=64, log2_hashmap_size=12, grid_resolution=16)
    m = cfg.setup(scene_box=SceneBox(AABB), num_train_data=4, metadata={}, device="cpu")
    m.eval()
    return m


def test_rgba_image_removes_the_eval_background(model):
    """``ns-render --rendered-output-names rgba`` and ``ns-export`` point clouds call ``get_rgba_image``."""
    fg = torch.rand(5, 7, 3)
    acc = torch.rand(5, 7, 1)
    acc[0, 0] = 1.0
    acc[1, 1] = 0.0
    white = torch.ones(3)
    outputs = {"rgb": fg * acc + white * (1 - acc), "accumulation": acc}  # composited on the eval background
    rgba = model.get_rgba_image(outputs)
    assert rgba.shape == (5, 7, 4)
    torch.testing.assert_close(rgba[..., 3:], acc)
    seen = acc[..., 0] > 1e-3
    torch.testing.assert_close(rgba[..., :3][seen], fg[seen], rtol=1e-4, atol=1e-4)
    with pytest.raises(NotImplementedError, match="accumulation"):
        model.get_rgba_image({"rgb": fg})


def test_hash_backend_follows_the_model_device(monkeypatch):
    assert _hash_implementation("torch", "cuda") == "torch"
    assert _hash_implementation("tcnn", "cpu") == "tcnn"  # explicit choice is kept (tcnn then reports itself)
    assert _hash_implementation("auto", "cpu") == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _hash_implementation("auto", "cpu") == "torch", "a CPU model on a GPU machine must not get tiny-cuda-nn"


def test_checkpoint_of_the_other_hash_backend_is_refused(model):
    """A tiny-cuda-nn checkpoint must not load silently (non-strict) into a torch-backend field, or vice versa."""
    from nerfaccel_plugin.models.pipeline import NerfaccelPipeline

    pipeline = NerfaccelPipeline.__new__(NerfaccelPipeline)
    torch.nn.Module.__init__(pipeline)
    pipeline._model = model
    state = {f"_model.{k}": v for k, v in model.state_dict().items()}
    tcnn_state = {k.replace("hash_table", "tcnn_encoding.params"): v for k, v in state.items()}
    assert tcnn_state != state
    with pytest.raises(ValueError, match="tiny-cuda-nn.*hash-implementation"):
        pipeline.load_state_dict(tcnn_state)
    pipeline.load_state_dict(state)  # the same backend loads
