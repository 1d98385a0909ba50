"""The backward operations (activation_backward, conv2d_backward_input/_weight/_bias, conv2d_backward)
against the float64 reference, for every option and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import ACTIVATIONS, DTYPE_IDS, DTYPES, OUTPUT_ACTIVATIONS, to_numpy, tolerance
from reference import OPTION_CASES, OPTION_IDS, geometry, reduction_lengths

import gpuconv


def case_arrays(rand, c, dtype):
    x = rand(c["x_shape"], dtype)
    w = rand(c["w_shape"], dtype)
    m = c["w_shape"][3] if len(c["w_shape"]) == 4 else 1
    b = rand((m,), dtype) if c["bias"] else None
    y_shape = ref.y_shape(
        c["x_shape"], c["w_shape"], **{k: v for k, v in geometry(c).items() if k != "groups"}
    )
    dy = rand(y_shape, dtype)
    return x, w, b, dy


# -------------------------------------------------------------------------------------- activation_backward
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4, 5)])
def test_activation_backward(backend, to_xp, check, rand, dtype, activation, shape):
    dy = rand(shape, dtype)
    z = rand(shape, np.float64, low=-3, high=3)
    z.flat[:2] = (-1.5, 1.5)  # both sides of relu's kink, whatever the draw
    y = ref.activate(z, activation).astype(dtype)
    if activation == "relu":
        assert (y == 0).any() and (y > 0).any()
    dz = gpuconv.activation_backward(to_xp(dy), to_xp(y), activation, backend=backend)
    check(dz, ref.activation_backward(dy, y, activation), dtype)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_over_several_grid_passes(backend, to_xp, check, rand, monkeypatch, activation):
    """The CUDA kernel's grid is capped (ACT_BWD_MAX_BLOCKS blocks of 256 threads) and loops over the rest:
    with the cap lowered to 2 blocks, 1613 elements take 4 passes, the last one partial."""
    from gpuconv.backends import _plans

    monkeypatch.setattr(_plans, "ACT_BWD_MAX_BLOCKS", 2)
    assert _plans.activation_backward(1613, activation)[0].grid == (2, 1, 1)
    dy = rand((1613,), np.float32)
    y = ref.activate(rand((1613,), np.float64, low=-3, high=3), activation).astype(np.float32)
    dz = gpuconv.activation_backward(to_xp(dy), to_xp(y), activation, backend=backend)
    check(dz, ref.activation_backward(dy, y, activation), np.float32)


def _half_ulp_bound(exact, noise):
    """Half a float16 ulp of each exact value (what one rounding to nearest allows) plus ``noise``."""
    return np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64) / 2 + noise


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float16_activation_backward_rounds_once(backend, to_xp, asnumpy, rand, activation):
    """dz = dy * act'(z) is computed in float32 and rounded once: within half a float16 ulp of the float64
    value from the same float16 inputs (plus float32 noise), never the ~2 ulps of float16 arithmetic."""
    dy = rand((4000,), np.float16, low=-4, high=4)
    y = ref.activate(rand((4000,), np.float64, low=-3, high=3), activation).astype(np.float16)
    dz = asnumpy(gpuconv.activation_backward(to_xp(dy), to_xp(y), activation, backend=backend))
    exact = ref.activation_backward(dy.astype(np.float64), y.astype(np.float64), activation)
    err = np.abs(dz.astype(np.float64) - exact)
    bound = _half_ulp_bound(exact, 2**-20 * np.abs(exact))
    assert dz.dtype == np.float16 and np.all(err <= bound), f"worst: {np.max(err / bound):.2f} x the bound"


@pytest.mark.parametrize("path", ["direct", "tiled"])
def test_float16_gradients_round_once(backend, to_xp, asnumpy, rand, path):
    """dx, dw, db from a float16 dz: summed in float32, rounded once (half a float16 ulp + float32 noise)."""
    xs, ws = ((2, 6, 6, 4), (3, 3, 4, 5)) if path == "direct" else ((1, 6, 5, 16), (3, 2, 16, 17))
    opts = {"padding": 1, "stride": (1, 2)}
    x, w = rand(xs, np.float16), rand(ws, np.float16)
    dz = rand(ref.y_shape(xs, ws, **opts), np.float16)
    got = {
        "dx": gpuconv.conv2d_backward_input(to_xp(dz), to_xp(w), xs, backend=backend, **opts),
        "dw": gpuconv.conv2d_backward_weight(to_xp(dz), to_xp(x), ws, backend=backend, **opts),
        "db": gpuconv.conv2d_backward_bias(to_xp(dz), backend=backend),
    }
    want = {
        "dx": ref.backward_input(dz, w, xs, **opts),
        "dw": ref.backward_weight(dz, x, ws, **opts),
        "db": ref.backward_bias(dz),
    }
    for k, v in got.items():
        v = asnumpy(v)
        err = np.abs(v.astype(np.float64) - want[k])
        bound = _half_ulp_bound(want[k], 1e-5 * np.max(np.abs(want[k])))
        assert v.dtype == np.float16 and np.all(err <= bound), f"{k}: worst {np.max(err / bound):.2f} x the bound"


def test_activation_backward_relu_uses_saved_output(backend, to_xp, asnumpy):
    """relu': 1 where the output is positive, 0 where it is 0 (the kink counts as 0)."""
    dy = np.array([1.5, -2.0, 3.0, 4.0])
    y = np.array([0.0, 0.5, 0.0, 2.0])
    dz = asnumpy(gpuconv.activation_backward(to_xp(dy), to_xp(y), "relu", backend=backend))
    np.testing.assert_array_equal(dz, [0.0, -2.0, 0.0, 4.0])


def test_activation_backward_sigmoid_values(backend, to_xp, asnumpy):
    dy = np.array([2.0, 1.0, -4.0])
    y = np.array([0.5, 0.25, 1.0])
    dz = asnumpy(gpuconv.activation_backward(to_xp(dy), to_xp(y), "sigmoid", backend=backend))
    np.testing.assert_allclose(dz, [0.5, 0.1875, 0.0], rtol=1e-15, atol=0)


def test_activation_backward_tanh_values(backend, to_xp, asnumpy):
    dy = np.array([2.0, 1.0, -4.0, 3.0])
    y = np.array([0.5, -0.25, 1.0, 0.0])
    dz = asnumpy(gpuconv.activation_backward(to_xp(dy), to_xp(y), "tanh", backend=backend))
    np.testing.assert_allclose(dz, [1.5, 0.9375, 0.0, 3.0], rtol=1e-15, atol=0)


# ------------------------------------------------------------------------------------------ the separate ops
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c", OPTION_CASES, ids=OPTION_IDS)
def test_backward_input_vs_reference(backend, to_xp, check, rand, c, dtype):
    x, w, _, dz = case_arrays(rand, c, dtype)
    dx = gpuconv.conv2d_backward_input(to_xp(dz), to_xp(w), x.shape, backend=backend, **geometry(c))
    check(dx, ref.backward_input(dz, w, x.shape, **geometry(c)), dtype, reduction=reduction_lengths(c)["dx"])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c", OPTION_CASES, ids=OPTION_IDS)
def test_backward_weight_vs_reference(backend, to_xp, check, rand, c, dtype):
    x, w, _, dz = case_arrays(rand, c, dtype)
    dw = gpuconv.conv2d_backward_weight(to_xp(dz), to_xp(x), w.shape, backend=backend, **geometry(c))
    check(dw, ref.backward_weight(dz, x, w.shape, **geometry(c)), dtype, reduction=reduction_lengths(c)["dw"])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (3, 5, 2), (1, 1, 1, 3), (17,)])
def test_backward_bias_vs_reference(backend, to_xp, check, rand, dtype, shape):
    dz = rand(shape, dtype)
    db = gpuconv.conv2d_backward_bias(to_xp(dz), backend=backend)
    check(db, ref.backward_bias(dz), dtype, reduction=int(np.prod(shape[:-1])))


def test_backward_bias_two_dimensional_dz(backend, to_xp, check, rand):
    """'sum over every axis but the last', whatever the rank."""
    dz = rand((4, 6))
    check(gpuconv.conv2d_backward_bias(to_xp(dz), backend=backend), dz.sum(axis=0), np.float64, reduction=4)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c", OPTION_CASES, ids=OPTION_IDS)
def test_conv2d_backward_vs_reference(backend, to_xp, check, rand, c, dtype):
    x, w, b, dy = case_arrays(rand, c, dtype)
    act = c["activation"]
    y = ref.conv2d(x, w, b, activation=act, **c["options"]).astype(dtype)
    y_arg = to_xp(y) if act in OUTPUT_ACTIVATIONS else None
    grads = gpuconv.conv2d_backward(
        to_xp(dy),
        to_xp(x),
        to_xp(w),
        y_arg,
        has_bias=c["bias"],
        activation=act,
        backend=backend,
        **geometry(c),
    )
    assert isinstance(grads, gpuconv.Conv2DGrads) and isinstance(grads, tuple)
    assert grads._fields == ("dx", "dw", "db")
    dz = ref.activation_backward(dy, y, act)
    red = reduction_lengths(c)
    check(grads.dx, ref.backward_input(dz, w, x.shape, **geometry(c)), dtype, reduction=red["dx"])
    check(grads.dw, ref.backward_weight(dz, x, w.shape, **geometry(c)), dtype, reduction=red["dw"])
    if c["bias"]:
        check(grads.db, ref.backward_bias(dz.reshape(-1, b.shape[0])), dtype, reduction=red["db"])
    else:
        assert grads.db is None
    dx, dw, db = grads  # unpacks as a plain tuple too
    assert dx is grads.dx and dw is grads.dw and db is grads.db


def test_conv2d_backward_identity_accepts_y(backend, to_xp, check, rand):
    """y is optional for identity; passing it changes nothing."""
    x, w, b, dy = rand((2, 5, 5, 2)), rand((2, 2, 2, 3)), rand((3,)), rand((2, 4, 4, 3))
    y = ref.conv2d(x, w, b)
    g1 = gpuconv.conv2d_backward(to_xp(dy), to_xp(x), to_xp(w), backend=backend)
    g2 = gpuconv.conv2d_backward(
        to_xp(dy), to_xp(x), to_xp(w), to_xp(y), activation="identity", backend=backend
    )
    for a, e in zip(g1, g2):
        check(a, to_numpy_f64(e), np.float64, reduction=32)


def to_numpy_f64(a):
    return to_numpy(a).astype(np.float64)


def test_conv2d_backward_2d_x_bias(backend, to_xp, check, rand):
    """With a 2-D x there is one output channel: db has shape (1,) and is the sum of dz."""
    x, w, dy = rand((6, 5)), rand((2, 3)), rand((5, 3))
    g = gpuconv.conv2d_backward(to_xp(dy), to_xp(x), to_xp(w), backend=backend)
    check(g.dx, ref.backward_input(dy, w, x.shape), np.float64, reduction=6)
    check(g.dw, ref.backward_weight(dy, x, w.shape), np.float64, reduction=15)
    check(g.db, np.array([dy.sum()]), np.float64, reduction=15)


# ------------------------------------------------------------------------------------------ structure
def test_backward_input_zero_where_skipped_by_stride(backend, to_xp, asnumpy, rand):
    """Stride 3 with a 1x1 kernel reads rows/cols 0, 3, 6: every other dX pixel is exactly zero."""
    x_shape, w = (2, 8, 7, 3), rand((1, 1, 3, 2))
    dz = rand((2, 3, 3, 2))
    dx = asnumpy(gpuconv.conv2d_backward_input(to_xp(dz), to_xp(w), x_shape, stride=3, backend=backend))
    read = np.zeros((8, 7), bool)
    read[0:7:3, 0:7:3] = True
    assert np.all(dx[:, ~read, :] == 0)
    assert np.all(dx[:, read, :] != 0)


def test_backward_input_zero_outside_valid_window(backend, to_xp, asnumpy, rand):
    """A valid 2x2 conv with stride 2 over a 7x7 image never reads the last row and column."""
    w = rand((2, 2, 2, 2))
    dz = rand((1, 3, 3, 2))
    dx = asnumpy(gpuconv.conv2d_backward_input(to_xp(dz), to_xp(w), (1, 7, 7, 2), stride=2, backend=backend))
    assert np.all(dx[:, 6, :, :] == 0) and np.all(dx[:, :, 6, :] == 0)
    assert np.all(dx[:, :6, :6, :] != 0)


def test_backward_is_adjoint_of_forward(backend, to_xp, asnumpy, rand):
    """<conv(x, w), dz> == <x, dX(dz, w)> == <w, dW(dz, x)> (linear in x and in w)."""
    opts = {"stride": (2, 1), "padding": ((1, 0), (2, 1)), "dilation": (1, 2), "groups": 2}
    x, w = rand((2, 7, 8, 4)), rand((3, 2, 2, 6))
    y = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), backend=backend, **opts))
    dz = rand(y.shape)
    dx = asnumpy(gpuconv.conv2d_backward_input(to_xp(dz), to_xp(w), x.shape, backend=backend, **opts))
    dw = asnumpy(gpuconv.conv2d_backward_weight(to_xp(dz), to_xp(x), w.shape, backend=backend, **opts))
    lhs = np.vdot(y, dz)
    rtol = tolerance(np.float64)
    assert np.isclose(np.vdot(x, dx), lhs, rtol=rtol, atol=0)
    assert np.isclose(np.vdot(w, dw), lhs, rtol=rtol, atol=0)


@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_backward_empty_batch(backend, xp, to_xp, asnumpy, rand, activation):
    x, w = np.zeros((0, 5, 6, 2)), rand((3, 2, 2, 4))
    dy = np.zeros((0, 3, 5, 4))
    y = np.zeros((0, 3, 5, 4)) if activation else None
    g = gpuconv.conv2d_backward(
        to_xp(dy), to_xp(x), to_xp(w), to_xp(y), activation=activation, backend=backend
    )
    assert tuple(g.dx.shape) == (0, 5, 6, 2)
    np.testing.assert_array_equal(asnumpy(g.dw), np.zeros((3, 2, 2, 4)))
    np.testing.assert_array_equal(asnumpy(g.db), np.zeros(4))
    for a in g:
        assert isinstance(a, xp.ndarray) and a.dtype == np.float64
    dx = gpuconv.conv2d_backward_input(to_xp(dy), to_xp(w), x.shape, backend=backend)
    assert tuple(dx.shape) == (0, 5, 6, 2)
    dw = gpuconv.conv2d_backward_weight(to_xp(dy), to_xp(x), w.shape, backend=backend)
    np.testing.assert_array_equal(asnumpy(dw), np.zeros((3, 2, 2, 4)))
    db = gpuconv.conv2d_backward_bias(to_xp(dy), backend=backend)
    np.testing.assert_array_equal(asnumpy(db), np.zeros(4))


@pytest.mark.parametrize("which", ["dy", "x", "w", "y"])
def test_backward_non_contiguous_inputs(backend, to_xp, check, rand, which):
    opts = {"stride": 2, "padding": "same", "groups": 2, "activation": "sigmoid"}
    x, w, b = rand((2, 6, 7, 4)), rand((3, 2, 2, 6)), rand((6,))
    y = ref.conv2d(x, w, b, **opts)
    dy = rand(y.shape)
    base = {"dy": dy, "x": x, "w": w, "y": y}
    expected = gpuconv.conv2d_backward(
        *(to_xp(base[k]) for k in ("dy", "x", "w", "y")), backend=backend, **opts
    )
    a = base[which]
    views = [
        np.asfortranarray(a),
        np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1],
        np.repeat(a, 2, axis=-1)[..., ::2],
    ]
    for view in views:
        args = dict(base, **{which: view})
        got = gpuconv.conv2d_backward(
            *(to_xp(args[k]) for k in ("dy", "x", "w", "y")), backend=backend, **opts
        )
        for g, e in zip(got, expected):
            check(g, to_numpy_f64(e), np.float64, reduction=30)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_result_dtypes(backend, xp, to_xp, rand, dtype):
    x, w, dy = rand((1, 4, 4, 2), dtype), rand((2, 2, 2, 2), dtype), rand((1, 3, 3, 2), dtype)
    y = ref.conv2d(x, w, activation="relu").astype(dtype)
    outs = list(
        gpuconv.conv2d_backward(to_xp(dy), to_xp(x), to_xp(w), to_xp(y), activation="relu", backend=backend)
    )
    outs += [
        gpuconv.conv2d_backward_input(to_xp(dy), to_xp(w), x.shape, backend=backend),
        gpuconv.conv2d_backward_weight(to_xp(dy), to_xp(x), w.shape, backend=backend),
        gpuconv.conv2d_backward_bias(to_xp(dy), backend=backend),
        gpuconv.activation_backward(to_xp(dy), to_xp(y), "sigmoid", backend=backend),
    ]
    for a in outs:
        assert isinstance(a, xp.ndarray) and a.dtype == dtype


def test_float16_backward_accumulates_in_float32(backend, to_xp, asnumpy):
    """2048 + sixteen 1s is 2064 in float32 (representable in float16); a float16 running sum from 2048 stays
    at 2048. Each gradient sums such a sequence."""
    big_then_ones = np.ones(17, np.float16)
    big_then_ones[0] = 2048
    # db: dz over 17 output pixels, one channel
    dz = big_then_ones.reshape(1, 1, 17, 1)
    assert float(asnumpy(gpuconv.conv2d_backward_bias(to_xp(dz), backend=backend)).item()) == 2064.0
    # dW: 1x1 kernel, x = ones over 17 pixels, dz as above
    x = np.ones((1, 1, 17, 1), np.float16)
    dw = asnumpy(gpuconv.conv2d_backward_weight(to_xp(dz), to_xp(x), (1, 1, 1, 1), backend=backend))
    assert dw.dtype == np.float16 and float(dw.item()) == 2064.0
    # dX: 1x1 kernel with 17 output channels of weight 1, dz = (2048, 1, ..., 1) over those channels
    dz_m = big_then_ones.reshape(1, 1, 1, 17)
    dx = asnumpy(
        gpuconv.conv2d_backward_input(
            to_xp(dz_m), to_xp(np.ones((1, 1, 1, 17), np.float16)), (1, 1, 1, 1), backend=backend
        )
    )
    assert float(dx.item()) == 2064.0
    # all three through conv2d_backward
    g = gpuconv.conv2d_backward(
        to_xp(dz), to_xp(x), to_xp(np.ones((1, 1, 1, 1), np.float16)), backend=backend
    )
    assert float(asnumpy(g.db).item()) == 2064.0 and float(asnumpy(g.dw).item()) == 2064.0


def test_backward_does_not_modify_inputs(backend, to_xp, asnumpy, rand):
    x, w, b = rand((2, 6, 5, 4)), rand((3, 2, 2, 6)), rand((6,))
    opts = {"stride": (2, 1), "padding": "same", "groups": 2, "activation": "sigmoid"}
    y = ref.conv2d(x, w, b, **opts)
    dy = rand(y.shape)
    args = [to_xp(a) for a in (dy, x, w, y)]
    gpuconv.conv2d_backward(*args, backend=backend, **opts)
    dz = gpuconv.activation_backward(args[0], args[3], "sigmoid", backend=backend)
    dz_before = asnumpy(dz).copy()
    geo = {k: v for k, v in opts.items() if k != "activation"}
    gpuconv.conv2d_backward_input(dz, args[2], x.shape, backend=backend, **geo)
    gpuconv.conv2d_backward_weight(dz, args[1], w.shape, backend=backend, **geo)
    gpuconv.conv2d_backward_bias(dz, backend=backend)
    for got, want in zip(args, (dy, x, w, y)):
        np.testing.assert_array_equal(asnumpy(got), want)
    np.testing.assert_array_equal(asnumpy(dz), dz_before)


def test_read_only_and_broadcast_inputs(backend, to_xp, check, rand):
    """Zero-stride (np.broadcast_to, read-only) inputs give the same results as ordinary copies."""
    x1, w, b = rand((1, 6, 5, 2)), rand((2, 3, 2, 3)), rand((3,))
    x = np.broadcast_to(x1, (3, 6, 5, 2))
    dy = np.broadcast_to(rand((1, 5, 4, 3)), (3, 5, 4, 3))
    assert not x.flags.writeable and x.strides[0] == 0
    opts = {"padding": ((0, 0), (1, 0)), "activation": "sigmoid"}
    y = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend, **opts)
    check(y, ref.conv2d(np.array(x), w, b, **opts), np.float64, reduction=13)
    y_np = to_numpy(y)
    g = gpuconv.conv2d_backward(to_xp(dy), to_xp(x), to_xp(w), to_xp(y_np), backend=backend, **opts)
    dz = ref.activation_backward(np.array(dy), y_np, "sigmoid")
    check(g.dx, ref.backward_input(dz, w, x.shape, padding=opts["padding"]), np.float64, reduction=18)
    check(
        g.dw, ref.backward_weight(dz, np.array(x), w.shape, padding=opts["padding"]), np.float64, reduction=60
    )
    check(g.db, ref.backward_bias(dz), np.float64, reduction=60)
