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
absolute error. Activations: relu is 1-Lipschitz, the sigmoid 1/4-Lipschitz, plus its own evaluation error
(below 2^-20 absolute in float32, 2^-49 in float64). In the backward, dz = dy * act'(y) is exact for relu and
within 3u (+ u_s when stored in a 2-byte dtype) relative for the sigmoid (``dz_error``).
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


def sum_error(dtype, precision: str, terms: int, abs_sum, extra_rel: float = 0.0):
    """Bound on |r^ - r| before the store, for sums of ``terms`` products with sum |a||b| = ``abs_sum``
    (``extra_rel``: a relative error the operands already carry, e.g. dz of a sigmoid)."""
    ua = accumulation_unit(dtype, precision)
    gamma = terms * ua / (1 - terms * ua)
    rel = operand_error(dtype, precision)
    rel = rel + extra_rel * (1 + rel)
    return rel * abs_sum + gamma * (1 + rel) * abs_sum


def store_error(dtype, value, err):
    """``err`` plus the one rounding on store of a 2-byte dtype, for a result near ``value``."""
    name = np.dtype(dtype).name
    if name in STORE_UNIT:
        return err + STORE_UNIT[name] * (np.abs(value) + err) + STORE_TINY[name]
    return err


def activation_error(dtype, activation: str, err):
    """The bound ``err`` on z carried through the activation (before the store)."""
    if activation == "sigmoid":
        return err / 4 + SIGMOID_EVAL.get(np.dtype(dtype).name, 2.0**-20)
    return err  # identity; relu is 1-Lipschitz


def dz_error(dtype, activation: str) -> float:
    """Relative error of dz = dy * act'(y) as a backend computes it (sigmoid: dy * y * (1 - y) in float32, and
    stored once in a 2-byte dtype where the backend keeps dz in it)."""
    if activation != "sigmoid":
        return 0.0
    return 3 * unit(dtype) + STORE_UNIT.get(np.dtype(dtype).name, 0.0)
