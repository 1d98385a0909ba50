"""One table per axis of change: activations and dtypes (precisions follow the same pattern).

Everything that varies with an activation or a dtype derives from these tables: the public checks
(``gpuconv._config``), both backends, the kernels (activation codes handed to NVRTC and the emulator as -D macros,
template instantiations generated from ``DTYPES``), the benchmarks and every test parametrization. Adding an
activation is one ``Activation`` entry here plus one case in each of ``gpuconv_act_forward`` /
``gpuconv_act_backward`` (kernels/gpuconv_common.cuh); adding a dtype is one ``DType`` entry plus its conversions
in the kernels.

Entries are only ever appended: asv matches benchmark parameters by position, and the benchmark lists follow the
order of these tables.

An unknown name raises at every layer: ``activation(name)`` and ``dtype(dt)`` are the only lookups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


# ------------------------------------------------------------------------------------------------- dtypes
@dataclass(frozen=True)
class DType:
    """One storage dtype: how NumPy, the kernels and the tests see it."""

    name: str
    numpy: np.dtype  # the array dtype
    ctype: str  # the kernels' template argument T
    acc: np.dtype  # accumulator / workspace dtype (kernels' gpuconv_acc<T>, the NumPy backend's compute dtype)
    # Test tolerance relative to the largest |float64 reference| (the suite, the kernel tests and the GPU
    # check all use it). With rtol_grows, it grows linearly with the reduction length beyond REDUCTION_UNIT
    # terms (the sum is rounded in this dtype); otherwise the accumulator is so much finer that rounding the
    # result once dominates.
    rtol: float
    rtol_grows: bool = False


REDUCTION_UNIT = 100

_F32 = np.dtype(np.float32)
DTYPES = {
    d.name: d
    for d in (
        DType("float32", _F32, "float", _F32, 1e-5, rtol_grows=True),
        DType("float16", np.dtype(np.float16), "__half", _F32, 1e-2),
        DType("float64", np.dtype(np.float64), "double", np.dtype(np.float64), 1e-12),
    )
}
_BY_NUMPY = {d.numpy: d for d in DTYPES.values()}


def dtype(dt, where: str = "gpuconv") -> DType:
    """The entry of a dtype (name, numpy dtype or DType); TypeError naming ``where`` for any other."""
    if isinstance(dt, DType):
        return dt
    try:
        entry = _BY_NUMPY.get(np.dtype(dt))
    except TypeError:
        entry = None
    if entry is None:
        raise TypeError(f"{where}: dtype must be one of {dtype_names()}, got {dt!r}")
    return entry


def accumulator(dt, where: str = "gpuconv") -> np.dtype:
    """The accumulator dtype of ``dt``: its entry's; float32 for ml_dtypes' bfloat16, which the NumPy backend
    computes but which has no entry (no kernels) yet."""
    try:
        if np.dtype(dt).name == "bfloat16":
            return _F32
    except TypeError:
        pass
    return dtype(dt, where).acc


def dtype_names() -> tuple:
    return tuple(DTYPES)


def tolerance(dt, reduction: int = 1) -> float:
    """Test tolerance for results of ``dt`` that sum ``reduction`` products each (see DType.rtol)."""
    d = dtype(dt)
    return d.rtol * max(1.0, reduction / REDUCTION_UNIT) if d.rtol_grows else d.rtol


# ------------------------------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class Activation:
    """One activation u = act(z), fused into the forward kernels; its gradient is taken from the saved u."""

    name: str
    code: int  # GPUCONV_ACT_<NAME> in the kernels, handed to NVRTC and the emulator as a -D macro
    # forward(z): act(z) in place on a float array (computed in z's dtype), returned
    forward: Callable
    # backward(dy, u, out=None): dz = dy * act'(z) from the saved output u = act(z), in dy's dtype (computed in
    # its accumulator dtype, rounded once); written into ``out`` (contiguous, dy's shape and dtype) if given
    backward: Callable
    torch: Optional[str]  # the torch function (torch.<name>), None for identity
    uses_output: bool = True  # backward reads u (identity does not)

    @property
    def macro(self) -> str:
        return f"GPUCONV_ACT_{self.name.upper()}"


def _rows(z):
    # a 2-D view of the last two axes: numpy's maximum runs its SIMD loop over long contiguous rows
    return z.reshape(-1, math.prod(z.shape[-2:]))


def _identity_forward(z):
    return z


def _identity_backward(dy, u, out=None):
    if out is None:
        return np.array(dy, copy=True)
    np.copyto(out, dy)
    return out


def _relu_forward(z):
    # against a row of zeros, not the scalar 0: numpy's maximum runs no SIMD loop with a scalar operand (40 vs
    # 11 us on shape a's output); the bits are the same (NaN kept, -0 becomes +0 either way)
    if z.size:
        rows = _rows(z)
        np.maximum(rows, np.zeros(rows.shape[1], z.dtype), out=rows)
    return z


def _relu_backward(dy, u, out=None):
    """where(u > 0, dy, 0), bit for bit, without branches: dy's bits ANDed with all-ones where u > 0.

    np.where is ~3x slower here on real data (a mask of random signs defeats the branch predictor).
    """
    dy = np.ascontiguousarray(dy)
    uint = np.dtype(f"u{dy.dtype.itemsize}")
    keep = np.empty(dy.shape, uint) if out is None else out.view(uint)
    np.greater(u, 0, out=keep)  # 1 where u > 0, else 0
    np.negative(keep, out=keep)  # all ones where u > 0
    np.bitwise_and(keep, dy.view(uint), out=keep)
    return keep.view(dy.dtype)


def _sigmoid_forward(z):
    # 1 / (1 + exp(-z)); exp overflows to inf for very negative z and 1/inf = 0 is the right answer
    with np.errstate(over="ignore"):
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1
        np.reciprocal(z, out=z)
    return z


def _finish(dz, dy, out):
    """dz (accumulator dtype) rounded once to dy's dtype, into ``out`` if given."""
    if out is None:
        return dz.astype(dy.dtype, copy=False)
    np.copyto(out, dz, casting="same_kind")
    return out


def _sigmoid_backward(dy, u, out=None):
    dz = np.subtract(1, u, dtype=accumulator(dy.dtype))  # sigmoid' = u * (1 - u)
    dz *= u
    dz *= dy
    return _finish(dz, dy, out)


def _tanh_forward(z):
    return np.tanh(z, out=z)


def _tanh_backward(dy, u, out=None):
    dz = np.multiply(u, u, dtype=accumulator(dy.dtype))  # tanh' = 1 - u * u
    np.subtract(1, dz, out=dz)
    dz *= dy
    return _finish(dz, dy, out)


ACTIVATIONS = {
    a.name: a
    for a in (
        Activation("identity", 0, _identity_forward, _identity_backward, None, uses_output=False),
        Activation("relu", 1, _relu_forward, _relu_backward, "relu"),
        Activation("sigmoid", 2, _sigmoid_forward, _sigmoid_backward, "sigmoid"),
        Activation("tanh", 3, _tanh_forward, _tanh_backward, "tanh"),
    )
}


def activation(name, where: str = "gpuconv") -> Activation:
    """The entry of an activation name (exact, lower case); ValueError naming ``where`` for any other."""
    entry = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"{where}: activation must be one of {activation_names()}, got {name!r}")
    return entry


def activation_names() -> tuple:
    return tuple(ACTIVATIONS)


def activation_defines() -> tuple:
    """The kernels' activation codes as NVRTC / g++ options: -DGPUCONV_ACT_<NAME>=<code>."""
    return tuple(f"-D{a.macro}={a.code}" for a in ACTIVATIONS.values())
