"""How far a result of gpuconv may be from the exact one, per dtype and precision: the error analysis, written once
(the test suite and tools/gpu_check.py check every backend against these bounds).

One result element is r = sum_k a_k b_k over K products (forward: K = KH*KW*Cg, and the bias as one more term;
dx: K = KH*KW*Mg; dw: K = N*OH*OW; db: K = N*OH*OW sums, no products), computed from the arrays as stored (the
exact reference reads the same rounded values), and S = sum_k |a_k| |b_k| (the same reference applied to |a| and
|b|). With u_acc the unit roundoff of the float32 additions:

- "highest", float32: each product rounded (or fused), each addition rounded: |r^ - r| <= gamma_K * S,
  gamma_K = K u / (1 - K u), u = 2^-24, whatever the order of the additions (a binary tree over K terms, as
  BLAS, split-K and the CUDA kernels use, has depth below K). float64 likewise with u = 2^-53.
- "tf32", float32: each operand first rounded to TF32 (10 explicit mantissa bits, round to nearest: relative
  error <= u_t = 2^-11), so each product is off by at most (2 u_t + u_t^2) |a b|, about 2^-10; a product of two
  TF32 values has 22 significant bits and is exact in float32; then float32 accumulation:
  |r^ - r| <= (2 u_t + u_t^2) S + gamma_K (1 + 2 u_t + u_t^2) S.
- float16, bfloat16 (any precision): the inputs are exact as stored and their products are exact in float32
  (11 + 11 and 8 + 8 significant bits), float32 accumulation, then one rounding to nearest even on store:
  |out - r| <= gamma_K S + u_s (|r| + gamma_K S) + tiny, u_s = 2^-11 (float16) or 2^-8 (bfloat16), tiny = half
  the smallest subnormal (a result that underflows).
- Tensor cores (tf32, float16, bfloat16 on a GPU) add the products of a block with truncation instead of
  rounding to nearest (Fasi, Higham, Mikaitis, Pranesh 2021, "Numerical behavior of NVIDIA tensor cores"): an
  error below one ulp per addition, so u_acc = 2^-23 for those modes, and 2^-24 for strict FP32.

The bound is relative to S = sum |a||b|, never to |result|: a sum that cancels has a tiny result and the same
absolute error. Activations (``ACTIVATION_ERRORS``, one entry per activation of gpuconv._registry): relu and tanh
are 1-Lipschitz, the sigmoid 1/4-Lipschitz, plus their own evaluation error (below 2^-20 absolute in float32,
2^-49 in float64). In the backward, dz = dy * act'(y) from the saved y is exact for relu and identity; for the
sigmoid, dy * y * (1 - y) is within 3u of |dz| <= |dy| / 4; for tanh, 1 - y * y is within 2u absolute (y^2 <= 1)
and the product adds u: within 3u |dy|; a 2-byte dtype that stores dz adds u_s |dz|. So |dz^ - dz| <= c |dy|
(``dz_error``), and a gradient GEMM over dz carries c * sum |dy||b| besides its own error.
"""
from __future__ import annotations

import numpy as np

TF32_UNIT = 2.0**-11
STORE_UNIT = {"float16": 2.0**-11, "bfloat16": 2.0**-8}  # one rounding to nearest on store
STORE_TINY = {"float16": 2.0**-25, "bfloat16": 2.0**-134}  # half the smallest subnormal
SIGMOID_EVAL = {"float64": 2.0**-49}  # absolute evaluation error of the sigmoid; 2^-20 for every other dtype


def unit(dtype) -> float:
    """Unit roundoff of the arithmetic ``dtype`` is computed in (float32 for the 2-byte dtypes)."""
    return 2.0**-53 if np.dtype(dtype) == np.float64 else 2.0**-24


def accumulation_unit(dtype, precision: str) -> float:
    """u of the additions: float64 and strict FP32 round to nearest; the tensor-core modes may truncate."""
    dtype = np.dtype(dtype)
    if dtype == np.float64 or (dtype == np.float32 and precision == "highest"):
        return unit(dtype)
    return 2.0**-23


def operand_error(dtype, precision: str) -> float:
    """Relative error of one product from rounding its two operands (TF32 only; exact otherwise)."""
    return 2 * TF32_UNIT + TF32_UNIT**2 if np.dtype(dtype) == np.float32 and precision == "tf32" else 0.0


def sum_error(dtype, precision: str, terms: int, abs_sum, carried=0.0):
    """Bound on |r^ - r| before the store, for sums of ``terms`` products with sum |a||b| = ``abs_sum``;
    ``carried`` bounds sum |da||b| for errors da the operands already carry (dz computed from y, ``dz_error``)."""
    ua = accumulation_unit(dtype, precision)
    gamma = terms * ua / (1 - terms * ua)
    rel = operand_error(dtype, precision)
    return rel * abs_sum + gamma * (1 + rel) * abs_sum + (1 + rel) * (1 + gamma) * carried


def store_error(dtype, value, err):
    """``err`` plus the one rounding on store of a 2-byte dtype, for a result near ``value``."""
    name = np.dtype(dtype).name
    if name in STORE_UNIT:
        return err + STORE_UNIT[name] * (np.abs(value) + err) + STORE_TINY[name]
    return err


# activation -> (Lipschitz constant, has an evaluation error, |dz^ - dz| / |dy| in units of u, max |act'|)
ACTIVATION_ERRORS = {
    "identity": (1.0, False, 0.0, 1.0),
    "relu": (1.0, False, 0.0, 1.0),
    "sigmoid": (0.25, True, 0.75, 0.25),
    "tanh": (1.0, True, 3.0, 1.0),
}


def activation_error(dtype, activation: str, err):
    """The bound ``err`` on z carried through the activation (before the store)."""
    lipschitz, evaluated, _, _ = ACTIVATION_ERRORS[activation]
    return lipschitz * err + (SIGMOID_EVAL.get(np.dtype(dtype).name, 2.0**-20) if evaluated else 0.0)


def dz_error(dtype, activation: str) -> float:
    """c with |dz^ - dz| <= c |dy| for dz = dy * act'(y) as a backend computes it from the saved y (in float32
    for the 2-byte dtypes, and possibly stored once in them)."""
    _, _, c, slope = ACTIVATION_ERRORS[activation]
    if c == 0:
        return 0.0
    return c * unit(dtype) + STORE_UNIT.get(np.dtype(dtype).name, 0.0) * slope
