"""Model-level pieces that the end-to-end runs do not pin down: the dynamic field's density at a given time,
RGBA output for ``ns-render`` / ``ns-export``, the hash-grid backend choice and checkpoints of the other backend,
the CUDA device an ``eval_setup`` pipeline is given, viewer outputs, LPIPS and the checkpoint's keys, the vanilla
positional encoding, and which models DDP must search for unused parameters.
"""

from __future__ import annotations

import contextlib
import math
import types

import pytest
import torch
from nerfstudio.data.scene_box import SceneBox

from nerfaccel_plugin.ns.fields.dynamic_field import TimeHashField
from nerfaccel_plugin.ns.models import (
    HashFieldConfig,
    MlpFieldConfig,
    NerfaccelModelConfig,
    OccupancySamplerConfig,
    ProposalSamplerConfig,
)
from nerfaccel_plugin.ns.models.nerfaccel_model import _hash_implementation

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
    cfg = NerfaccelModelConfig(
        field=HashFieldConfig(num_levels=4, max_res=64, log2_hashmap_size=12),
        sampler=OccupancySamplerConfig(grid_resolution=16),
    )
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


# --- hash-grid backend of a checkpoint ------------------------------------------------------------------------


class _FakeTcnnModule(torch.nn.Module):
    """Stands in for a tiny-cuda-nn module: one flat ``params`` tensor, as tinycudann stores its weights."""

    def __init__(self, n_input_dims, n_output_dims=None, encoding_config=None, network_config=None, **_):
        super().__init__()
        self.n_input_dims, self.n_output_dims = n_input_dims, n_output_dims
        self.params = torch.nn.Parameter(torch.zeros(16))


@contextlib.contextmanager
def tcnn_machine():
    """A machine where tiny-cuda-nn is installed and usable: Nerfstudio's fields build tinycudann-backed modules
    (key layout ``...tcnn_encoding.params``) and ``auto`` picks them."""
    from nerfstudio.field_components import encodings, mlp

    import nerfaccel_plugin.ns.models.nerfaccel_model as nm

    fake = types.SimpleNamespace(
        Encoding=_FakeTcnnModule, Network=_FakeTcnnModule, NetworkWithInputEncoding=_FakeTcnnModule
    )
    with pytest.MonkeyPatch.context() as mp:
        for module in (encodings, mlp):
            mp.setattr(module, "TCNN_EXISTS", True)
            mp.setattr(module, "tcnn", fake)
        mp.setattr(nm, "_tcnn_usable", lambda device: True)
        yield


def _small_model(hash_implementation="auto", eval_march_steps=64, **overrides):
    cfg = NerfaccelModelConfig(
        field=HashFieldConfig(num_levels=4, max_res=64, log2_hashmap_size=10, hash_implementation=hash_implementation),
        sampler=OccupancySamplerConfig(grid_resolution=16, eval_march_steps=eval_march_steps),
        **overrides,
    )
    torch.manual_seed(1)
    model = cfg.setup(scene_box=SceneBox(AABB), num_train_data=4, metadata={}, device="cpu")
    model.eval()
    return model


def _pipeline_around(model):
    """A NerfaccelPipeline holding ``model`` (no datamanager): what Nerfstudio's loading code talks to."""
    from nerfaccel_plugin.ns.models.pipeline import NerfaccelPipeline

    pipeline = NerfaccelPipeline.__new__(NerfaccelPipeline)
    torch.nn.Module.__init__(pipeline)
    pipeline._model = model
    pipeline.world_size = 1
    return pipeline


def _checkpoint_state(model) -> dict:
    return {f"_model.{k}": v.clone() for k, v in model.state_dict().items()}


def test_torch_checkpoint_loads_on_a_tcnn_machine_when_auto():
    """Trained on a CPU (torch hash grid), opened where tiny-cuda-nn runs: ``auto`` follows the checkpoint."""
    from nerfaccel_plugin.ns.models.nerfaccel_model import state_dict_hash_backend

    trained = _small_model("auto")  # training machine: no tiny-cuda-nn
    assert state_dict_hash_backend(trained.state_dict()) == "torch"
    state = _checkpoint_state(trained)

    with tcnn_machine():
        here = _small_model("auto")
        assert state_dict_hash_backend(here.state_dict()) == "tcnn", "the fake tiny-cuda-nn must be picked by auto"
        pipeline = _pipeline_around(here)
        pipeline.load_state_dict(state)  # was: ValueError advising an option ns-eval cannot take

        model = pipeline.model
        assert state_dict_hash_backend(model.state_dict()) == "torch" and model.hash_implementation == "torch"
        assert not model.training, "the rebuilt model keeps eval mode"
        loaded = model.state_dict()
        assert set(loaded) == {k.removeprefix("_model.") for k in state}
        for key, value in state.items():
            assert torch.equal(loaded[key.removeprefix("_model.")], value), key
        assert model.sampler.density_fn.__self__ is model.field  # the grid samples the loaded field

        explicit = _small_model("tcnn")  # the config names the other backend: refuse, and say how to fix it
        with pytest.raises(ValueError, match=r"trained with the torch.*hash_implementation: tcnn.*config\.yml"):
            _pipeline_around(explicit).load_state_dict(state)


def test_tcnn_checkpoint_where_tcnn_cannot_run_is_refused():
    """A tiny-cuda-nn checkpoint on a machine without it: no silent non-strict load, an explanation instead."""
    with tcnn_machine():
        state = _checkpoint_state(_small_model("auto"))  # tiny-cuda-nn key layout
        on_tcnn = _small_model("auto")
    assert any("tcnn_encoding" in k for k in state)
    with pytest.raises(ValueError, match="tiny-cuda-nn.*needs `tinycudann` installed and a CUDA GPU"):
        _pipeline_around(_small_model("auto")).load_state_dict(state)
    _pipeline_around(on_tcnn).load_state_dict(state)  # the same backend loads
    _pipeline_around(_small_model("auto")).load_state_dict(_checkpoint_state(_small_model("torch")))


def test_resume_picks_the_checkpoints_backend_before_the_optimizers(tmp_path):
    """``ns-train --load-dir``: the trainer config resolves ``auto`` from the checkpoint before building anything."""
    from nerfaccel_plugin.method_configs import method_config

    from nerfaccel_plugin.ns.trainer import checkpoint_to_load, follow_checkpoint_hash_backend

    with tcnn_machine():
        tcnn_state = _checkpoint_state(_small_model("auto"))
    torch_state = _checkpoint_state(_small_model("auto"))
    for step, state in ((3, tcnn_state), (7, torch_state)):
        torch.save({"step": step, "pipeline": state}, tmp_path / f"step-{step:09d}.ckpt")
    cfg = method_config("nerfaccel-lego", "cpu")
    cfg.load_dir = tmp_path
    assert checkpoint_to_load(cfg) == tmp_path / "step-000000007.ckpt"
    follow_checkpoint_hash_backend(cfg)
    assert cfg.pipeline.model.field.hash_implementation == "torch"
    cfg = method_config("nerfaccel-lego", "cpu")
    cfg.load_dir, cfg.load_step = tmp_path, 3
    follow_checkpoint_hash_backend(cfg)
    assert (
        cfg.pipeline.model.field.hash_implementation == "auto"
    )  # tiny-cuda-nn checkpoints: auto picks it where it runs


# --- the CUDA device of eval_setup --------------------------------------------------------------------------


def test_cuda_device_is_set_only_when_it_has_an_index(monkeypatch):
    """``eval_setup`` (ns-eval, ns-viewer, ns-render, ns-export) passes ``torch.device("cuda")``; the pipeline used
    to hand it to ``torch.cuda.set_device``, which raises ValueError for a device without an index."""
    from torch.cuda._utils import _get_device_index

    from nerfaccel_plugin.ns.models.pipeline import NerfaccelPipeline, NerfaccelPipelineConfig, set_current_cuda_device

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(_get_device_index(d)))  # real validation
    for device in (torch.device("cuda"), "cuda", "cpu", torch.device("cpu")):
        set_current_cuda_device(device)
    assert calls == []
    set_current_cuda_device("cuda:1")  # a DDP rank's device (Nerfstudio's trainer passes cuda:<local_rank>)
    set_current_cuda_device(torch.device("cuda", 0))
    assert calls == [1, 0]

    class Reached(Exception):
        pass

    def base_init(self, *args, **kwargs):
        raise Reached

    from nerfstudio.pipelines.dynamic_batch import DynamicBatchPipeline

    monkeypatch.setattr(DynamicBatchPipeline, "__init__", base_init)
    with pytest.raises(Reached):  # gets past the device setup to Nerfstudio's pipeline construction
        NerfaccelPipeline(NerfaccelPipelineConfig(), device=torch.device("cuda"), test_mode="test")
    assert calls == [1, 0]


# --- viewer / ns-render outputs ---------------------------------------------------------------------------------


def _camera(size: int = 6):
    from nerfstudio.cameras.cameras import Cameras

    c2w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]])[None]
    f, c = float(size), size / 2
    return Cameras(camera_to_worlds=c2w, fx=f, fy=f, cx=c, cy=c, width=size, height=size)


@pytest.mark.parametrize("eval_march_steps", [64, 0])
def test_num_samples_per_ray_can_be_colormapped(eval_march_steps):
    """The viewer's output picker and ``ns-render --rendered-output-names num_samples_per_ray`` colormap each
    output; an integer ``(n,)`` tensor made ``apply_colormap`` raise NotImplementedError."""
    from nerfstudio.utils import colormaps

    model = _small_model("torch", eval_march_steps=eval_march_steps)
    model.occupancy_grid.binaries.fill_(True)  # a fresh grid is empty: no samples at all
    with torch.no_grad():
        outputs = model.get_outputs_for_camera(_camera(), obb_box=None)
    counts = outputs["num_samples_per_ray"]
    assert counts.shape == (6, 6, 1) and counts.is_floating_point()
    assert bool((counts > 0).any()) and torch.equal(counts, counts.round())
    image = colormaps.apply_colormap(counts, colormaps.ColormapOptions(normalize=True))
    assert image.shape == (6, 6, 3) and bool(torch.isfinite(image).all())


def test_proposal_model_num_samples_per_ray_is_float():
    cfg = NerfaccelModelConfig(
        field=HashFieldConfig(contraction="l2", num_levels=4, max_res=64, log2_hashmap_size=10),
        sampler=ProposalSamplerConfig(
            num_proposal_samples=(16, 8), num_samples=8, max_res=(32, 32), log2_hashmap_size=10
        ),
    )
    model = cfg.setup(scene_box=SceneBox(AABB), num_train_data=4, metadata={}, device="cpu")
    model.eval()
    with torch.no_grad():
        counts = model.get_outputs_for_camera(_camera(4), obb_box=None)["num_samples_per_ray"]
    assert counts.shape == (4, 4, 1) and counts.is_floating_point() and bool((counts == 8).all())


# --- LPIPS and the checkpoint's keys ----------------------------------------------------------------------------


class _StandInLpips(torch.nn.Module):
    """What the LPIPS metric looks like when AlexNet's weights are on disk: a module with parameters."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 3)

    def forward(self, a, b):
        return torch.tensor(0.25)


def test_checkpoint_keys_do_not_depend_on_lpips(monkeypatch):
    """Weights on disk at training, not at evaluation (or the reverse) must not change the state-dict keys:
    Nerfstudio then falls back to a non-strict load without a word."""
    from nerfaccel_plugin import ns_compat

    monkeypatch.setattr(ns_compat, "make_lpips", lambda: _StandInLpips())
    with_lpips = _small_model("torch")
    monkeypatch.setattr(ns_compat, "make_lpips", lambda: None)
    without = _small_model("torch")
    assert isinstance(with_lpips.lpips, _StandInLpips) and without.lpips is None
    assert set(with_lpips.state_dict()) == set(without.state_dict())
    assert not any("lpips" in k for k in with_lpips.state_dict())
    without.load_state_dict(with_lpips.state_dict(), strict=True)
    with_lpips.load_state_dict(without.state_dict(), strict=True)

    image = torch.rand(16, 16, 3)
    outputs = {"rgb": image, "accumulation": torch.ones(16, 16, 1), "depth": torch.ones(16, 16, 1)}
    metrics, _ = with_lpips.get_image_metrics_and_images(outputs, {"image": image})
    assert metrics["lpips"] == 0.25  # still computed
    assert "lpips" not in without.get_image_metrics_and_images(outputs, {"image": image})[0]


# --- vanilla NeRF positional encoding -------------------------------------------------------------------------


def test_vanilla_encoding_uses_the_original_nerf_bands():
    """sin/cos(2^k x), k < 10, on raw positions as the original NeRF and nerfacc's vanilla example (Nerfstudio's
    NeRFEncoding alone would give sin(2 pi 2^k x): a top band of 2 pi 512 rad per unit)."""
    cfg = NerfaccelModelConfig(
        field=MlpFieldConfig(num_layers=2, layer_width=16), sampler=OccupancySamplerConfig(grid_resolution=16)
    )
    model = cfg.setup(scene_box=SceneBox(AABB * 1.5), num_train_data=4, metadata={}, device="cpu")
    x = torch.rand(50, 3, dtype=torch.float64) * 3.0 - 1.5
    for encoding, levels in ((model.field.position_encoding, 10), (model.field.direction_encoding, 4)):
        bands = x[..., None] * (2.0 ** torch.arange(levels, dtype=torch.float64))
        bands = bands.reshape(50, -1)
        expected = torch.sin(torch.cat([bands, bands + math.pi / 2], dim=-1))
        got = encoding(x.float()).double()
        assert got.shape[-1] == 6 * levels + 3
        torch.testing.assert_close(got[:, : 6 * levels], expected, rtol=0, atol=2e-3)  # float32 phases up to ~770
        freqs = 2 * math.pi * 2.0 ** torch.linspace(encoding.min_freq, encoding.max_freq, levels, dtype=torch.float64)
        torch.testing.assert_close(freqs, 2.0 ** torch.arange(levels, dtype=torch.float64))
    cfg.field.original_frequencies = False  # runs trained before: Nerfstudio's 2 pi 2^k bands
    old = cfg.setup(scene_box=SceneBox(AABB * 1.5), num_train_data=4, metadata={}, device="cpu")
    assert (old.field.position_encoding.min_freq, old.field.position_encoding.max_freq) == (0.0, 9.0)


# --- DDP: which models need the unused-parameter search -------------------------------------------------------


def _ray_bundle(n: int = 64, times: bool = False):
    from nerfstudio.cameras.rays import RayBundle

    torch.manual_seed(3)
    origins = torch.tensor([0.0, 0.0, 3.0]).expand(n, 3).clone()
    target = torch.rand(n, 3) * 0.6 - 0.3
    directions = torch.nn.functional.normalize(target - origins, dim=-1)
    return RayBundle(
        origins=origins, directions=directions, pixel_area=torch.full((n, 1), 1e-4),
        camera_indices=torch.zeros(n, 1, dtype=torch.long), times=torch.rand(n, 1) if times else None,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["nerfaccel-lego", "nerfaccel-ngp", "nerfaccel-vanilla", "nerfaccel-dnerf"])
def test_occupancy_models_use_every_parameter_in_a_training_step(name):
    """DDP runs these without ``find_unused_parameters`` (a graph search per step): every trainable parameter
    must get a gradient from one training forward. The proposal model needs the search and gets it."""
    from nerfaccel_plugin.method_configs import method_config

    from nerfaccel_plugin.ns.models.pipeline import needs_unused_parameter_search

    cfg = method_config(name, "cpu").pipeline.model
    cfg.sampler.grid_resolution = 16
    if isinstance(cfg.field, MlpFieldConfig):
        cfg.field.num_layers, cfg.field.layer_width = 4, 32
    else:
        cfg.field.num_levels, cfg.field.max_res, cfg.field.log2_hashmap_size = 4, 64, 10
    if name == "nerfaccel-ngp":
        cfg.field.appearance_embedding_dim = 4
    model = cfg.setup(scene_box=SceneBox(AABB), num_train_data=4, metadata={}, device="cpu")
    assert not needs_unused_parameter_search(model)
    model.occupancy_grid.binaries.fill_(True)  # a fresh grid is empty
    model.train()
    outputs = model(_ray_bundle(times=name == "nerfaccel-dnerf"))
    assert int(outputs["num_samples_per_ray"].sum()) > 0
    outputs["rgb"].sum().backward()
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and "device_indicator_param" not in trainable
    assert [k for k, p in trainable.items() if p.grad is None] == []

    proposal = method_config("nerfaccel-360", "cpu").pipeline.model
    proposal.field.num_levels, proposal.field.max_res, proposal.field.log2_hashmap_size = 4, 64, 10
    proposal.sampler.max_res, proposal.sampler.log2_hashmap_size = (32, 32), 10
    assert needs_unused_parameter_search(proposal.setup(scene_box=SceneBox(AABB), num_train_data=4, metadata={}))


@pytest.mark.parametrize(
    ("setting", "device_type", "expected"),
    [("auto", "cpu", True), ("auto", "cuda", False), ("never", "cpu", False), ("always", "cuda", True)],
)
def test_forward_sets_the_value_checks(monkeypatch, setting, device_type, expected):
    """The per-step value checks (GPU syncs) follow ``value_checks``: on for CPU tensors, off on a GPU by default."""
    from nerfaccel_plugin import _validation

    model = _small_model(value_checks=setting)
    assert model._value_checks_enabled(torch.device(device_type)) is expected
    seen = []
    monkeypatch.setattr(model, "get_outputs", lambda bundle: seen.append(_validation.value_checks_enabled()) or {})
    monkeypatch.setattr(model, "_value_checks_enabled", lambda device: expected)
    model(_ray_bundle(4))
    assert seen == [expected]
    assert _validation.value_checks_enabled()  # restored after the forward


def test_unsorted_samples_are_caught_in_a_cpu_forward(monkeypatch):
    """With checks on (the CPU default) a sampler bug that unsorts the ray indices is an error, not a wrong image."""
    model = _small_model()
    model.occupancy_grid.binaries.fill_(True)
    real = model.sampler.forward

    def unsorted(bundle, *args, **kwargs):
        samples, ray_indices = real(bundle, *args, **kwargs)
        return samples, ray_indices.flip(0)

    monkeypatch.setattr(model.sampler, "forward", unsorted)
    model.config.sampler.eval_march_steps = 0
    with pytest.raises(ValueError, match="ray_indices"):
        model(_ray_bundle(8))


@pytest.mark.parametrize("march_steps", [7, 64])
def test_segmented_eval_march_equals_one_march(march_steps):
    """ns/models/eval_march.py: marching in segments composites the same samples as one march (no early stop).

    (With 1-step segments one ray of 32 got one sample fewer or more than the single march, out of ~580: a
    segment boundary that rounds onto a lattice point.)"""
    model = _small_model("torch", eval_march_steps=march_steps)
    model.occupancy_grid.binaries.fill_(True)
    model.sampler.early_stop_eps = 0.0  # composite every sample, as the full render does
    torch.manual_seed(4)
    for p in model.field.parameters():  # a field dense enough that the rays gather real opacity
        p.data.normal_(0.0, 0.5)
    bundle = _ray_bundle(32)
    background = torch.rand(32, 3)
    with torch.no_grad():
        segmented = model._render_occupancy_eval(bundle, background)
        model.config.sampler.eval_march_steps = 0
        full = model.get_outputs(bundle)  # eval mode, eval_march_steps 0: every sample at once
    full_rgb = full["rgb"] - torch.tensor([1.0, 1.0, 1.0]) * (1.0 - full["accumulation"])  # white eval background
    seg_rgb = segmented["rgb"] - background * (1.0 - segmented["accumulation"])
    assert bool((full["num_samples_per_ray"] > 0).any())
    assert float(full["accumulation"].max()) > 0.05
    torch.testing.assert_close(segmented["num_samples_per_ray"], full["num_samples_per_ray"])
    torch.testing.assert_close(segmented["accumulation"], full["accumulation"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seg_rgb, full_rgb, rtol=1e-4, atol=1e-5)
