"""One table per axis of change: activations, dtypes and precisions.

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

import importlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


# ------------------------------------------------------------------------------------------------- dtypes
@dataclass(frozen=True)
class DType:
    """One storage dtype: how NumPy, the kernels and the tests see it."""

    name: str
    # the array dtype, or "package:attribute" for one an optional package provides (imported on first use of
    # ``numpy``: importing gpuconv never imports it; ImportError naming the package where it is missing)
    spec: np.dtype | str
    ctype: str  # the kernels' template argument T
    acc: np.dtype  # accumulator / workspace dtype (kernels' gpuconv_acc<T>, the NumPy backend's compute dtype)
    # Test tolerance relative to the largest |float64 reference| (the suite, the kernel tests and the GPU
    # check all use it). With rtol_grows, it grows linearly with the reduction length beyond REDUCTION_UNIT
    # terms (the sum is rounded in this dtype); otherwise the accumulator is so much finer that rounding the
    # result once dominates.
    rtol: float
    rtol_grows: bool = False
    # the CUDA kernels are instantiated for it (the NumPy backend computes every entry)
    kernels: bool = True
    # the first compute capability with tensor cores for its products (None: none are used for it)
    tensor_core_arch: int | None = None

    @property
    def numpy(self) -> np.dtype:
        if isinstance(self.spec, np.dtype):
            return self.spec
        if self.name not in _LOADED:
            package, _, attr = self.spec.partition(":")
            try:
                module = importlib.import_module(package)
            except ImportError as exc:
                raise ImportError(
                    f"gpuconv: {self.name} arrays are {package}.{attr}, and the {package} package is not "
                    f"installed (pip install {package})"
                ) from exc
            _LOADED[self.name] = np.dtype(getattr(module, attr))
        return _LOADED[self.name]

    @property
    def available(self) -> bool:
        """Whether ``numpy`` can be had here (its optional package is installed)."""
        try:
            _ = self.numpy
        except ImportError:
            return False
        return True


REDUCTION_UNIT = 100

_F32 = np.dtype(np.float32)
_LOADED: dict = {}  # name -> numpy dtype of the entries an optional package provides, once imported
DTYPES = {
    d.name: d
    for d in (
        DType("float32", _F32, "float", _F32, 1e-5, rtol_grows=True),
        DType("float16", np.dtype(np.float16), "__half", _F32, 1e-2, tensor_core_arch=70),
        DType("float64", np.dtype(np.float64), "double", np.dtype(np.float64), 1e-12),
        # ml_dtypes.bfloat16 (8 significant bits): computed in float32 and rounded once on store. Tolerance: 8
        # units of its rounding (2^-8), for one rounding of the result, one of dz and their growth where a sum
        # cancels (float16's 1e-2 is 20 of its 2^-11). No CUDA kernels for it yet.
        DType("bfloat16", "ml_dtypes:bfloat16", "__nv_bfloat16", _F32, 3e-2, kernels=False, tensor_core_arch=80),
    )
}
# Lookup by numpy dtype of the entries that need no optional package (the others are found by name).
_BY_NUMPY = {d.spec: d for d in DTYPES.values() if isinstance(d.spec, np.dtype)}


def dtype(dt, where: str = "gpuconv") -> DType:
    """The entry of a dtype (name, numpy dtype or DType); TypeError naming ``where`` for any other.

    An entry from an optional package is found by its name ("bfloat16"), or by its numpy dtype (whose name it
    is): the package is imported only then.
    """
    if isinstance(dt, DType):
        return dt
    if isinstance(dt, str) and dt in DTYPES:
        return DTYPES[dt]
    try:
        npdt = np.dtype(dt)
    except TypeError:
        npdt = None
    entry = _BY_NUMPY.get(npdt)
    if entry is None and npdt is not None and npdt.name in DTYPES and DTYPES[npdt.name].numpy == npdt:
        entry = DTYPES[npdt.name]
    if entry is None:
        raise TypeError(f"{where}: dtype must be one of {dtype_names()}, got {dt!r}")
    return entry


def accumulator(dt, where: str = "gpuconv") -> np.dtype:
    """The accumulator dtype of ``dt`` (its entry's)."""
    return dtype(dt, where).acc


def dtype_names() -> tuple:
    return tuple(DTYPES)


def kernel_dtypes() -> tuple:
    """The entries the CUDA kernels are instantiated for."""
    return tuple(d for d in DTYPES.values() if d.kernels)


def tolerance(dt, reduction: int = 1) -> float:
    """Test tolerance for results of ``dt`` that sum ``reduction`` products each (see DType.rtol)."""
    d = dtype(dt)
    return d.rtol * max(1.0, reduction / REDUCTION_UNIT) if d.rtol_grows else d.rtol


# ------------------------------------------------------------------------------------------------- precisions
@dataclass(frozen=True)
class Precision:
    """How the products of float32 are computed (``precision=``); the other dtypes are the same in every one."""

    name: str
    description: str
    # the float32 operands are rounded to TF32 before each product (cvt.rna.tf32.f32)
    tf32: bool
    # the first compute capability with tensor cores for it (None: CUDA cores)
    tensor_core_arch: int | None = None


PRECISIONS = {
    p.name: p
    for p in (
        Precision("highest", "strict FP32 products", tf32=False),
        Precision("tf32", "both operands rounded to TF32 (10 explicit mantissa bits), float32 accumulation",
                  tf32=True, tensor_core_arch=80),
    )
}


def precision_names() -> tuple:
    return tuple(PRECISIONS)


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
    # 11 us on shape tiny's output); the bits are the same (NaN kept, -0 becomes +0 either way)
    if z.size:
        rows = _rows(z)
        np.maximum(rows, np.zeros(rows.shape[1], z.dtype), out=rows)
    return z


def _relu_backward(dy, u, out=None):
    """where(u <= 0, 0, dy), bit for bit, without branches: dy's bits ANDed with all-ones where not u <= 0.

    A NaN u (relu(NaN) = NaN) passes dy, as PyTorch's threshold_backward (the NaN/Inf rule, README).
    np.where is ~3x slower here on real data (a mask of random signs defeats the branch predictor).
    """
    dy = np.ascontiguousarray(dy)
    uint = np.dtype(f"u{dy.dtype.itemsize}")
    keep = np.empty(dy.shape, uint) if out is None else out.view(uint)
    np.less_equal(u, 0, out=keep)  # 1 where u <= 0, else 0 (NaN included)
    np.subtract(keep, 1, out=keep)  # 0 where u <= 0, all ones elsewhere (unsigned wrap-around)
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
