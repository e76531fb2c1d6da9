"""What the Nerfstudio commands print while they run a nerfaccel method: no upstream noise, no warning twice.

:func:`install` (called when a nerfaccel method or a nerfaccel run's ``config.yml`` is loaded) does two things:

* It ignores the known, harmless upstream deprecation warnings listed in :data:`UPSTREAM_WARNINGS`, each matched by
  its message and the module that raises it. A user of our methods cannot act on them (they come from Nerfstudio's
  and PyTorch's own code). ``NERFACCEL_SHOW_UPSTREAM_WARNINGS=1`` shows them again.
* It shows every other warning at most once per process. Python prints a ``default``-action warning once per code
  location, but forgets which it has shown whenever the warning filters change, and PyTorch changes them while it
  registers custom ops (``warnings.catch_warnings`` in ``torch._library``): warnings raised before nerfaccel's
  extension loaded were printed a second time after it. The check is by category, message and location.

Warnings that Nerfstudio raises while importing itself, before it loads any plugin (``torch.jit.script`` and
``torch.cuda.amp.custom_fwd`` deprecations), are printed before this module can act.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

ENV_SHOW = "NERFACCEL_SHOW_UPSTREAM_WARNINGS"

UPSTREAM_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated", r"torch\.jit"),
    (FutureWarning, r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated", r"nerfstudio\."),
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"nerfstudio\."),
    (UserWarning, r"Using a non-tuple sequence for multidimensional indexing is deprecated", r"nerfstudio\."),
    (UserWarning, r"Converting a tensor with requires_grad=True to a scalar", r"nerfstudio\."),
    (UserWarning, r"This DataLoader will create \d+ worker processes in total", r"torch\.utils\.data"),
    (FutureWarning, r"Importing `spectral_angle_mapper` from `torchmetrics\.functional`", r"torchmetrics\."),
)
"""(category, message regex, module regex) of each upstream warning that is ignored while our commands run:
Nerfstudio 1.1 against PyTorch >= 2.4 (TorchScript, ``torch.cuda.amp``, list indexing, ``float()`` of a tensor
that requires grad in its writer), torchmetrics' renamed ``spectral_angle_mapper`` (imported by Nerfstudio's
evaluation), and PyTorch's DataLoader
worker-count advice (our data managers size their workers to the cores, see :mod:`.datamanager`)."""

_installed = False
_shown: set = set()


def _dedup_showwarning(original: Any) -> Any:
    def showwarning(message, category, filename, lineno, file=None, line=None):
        key = (category, str(message), filename, lineno)
        if key in _shown:
            return
        _shown.add(key)
        original(message, category, filename, lineno, file, line)

    showwarning._nerfaccel_dedup = True  # type: ignore[attr-defined]
    return showwarning


def install() -> None:
    """Filters :data:`UPSTREAM_WARNINGS` (unless ``NERFACCEL_SHOW_UPSTREAM_WARNINGS=1``) and shows each other
    warning once per process. Installing twice is harmless."""
    global _installed
    if _installed:
        return
    _installed = True
    if os.environ.get(ENV_SHOW, "") != "1":
        for category, message, module in UPSTREAM_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if not getattr(warnings.showwarning, "_nerfaccel_dedup", False):
        warnings.showwarning = _dedup_showwarning(warnings.showwarning)


def running_our_method(argv: list[str] | None = None) -> bool:
    """Whether this process is a Nerfstudio command running a nerfaccel method (``ns-train nerfaccel-...``)."""
    argv = sys.argv if argv is None else argv
    return any(str(a).startswith("nerfaccel-") for a in argv[1:3])
