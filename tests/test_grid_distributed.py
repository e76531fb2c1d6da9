"""The occupancy-grid update under torch.distributed (two CPU processes, gloo).

After warm-up every rank evaluates different random cells. The update must leave every rank with the same
grid, and that grid must be what one process gets when it evaluates the union of the ranks' cells.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nerfaccel_plugin as nacc

RES = 8
CELLS = {0: [1, 5, 9, 200, 300, 301], 1: [5, 7, 300, 400, 511]}  # overlapping on purpose


def _occupancy(x: torch.Tensor) -> torch.Tensor:
    """A value per cell (independent of where in the cell x lies), so the ranks' random jitter does not matter."""
    idx = ((x + 1.0) / 2.0 * RES).floor().long().clamp(0, RES - 1)
    flat = (idx[:, 0] * RES + idx[:, 1]) * RES + idx[:, 2]
    return (flat.double() * 0.37 % 1.0).float()


def _estimator(cells, **kwargs) -> nacc.OccGridEstimator:
    est = nacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=RES, **kwargs)
    est.train()
    est.occs.copy_(torch.linspace(0.0, 1.0, est.occs.numel()))  # a non-trivial previous state
    est.occs[3] = -1.0  # an invisible cell stays invisible
    est._sample_uniform_and_occupied_cells = lambda n: [torch.tensor(cells)]  # type: ignore[method-assign]
    return est


def _worker(rank: int, world: int, init_file: str, out: str, kwargs: dict | None = None, env: str | None = None):
    if env is not None:
        os.environ["NERFACCEL_GRID_SYNC"] = env
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different jitter on each rank, as in real runs
        est = _estimator(CELLS[rank], **(kwargs or {}))
        est._update(step=10, occ_eval_fn=_occupancy, ema_decay=0.9, warmup_steps=0)
        torch.save({"occs": est.occs.clone(), "binaries": est.binaries.clone()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_update_equals_single_process_on_the_union(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["occs"], r1["occs"]) and torch.equal(r0["binaries"], r1["binaries"])

    single = _estimator(sorted(set(CELLS[0]) | set(CELLS[1])))
    single._update(step=10, occ_eval_fn=_occupancy, ema_decay=0.9, warmup_steps=0)
    torch.testing.assert_close(r0["occs"], single.occs, rtol=0, atol=0)
    assert torch.equal(r0["binaries"], single.binaries)
    assert float(r0["occs"][3]) == -1.0
    untouched = torch.ones(RES**3, dtype=torch.bool)
    untouched[sorted(set(CELLS[0]) | set(CELLS[1]))] = False
    before = _estimator([]).occs
    assert torch.equal(r0["occs"][untouched], before[untouched]), "cells no rank evaluated keep their value"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["keyword", "env"])
def test_distributed_sync_opt_out_keeps_each_rank_on_its_own_cells(tmp_path: Path, how: str) -> None:
    """sync_distributed=False (or NERFACCEL_GRID_SYNC=0): no collective, each rank updates from its own cells only."""
    kwargs, env = ({"sync_distributed": False}, None) if how == "keyword" else (None, "0")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), kwargs, env), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        alone = _estimator(CELLS[rank])
        alone._update(step=10, occ_eval_fn=_occupancy, ema_decay=0.9, warmup_steps=0)
        torch.testing.assert_close(got["occs"], alone.occs, rtol=0, atol=0)
        assert torch.equal(got["binaries"], alone.binaries)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt")["occs"] for r in (0, 1))
    assert not torch.equal(r0, r1), "the ranks evaluated different cells, so unsynchronised grids differ"
