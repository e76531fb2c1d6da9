"""The one place where a public op chooses between a kernel and the PyTorch reference.

A public op ``x`` calls :func:`op` (``op("x", device)``) and gets either the kernel call of
:data:`nerfaccel_plugin._ops.KERNEL_CALLS` (which calls ``torch.ops.nerfaccel.x_fwd`` / ``x``) or the reference
``_torch_impl._x``. :func:`kernel_for` makes the decision, per op and per device type (torchvision's pattern):

1. the kernels for the device type are loaded first, once: the C++ extension (``cpp`` for CPU tensors, ``cuda`` for
   CUDA tensors, built on first use by :mod:`nerfaccel_plugin._ext`; it registers its kernels with the dispatcher
   when loaded) and, for CUDA, the Python/Triton kernel module ``nerfaccel_plugin._triton`` when it exists;
2. then the dispatcher is asked whether ``nerfaccel::<op>`` has a kernel for the device's dispatch key.

Other device types (MPS, XPU, meta, ...), an extension that failed to build, or an op without a kernel for the
device use the reference in :mod:`nerfaccel_plugin._torch_impl`.

``NERFACCEL_BACKEND=torch|cpp|cuda`` overrides the choice. ``torch`` runs the reference everywhere. ``cpp`` /
``cuda`` force that backend: if its extension cannot be loaded, if an op runs on tensors of a device type it cannot
serve, or if an op has no kernel there, the op raises :class:`BackendError` instead of falling back silently.

:data:`disabled` (``device_type -> reason``) switches a device type's kernels off (e.g. after a failed first-use
self-test): :func:`kernel_for` then returns None for it (or raises under a forced backend). :func:`backend_info`
reports, per device type, the active backend and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from . import _ops, _torch_impl
from ._layout import is_marked_covering, mark_covering

ENV_VAR = "NERFACCEL_BACKEND"
_VALID = ("torch", "cpp", "cuda")
_EXT_KIND = {"cpu": "cpp", "cuda": "cuda"}
_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}
# Python modules that register kernels with torch.library.register_kernel, per device type (imported when present).
_PY_KERNEL_MODULES = {"cuda": ("nerfaccel_plugin._triton",)}

# device_type -> reason: kernels switched off for that device type (the first-use self-test's hook).
disabled: dict[str, str] = {}

__all__ = [
    "BackendError",
    "backend_info",
    "disable",
    "disabled",
    "is_marked_covering",
    "kernel_for",
    "mark_covering",
    "op",
    "reset",
]


class BackendError(RuntimeError):
    """Raised when a backend forced with ``NERFACCEL_BACKEND`` cannot serve an op."""


@dataclass
class _Device:
    backend: str  # "torch", "cpp" or "cuda"
    reason: str
    loaded: bool  # kernels for this device type may be registered: ask the dispatcher
    forced: bool = False


_lock = threading.Lock()
_cache: dict[tuple[str, str], _Device] = {}
_warned: set[str] = set()


def _forced() -> str | None:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in _VALID:
        raise BackendError(f"{ENV_VAR}={value!r} is not valid: use one of {', '.join(_VALID)} (or unset it for auto).")
    return value


def _load_extension(kind: str) -> None:
    """Loads (building on first use) the C++ extension ``kind``, which registers its kernels; raises RuntimeError."""
    try:
        from . import _ext  # noqa: PLC0415 - imported lazily: the extension package is optional
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise RuntimeError(f"extension package not available ({err})") from err
    try:
        _ext.load_backend(kind)
    except Exception as err:  # ExtensionUnavailable or a build error: explain and let the caller decide
        raise RuntimeError(str(err) or type(err).__name__) from err


def _load_python_kernels(device_type: str) -> list[str]:
    """Registers the Python (Triton) kernels of ``device_type`` when they can run here; returns what was registered.

    For CUDA: the sample-parallel segmented ops (scans, density/alpha rendering, accumulation) and the hash encoding
    from :mod:`nerfaccel_plugin._triton`, registered with ``torch.library.register_kernel``. The hash kernels are
    registered only after they pass their first-use check against Nerfstudio's math on this GPU (see
    :func:`nerfaccel_plugin._ext.selftest.run_hash`).
    """
    loaded = []
    for name in _PY_KERNEL_MODULES.get(device_type, ()):
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        if getattr(module, "unavailable_reason", lambda: None)() is not None:
            continue
        if name == "nerfaccel_plugin._triton":
            loaded += _register_triton()
    return loaded


def _register_triton() -> list[str]:
    from ._triton import hash as triton_hash  # noqa: PLC0415 - triton is imported only for CUDA tensors
    from ._triton import register as triton_register  # noqa: PLC0415

    names = [f"nerfaccel_plugin._triton ({len(triton_register.register())} segmented ops)"]
    from ._ext import selftest  # noqa: PLC0415

    outcome = (
        selftest.run_hash(triton_hash.hash_encode_fwd, triton_hash.hash_encode_bwd, "cuda")
        if (selftest.enabled())
        else None
    )
    if outcome is not None and not outcome.passed:
        warnings.warn(
            f"nerfaccel: the Triton hash-encoding kernels failed their self-test on this GPU ({outcome.summary()}); "
            f"Nerfstudio's torch hash encoding is used instead. Please report this; {selftest.ENV_VAR}=0 skips the "
            "test.",
            RuntimeWarning,
            stacklevel=5,
        )
    else:
        triton_hash.register(f"{_ops.NAMESPACE}::hash_encode_fwd", f"{_ops.NAMESPACE}::hash_encode_bwd")
        names.append("nerfaccel_plugin._triton.hash")
    return names


def _has_kernel(op_name: str, device_type: str) -> bool:
    """Whether the dispatcher has a kernel of ``nerfaccel::<op_name>`` for ``device_type``."""
    key = _DISPATCH_KEY.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"{_ops.NAMESPACE}::{op_name}", key)


def _choose(device_type: str, forced: str | None) -> _Device:
    if forced == "torch":
        return _Device("torch", f"forced by {ENV_VAR}=torch", loaded=False)
    native = _EXT_KIND.get(device_type)
    if forced is not None and native != forced:
        raise BackendError(
            f"{ENV_VAR}={forced} cannot run ops on {device_type} tensors; move the tensors to "
            f"{'the CPU' if forced == 'cpp' else 'a CUDA device'} or unset {ENV_VAR}."
        )
    if native is None:
        return _Device("torch", f"no compiled kernels for device type '{device_type}'", loaded=False)
    python = _load_python_kernels(device_type)
    also = f" (+ {', '.join(python)})" if python else ""
    try:
        _load_extension(native)
    except RuntimeError as err:
        if forced is not None:
            raise BackendError(f"{ENV_VAR}={forced} but the {forced} extension cannot be loaded: {err}") from err
        if python:
            return _Device(native, f"{native} extension unavailable ({err}); kernels from {', '.join(python)}", True)
        if native not in _warned:
            _warned.add(native)
            warnings.warn(
                f"nerfaccel: the {native} extension is unavailable ({err}); using the pure-PyTorch backend "
                f"for {device_type} tensors (correct, but slower).",
                RuntimeWarning,
                stacklevel=5,
            )
        return _Device("torch", f"{native} extension unavailable: {err}", loaded=False)
    how = f"forced by {ENV_VAR}={forced}" if forced else f"{native} extension loaded"
    return _Device(native, how + also, loaded=True, forced=forced is not None)


def _device(device_type: str) -> _Device:
    forced = _forced()
    key = (device_type, forced or "auto")
    state = _cache.get(key)
    if state is None:
        with _lock:
            state = _cache.get(key)
            if state is None:
                state = _choose(device_type, forced)
                _cache[key] = state
    return state


def _kernel_call(name: str) -> _ops.KernelCall:
    call = _ops.KERNEL_CALLS.get(name.lstrip("_"))
    if call is None:
        raise ValueError(f"nerfaccel has no op named {name!r}; known: {', '.join(sorted(_ops.KERNEL_CALLS))}")
    return call


def kernel_for(name: str, device: torch.device | str) -> Callable[..., Any] | None:
    """The kernel call of public op ``name`` for tensors on ``device``, or None to use the reference.

    The only place where the decision is made (see the module docstring).

    Args:
        name: Public op name, e.g. ``"render_weight_from_density"`` (a leading underscore is ignored).
        device: Device of the op's tensors.

    Returns:
        A callable with the signature of ``_torch_impl._<name>``, or None.

    Raises:
        BackendError: ``NERFACCEL_BACKEND`` forces a backend that cannot serve the op on this device.
    """
    call = _kernel_call(name)
    device_type = torch.device(device).type
    state = _device(device_type)
    if not state.loaded:
        return None
    if device_type not in _selftested:
        _selftest(device_type, state)
    if device_type in disabled:
        if state.forced:
            raise BackendError(
                f"{ENV_VAR}={state.backend} but its kernels for {device_type} tensors are switched off: "
                f"{disabled[device_type]}; unset {ENV_VAR} to use the PyTorch reference."
            )
        return None
    if _has_kernel(call.op, device_type):
        return call.fn
    if state.forced:
        raise BackendError(
            f"{ENV_VAR}={state.backend} but there is no {device_type} kernel for {call.name!r} "
            f"({_ops.NAMESPACE}::{call.op}); unset {ENV_VAR} to use the PyTorch reference for it."
        )
    return None


def op(name: str, device: torch.device | str) -> Callable[..., Any]:
    """The implementation of public op ``name`` for tensors on ``device``: its kernel call or its reference.

    Args:
        name: Public op name, e.g. ``"inclusive_sum"`` (a leading underscore is ignored).
        device: Device of the op's tensors.

    Returns:
        A callable with the signature of ``_torch_impl._<name>``.
    """
    fn = kernel_for(name, device)
    if fn is not None:
        return fn
    ref = getattr(_torch_impl, "_" + name.lstrip("_"), None)
    if ref is None:
        raise BackendError(f"{name!r} has no kernel for {torch.device(device).type} tensors and no PyTorch reference.")
    return ref


get_op = op  # the former name


_selftested: set[str] = set()


def kernel_namespace(device_type: str) -> Any:
    """The registered kernels of ``device_type`` as a namespace of reference-named callables (``_inclusive_sum``,
    ``_render_weight_from_density``, ...), plus ``available_ops``: what the self-test runs (hash encoding aside, which
    has its own check)."""
    from types import SimpleNamespace  # noqa: PLC0415

    kernels = {
        "_" + c.name: c.fn
        for c in _ops.KERNEL_CALLS.values()
        if c.name != "hash_encode" and _has_kernel(c.op, device_type)
    }
    return SimpleNamespace(available_ops=set(kernels), **kernels)


def _selftest(device_type: str, state: _Device) -> None:
    """First use of a device type's kernels in this process: every op with a kernel against the reference on that
    device (:mod:`nerfaccel_plugin._ext.selftest`; the verdict is cached per build and device). A failure switches the
    device type's kernels off through :func:`disable`. Runs outside the backend lock (the test calls the kernels)."""
    _selftested.add(device_type)
    from ._ext import selftest  # noqa: PLC0415

    ops = kernel_namespace(device_type)
    if not ops.available_ops:
        return
    kind = _EXT_KIND.get(device_type, device_type)
    try:
        outcome = selftest.gate(kind, ops, torch.device(device_type))
    except Exception as err:  # noqa: BLE001 - a test that cannot run must not take the library down
        warnings.warn(
            f"nerfaccel: the {kind} kernels' self-test could not run ({err!r}).", RuntimeWarning, stacklevel=4
        )
        return
    if not outcome.passed:
        disable(device_type, f"{kind} kernels failed the self-test ({outcome.summary()}); PyTorch reference in use")


def disable(device_type: str, reason: str) -> None:
    """Switches the kernels of ``device_type`` off (ops use the reference; a forced backend raises).

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.
        reason: Why (shown by :func:`backend_info` and in errors).
    """
    disabled[device_type] = reason


def backend_info() -> dict[str, dict[str, str]]:
    """Reports the backend each device type uses and why.

    Loading is attempted (and, on first use, the extension is built) for ``cpu`` always and for ``cuda`` when a GPU
    is visible.

    Returns:
        ``{device_type: {"backend": ..., "reason": ..., "ops": "k/n ops with kernels", "selftest": ...}}``
        (``selftest``: the first-use self-test's outcome, e.g. ``passed (14 ops, 180 ms)`` or
        ``FAILED: _inclusive_sum max error 1``).
    """
    info: dict[str, dict[str, str]] = {}
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    n = len(_ops.KERNEL_CALLS)
    for device_type in device_types:
        try:
            state = _device(device_type)
        except BackendError as err:
            info[device_type] = {"backend": "error", "reason": str(err), "ops": "0"}
            continue
        selftest_summary = _selftest_summary(device_type, state)  # first, since a failed test switches kernels off
        k = sum(_has_kernel(c.op, device_type) for c in _ops.KERNEL_CALLS.values()) if state.loaded else 0
        backend, reason = state.backend, state.reason
        if device_type in disabled and state.loaded:
            backend, reason, k = "torch", f"kernels switched off: {disabled[device_type]}", 0
        info[device_type] = {
            "backend": backend,
            "reason": reason,
            "ops": f"{k}/{n} ops with kernels",
            "selftest": selftest_summary,
        }
    if not torch.cuda.is_available():
        info["cuda"] = {"backend": "none", "reason": "torch.cuda.is_available() is False", "ops": "0"}
    return info


def _selftest_summary(device_type: str, state: _Device) -> str:
    """The first-use self-test's outcome for ``device_type`` (e.g. ``passed (14 ops, 180 ms)``), running it if the
    kernels are loaded and it has not run yet in this process."""
    if not state.loaded:
        return "n/a"
    if device_type not in _selftested:
        _selftest(device_type, state)
    from ._ext import selftest  # noqa: PLC0415

    outcome = selftest.outcome_for(_EXT_KIND.get(device_type, device_type), device_type)
    return "not run" if outcome is None else outcome.summary()


def reset() -> None:
    """Forgets cached backend choices and self-test results (used by tests and after changing ``NERFACCEL_BACKEND``)."""
    with _lock:
        _cache.clear()
        _warned.clear()
        _selftested.clear()
        disabled.clear()
    from ._ext import selftest  # noqa: PLC0415

    selftest.reset()


def torch_reference() -> ModuleType:
    """The pure-PyTorch reference module (for tests and benchmarks)."""
    return _torch_impl
