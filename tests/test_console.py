"""The console switch: upstream warnings filtered by message and module, every other warning shown once."""

from __future__ import annotations

import os
import subprocess
import sys

_SCRIPT = r"""
import sys, types, warnings
from nerfaccel_plugin.ns import console

console.install()
# A module named like Nerfstudio's cameras raising its known deprecation, and one of ours raising something else.
upstream = types.ModuleType("nerfstudio.cameras.fake")
exec(
    "import warnings\n"
    "def f():\n"
    "    warnings.warn('Using a non-tuple sequence for multidimensional indexing is deprecated', UserWarning)\n",
    upstream.__dict__,
)
upstream.__dict__["__name__"] = "nerfstudio.cameras.fake"
def ours():
    warnings.warn("nerfaccel: something a user should read", RuntimeWarning)
def elsewhere():  # the same text from a module not in the list is not filtered
    warnings.warn("Using a non-tuple sequence for multidimensional indexing is deprecated", UserWarning)
upstream.f(); ours(); elsewhere()
with warnings.catch_warnings():  # what torch does while registering custom ops: Python forgets what it has shown
    warnings.filterwarnings("ignore", message="unrelated")
upstream.f(); ours(); elsewhere()
"""


def _run(**env) -> str:
    full = {**os.environ, **env}
    full.pop("PYTHONWARNINGS", None)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=full, capture_output=True, text=True, check=True)
    return out.stderr


def test_upstream_filtered_and_no_warning_twice():
    err = _run()
    assert err.count("something a user should read") == 1
    assert err.count("non-tuple sequence") == 1  # only the one from a module outside the list, once


def test_switch_shows_upstream_warnings_again():
    err = _run(NERFACCEL_SHOW_UPSTREAM_WARNINGS="1")
    assert err.count("non-tuple sequence") == 2  # the upstream one and the other, each once
    assert err.count("something a user should read") == 1
