"""Every model option is checked when its config is built, naming the option as typed on the command line.

tyro builds the configs from the command line before ``ns-train`` writes ``config.yml``, so a bad value stops the
run with that message and leaves nothing behind (checked through the real ``ns-train`` below).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nerfaccel_plugin.ns.models import (
    HashFieldConfig,
    MlpFieldConfig,
    NerfaccelModelConfig,
    OccupancySamplerConfig,
    ProposalSamplerConfig,
    TimeHashFieldConfig,
)

S = "--pipeline.model.sampler."
F = "--pipeline.model.field."

BAD_OCCUPANCY = [
    ({"grid_resolution": 0}, S + "grid-resolution must be an integer >= 1, got 0"),
    ({"grid_resolution": -3}, S + "grid-resolution must be an integer >= 1, got -3"),
    ({"grid_levels": 0}, S + "grid-levels must be an integer >= 1"),
    ({"samples_per_diagonal": 0}, S + "samples-per-diagonal must be an integer >= 1, got 0"),
    ({"samples_per_diagonal": -5}, S + "samples-per-diagonal must be an integer >= 1, got -5"),
    ({"render_step_size": 0.0}, S + "render-step-size must be > 0, got 0.0"),
    ({"render_step_size": -0.1}, S + "render-step-size must be > 0"),
    ({"render_step_size": float("nan")}, S + "render-step-size must be a finite number"),
    ({"alpha_thre": 2.0}, S + r"alpha-thre must be in \[0, 1\), got 2.0"),
    ({"alpha_thre": 1.0}, S + r"alpha-thre must be in \[0, 1\)"),
    ({"alpha_thre": -0.1}, S + r"alpha-thre must be in \[0, 1\)"),
    ({"occ_thre": 1.5}, S + r"occ-thre must be in \[0, 1\)"),
    ({"early_stop_eps": 1.0}, S + r"early-stop-eps must be in \[0, 1\)"),
    ({"early_stop_eps": float("inf")}, S + "early-stop-eps must be a finite number"),
    ({"cone_angle": -1.0}, S + "cone-angle must be >= 0"),
    ({"near_plane": 2.0, "far_plane": 1.0}, S + "far-plane must be greater than " + S + r"near-plane \(2.0\)"),
    ({"update_every": 0}, S + "update-every must be an integer >= 1"),
    ({"ema_decay": 1.5}, S + r"ema-decay must be in \[0, 1\]"),
    ({"eval_march_steps": -1}, S + "eval-march-steps must be an integer >= 0"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OCCUPANCY)
def test_occupancy_options(options, message):
    with pytest.raises(ValueError, match=message):
        OccupancySamplerConfig(**options)


def test_step_size_errors_blame_the_option_that_was_set():
    """``samples-per-diagonal -5`` was reported as a bad ``render-step-size``, which the user never set."""
    with pytest.raises(ValueError) as err:
        OccupancySamplerConfig(samples_per_diagonal=-5)
    assert "render-step-size" not in str(err.value)
    with pytest.raises(ValueError) as err:
        OccupancySamplerConfig(render_step_size=-1.0)
    assert "samples-per-diagonal" not in str(err.value)
    assert OccupancySamplerConfig(render_step_size=0.01).render_step_size == 0.01
    assert OccupancySamplerConfig(alpha_thre=0.0, occ_thre=0.0, early_stop_eps=0.0).alpha_thre == 0.0


BAD_PROPOSAL = [
    ({"num_proposal_samples": ()}, S + "num-proposal-samples needs at least one value"),
    ({"num_proposal_samples": (64, 0), "max_res": (32, 32)}, S + "num-proposal-samples needs .* integer >= 1"),
    ({"num_samples": 0}, S + "num-samples must be an integer >= 1, got 0"),
    ({"max_res": (32,)}, S + r"max-res needs one value per proposal stage \(2"),
    ({"near_plane": -1.0}, S + "near-plane must be >= 0"),
    ({"near_plane": 5.0, "far_plane": 1.0}, S + "far-plane must be greater than"),
    ({"requires_grad_target": 0.5}, S + "requires-grad-target must be >= 1"),
    ({"log2_hashmap_size": 40}, S + r"log2-hashmap-size must be an integer in \[1, 30\]"),
]


@pytest.mark.parametrize(("options", "message"), BAD_PROPOSAL)
def test_proposal_options(options, message):
    with pytest.raises(ValueError, match=message):
        ProposalSamplerConfig(**options)


@pytest.mark.parametrize(
    ("part", "options", "message"),
    [
        (HashFieldConfig, {"num_levels": 0}, F + "num-levels must be an integer >= 1"),
        (HashFieldConfig, {"base_res": 32, "max_res": 16}, F + "max-res must be an integer >= 32, got 16"),
        (HashFieldConfig, {"log2_hashmap_size": 0}, F + r"log2-hashmap-size must be an integer in \[1, 30\]"),
        (HashFieldConfig, {"appearance_embedding_dim": -1}, F + "appearance-embedding-dim must be an integer >= 0"),
        (TimeHashFieldConfig, {"grid_time_samples": 0}, F + "grid-time-samples must be an integer >= 1"),
        (MlpFieldConfig, {"num_layers": 0}, F + "num-layers must be an integer >= 1"),
    ],
)
def test_field_options(part, options, message):
    with pytest.raises(ValueError, match=message):
        part(**options)


def test_every_problem_is_listed_and_parts_are_typed():
    with pytest.raises(ValueError, match="grid-resolution.*alpha-thre"):
        OccupancySamplerConfig(grid_resolution=0, alpha_thre=3.0)
    with pytest.raises(ValueError, match="--pipeline.model.eval-num-rays-per-chunk must be an integer >= 1"):
        NerfaccelModelConfig(eval_num_rays_per_chunk=0)
    with pytest.raises(TypeError, match="--pipeline.model.sampler must be a SamplerConfig"):
        NerfaccelModelConfig(sampler="occupancy")  # the old string switch
    with pytest.raises(TypeError, match="unexpected keyword argument 'field_type'"):
        NerfaccelModelConfig(field_type="mlp")  # type: ignore[call-arg]


def test_changes_made_in_python_are_checked_when_the_model_is_built():
    import torch
    from nerfstudio.data.scene_box import SceneBox

    cfg = NerfaccelModelConfig(field=HashFieldConfig(num_levels=2, max_res=32, log2_hashmap_size=10))
    cfg.sampler.samples_per_diagonal = 0
    with pytest.raises(ValueError, match="samples-per-diagonal must be an integer >= 1, got 0"):
        cfg.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2, metadata={})


# --- through the real ns-train: the error comes before config.yml -----------------------------------------------

BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected", "not_expected"),
    [
        (["--pipeline.model.sampler.grid-resolution", "0"], S + "grid-resolution must be an integer >= 1, got 0", ""),
        (
            ["--pipeline.model.sampler.samples-per-diagonal", "-5", "--pipeline.model.sampler.alpha-thre", "2"],
            S + "samples-per-diagonal must be an integer >= 1, got -5; " + S + "alpha-thre must be in [0, 1)",
            "render-step-size",
        ),
    ],
)
def test_ns_train_stops_before_writing_anything(tmp_path, args, expected, not_expected):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONWARNINGS="ignore", COLUMNS="400")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(BIN / "ns-train"), "nerfaccel-lego", *args, "--max-num-iterations", "2", "--output-dir", str(out),
         "--vis", "tensorboard", "nerfaccel-blender-data", "--embedded-resolution", "16", "--embedded-views", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    text = " ".join((proc.stdout + proc.stderr).split())  # tyro wraps its message box
    text = text.replace("│", "").replace(" ", "")
    assert proc.returncode != 0
    assert expected.replace(" ", "") in text, proc.stdout[-2000:] + proc.stderr[-2000:]
    if not_expected:
        assert not_expected not in text
    assert not out.exists() or not list(out.rglob("config.yml")), "config.yml was written before the check"
    assert "Traceback" not in proc.stderr
