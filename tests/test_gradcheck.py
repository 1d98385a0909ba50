"""Finite-difference gradient checks in float64: the backend's backward against central differences of the
backend's own forward, for the scalar loss L = sum(U * R) with a fixed random R (so dU = R)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import ACTIVATIONS, FD_RTOL, FD_STEP, fd_gradient, sample_coordinates, to_numpy

import gpuconv

CONFIGS = {
    "valid": {"x": (2, 5, 5, 3), "w": (3, 2, 3, 2), "opts": {}},
    "stride-asym-pad": {
        "x": (2, 6, 5, 2), "w": (2, 3, 2, 3), "opts": {"stride": (2, 1), "padding": ((1, 0), (0, 2))}
    },
    "dilation-groups": {"x": (1, 6, 6, 4), "w": (2, 2, 2, 4), "opts": {"dilation": (2, 1), "groups": 2, "padding": 1}},
    "same-stride-depthwise": {
        "x": (1, 7, 6, 3), "w": (3, 3, 1, 3), "opts": {"padding": "same", "stride": 2, "groups": 3}
    },
    "2d": {"x": (6, 5), "w": (3, 2), "opts": {"padding": "full"}},
    # the CUDA backend's tiled kernels (16+ channels per group); dilation (2, 1) and stride (1, 2) make the
    # tap rows and columns step differently
    "tiled": {"x": (1, 5, 6, 16), "w": (2, 3, 16, 16), "opts": {"dilation": (2, 1), "stride": (1, 2), "padding": 1}},
}
KINK_MARGIN = 1e-3  # relu: every pre-activation at least this far from 0 (far beyond FD_STEP * |dZ/dparam|)


def _inputs(rng, cfg, activation):
    x_shape, w_shape = cfg["x"], cfg["w"]
    m = w_shape[3] if len(w_shape) == 4 else 1
    for _ in range(200):
        x = rng.uniform(-1, 1, x_shape)
        w = rng.uniform(-1, 1, w_shape)
        b = rng.uniform(-1, 1, (m,))
        z = ref.conv2d_linear(x, w, b if len(w_shape) == 4 else None, **cfg["opts"])
        if activation != "relu" or (np.min(np.abs(z)) > KINK_MARGIN and (z > 0).any() and (z < 0).any()):
            return x, w, (b if len(w_shape) == 4 else None), z
    raise AssertionError("could not draw relu inputs away from the kink")




def _assert_grad(name, analytic, fd, coords):
    got = np.array([analytic[idx] for idx in coords])
    scale = max(np.max(np.abs(analytic)), 1e-300)
    np.testing.assert_allclose(got, fd, rtol=FD_RTOL, atol=FD_RTOL * scale, err_msg=name)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_gradcheck(backend, to_xp, rng, work_scale, cfg_name, activation):
    cfg = CONFIGS[cfg_name]
    x, w, b, _ = _inputs(rng, cfg, activation)
    opts = cfg["opts"]
    y = to_numpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), activation=activation, backend=backend, **opts))
    r = rng.uniform(-1, 1, y.shape)

    def loss():
        u = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), activation=activation, backend=backend, **opts)
        return float(np.sum(to_numpy(u) * r))

    grads = gpuconv.conv2d_backward(
        to_xp(r),
        to_xp(x),
        to_xp(w),
        to_xp(y),
        has_bias=b is not None,
        activation=activation,
        backend=backend,
        **opts,
    )
    dx, dw = to_numpy(grads.dx), to_numpy(grads.dw)
    assert dx.shape == x.shape and dw.shape == w.shape
    limit = 200 if work_scale >= 1 else 10  # every coordinate of these tiny arrays, or 10 on slow backends
    for name, arr, analytic in (("dx", x, dx), ("dw", w, dw)):
        coords = sample_coordinates(rng, arr.shape, limit)
        _assert_grad(name, analytic, fd_gradient(loss, arr, coords), coords)
    if b is not None:
        db = to_numpy(grads.db)
        coords = sample_coordinates(rng, b.shape, limit)
        _assert_grad("db", db, fd_gradient(loss, b, coords), coords)
    else:
        assert grads.db is None


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_separate_ops(backend, to_xp, rng, activation):
    """activation_backward -> backward_input / backward_weight / backward_bias against differences."""
    cfg = CONFIGS["stride-asym-pad"]
    x, w, b, _ = _inputs(rng, cfg, activation)
    opts = cfg["opts"]
    y = to_numpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), activation=activation, backend=backend, **opts))
    r = rng.uniform(-1, 1, y.shape)

    def loss():
        u = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), activation=activation, backend=backend, **opts)
        return float(np.sum(to_numpy(u) * r))

    dz = gpuconv.activation_backward(to_xp(r), to_xp(y), activation, backend=backend)
    dx = to_numpy(gpuconv.conv2d_backward_input(dz, to_xp(w), x.shape, backend=backend, **opts))
    dw = to_numpy(gpuconv.conv2d_backward_weight(dz, to_xp(x), w.shape, backend=backend, **opts))
    db = to_numpy(gpuconv.conv2d_backward_bias(dz, backend=backend))
    for name, arr, analytic in (("dx", x, dx), ("dw", w, dw), ("db", b, db)):
        coords = sample_coordinates(rng, arr.shape, 12)
        _assert_grad(name, analytic, fd_gradient(loss, arr, coords), coords)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_dz(backend, to_xp, rng, activation):
    """dZ = dU * act'(Z), against differences of act(Z) in Z (elementwise)."""
    z = rng.uniform(-2, 2, (3, 4, 5))
    if activation == "relu":
        z[np.abs(z) < KINK_MARGIN] = 0.5
    r = rng.uniform(-1, 1, z.shape)
    u = ref.activate(z, activation)
    dz = to_numpy(gpuconv.activation_backward(to_xp(r), to_xp(u), activation, backend=backend))
    fd = (ref.activate(z + FD_STEP, activation) - ref.activate(z - FD_STEP, activation)) / (2 * FD_STEP) * r
    np.testing.assert_allclose(dz, fd, rtol=FD_RTOL, atol=FD_RTOL * np.max(np.abs(fd)))


def test_reference_gradients_match_differences(rng):
    """The reference's own backward agrees with differences of the reference forward (checks the oracle)."""
    cfg = CONFIGS["dilation-groups"]
    x, w, b, _ = _inputs(rng, cfg, "sigmoid")
    opts = cfg["opts"]
    y = ref.conv2d(x, w, b, activation="sigmoid", **opts)
    r = rng.uniform(-1, 1, y.shape)

    def loss():
        return float(np.sum(ref.conv2d(x, w, b, activation="sigmoid", **opts) * r))

    dz = ref.activation_backward(r, y, "sigmoid")
    analytic = {
        "dx": ref.backward_input(dz, w, x.shape, **opts),
        "dw": ref.backward_weight(dz, x, w.shape, **opts),
        "db": ref.backward_bias(dz),
    }
    for name, arr in (("dx", x), ("dw", w), ("db", b)):
        coords = sample_coordinates(rng, arr.shape, 40)
        _assert_grad(name, analytic[name], fd_gradient(loss, arr, coords), coords)
