"""Array modules and backend selection.

This is the one module that imports CuPy, lazily and guarded: importing gpuconv never fails and never touches
CUDA. When CuPy cannot be used the reason is kept, so that errors and ``show_config`` can say why.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import numpy

from ._validate import env_choice

BACKENDS = ("numpy", "cupy", "emulator")
ENV_BACKEND = "GPUCONV_BACKEND"

_cupy = None
_cupy_error = None
_backend_cache: dict = {}
_backend_errors: dict = {}


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine; the message says why."""


def import_cupy():
    """Return the cupy module, or raise BackendUnavailable with the reason it cannot be imported."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy

            _cupy = cupy
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA install raising anything
            _cupy_error = f"cupy cannot be imported: {type(exc).__name__}: {exc}"
    if _cupy is None:
        raise BackendUnavailable(_cupy_error)
    return _cupy


def cupy_gpu_reason():
    """None if CuPy sees a usable GPU, else the reason it does not."""
    try:
        cupy = import_cupy()
    except BackendUnavailable as exc:
        return str(exc)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any driver error means "no usable GPU"
        return f"cupy is installed but no CUDA device is usable: {type(exc).__name__}: {exc}"
    if count < 1:
        return "cupy is installed but reports no CUDA device"
    return None


def is_cupy_array(a) -> bool:
    # Looked up by type so that a numpy-only call never imports cupy.
    return type(a).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays: Any) -> ModuleType:
    """numpy, or cupy if any argument is a cupy array (None and scalars are ignored)."""
    if any(is_cupy_array(a) for a in arrays):
        return import_cupy()
    return numpy


def array_kinds(fname: str, named: dict) -> str:
    """'numpy' or 'cupy' for the arrays in ``named`` (name -> array or None); mixing them is a TypeError."""
    kinds = {name: ("cupy" if is_cupy_array(a) else "numpy") for name, a in named.items() if a is not None}
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"'{k}' is a {v} array" for k, v in kinds.items())
        raise TypeError(
            f"{fname}: arguments mix numpy and cupy arrays ({listing}); move them to one device first "
            "(cupy.asarray / cupy.asnumpy)"
        )
    return next(iter(kinds.values()), "numpy")


def load_backend(name: str):
    """The backend object called ``name``; BackendUnavailable says why it cannot run here."""
    if name in _backend_cache:
        return _backend_cache[name]
    if name in _backend_errors:
        raise BackendUnavailable(_backend_errors[name])
    try:
        module = importlib.import_module(f"gpuconv.backends.{name}")
        backend = module.load()
    except BackendUnavailable as exc:
        _backend_errors[name] = f"backend {name!r} is unavailable: {exc}"
        raise BackendUnavailable(_backend_errors[name]) from None
    except ModuleNotFoundError as exc:
        if exc.name != f"gpuconv.backends.{name}":
            raise
        _backend_errors[name] = f"backend {name!r} is not part of this build of gpuconv"
        raise BackendUnavailable(_backend_errors[name]) from None
    _backend_cache[name] = backend
    return backend


def backend_status(name: str):
    """None if the backend can run here, else the reason it cannot."""
    try:
        load_backend(name)
    except BackendUnavailable as exc:
        return str(exc)
    return None


def backend_name(fname: str, backend) -> str:
    """A ``backend`` argument checked: 'auto' or one of BACKENDS (any case), else a TypeError / ValueError."""
    if not isinstance(backend, str):
        raise TypeError(f"{fname}: argument 'backend' must be a string, got {backend!r}")
    name = backend.lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"{fname}: argument 'backend' must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return name


def select_backend(fname: str, backend: str, named_arrays: dict, kind: str | None = None):
    """Pick the backend for one call: explicit name, GPUCONV_BACKEND, or the arrays' type (``kind``, when the
    caller already knows it: 'numpy' or 'cupy')."""
    name = backend_name(fname, backend)
    kind = kind or array_kinds(fname, named_arrays)
    if name == "auto":
        name = env_backend(fname)
    if name == "auto":
        name = kind
    try:
        return load_backend(name)
    except BackendUnavailable as exc:
        raise RuntimeError(f"{fname}: {exc}") from None


def env_backend(fname: str | None = None) -> str:
    """GPUCONV_BACKEND: 'auto' when unset or empty, else one of BACKENDS; any other value is a ValueError
    that names the variable and its value (and ``fname``, the function that read it)."""
    try:
        return env_choice(ENV_BACKEND, ("auto",) + BACKENDS, "auto")
    except ValueError as exc:
        raise ValueError(f"{fname}: {exc}" if fname else str(exc)) from None


def to_module(a, xp):
    """``a`` as an array of module ``xp`` (copying between host and device only when needed)."""
    if a is None:
        return None
    if xp is numpy:
        return a.get() if is_cupy_array(a) else numpy.asarray(a)
    return xp.asarray(a)


def module_of(a):
    """The array module that holds ``a`` (numpy for anything that is not a cupy array)."""
    return import_cupy() if is_cupy_array(a) else numpy


def loaded_modules() -> dict:
    """Versions of the array libraries, without importing any that is not already importable cheaply."""
    out = {"numpy": numpy.__version__}
    try:
        out["cupy"] = import_cupy().__version__
    except BackendUnavailable as exc:
        out["cupy"] = f"not usable ({exc})"
    out["python"] = sys.version.split()[0]
    return out


# The NumPy backend is imported with gpuconv, not on the first call: a first call from a thread would import it
# there, and a fork at that moment would leave the child waiting for that import's lock for good.
from .backends import numpy as _numpy_backend  # noqa: E402,F401
