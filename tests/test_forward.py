"""conv2d (the fused forward pass) against scipy.signal.correlate2d and against the float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from conftest import ACTIVATIONS, DTYPE_IDS, DTYPES
from reference import OPTION_CASES, OPTION_IDS, reduction_lengths
from scipy import signal

import gpuconv

WORKED_X = np.array(
    [[0, 0, 0, 0, 0], [0, 3, 3, 3, 0], [0, 3, 2, 3, 0], [0, 3, 2, 3, 0], [0, 0, 0, 0, 0]], dtype=np.float64
)
WORKED_W = np.array([[1, -1], [1, -1]], dtype=np.float64)


def worked_example_z():
    """Z of the worked example, by the formula Z[i,j] = sum_{k1,k2} W[k1,k2] X[i+k1, j+k2] (valid)."""
    z = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            for k1 in range(2):
                for k2 in range(2):
                    z[i, j] += WORKED_W[k1, k2] * WORKED_X[i + k1, j + k2]
    return z


def dilate_kernel(w, d1, d2):
    kh, kw = w.shape
    out = np.zeros(((kh - 1) * d1 + 1, (kw - 1) * d2 + 1))
    out[::d1, ::d2] = w
    return out


# ------------------------------------------------------------------------------------------ scipy (2-D)
def test_reference_matches_scipy(rng):
    """The reference itself agrees with scipy on single-channel valid and full correlation."""
    x, w = rng.standard_normal((7, 6)), rng.standard_normal((3, 2))
    np.testing.assert_allclose(
        ref.conv2d(x, w), signal.correlate2d(x, w, mode="valid"), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        ref.conv2d(x, w, padding="full"), signal.correlate2d(x, w, mode="full"), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mode", ["valid", "full"])
@pytest.mark.parametrize("xs,ks", [((7, 9), (3, 3)), ((6, 5), (2, 4)), ((4, 4), (4, 4)), ((5, 8), (1, 1))])
def test_single_channel_vs_scipy(backend, xp, to_xp, check, rand, dtype, mode, xs, ks):
    x, w = rand(xs, dtype), rand(ks, dtype)
    y = gpuconv.conv2d(to_xp(x), to_xp(w), padding=mode, backend=backend)
    assert type(y) is type(to_xp(x))
    expected = signal.correlate2d(x.astype(np.float64), w.astype(np.float64), mode=mode)
    check(y, expected, dtype, reduction=w.size)


@pytest.mark.parametrize("ks", [(3, 3), (5, 3), (1, 5)])
def test_single_channel_same_vs_scipy(backend, to_xp, check, rand, ks):
    """For odd kernels and stride 1, 'same' pads (K-1)/2 each side, as scipy's mode='same' does."""
    x, w = rand((7, 8)), rand(ks)
    y = gpuconv.conv2d(to_xp(x), to_xp(w), padding="same", backend=backend)
    check(y, signal.correlate2d(x, w, mode="same"), np.float64, reduction=w.size)


@pytest.mark.parametrize("padding", [0, 2, (1, 3), ((2, 0), (1, 3))])
@pytest.mark.parametrize("stride", [1, 2, (3, 1)])
@pytest.mark.parametrize("dilation", [1, (2, 3)])
def test_single_channel_options_vs_scipy(backend, to_xp, check, rand, padding, stride, dilation):
    """Padding = np.pad with zeros, dilation = a kernel with zeros between taps, stride = subsampling."""
    x, w = rand((9, 10)), rand((2, 3))
    pt, pb, pl, pr = ref.resolve_padding(padding, 9, 10, 2, 3, stride, dilation)
    s1, s2 = ref.as_pair(stride)
    d1, d2 = ref.as_pair(dilation)
    full = signal.correlate2d(np.pad(x, ((pt, pb), (pl, pr))), dilate_kernel(w, d1, d2), mode="valid")
    expected = full[::s1, ::s2]
    y = gpuconv.conv2d(to_xp(x), to_xp(w), stride=stride, padding=padding, dilation=dilation, backend=backend)
    check(y, expected, np.float64, reduction=w.size)


# ------------------------------------------------------------------------------------------ worked example
def test_worked_example_exact(backend, to_xp, asnumpy):
    z = worked_example_z()
    # Spelled out as well, so that a wrong formula above cannot hide a wrong result.
    assert z.tolist() == [[-3, 0, 0, 3], [-6, 1, -1, 6], [-6, 2, -2, 6], [-3, 1, -1, 3]]
    for dtype in DTYPES:
        y = gpuconv.conv2d(to_xp(WORKED_X.astype(dtype)), to_xp(WORKED_W.astype(dtype)), backend=backend)
        y = asnumpy(y)
        assert y.dtype == dtype and y.shape == (4, 4)
        np.testing.assert_array_equal(y, z)  # small integers: exact in every dtype


# ------------------------------------------------------------------------------------------ every option
def make_inputs(rand, c, dtype):
    x = rand(c["x_shape"], dtype)
    w = rand(c["w_shape"], dtype)
    m = c["w_shape"][3] if len(c["w_shape"]) == 4 else 1
    b = rand((m,), dtype) if c["bias"] else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c", OPTION_CASES, ids=OPTION_IDS)
def test_forward_vs_reference(backend, to_xp, check, rand, c, dtype):
    x, w, b = make_inputs(rand, c, dtype)
    y = gpuconv.conv2d(
        to_xp(x), to_xp(w), to_xp(b), activation=c["activation"], backend=backend, **c["options"]
    )
    expected = ref.conv2d(x, w, b, activation=c["activation"], **c["options"])
    check(y, expected, dtype, reduction=reduction_lengths(c)["forward"])


@pytest.mark.parametrize("c", OPTION_CASES, ids=OPTION_IDS)
def test_output_shape_matches_info(backend, to_xp, rand, c):
    x, w, b = make_inputs(rand, c, np.float32)
    y = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend, **c["options"])
    info = gpuconv.conv2d_info(x.shape, w.shape, bias=b is not None, **c["options"])
    assert (
        tuple(y.shape)
        == tuple(info.output_shape)
        == ref.y_shape(x.shape, w.shape, **{k: v for k, v in c["options"].items() if k != "groups"})
    )


@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_activation_names(backend, to_xp, check, rand, activation):
    x, w, b = rand((2, 5, 5, 3)), rand((2, 2, 3, 4)), rand((4,))
    y = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), activation=activation, backend=backend)
    check(y, ref.conv2d(x, w, b, activation=activation), np.float64, reduction=13)


def test_relu_zeroes_negatives(backend, to_xp, asnumpy, rand):
    x, w = rand((2, 5, 5, 3)), rand((2, 2, 3, 4))
    z = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), backend=backend))
    u = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), activation="relu", backend=backend))
    assert (z < 0).any() and (z > 0).any()
    np.testing.assert_array_equal(u, np.maximum(z, 0))


def test_sigmoid_range_and_midpoint(backend, to_xp, asnumpy, rand):
    x, w = rand((1, 5, 5, 2), low=-30, high=30), rand((2, 2, 2, 3))
    u = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), activation="sigmoid", backend=backend))
    assert np.all((u >= 0) & (u <= 1))
    # a zero pre-activation gives exactly 1/2
    u0 = asnumpy(
        gpuconv.conv2d(to_xp(np.zeros((1, 3, 3, 2))), to_xp(w), activation="sigmoid", backend=backend)
    )
    np.testing.assert_array_equal(u0, 0.5)


def test_tanh_values(backend, to_xp, asnumpy, rand):
    """tanh of the linear convolution (math.tanh element by element), odd, saturating to +-1 without NaN."""
    x, w = rand((1, 5, 5, 2)), rand((2, 2, 2, 3))
    x[0, 0, 0] = 200.0
    u = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), activation="tanh", backend=backend))
    z = ref.conv2d_linear(x, w)
    np.testing.assert_allclose(u, np.vectorize(math.tanh)(z), rtol=1e-14, atol=1e-15)
    assert np.all(np.abs(u) <= 1) and not np.isnan(u).any()
    neg = asnumpy(gpuconv.conv2d(to_xp(-x), to_xp(w), activation="tanh", backend=backend))
    np.testing.assert_array_equal(neg, -u)


# ------------------------------------------------------------------------------------------ dtypes, arrays
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_result_type_and_dtype_follow_x(backend, xp, to_xp, rand, dtype):
    x, w, b = rand((1, 4, 4, 2), dtype), rand((2, 2, 2, 3), dtype), rand((3,), dtype)
    y = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend)
    assert isinstance(y, xp.ndarray)
    assert y.dtype == dtype


def test_float16_accumulates_in_float32_rounds_once(backend, to_xp, asnumpy):
    """2048 + sixteen 1s: 2064 exactly in float32 (and representable in float16); a float16 running sum
    starting from 2048 would stay at 2048 (spacing 2 there, ties to even)."""
    x = np.ones((1, 1, 1, 17), np.float16)
    x[..., 0] = 2048
    w = np.ones((1, 1, 17, 1), np.float16)
    y = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), backend=backend))
    assert y.dtype == np.float16
    assert float(y.item()) == 2064.0
    # the same through spatial taps
    x2 = np.ones((1, 17), np.float16)
    x2[0, 0] = 2048
    y2 = asnumpy(gpuconv.conv2d(to_xp(x2), to_xp(np.ones((1, 17), np.float16)), backend=backend))
    assert float(y2.item()) == 2064.0


def test_float16_result_correctly_rounded(backend, to_xp, asnumpy, rand):
    """Computed in float32 and rounded once: within half a float16 ulp of the exact value (+ float32 noise)"""
    x, w = rand((2, 6, 6, 4), np.float16), rand((3, 3, 4, 5), np.float16)
    y = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), backend=backend)).astype(np.float64)
    exact = ref.conv2d(x, w)
    ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    noise = 1e-5 * np.max(np.abs(exact))
    assert np.all(np.abs(y - exact) <= ulp / 2 + noise)


def test_float_inputs_float64_is_not_downcast(backend, to_xp, asnumpy):
    """float64 keeps float64 precision (1 + 1e-12 survives)."""
    x = np.array([[1.0, 1e-12]])
    y = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(np.array([[1.0, 1.0]])), backend=backend))
    assert y.item() == 1.0 + 1e-12


# ------------------------------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("padding", ["valid", "same", "full", 1])
def test_empty_batch(backend, xp, to_xp, rand, padding):
    x, w, b = np.zeros((0, 5, 6, 2)), rand((3, 2, 2, 4)), rand((4,))
    y = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), padding=padding, activation="relu", backend=backend)
    assert tuple(y.shape) == (0, *ref.y_shape((1, 5, 6, 2), (3, 2, 2, 4), padding=padding)[1:])
    assert y.dtype == np.float64 and isinstance(y, xp.ndarray)


@pytest.mark.parametrize("path", ["direct", "tiled"])
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_nan_propagates(backend, to_xp, check, rand, activation, path):
    """A NaN input reaches every output whose window covers it, through every activation (relu too: NaN is
    not below 0), on the direct and the tiled (16+ channels per group) kernels."""
    c, m = (2, 3) if path == "direct" else (16, 16)
    x, w, b = rand((2, 6, 6, c)), rand((3, 3, c, m)), rand((m,))
    x[1, 2, 3, 1] = np.nan
    y = gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), padding=1, activation=activation, backend=backend)
    expected = ref.conv2d(x, w, b, padding=1, activation=activation)
    assert np.isnan(expected).sum() == 9 * m  # the 3x3 windows over that pixel, every output channel
    check(y, expected, np.float64, reduction=9 * c + 1)


@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_inf_propagates(backend, to_xp, check, rand, activation):
    x, w = rand((1, 5, 5, 2)), rand((2, 2, 2, 3))
    x[0, 2, 2, 0] = np.inf
    x[0, 0, 4, 1] = -np.inf
    y = gpuconv.conv2d(to_xp(x), to_xp(w), stride=1, activation=activation, backend=backend)
    expected = ref.conv2d(x, w, activation=activation)
    z = ref.conv2d_linear(x, w)
    assert np.isinf(z).sum() == 4 * 3 + 1 * 3 and not np.isnan(z).any()
    check(y, expected, np.float64, reduction=8)


def test_nan_in_bias_and_weights(backend, to_xp, asnumpy, rand):
    x, w, b = rand((1, 4, 4, 2)), rand((2, 2, 2, 3)), rand((3,))
    b[1] = np.nan
    y = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend))
    assert np.isnan(y[..., 1]).all() and np.isfinite(y[..., [0, 2]]).all()
    w2 = w.copy()
    w2[0, 0, 0, 2] = np.nan
    y2 = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w2), backend=backend))
    assert np.isnan(y2[..., 2]).all() and np.isfinite(y2[..., :2]).all()


def non_contiguous_variants(a):
    """Views of the same values as ``a`` laid out differently in memory."""
    yield "strided-slice", np.repeat(a, 2, axis=-1)[..., ::2]
    yield "transpose", np.ascontiguousarray(np.moveaxis(a, -1, 0)).transpose(*range(1, a.ndim), 0)
    yield "fortran", np.asfortranarray(a)
    flip = (slice(None, None, -1),) * a.ndim
    yield "negative-strides", np.ascontiguousarray(a[flip])[flip]
    big = np.zeros(tuple(s + 2 for s in a.shape))
    big[tuple(slice(1, s + 1) for s in a.shape)] = a
    yield "interior-view", big[tuple(slice(1, s + 1) for s in a.shape)]


@pytest.mark.parametrize("which", ["x", "w", "b"])
def test_non_contiguous_inputs(backend, to_xp, asnumpy, check, rand, which):
    x, w, b = rand((2, 6, 5, 4)), rand((3, 2, 2, 6)), rand((6,))
    opts = {"stride": (2, 1), "padding": "same", "groups": 2, "activation": "sigmoid"}
    expected = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend, **opts))
    base = {"x": x, "w": w, "b": b}
    for label, view in non_contiguous_variants(base[which]):
        np.testing.assert_array_equal(view, base[which])
        args = dict(base, **{which: view})
        if view.ndim > 1:
            assert not view.flags.c_contiguous, label
        y = gpuconv.conv2d(to_xp(args["x"]), to_xp(args["w"]), to_xp(args["b"]), backend=backend, **opts)
        check(y, expected, np.float64, reduction=13, err_msg=f"{which} {label}")


def test_inputs_not_modified(backend, to_xp, asnumpy, rand):
    x, w, b = rand((2, 5, 5, 2)), rand((3, 3, 2, 2)), rand((2,))
    xs, ws, bs = to_xp(x), to_xp(w), to_xp(b)
    gpuconv.conv2d(xs, ws, bs, padding="same", activation="relu", backend=backend)
    np.testing.assert_array_equal(asnumpy(xs), x)
    np.testing.assert_array_equal(asnumpy(ws), w)
    np.testing.assert_array_equal(asnumpy(bs), b)


@pytest.mark.parametrize("limit", [1, 64, 4096])
def test_workspace_limit_does_not_change_results(
    backend, to_xp, asnumpy, rand, restore_workspace_limit, limit
):
    x, w, b = rand((5, 8, 7, 4)), rand((3, 3, 2, 6)), rand((6,))
    opts = {"stride": 2, "padding": "same", "groups": 2, "activation": "sigmoid"}
    expected = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend, **opts))
    dy = rand(expected.shape)
    grads_expected = gpuconv.conv2d_backward(
        to_xp(dy), to_xp(x), to_xp(w), to_xp(expected), backend=backend, **opts
    )
    gpuconv.set_workspace_limit(limit)
    assert gpuconv.get_workspace_limit() == limit
    y = asnumpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend, **opts))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)
    grads = gpuconv.conv2d_backward(to_xp(dy), to_xp(x), to_xp(w), to_xp(expected), backend=backend, **opts)
    for got, want in zip(grads, grads_expected):
        np.testing.assert_allclose(asnumpy(got), asnumpy(want), rtol=1e-12, atol=1e-14)


def test_workspace_limit_default():
    """256 MiB unless changed (checked in a fresh interpreter: other tests change it)."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import gpuconv; print(gpuconv.get_workspace_limit())"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert int(out) == 256 * 2**20


@pytest.mark.parametrize("limit_mib", [1, 4])
def test_workspace_limit_caps_numpy_temporaries(restore_workspace_limit, limit_mib):
    """The NumPy backend's temporaries (im2col columns and the like) stay within about the limit: the peak of
    traced memory during a call is at most the result, two copies of the inputs, and twice the limit
    (+ 1 MiB slack). Here the full im2col matrix alone would be 33 MiB."""
    import tracemalloc

    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (64, 32, 32, 16)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 3, 16, 32)).astype(np.float32)
    limit = limit_mib * 2**20
    gpuconv.set_workspace_limit(limit)
    slack = 2**20

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y = gpuconv.conv2d(x, w, backend="numpy")
        peak_forward = tracemalloc.get_traced_memory()[1]
        dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
        tracemalloc.reset_peak()
        g = gpuconv.conv2d_backward(dy, x, w, backend="numpy")
        peak_backward = tracemalloc.get_traced_memory()[1] - dy.nbytes - y.nbytes
    finally:
        tracemalloc.stop()
    mib = 2**20
    bound_forward = y.nbytes + 2 * (x.nbytes + w.nbytes) + 2 * limit + slack
    assert peak_forward <= bound_forward, (
        f"forward peak {peak_forward / mib:.1f} MiB > {bound_forward / mib:.1f} MiB, limit {limit_mib} MiB"
    )
    bound_backward = g.dx.nbytes + g.dw.nbytes + 2 * (dy.nbytes + x.nbytes + w.nbytes) + 2 * limit + slack
    assert peak_backward <= bound_backward, (
        f"backward peak {peak_backward / mib:.1f} MiB > {bound_backward / mib:.1f} MiB, limit {limit_mib} MiB"
    )
