"""Checkpoints that survive a kill at any moment, and loading that skips a damaged one.

Nerfstudio's trainer writes ``step-N.ckpt`` in place with ``torch.save``: a kill during the save (or a full disk)
leaves a partial file beside the good ones, and the next ``--load-dir`` / ``ns-eval`` / ``ns-render`` /
``ns-viewer`` picks that partial file as the latest and fails with torch's "failed finding central directory".

* :func:`save_checkpoint` writes to a temporary file in the same folder, ``fsync``\\ s it, renames it over the final
  name and ``fsync``\\ s the folder. A full disk or a permission error raises :class:`CheckpointError` saying so and
  naming the path; the temporary file is removed, and older checkpoints are deleted only after a save succeeded.
* :func:`checkpoint_problem` checks a file without unpickling it: a checkpoint is a zip archive, and every member's
  CRC-32 is verified (a truncated file has no central directory; overwritten bytes fail their CRC).
* :func:`pick_checkpoint` returns the newest readable ``step-N.ckpt`` of a folder, warning about each newer one it
  skips (naming it and why); without a readable one it raises :class:`CheckpointError` listing every file.

:class:`NerfaccelTrainer` (the trainer of the nerfaccel methods' configs) saves and resumes through these, and
:func:`install_eval_hook` makes Nerfstudio's ``eval_load_checkpoint`` (used by ``ns-eval``, ``ns-render`` and
``ns-viewer`` via ``eval_setup``) pick the newest readable checkpoint for configs of the nerfaccel methods.
"""

from __future__ import annotations

import errno
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from nerfstudio.engine.trainer import Trainer

_STEP = re.compile(r"^step-(\d+)\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or no readable checkpoint can be found; the message names the files."""


def _explain_os_error(err: OSError, path: Path) -> str:
    if err.errno == errno.ENOSPC:
        return f"no space left on the device to write checkpoint {path} (free some space, or save elsewhere)"
    if err.errno == errno.EDQUOT:
        return f"disk quota exceeded writing checkpoint {path}"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied writing checkpoint {path} (make {path.parent} writable, or save elsewhere)"
    if err.errno == errno.EROFS:
        return f"read-only file system: cannot write checkpoint {path}"
    return f"cannot write checkpoint {path}: {err.strerror or err}"


def _os_error_in(err: BaseException) -> Optional[OSError]:
    """The OSError behind ``err`` (torch wraps write errors of file objects in a RuntimeError)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
        seen += 1
    return None


def _write(obj: Any, handle) -> None:
    """The writer (a separate function so tests can interrupt a save half-way)."""
    torch.save(obj, handle)


def save_checkpoint(obj: Any, path: Path) -> None:
    """Saves ``obj`` with ``torch.save`` atomically: a reader sees the old file or the complete new one, never part.

    Args:
        obj: What to save (Nerfstudio's checkpoint dictionary).
        path: Final path (``.../step-000001000.ckpt``).

    Raises:
        CheckpointError: The disk is full, the folder is not writable, or another OS error; the message names the
            path. Nothing is left behind at ``path`` or in a temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            _write(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        os_err = _os_error_in(err)
        if os_err is not None:
            raise CheckpointError(_explain_os_error(os_err, path)) from err
        if isinstance(err, RuntimeError) and "iostream" in str(err):  # torch's C++ writer hides the OS error
            raise CheckpointError(f"cannot write checkpoint {path} (disk full or not writable?): {err}") from err
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(fd)


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a readable checkpoint, or None; reads the file but unpickles nothing.

    Args:
        path: A ``.ckpt`` file written by ``torch.save``.

    Returns:
        None for an intact archive, else a short reason (missing, empty, truncated, CRC mismatch, ...).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "is empty"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                return "is not a torch checkpoint (no data.pkl)"
            bad = archive.testzip()
            if bad is not None:
                return f"is damaged (CRC mismatch in {bad})"
    except zipfile.BadZipFile as err:
        return f"is truncated or not a torch checkpoint ({err})"
    except (OSError, EOFError, ValueError, RuntimeError) as err:
        return f"is damaged ({type(err).__name__}: {err})"
    return None


def _steps(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for entry in folder.iterdir():
        match = _STEP.match(entry.name)
        if match and entry.is_file():
            out.append((int(match.group(1)), entry))
    return sorted(out, reverse=True)


def pick_checkpoint(folder: Path, step: Optional[int] = None) -> tuple[Path, int]:
    """The checkpoint to load from ``folder``: ``step-<step>.ckpt`` if given, else the newest readable one.

    Each newer checkpoint that is skipped is named in a warning with the reason.

    Args:
        folder: A ``nerfstudio_models`` folder.
        step: A specific step (``--load-step``): that file must be readable.

    Returns:
        ``(path, step)``.

    Raises:
        CheckpointError: The folder does not exist, holds no ``step-N.ckpt``, or none is readable (every file
            is listed with why), or the requested step's file is missing or unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint folder {folder} (checkpoints are written while training)")
    if step is not None:
        path = folder / f"step-{step:09d}.ckpt"
        why = checkpoint_problem(path)
        if why is not None:
            raise CheckpointError(f"checkpoint {path} {why}; pick another step or leave out --load-step")
        return path, step
    found = _steps(folder)
    if not found:
        raise CheckpointError(f"no checkpoint (step-N.ckpt) in {folder}")
    problems = []
    for s, path in found:
        why = checkpoint_problem(path)
        if why is None:
            for bad, reason in problems:
                warnings.warn(
                    f"nerfaccel: skipping checkpoint {bad}: it {reason}; using {path}.", RuntimeWarning, stacklevel=2
                )
            return path, s
        problems.append((path, why))
    listing = "; ".join(f"{p.name} {why}" for p, why in problems)
    raise CheckpointError(f"no readable checkpoint in {folder}: {listing}")


class NerfaccelTrainer(Trainer):
    """Nerfstudio's trainer with atomic checkpoint saves and a resume that skips damaged checkpoints; on the CPU its
    thread count follows the cores other processes leave free (:class:`~nerfaccel_plugin.ns.threads.ThreadGovernor`).
    """

    _governor = None

    def train_iteration(self, step: int):
        """Nerfstudio's training step; on the CPU, first adapts the thread count to the free cores.

        Args:
            step: Current training step.

        Returns:
            Nerfstudio's ``(loss, loss_dict, metrics_dict)``.
        """
        if self.device == "cpu" or str(self.device).startswith("cpu"):
            if self._governor is None:
                from .threads import ThreadGovernor

                self._governor = ThreadGovernor()
            self._governor.step()
        return super().train_iteration(step)

    def save_checkpoint(self, step: int) -> None:
        """Saves the pipeline, optimizers, schedulers and grad scaler atomically (:func:`save_checkpoint`).

        Args:
            step: Training step of the checkpoint.
        """
        if not self.checkpoint_dir.exists():
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),  # type: ignore[union-attr]
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        save_checkpoint(state, ckpt_path)
        if self.config.save_only_latest_checkpoint:  # only once the new one is complete
            for f in self.checkpoint_dir.glob("*.ckpt"):
                if f != ckpt_path:
                    f.unlink()

    def _load_checkpoint(self) -> None:
        """Resumes from ``--load-dir`` (newest readable checkpoint) or ``--load-checkpoint`` (checked first)."""
        config = self.config
        if config.load_dir is not None:
            path, _ = pick_checkpoint(Path(config.load_dir), config.load_step)
            saved = (config.load_dir, config.load_checkpoint)
            config.load_dir, config.load_checkpoint = None, path
            try:
                super()._load_checkpoint()
            finally:
                config.load_dir, config.load_checkpoint = saved
            return
        if config.load_checkpoint is not None:
            why = checkpoint_problem(Path(config.load_checkpoint))
            if why is not None:
                raise CheckpointError(f"checkpoint {config.load_checkpoint} {why}")
        super()._load_checkpoint()


def check_resume_source(config: Any) -> None:
    """Checks, before ``ns-train`` writes anything, that the checkpoint to resume from can be read.

    Args:
        config: The trainer config (``load_dir`` / ``load_step`` / ``load_checkpoint``).

    Raises:
        CheckpointError: No readable checkpoint (see :func:`pick_checkpoint`).
    """
    if config.load_dir is not None:
        pick_checkpoint(Path(config.load_dir), config.load_step)
    elif config.load_checkpoint is not None:
        why = checkpoint_problem(Path(config.load_checkpoint))
        if why is not None:
            raise CheckpointError(f"checkpoint {config.load_checkpoint} {why}")


def _is_ours(config: Any) -> bool:
    return type(config).__module__.startswith("nerfaccel_plugin")


def install_eval_hook() -> None:
    """Makes Nerfstudio's ``eval_load_checkpoint`` pick the newest readable checkpoint for nerfaccel configs.

    ``eval_setup`` (``ns-eval``, ``ns-render``, ``ns-viewer``) calls that function through its module; other
    methods' configs are passed through unchanged. Installing twice is harmless.
    """
    from nerfstudio.utils import eval_utils

    original = eval_utils.eval_load_checkpoint
    if getattr(original, "_nerfaccel_hook", False):
        return

    def eval_load_checkpoint(config, pipeline):
        if _is_ours(config) and config.load_dir is not None:
            _, step = pick_checkpoint(Path(config.load_dir), config.load_step)
            saved = config.load_step
            config.load_step = step
            try:
                return original(config, pipeline)
            finally:
                config.load_step = saved
        return original(config, pipeline)

    eval_load_checkpoint._nerfaccel_hook = True  # type: ignore[attr-defined]
    eval_utils.eval_load_checkpoint = eval_load_checkpoint
