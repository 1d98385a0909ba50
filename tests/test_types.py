"""Every public function and class of gpuconv and gpuconv.torch is annotated, and every public method has a
docstring (the package ships py.typed)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import gpuconv


def _problems(fn, where: str) -> list:
    out = []
    if not inspect.getdoc(fn) and not where.endswith(".__init__"):
        out.append(f"{where}: no docstring")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature
        return out
    for p in sig.parameters.values():
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty:
            out.append(f"{where}: parameter '{p.name}' has no annotation")
    if sig.return_annotation is inspect.Signature.empty:
        out.append(f"{where}: no return annotation")
    return out


def _public_problems(module) -> list:
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        where = f"{module.__name__}.{name}"
        if inspect.isclass(obj):
            if not obj.__doc__:
                out.append(f"{where}: no docstring")
            for attr, member in vars(obj).items():
                if callable(member) and (attr == "__init__" or not attr.startswith("_")):
                    out += _problems(member, f"{where}.{attr}")
        elif callable(obj):
            out += _problems(obj, where)
    return out


def test_gpuconv_public_api_is_annotated_and_documented():
    assert _public_problems(gpuconv) == []


def test_gpuconv_torch_is_annotated_and_documented():
    pytest.importorskip("torch")
    import gpuconv.torch

    assert _public_problems(gpuconv.torch) == []


def test_py_typed_marker_ships():
    assert (Path(gpuconv.__file__).parent / "py.typed").is_file()


def test_layout_options_are_in_the_signatures():
    for fn in (gpuconv.conv2d, gpuconv.conv2d_backward, gpuconv.conv2d_backward_input,
               gpuconv.conv2d_backward_weight):
        params = inspect.signature(fn).parameters
        for name, default in (("data_format", "NHWC"), ("filter_format", "HWIO"), ("padding_mode", "zeros")):
            assert params[name].default == default and params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert "padding_mode" in fn.__doc__
