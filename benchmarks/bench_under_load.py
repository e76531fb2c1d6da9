"""CPU training step time of ``nerfaccel-lego`` with and without another process taking a core.

Each variant runs in a fresh process (OpenMP reads its environment when torch loads it): ``--threads`` intra-op
threads, ``OMP_WAIT_POLICY`` unset or ``PASSIVE`` (thread governor off), or ``adaptive`` (the trainer's thread
governor on, ``nerfaccel_plugin.ns.threads``), and 0 or 1 busy-loop processes beside it. The step time is the
median of the timed steps after a few warm-up steps. Usage::

    python benchmarks/bench_under_load.py --data PATH_TO_BLENDER_SCENE [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_CHILD = r"""
import json, os, statistics, sys, tempfile, time
from pathlib import Path
import torch
data, steps, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
from nerfaccel_plugin.ns.trainer import method_config
config = method_config("nerfaccel-lego", "cpu")
config.pipeline.datamanager.data = data
config.vis = "tensorboard"
config.output_dir = Path(tempfile.mkdtemp())
config.max_num_iterations = steps + 5
config.steps_per_save = 10**9
config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
config.set_timestamp()
trainer = config.setup(local_rank=0, world_size=1)
trainer.setup()
from nerfstudio.engine.callbacks import TrainingCallbackLocation as Where
times = []
for step in range(steps + 5):  # as Trainer.train does it: callbacks (grid updates) around each iteration
    start = time.perf_counter()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=Where.BEFORE_TRAIN_ITERATION)
    trainer.train_iteration(step)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=Where.AFTER_TRAIN_ITERATION)
    times.append(time.perf_counter() - start)
timed = times[5:]
print(json.dumps({"median_s": statistics.median(timed), "max_s": max(timed), "last5_s": statistics.mean(timed[-5:]),
                  "threads": torch.get_num_threads()}))
"""


def busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", default="0,1", help="comma list; 0 = torch's default")
    parser.add_argument("--policies", default="unset,PASSIVE,adaptive", help="OMP_WAIT_POLICY, or 'adaptive'")
    parser.add_argument("--busy", default="0,1")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
    for n_busy in map(int, args.busy.split(",")):
        for policy in args.policies.split(","):
            for threads in map(int, args.threads.split(",")):
                env = dict(os.environ)
                env.pop("OMP_WAIT_POLICY", None)
                env["NERFACCEL_ADAPT_THREADS"] = "1" if policy == "adaptive" else "0"
                if policy not in ("unset", "adaptive"):
                    env["OMP_WAIT_POLICY"] = policy
                hogs = [busy() for _ in range(n_busy)]
                try:
                    start = time.time()
                    out = subprocess.run(
                        [sys.executable, "-c", _CHILD, args.data, str(args.steps), str(threads)],
                        env=env, capture_output=True, text=True, timeout=1800,
                    )  # fmt: skip
                finally:
                    for hog in hogs:
                        hog.kill()
                        hog.wait()
                if out.returncode != 0:
                    print(f"busy={n_busy} policy={policy} threads={threads}: FAILED\n{out.stderr[-2000:]}")
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"busy={n_busy} OMP_WAIT_POLICY={policy:7s} threads={result['threads']}: "
                    f"median {result['median_s'] * 1000:7.1f} ms/step, max {result['max_s'] * 1000:7.1f} ms, "
                    f"last 5 {result['last5_s'] * 1000:7.1f} ms ({time.time() - start:.0f} s total)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
