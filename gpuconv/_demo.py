"""``gpuconv demo``: the defining document's worked example, a ReLU layer, and a checked sigmoid backward.

It passes numpy arrays with an explicit backend: a GPU backend moves them to the device and back.
"""
from __future__ import annotations

import time

import sys

import numpy as np

from . import _api, _dispatch

WORKED_X = np.array(
    [[0, 0, 0, 0, 0], [0, 3, 3, 3, 0], [0, 3, 2, 3, 0], [0, 3, 2, 3, 0], [0, 0, 0, 0, 0]], dtype=np.float64
)
WORKED_W = np.array([[1, -1], [1, -1]], dtype=np.float64)


def _locations(mask) -> str:
    return ", ".join(f"({i}, {j})" for i, j in zip(*np.nonzero(mask))) or "none"


def worked_example(backend: str) -> None:
    z = _api.conv2d(WORKED_X, WORKED_W, backend=backend)
    print("1. Worked example: X (5x5) cross-correlated with W = [[1, -1], [1, -1]], padding 'valid'")
    print(np.array2string(WORKED_X.astype(int), prefix="   X = ").join(["   X = ", ""]))
    print(np.array2string(z.astype(int), prefix="   Z = ").join(["   Z = ", ""]))
    print(f"   size of Z: {z.shape[0]} x {z.shape[1]} ({z.size} values)")
    print(f"   largest positive value {z.max():g} at {_locations(z == z.max())}")
    print(f"   largest negative value {z.min():g} at {_locations(z == z.min())}")
    print(f"   zeros at {_locations(z == 0)}")


def relu_layer(backend: str, rng) -> None:
    from ._show import format_info

    x = rng.standard_normal((48, 64, 10)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 10, 20)) / np.sqrt(90)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32) * 0.1
    print("\n2. A ReLU layer: input 48 x 64 x 10, kernel 3 x 3 x 10 x 20, bias, float32")
    print(format_info(_api.conv2d_info(x.shape, w.shape)))
    _api.conv2d(x, w, b, activation="relu", backend=backend)  # warm-up (compiles kernels on a GPU backend)
    start = time.perf_counter()
    y = _api.conv2d(x, w, b, activation="relu", backend=backend)
    ms = (time.perf_counter() - start) * 1e3
    print(f"   forward: output {y.shape}, {ms:.2f} ms, {np.mean(y == 0):.0%} of outputs zeroed by ReLU, "
          f"max {y.max():.3f}")


def numeric_gradient(f, a, eps: float = 1e-6):
    """Central differences of the scalar function f() with respect to every element of ``a`` (changed in place)."""
    assert a.flags.c_contiguous, "numeric_gradient perturbs a through a flat view"
    grad = np.empty_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return grad


def relative_error(analytic, numeric) -> float:
    """Largest absolute difference relative to the largest gradient entry."""
    return float(np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(numeric)), 1e-300))


def checked_backward(backend: str, rng) -> list:
    """A conv + sigmoid layer's gradients against float64 central differences of J = sum(U * R)."""
    opts = {"stride": 2, "padding": "same", "activation": "sigmoid", "backend": backend}
    x = rng.standard_normal((2, 7, 8, 3))
    w = rng.standard_normal((3, 3, 3, 4)) / 3
    b = rng.standard_normal(4) * 0.1
    r = rng.standard_normal((2, 4, 4, 4))

    def loss():
        return float((_api.conv2d(x, w, b, **opts) * r).sum())

    u = _api.conv2d(x, w, b, **opts)
    grads = _api.conv2d_backward(r, x, w, u, **opts)
    z = _api.conv2d(x, w, b, **{**opts, "activation": None})
    dz = _api.activation_backward(r, u, "sigmoid", backend=backend)
    dz_numeric = numeric_gradient(lambda: float((r / (1 + np.exp(-z))).sum()), z)
    print("\n3. Backward of a conv + sigmoid layer (x 2x7x8x3, w 3x3x3x4, stride 2, padding 'same', float64)")
    print("   against central differences of J = sum(U * R); error = max|analytic - numeric| / max|numeric|")
    errors = [
        ("dZ", relative_error(dz, dz_numeric)),
        ("dW", relative_error(grads.dw, numeric_gradient(loss, w))),
        ("db", relative_error(grads.db, numeric_gradient(loss, b))),
        ("dX", relative_error(grads.dx, numeric_gradient(loss, x))),
    ]
    for name, err in errors:
        print(f"   {name}: largest relative error {err:.2e}  {'ok' if err < 1e-6 else 'TOO LARGE'}")
    return errors


def run_demo(backend: str = "auto") -> int:
    try:
        chosen = _dispatch.select_backend("gpuconv demo", backend, {}).name
    except (RuntimeError, ValueError, TypeError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"gpuconv demo: backend '{chosen}'\n")
    rng = np.random.default_rng(0)
    worked_example(chosen)
    relu_layer(chosen, rng)
    errors = checked_backward(chosen, rng)
    ok = all(err < 1e-6 for _, err in errors)
    print(f"\nbackend '{chosen}': {'all gradients agree with finite differences' if ok else 'GRADIENT CHECK FAILED'}")
    return 0 if ok else 1
