"""Checks of the arguments that are not arrays of a convolution: shape tuples, size limits, flags, environment
variables. Each raises a ValueError or TypeError that names the function and the argument (or the variable
and its value); ``_config`` and ``_api`` call them before any work is done.

Limits (what the index arithmetic of every backend and kernel can hold):
  MAX_EXTENT  every stride, dilation and padding, and every padded image size (H + top + bottom, W + left +
              right) and kernel span (d * (K - 1) + 1), is at most 2**31 - 1;
  MAX_BYTES   every array a call reads or makes (x, w, the output, a shape tuple's array) holds at most
              2**63 - 1 bytes (numpy's own limit, np.intp). Below that, an allocation the machine cannot
              satisfy is numpy's (or CuPy's) MemoryError.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np

MAX_EXTENT = 2**31 - 1
MAX_BYTES = int(np.iinfo(np.intp).max)


def is_int(v) -> bool:
    """A Python or NumPy integer, not a bool (True is an int to Python, never a size to gpuconv)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def shape_tuple(fname: str, argname: str, value) -> tuple:
    """A shape argument (tuple or list of non-negative ints) -> a tuple of Python ints, with its byte size
    checked against MAX_BYTES for the widest dtype (8 bytes)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{fname}: argument '{argname}' must be a tuple of ints, got {value!r}")
    bad = [v for v in value if not is_int(v)]
    if bad:
        raise TypeError(
            f"{fname}: argument '{argname}' must be a tuple of ints, got {tuple(value)!r} "
            f"({bad[0]!r} is a {type(bad[0]).__name__})"
        )
    shape = tuple(int(v) for v in value)
    if any(v < 0 for v in shape):
        raise ValueError(f"{fname}: argument '{argname}' must hold non-negative sizes, got {shape}")
    check_bytes(fname, argname, shape, 8)
    return shape


def check_bytes(fname: str, argname: str, shape: tuple, itemsize: int, what: str = "") -> None:
    """An array of ``shape`` and ``itemsize`` fits in MAX_BYTES (the product computed exactly, never wrapped)."""
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_BYTES:
        raise ValueError(
            f"{fname}: argument '{argname}' gives {what or 'an array of'} shape {shape}: {nbytes:.3g} bytes, "
            f"more than can be allocated (limit 2**63 - 1 bytes)"
        )


def check_extent(fname: str, argname: str, value: int, what: str) -> None:
    """One size of the index arithmetic (a stride, a padded image size, ...) is at most MAX_EXTENT."""
    if value > MAX_EXTENT:
        raise ValueError(f"{fname}: argument '{argname}' {what} {value}, above the limit 2**31 - 1")


def check_flag(fname: str, argname: str, value) -> bool:
    """A bool argument: True/False (numpy's bool_ too); anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fname}: argument '{argname}' must be True or False, got {value!r}")
    return bool(value)


def check_not_masked(fname: str, argname: str, a) -> None:
    """Masks are not applied by a convolution: a masked array would have its masked values used silently."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{fname}: argument '{argname}' is a masked array; gpuconv does not apply masks: fill the masked "
            f"values first ({argname}.filled(0)) or pass {argname}.data"
        )


def as_array(fname: str, argname: str, a):
    """``a`` itself if it is an array (has dtype and shape), else np.asarray(a); what NumPy cannot make an
    array of (ragged lists, ...) is a TypeError naming the argument."""
    check_not_masked(fname, argname, a)
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return a
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{fname}: argument '{argname}' cannot be made an array: {exc}") from None


# ---- environment variables ----------------------------------------------------------------------------------
def env_choice(var: str, choices: tuple, default: str) -> str:
    """The value of ``var`` (stripped, lower case), which must be one of ``choices``; ``default`` if unset/empty."""
    raw = os.environ.get(var, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value not in choices:
        raise ValueError(f"environment variable {var}={raw!r} is not one of {', '.join(choices)} (or unset)")
    return value


def env_number(var: str, kind, default, minimum=None):
    """The value of ``var`` as ``kind`` (int or float), at least ``minimum``; ``default`` if unset/empty."""
    raw = os.environ.get(var, "")
    text = raw.strip()
    if not text:
        return default
    word = "an integer" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"environment variable {var}={raw!r} must be {word}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"environment variable {var}={raw!r} must be a finite number")
    if minimum is not None and value < minimum:
        raise ValueError(f"environment variable {var}={raw!r} must be {word} >= {minimum}")
    return value


def env_path(var: str, kind: str):
    """The value of ``var``, a path that must exist: kind "dir" (a folder) or "exe" (an executable file);
    None if unset or empty."""
    raw = os.environ.get(var, "")
    if not raw.strip():
        return None
    ok = os.path.isdir(raw) if kind == "dir" else (os.path.isfile(raw) and os.access(raw, os.X_OK))
    if not ok:
        what = "an existing folder" if kind == "dir" else "an executable file"
        raise ValueError(f"environment variable {var}={raw!r} must be {what}")
    return raw
