"""gpuconv.Conv2D: layer(x) / layer.forward(x) keep what backward needs; layer.backward(dy) returns dX and
sets layer.dw and layer.db."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import ACTIVATIONS, DTYPE_IDS, DTYPES, FD_RTOL, fd_gradient, sample_coordinates, to_numpy
from reference import OPTION_CASES, OPTION_IDS, geometry, reduction_lengths

import gpuconv


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c", OPTION_CASES, ids=OPTION_IDS)
def test_layer_forward_backward_vs_reference(backend, to_xp, check, rand, c, dtype):
    x, w = rand(c["x_shape"], dtype), rand(c["w_shape"], dtype)
    m = c["w_shape"][3] if len(c["w_shape"]) == 4 else 1
    b = rand((m,), dtype) if c["bias"] else None
    act = c["activation"]
    layer = gpuconv.Conv2D(to_xp(w), to_xp(b), activation=act, backend=backend, **geometry(c))
    assert layer.dw is None and layer.db is None
    y = layer(to_xp(x))
    expected_y = ref.conv2d(x, w, b, activation=act, **c["options"])
    red = reduction_lengths(c)
    check(y, expected_y, dtype, reduction=red["forward"])

    dy = rand(expected_y.shape, dtype)
    dx = layer.backward(to_xp(dy))
    # the reference's dZ from the layer's own (rounded) output, as the specification says
    dz = ref.activation_backward(dy, to_numpy(y), act)
    check(dx, ref.backward_input(dz, w, x.shape, **geometry(c)), dtype, reduction=red["dx"])
    check(layer.dw, ref.backward_weight(dz, x, w.shape, **geometry(c)), dtype, reduction=red["dw"])
    if b is None:
        assert layer.db is None
    else:
        check(layer.db, ref.backward_bias(dz.reshape(-1, m)), dtype, reduction=red["db"])


def test_call_and_forward_agree(backend, to_xp, asnumpy, rand):
    x, w, b = rand((2, 6, 5, 3)), rand((3, 3, 3, 4)), rand((4,))
    layer = gpuconv.Conv2D(to_xp(w), to_xp(b), padding="same", activation="sigmoid", backend=backend)
    np.testing.assert_array_equal(asnumpy(layer(to_xp(x))), asnumpy(layer.forward(to_xp(x))))
    np.testing.assert_array_equal(
        asnumpy(layer(to_xp(x))),
        asnumpy(
            gpuconv.conv2d(
                to_xp(x), to_xp(w), to_xp(b), padding="same", activation="sigmoid", backend=backend
            )
        ),
    )


def test_backward_uses_latest_forward(backend, to_xp, check, rand):
    x1, x2, w, b = rand((1, 5, 5, 2)), rand((2, 6, 4, 2)), rand((2, 2, 2, 3)), rand((3,))
    layer = gpuconv.Conv2D(to_xp(w), to_xp(b), activation="relu", backend=backend)
    layer(to_xp(x1))
    y2 = to_numpy(layer(to_xp(x2)))
    dy = rand(y2.shape)
    dx = layer.backward(to_xp(dy))
    dz = ref.activation_backward(dy, y2, "relu")
    check(dx, ref.backward_input(dz, w, x2.shape), np.float64, reduction=12)
    check(layer.dw, ref.backward_weight(dz, x2, w.shape), np.float64, reduction=30)
    check(layer.db, ref.backward_bias(dz), np.float64, reduction=30)


def test_backward_twice_same_result(backend, to_xp, asnumpy, rand):
    x, w, b = rand((2, 5, 5, 2)), rand((2, 2, 2, 3)), rand((3,))
    layer = gpuconv.Conv2D(to_xp(w), to_xp(b), activation="sigmoid", backend=backend)
    y = layer(to_xp(x))
    dy = rand(tuple(y.shape))
    dx1, dw1, db1 = asnumpy(layer.backward(to_xp(dy))), asnumpy(layer.dw), asnumpy(layer.db)
    dx2 = asnumpy(layer.backward(to_xp(dy)))
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dw1, asnumpy(layer.dw))  # set, not accumulated
    np.testing.assert_array_equal(db1, asnumpy(layer.db))


def test_backward_before_forward_fails(backend, to_xp, rand):
    layer = gpuconv.Conv2D(to_xp(rand((2, 2, 2, 3))), backend=backend)
    with pytest.raises(Exception, match="forward"):
        layer.backward(to_xp(rand((1, 3, 3, 3))))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_layer_gradcheck(backend, to_xp, rng, work_scale, activation):
    """Finite differences of sum(layer(x) * R) in float64 for dX, dW, db through the layer."""
    opts = {"stride": (1, 2), "padding": ((0, 1), (2, 1)), "dilation": (2, 1), "groups": 2}
    for _ in range(200):
        x, w, b = rng.uniform(-1, 1, (2, 6, 5, 4)), rng.uniform(-1, 1, (2, 3, 2, 4)), rng.uniform(-1, 1, 4)
        z = ref.conv2d_linear(x, w, b, **opts)
        if activation != "relu" or np.min(np.abs(z)) > 1e-3:
            break
    layer = gpuconv.Conv2D(to_xp(w), to_xp(b), activation=activation, backend=backend, **opts)
    y = to_numpy(layer(to_xp(x)))
    r = rng.uniform(-1, 1, y.shape)
    dx = to_numpy(layer.backward(to_xp(r)))
    grads = {"x": dx, "w": to_numpy(layer.dw), "b": to_numpy(layer.db)}
    arrays = {"x": x, "w": w, "b": b}
    n = max(6, int(30 * work_scale))

    def loss():
        out = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), activation=activation, backend=backend, **opts)
        return float(np.sum(to_numpy(out) * r))

    for name, arr in arrays.items():
        coords = sample_coordinates(rng, arr.shape, n)
        for k, fd in zip(coords, fd_gradient(loss, arr, coords)):
            g = grads[name][k]
            assert abs(g - fd) <= FD_RTOL * max(abs(fd), np.max(np.abs(grads[name]))), (name, k, g, fd)
