"""Multi-process training on the CPU (``gloo``), where Nerfstudio's own launcher requires CUDA.

On GPUs use Nerfstudio's launcher: ``ns-train nerfaccel-lego --machine.num-devices 2``. Nerfstudio 1.1's
worker asserts that CUDA is available, so on a CPU-only machine call :func:`train_distributed_cpu` instead
(used by the test suite to check that every rank keeps the same occupancy grid).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nerfstudio.engine.trainer import TrainerConfig


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, config: TrainerConfig, dump_dir: Optional[str]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=world_size, rank=rank)
    try:
        torch.manual_seed(config.machine.seed + rank)
        trainer = config.setup(local_rank=rank, world_size=world_size)
        trainer.setup()
        trainer.train()
        if dump_dir is not None:
            model = trainer.pipeline.model
            grid = getattr(model, "occupancy_grid", None)
            state = {k: v.detach().cpu() for k, v in grid.state_dict().items()} if grid is not None else {}
            torch.save(state, Path(dump_dir) / f"grid-rank{rank}.pt")
            params = {k: v.detach().cpu() for k, v in model.named_parameters()}
            torch.save(params, Path(dump_dir) / f"params-rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_distributed_cpu(config: TrainerConfig, world_size: int = 2, dump_dir: Optional[Path] = None) -> None:
    """Trains ``config`` with ``world_size`` CPU processes (``torch.distributed`` with ``gloo``).

    Args:
        config: A trainer config (its ``machine.device_type`` must be ``"cpu"``).
        world_size: Number of processes.
        dump_dir: If given, each rank saves its occupancy-grid state to ``grid-rank{rank}.pt`` and its model
            parameters to ``params-rank{rank}.pt`` there.
    """
    if config.machine.device_type != "cpu":
        raise ValueError("train_distributed_cpu needs --machine.device-type cpu; use ns-train on GPUs.")
    config.machine.num_devices = world_size
    config.set_timestamp()
    config.save_config()
    mp.spawn(
        _worker,
        args=(world_size, _free_port(), config, None if dump_dir is None else str(dump_dir)),
        nprocs=world_size,
        join=True,
    )
