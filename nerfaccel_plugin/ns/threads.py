"""CPU training threads that follow the cores actually free (Linux).

PyTorch and nerfaccel's kernels run their parallel loops on one OpenMP pool with one thread per core. When another
process takes a core, the thread that shares it runs only part of the time, and every parallel loop waits for it at
its barrier (where OpenMP threads also spin): on 2 cores with one core busy, a training step slowed from about 0.1 s
to over 2 s. The OpenMP wait policy is read when torch is imported, before any plugin runs, so it cannot be changed
from here; the thread count can.

:class:`ThreadGovernor` samples ``/proc/stat`` and this process's CPU time every ``every`` steps, estimates how many
cores other processes keep busy, and sets ``torch.set_num_threads`` to the cores left (at least 1, at most the
count torch started with). ``NERFACCEL_ADAPT_THREADS=0`` turns it off; an explicit ``OMP_NUM_THREADS`` also does.
"""

from __future__ import annotations

import os
import time
from typing import Optional

ENV_ADAPT = "NERFACCEL_ADAPT_THREADS"


def _system_busy_s() -> Optional[tuple[float, float]]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    return (total - idle) / hz, total / hz


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    """Sets torch's intra-op thread count to the cores other processes leave free.

    Args:
        every: Re-estimate every this many calls of :meth:`step`.
        cores: Cores this process may use (default: its CPU affinity).
        first: The first estimate comes after this many calls.
    """

    def __init__(self, every: int = 20, cores: Optional[int] = None, first: int = 5) -> None:
        import torch

        self.every = max(1, every)
        self.first = first
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
            affinity = os.cpu_count() or 1
        self.cores = cores or affinity
        self.max_threads = torch.get_num_threads()
        self.enabled = (
            os.environ.get(ENV_ADAPT, "1") != "0"
            and "OMP_NUM_THREADS" not in os.environ
            and self.max_threads > 1
            and _system_busy_s() is not None
        )
        self._calls = 0
        self._last: Optional[tuple[float, float, float]] = None
        self.threads = self.max_threads

    def _sample(self) -> Optional[tuple[float, float, float]]:
        system = _system_busy_s()
        if system is None:
            return None
        return system[0], _own_cpu_s(), time.monotonic()

    def step(self) -> int:
        """Counts a training step; every ``every`` steps re-estimates the free cores and sets the thread count.

        Returns:
            The thread count in use.
        """
        if not self.enabled:
            return self.threads
        self._calls += 1
        if self._last is None:
            self._last = self._sample()
            return self.threads
        if self._calls % self.every and self._calls != self.first:
            return self.threads
        now = self._sample()
        if now is None or self._last is None:
            return self.threads
        busy, own, wall = (a - b for a, b in zip(now, self._last, strict=True))
        self._last = now
        if wall <= 0:
            return self.threads
        others = max(0.0, (busy - own) / wall)  # cores kept busy by other processes
        free = int(self.cores - others + 0.5)
        self.set(max(1, min(self.max_threads, free)))
        return self.threads

    def set(self, threads: int) -> None:
        """Sets torch's (and so OpenMP's) intra-op thread count when it changes.

        Args:
            threads: The new count.
        """
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads


ENV_REEXEC = "NERFACCEL_PASSIVE_OPENMP"
_IMPORT_TIME_WARNINGS = (
    "`torch.jit.script` is deprecated",
    "`torch.cuda.amp.custom_fwd(args...)` is deprecated",
    "`torch.cuda.amp.custom_bwd(args...)` is deprecated",
)


def reexec_with_passive_openmp(argv: Optional[list] = None) -> None:
    """Restarts this command with ``OMP_WAIT_POLICY=PASSIVE`` when it runs a nerfaccel method on a machine without
    a GPU and nobody chose a wait policy.

    OpenMP reads its wait policy when torch is imported, which Nerfstudio does before it loads any plugin; by default
    its idle threads spin, and on a machine where another process takes a core every parallel loop waits for a
    thread that is not running (measured on 2 shared cores: see ``benchmarks/results/under_load.md``). The restart
    costs one more import of Nerfstudio (seconds). ``NERFACCEL_PASSIVE_OPENMP=0`` or any ``OMP_WAIT_POLICY`` /
    ``GOMP_SPINCOUNT`` in the environment skips it.

    Args:
        argv: The command line (default ``sys.argv``).
    """
    import sys

    argv = list(sys.argv if argv is None else argv)
    if os.environ.get(ENV_REEXEC, "1") == "0" or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    script = argv[0] if argv else ""
    if not script or not os.path.isfile(script) or os.path.basename(script) not in ("ns-train",):
        return
    try:
        import torch

        if torch.cuda.is_available():
            return
    except Exception:  # noqa: BLE001 - no torch / broken CUDA: leave the command alone
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ[ENV_REEXEC] = "0"  # once
    # The warnings Nerfstudio raised while importing itself were printed by this process already: not again.
    shown = [f"ignore:{m}:FutureWarning" for m in _IMPORT_TIME_WARNINGS]
    os.environ["PYTHONWARNINGS"] = ",".join([w for w in [os.environ.get("PYTHONWARNINGS", "")] if w] + shown)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, script, *argv[1:]])
