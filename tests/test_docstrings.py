"""Every public symbol of the library's op and estimator modules has a Google-style docstring (Args / Returns)
and jaxtyping shapes on its tensor annotations (no bare ``Tensor``)."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

MODULES = [
    "scan",
    "volrend",
    "pdf",
    "grid",
    "pack",
    "contraction",
    "losses",
    "data_specs",
    "estimators.base",
    "estimators.occ_grid",
    "estimators.prop_net",
]


def _bare_tensor(annotation: object) -> bool:
    text = re.sub(r"\b(Float|Int|Bool|Shaped)\[Tensor,", "", str(annotation))
    return re.search(r"\bTensor\b", text) is not None


def _public(module_name: str):
    mod = importlib.import_module(f"nerfaccel_plugin.{module_name}")
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        yield name, obj, obj
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, property):
                    yield f"{name}.{attr}", value.fget, obj
                elif inspect.isfunction(value):
                    yield f"{name}.{attr}", value, obj


SYMBOLS = [(m, label, f, owner) for m in MODULES for label, f, owner in _public(m)]


def test_the_audit_sees_the_symbols_it_should():
    labels = {label for _, label, _, _ in SYMBOLS}
    for expected in (
        "exclusive_sum",
        "inclusive_prod",
        "exclusive_prod",
        "render_weight_from_alpha",
        "render_visibility_from_density",
        "traverse_grids_samples",
        "RaySamples.device",
        "RayIntervals.device",
        "AbstractEstimator.device",
        "PropNetEstimator.update_every_n_steps",
        "get_proposal_requires_grad_fn",
        "OccGridEstimator.mark_invisible_cells",
    ):
        assert expected in labels


@pytest.mark.parametrize(("module", "label", "obj", "owner"), SYMBOLS, ids=[f"{m}:{lab}" for m, lab, _, _ in SYMBOLS])
def test_public_symbol_is_documented(module, label, obj, owner):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{label} has no docstring"
    if inspect.isfunction(obj):
        sig = inspect.signature(obj)
        params = [p for p in sig.parameters if p not in ("self", "cls")]
        if params:
            assert "Args:" in doc, f"{label}: docstring has no Args section"
            for p in params:
                assert re.search(rf"^\s*\**{p}:", doc, re.M), f"{label}: argument {p} is not documented"
        if sig.return_annotation not in (None, "None", inspect.Signature.empty):
            assert "Returns:" in doc, f"{label}: docstring has no Returns section"
        for name, annotation in obj.__annotations__.items():
            assert not _bare_tensor(annotation), f"{label}: {name} is annotated with a bare Tensor: {annotation}"
    if inspect.isclass(obj):
        for name, annotation in getattr(obj, "__annotations__", {}).items():
            assert not _bare_tensor(annotation), f"{label}.{name} is annotated with a bare Tensor: {annotation}"
