"""Host syncs per training step, counted on the CPU through a TorchFunctionMode (issue 12, item 6).

A GPU sync happens whenever the host needs a value that lives on the device. On the CPU nothing waits, but the
same Python calls are made, so they can be counted here: ``.item``, ``.tolist``, ``.cpu``, ``bool``/``int``/
``float``/``index`` of a tensor, ``nonzero``/``argwhere``, ``unique``, ``bincount``, ``masked_select``,
boolean-mask indexing (read or write) and ``repeat_interleave`` without ``output_size``. Each counted call is
attributed to the innermost frame outside torch: nerfaccel's code (``nerfaccel_plugin``), Nerfstudio's, or other.

With value checks off (the GPU default), real training steps of the methods (built as tests/test_ns_methods.py
builds them, tiny settings, the embedded scene) may make from nerfaccel only:

* ``nerfaccel-lego``: the culled-sample count in ``OccGridEstimator.sampling`` (one ``nonzero``; the traversal's
  output size is read inside the C++ op, where this mode cannot see it: one ``.item`` in cuda/gpu/grid.cu);
* ``nerfaccel-360``: none.

Nerfstudio's own syncs are listed (printed with ``-s``), not limited.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

pytestmark = pytest.mark.slow

T = torch.Tensor
_ALWAYS = {
    T.item: "item",
    T.tolist: "tolist",
    T.cpu: "cpu",
    T.__bool__: "bool(tensor)",
    T.__int__: "int(tensor)",
    T.__float__: "float(tensor)",
    T.__index__: "index(tensor)",
    T.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.argwhere: "argwhere",
    T.unique: "unique",
    torch.unique: "unique",
    torch.unique_consecutive: "unique",
    T.bincount: "bincount",
    torch.bincount: "bincount",
    T.masked_select: "masked_select",
    torch.masked_select: "masked_select",
}


def _has_bool_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0 for i in items)


def _sync_name(func, args, kwargs):
    name = _ALWAYS.get(func)
    if name is not None:
        return name
    if func in (T.__getitem__, T.__setitem__) and len(args) > 1 and _has_bool_index(args[1]):
        return "boolean-mask indexing"
    if func in (torch.repeat_interleave, T.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if func is torch.repeat_interleave and len(args) == 1:  # repeat_interleave(repeats)
            repeats = args[0]
        if isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None:
            return "repeat_interleave without output_size"
    if func is torch.where and len(args) == 1 and not kwargs:
        return "where(cond)"
    return None


def _site() -> tuple[str, str]:
    """(owner, 'file:line in function') of the innermost frame outside torch and this file."""
    here = Path(__file__).resolve()
    for frame in reversed(traceback.extract_stack()):
        f = frame.filename
        if f == str(here) or f"{os.sep}torch{os.sep}" in f:
            continue
        if f"{os.sep}nerfaccel_plugin{os.sep}" in f:
            owner = "nerfaccel"
            short = f[f.index("nerfaccel_plugin") :]
        elif f"{os.sep}nerfstudio{os.sep}" in f:
            owner = "nerfstudio"
            short = f[f.index("nerfstudio") :]
        else:
            owner, short = "other", f
        return owner, f"{short}:{frame.lineno} in {frame.name}"
    return "other", "?"


class SyncCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _sync_name(func, args, kwargs)
        if name is not None:
            owner, where = _site()
            self.calls[(owner, name, where)] += 1
        return func(*args, **kwargs)

    def by_owner(self, owner: str) -> Counter:
        return Counter({(n, w): c for (o, n, w), c in self.calls.items() if o == owner})


TINY = {
    "num_levels": 4,
    "max_res": 64,
    "log2_hashmap_size": 12,
    "grid_resolution": 32,
    "occ_warmup_steps": 2,
    "occ_update_every": 2,
}
M360 = {
    "num_proposal_samples": (32, 16),
    "num_samples": 16,
    "proposal_max_res": (32, 64),
    "proposal_log2_hashmap_size": 10,
    "proposal_near_plane": 1.0,
    "proposal_far_plane": 10.0,
    "num_levels": 4,
    "max_res": 64,
    "log2_hashmap_size": 12,
}


def _trainer(method: str, tmp: Path):
    from nerfaccel_plugin.method_configs import method_config

    from nerfaccel_plugin._ext.build import cache_root
    from nerfaccel_plugin.ns.dataparsers import NerfaccelBlenderDataParserConfig
    from nerfaccel_plugin.scene import get_scene

    if cache_root().is_dir():
        os.environ["NERFACCEL_EXT_DIR"] = str(cache_root())
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
    torch.manual_seed(0)
    data = Path(get_scene(dynamic=False, resolution=24, views=12))
    cfg = method_config(method, "cpu")
    cfg.pipeline.datamanager.dataparser = NerfaccelBlenderDataParserConfig(data=data)
    model = cfg.pipeline.model
    for key, value in (TINY if method == "nerfaccel-lego" else M360).items():
        if hasattr(model, key):
            setattr(model, key, value)
    model.value_checks = "never"  # the GPU default
    for key, value in {"target_num_samples": 4096, "min_rays_per_batch": 64, "max_rays_per_batch": 256}.items():
        if hasattr(cfg.pipeline, key):
            setattr(cfg.pipeline, key, value)
    cfg.vis = "tensorboard"
    cfg.output_dir = tmp / "out"
    cfg.max_num_iterations = 100
    cfg.steps_per_save = 1000
    cfg.steps_per_eval_batch = cfg.steps_per_eval_image = cfg.steps_per_eval_all_images = 1000
    cfg.viewer.quit_on_train_completion = True
    cfg.set_timestamp()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def _steps(trainer, first: int, last: int, counter: SyncCounter | None) -> None:
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    trainer.pipeline.train()
    for step in range(first, last):
        ctx = counter if counter is not None else _Null()
        with ctx:
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
            trainer.train_iteration(step)
            for cb in trainer.callbacks:
                cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _report(counter: SyncCounter, n_steps: int) -> str:
    lines = []
    for owner in ("nerfaccel", "nerfstudio", "other"):
        calls = counter.by_owner(owner)
        lines.append(f"{owner}: {sum(calls.values()) / n_steps:.1f} syncing calls per step")
        lines += [f"    {c / n_steps:.1f}x {n} at {w}" for (n, w), c in sorted(calls.items(), key=lambda x: -x[1])]
    return "\n".join(lines)


ALLOWED = {
    # The culled-sample count of OccGridEstimator.sampling (a data-dependent size; one per step).
    "nerfaccel-lego": {("nonzero", "estimators/occ_grid.py")},
    "nerfaccel-360": set(),
}


@pytest.mark.parametrize("method", ["nerfaccel-lego", "nerfaccel-360"])
def test_training_step_syncs(method: str, tmp_path: Path) -> None:
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "NERFACCEL_EXT_DIR")}
    try:
        trainer = _trainer(method, tmp_path)
        _steps(trainer, 0, 3, None)  # warm-up: first grid updates, lazy initialisation
        counter = SyncCounter()
        n_steps = 4  # includes steps with a grid update (every 2 steps)
        _steps(trainer, 3, 3 + n_steps, counter)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    report = _report(counter, n_steps)
    print(f"\n{method}\n{report}")
    ours = counter.by_owner("nerfaccel")
    allowed = ALLOWED[method]
    unexpected = {
        (n, w): c for (n, w), c in ours.items() if not any(n == an and aw in w for an, aw in allowed)
    }
    assert not unexpected, f"{method}: nerfaccel makes host-syncing calls in a training step:\n{report}"
    for name, where in allowed:  # and the allowed ones at most once per step
        count = sum(c for (n, w), c in ours.items() if n == name and where in w)
        assert count <= n_steps, f"{method}: {name} in {where} {count / n_steps:.1f}x per step:\n{report}"
