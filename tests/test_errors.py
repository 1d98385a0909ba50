"""Every bad input of the specification gets a ValueError or TypeError whose message names the function, the
argument and what it got; and nothing is computed (the backend's operations are never called)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import OUTPUT_ACTIVATIONS

import gpuconv
from gpuconv import _dispatch

F64, F32, F16 = np.float64, np.float32, np.float16
BACKEND_OPS = ("forward", "activation_backward", "backward_input", "backward_weight", "backward_bias")


@pytest.fixture
def no_compute(backend, monkeypatch):
    """Make every operation of the backend fail loudly: a bad input must be rejected before any computing."""
    be = _dispatch.load_backend(backend)

    def computed(*args, **kwargs):
        raise AssertionError("the backend was called although the input is invalid")

    for op in BACKEND_OPS:
        monkeypatch.setattr(be, op, computed)


def arr(shape, dtype=F64, seed=0):
    a = np.random.default_rng(seed).uniform(0.1, 1.0, shape)
    return a.astype(dtype)


def x4(c=2, dtype=F64):
    return arr((2, 6, 6, c), dtype)


def w4(c=2, m=3, dtype=F64, kh=3, kw=3):
    return arr((kh, kw, c, m), dtype, seed=1)


def check_message(exc, fname, argnames, got=()):
    msg = str(exc)
    assert fname in msg, f"message does not name the function {fname!r}: {msg}"
    argnames = (argnames,) if isinstance(argnames, str) else argnames
    assert any(re.search(rf"(?<![\w']){re.escape(a)}(?![\w'])|'{re.escape(a)}'", msg) for a in argnames), (
        f"message names none of {argnames}: {msg}"
    )
    for g in (got,) if isinstance(got, str) else got:
        assert g in msg, f"message does not say what it got ({g!r}): {msg}"


# Each case: id, exception type, function name, argument name(s), fragments of 'what it got', and a call
# taking (to_xp, backend). Arrays are fresh random values (never all zeros).
E = []


def err(id_, exc, fname, argnames, got, call):
    E.append(pytest.param(exc, fname, argnames, got, call, id=id_))


ERR = (ValueError, TypeError)  # the specification allows either where it does not say which

# --- conv2d: ranks
err("x-1d", ERR, "conv2d", "x", "(6,)", lambda t, be: gpuconv.conv2d(t(arr(6)), t(arr(2)), backend=be))
err(
    "x-5d",
    ERR,
    "conv2d",
    "x",
    "(1, 2, 6, 6, 2)",
    lambda t, be: gpuconv.conv2d(t(arr((1, 2, 6, 6, 2))), t(w4()), backend=be),
)
err(
    "w-3d-with-4d-x",
    ERR,
    "conv2d",
    "w",
    "(3, 3, 2)",
    lambda t, be: gpuconv.conv2d(t(x4()), t(arr((3, 3, 2))), backend=be),
)
err(
    "w-4d-with-2d-x",
    ERR,
    "conv2d",
    "w",
    "(3, 3, 1, 1)",
    lambda t, be: gpuconv.conv2d(t(arr((6, 6))), t(arr((3, 3, 1, 1))), backend=be),
)
err(
    "w-2d-with-3d-x",
    ERR,
    "conv2d",
    "w",
    "(3, 3)",
    lambda t, be: gpuconv.conv2d(t(arr((6, 6, 2))), t(arr((3, 3))), backend=be),
)
# --- channels and groups
err(
    "channels",
    ERR,
    "conv2d",
    ("x", "w"),
    "3",
    lambda t, be: gpuconv.conv2d(t(x4(c=3)), t(w4(c=2)), backend=be),
)
err(
    "channels-groups",
    ERR,
    "conv2d",
    ("x", "w", "groups"),
    "6",
    lambda t, be: gpuconv.conv2d(t(x4(c=6)), t(w4(c=2, m=4)), groups=2, backend=be),
)
err(
    "m-not-divisible",
    ERR,
    "conv2d",
    ("w", "groups"),
    "3",
    lambda t, be: gpuconv.conv2d(t(x4(c=4)), t(w4(c=2, m=3)), groups=2, backend=be),
)
err(
    "groups-zero",
    ERR,
    "conv2d",
    "groups",
    "0",
    lambda t, be: gpuconv.conv2d(t(x4()), t(w4()), groups=0, backend=be),
)
# --- bias
err(
    "bias-short",
    ERR,
    "conv2d",
    "b",
    "(2,)",
    lambda t, be: gpuconv.conv2d(t(x4()), t(w4(m=3)), t(arr(2)), backend=be),
)
err(
    "bias-2d",
    ERR,
    "conv2d",
    "b",
    "(3, 1)",
    lambda t, be: gpuconv.conv2d(t(x4()), t(w4(m=3)), t(arr((3, 1))), backend=be),
)
# --- stride, dilation, padding
for v in (0, -1, (1, 0), (-2, 1)):
    err(
        f"stride-{v}",
        ERR,
        "conv2d",
        "stride",
        str(v),
        lambda t, be, v=v: gpuconv.conv2d(t(x4()), t(w4()), stride=v, backend=be),
    )
for v in (0, (2, 0), (-1, 1)):
    err(
        f"dilation-{v}",
        ERR,
        "conv2d",
        "dilation",
        str(v),
        lambda t, be, v=v: gpuconv.conv2d(t(x4()), t(w4()), dilation=v, backend=be),
    )
for v in (-1, (0, -1), ((0, 0), (-1, 0)), ((-2, 1), (0, 0))):
    err(
        f"padding-{v}",
        ERR,
        "conv2d",
        "padding",
        str(v),
        lambda t, be, v=v: gpuconv.conv2d(t(x4()), t(w4()), padding=v, backend=be),
    )
for v in ("bogus", "samee", ""):
    err(
        f"padding-{v!r}",
        ERR,
        "conv2d",
        "padding",
        repr(v),
        lambda t, be, v=v: gpuconv.conv2d(t(x4()), t(w4()), padding=v, backend=be),
    )
for v in ("gelu", "softmax", "", 1):
    err(
        f"activation-{v!r}",
        ERR,
        "conv2d",
        "activation",
        repr(v),
        lambda t, be, v=v: gpuconv.conv2d(t(x4()), t(w4()), activation=v, backend=be),
    )
# --- output below 1
err(
    "output-below-1",
    ValueError,
    "conv2d",
    ("x", "w", "padding", "output"),
    "2",
    lambda t, be: gpuconv.conv2d(t(arr((1, 2, 2, 1))), t(arr((3, 3, 1, 1))), backend=be),
)
err(
    "output-below-1-dilation",
    ValueError,
    "conv2d",
    ("x", "w", "dilation", "output"),
    "",
    lambda t, be: gpuconv.conv2d(t(arr((1, 4, 9, 1))), t(arr((2, 2, 1, 1))), dilation=4, backend=be),
)
err(
    "output-below-1-2d",
    ValueError,
    "conv2d",
    ("x", "w", "padding", "output"),
    "",
    lambda t, be: gpuconv.conv2d(t(arr((3, 8))), t(arr((4, 2))), backend=be),
)
# --- dtypes
for dt in (np.int32, np.int64, np.uint8, np.bool_, np.complex128, np.complex64):
    name = np.dtype(dt).name
    err(
        f"x-{name}",
        TypeError,
        "conv2d",
        "x",
        name,
        lambda t, be, dt=dt: gpuconv.conv2d(t(arr((1, 5, 5, 2)).astype(dt)), t(w4()), backend=be),
    )
    err(
        f"w-{name}",
        TypeError,
        "conv2d",
        "w",
        name,
        lambda t, be, dt=dt: gpuconv.conv2d(t(x4()), t(w4().astype(dt)), backend=be),
    )
err(
    "b-int",
    TypeError,
    "conv2d",
    "b",
    "int",
    lambda t, be: gpuconv.conv2d(t(x4()), t(w4()), t(np.arange(1, 4)), backend=be),
)
for xd, wd in ((F32, F64), (F64, F32), (F16, F32)):
    err(
        f"x-{np.dtype(xd).name}-w-{np.dtype(wd).name}",
        TypeError,
        "conv2d",
        ("x", "w"),
        "astype",
        lambda t, be, xd=xd, wd=wd: gpuconv.conv2d(t(x4(dtype=xd)), t(w4(dtype=wd)), backend=be),
    )
err(
    "b-other-dtype",
    TypeError,
    "conv2d",
    "b",
    "astype",
    lambda t, be: gpuconv.conv2d(t(x4(dtype=F32)), t(w4(dtype=F32)), t(arr(3, F64)), backend=be),
)

# --- activation_backward
err(
    "act-bw-shape",
    ERR,
    "activation_backward",
    ("y", "dy"),
    "(4, 5)",
    lambda t, be: gpuconv.activation_backward(t(arr((4, 4))), t(arr((4, 5))), "relu", backend=be),
)
err(
    "act-bw-name",
    ERR,
    "activation_backward",
    "activation",
    "'gelu'",
    lambda t, be: gpuconv.activation_backward(t(arr(4)), t(arr(4)), "gelu", backend=be),
)
err(
    "act-bw-int",
    TypeError,
    "activation_backward",
    "dy",
    "int64",
    lambda t, be: gpuconv.activation_backward(t(np.arange(1, 5)), t(arr(4)), "relu", backend=be),
)
err(
    "act-bw-mixed",
    TypeError,
    "activation_backward",
    ("y", "dy"),
    "astype",
    lambda t, be: gpuconv.activation_backward(t(arr(4, F32)), t(arr(4, F64)), "sigmoid", backend=be),
)

for act in OUTPUT_ACTIVATIONS:
    err(
        f"act-bw-y-missing-{act}",
        ERR,
        "activation_backward",
        "y",
        "",
        lambda t, be, act=act: gpuconv.activation_backward(t(arr((3, 4))), None, act, backend=be),
    )

# --- conv2d_backward_input (x (2,6,6,2), w 3x3x2x3 valid -> dz (2,4,4,3))
err(
    "bw-input-dz-shape",
    ERR,
    "conv2d_backward_input",
    "dz",
    "(2, 5, 4, 3)",
    lambda t, be: gpuconv.conv2d_backward_input(t(arr((2, 5, 4, 3))), t(w4()), (2, 6, 6, 2), backend=be),
)
err(
    "bw-input-dz-channels",
    ERR,
    "conv2d_backward_input",
    "dz",
    "(2, 4, 4, 2)",
    lambda t, be: gpuconv.conv2d_backward_input(t(arr((2, 4, 4, 2))), t(w4()), (2, 6, 6, 2), backend=be),
)
err(
    "bw-input-x-channels",
    ERR,
    "conv2d_backward_input",
    ("x", "x_shape", "w"),
    "3",
    lambda t, be: gpuconv.conv2d_backward_input(t(arr((2, 4, 4, 3))), t(w4()), (2, 6, 6, 3), backend=be),
)
err(
    "bw-input-stride",
    ERR,
    "conv2d_backward_input",
    "stride",
    "0",
    lambda t, be: gpuconv.conv2d_backward_input(
        t(arr((2, 4, 4, 3))), t(w4()), (2, 6, 6, 2), stride=0, backend=be
    ),
)
err(
    "bw-input-padding",
    ERR,
    "conv2d_backward_input",
    "padding",
    "-1",
    lambda t, be: gpuconv.conv2d_backward_input(
        t(arr((2, 4, 4, 3))), t(w4()), (2, 6, 6, 2), padding=-1, backend=be
    ),
)
err(
    "bw-input-int",
    TypeError,
    "conv2d_backward_input",
    "dz",
    "int",
    lambda t, be: gpuconv.conv2d_backward_input(
        t(np.ones((2, 4, 4, 3), np.int32)), t(w4()), (2, 6, 6, 2), backend=be
    ),
)
err(
    "bw-input-mixed",
    TypeError,
    "conv2d_backward_input",
    ("dz", "w"),
    "astype",
    lambda t, be: gpuconv.conv2d_backward_input(t(arr((2, 4, 4, 3), F32)), t(w4()), (2, 6, 6, 2), backend=be),
)
# --- conv2d_backward_weight
err(
    "bw-weight-dz-shape",
    ERR,
    "conv2d_backward_weight",
    "dz",
    "(2, 4, 3, 3)",
    lambda t, be: gpuconv.conv2d_backward_weight(t(arr((2, 4, 3, 3))), t(x4()), (3, 3, 2, 3), backend=be),
)
err(
    "bw-weight-w-shape",
    ERR,
    "conv2d_backward_weight",
    ("x", "w", "w_shape"),
    "",
    lambda t, be: gpuconv.conv2d_backward_weight(t(arr((2, 4, 4, 3))), t(x4()), (3, 3, 5, 3), backend=be),
)
err(
    "bw-weight-groups",
    ERR,
    "conv2d_backward_weight",
    ("w", "w_shape", "groups"),
    "",
    lambda t, be: gpuconv.conv2d_backward_weight(
        t(arr((2, 4, 4, 3))), t(x4(c=4)), (3, 3, 2, 3), groups=2, backend=be
    ),
)
err(
    "bw-weight-complex",
    TypeError,
    "conv2d_backward_weight",
    ("dz", "x"),
    "complex",
    lambda t, be: gpuconv.conv2d_backward_weight(
        t(arr((2, 4, 4, 3))), t(x4().astype(np.complex128)), (3, 3, 2, 3), backend=be
    ),
)
err(
    "bw-weight-mixed",
    TypeError,
    "conv2d_backward_weight",
    ("dz", "x"),
    "astype",
    lambda t, be: gpuconv.conv2d_backward_weight(
        t(arr((2, 4, 4, 3), F16)), t(x4()), (3, 3, 2, 3), backend=be
    ),
)
# --- conv2d_backward_bias
err(
    "bw-bias-int",
    TypeError,
    "conv2d_backward_bias",
    "dz",
    "int",
    lambda t, be: gpuconv.conv2d_backward_bias(t(np.ones((2, 3), np.int64)), backend=be),
)
err(
    "bw-bias-bool",
    TypeError,
    "conv2d_backward_bias",
    "dz",
    "bool",
    lambda t, be: gpuconv.conv2d_backward_bias(t(np.ones((2, 3), bool)), backend=be),
)
# --- conv2d_backward
err(
    "bw-dy-shape",
    ERR,
    "conv2d_backward",
    "dy",
    "(2, 4, 4, 2)",
    lambda t, be: gpuconv.conv2d_backward(t(arr((2, 4, 4, 2))), t(x4()), t(w4()), backend=be),
)
err(
    "bw-dy-shape-stride",
    ERR,
    "conv2d_backward",
    "dy",
    "(2, 4, 4, 3)",
    lambda t, be: gpuconv.conv2d_backward(t(arr((2, 4, 4, 3))), t(x4()), t(w4()), stride=2, backend=be),
)
err(
    "bw-y-shape",
    ERR,
    "conv2d_backward",
    "y",
    "(2, 4, 3, 3)",
    lambda t, be: gpuconv.conv2d_backward(
        t(arr((2, 4, 4, 3))), t(x4()), t(w4()), t(arr((2, 4, 3, 3))), activation="relu", backend=be
    ),
)
for act in OUTPUT_ACTIVATIONS:
    err(
        f"bw-y-missing-{act}",
        ERR,
        "conv2d_backward",
        "y",
        "",
        lambda t, be, act=act: gpuconv.conv2d_backward(
            t(arr((2, 4, 4, 3))), t(x4()), t(w4()), activation=act, backend=be
        ),
    )
err(
    "bw-activation",
    ERR,
    "conv2d_backward",
    "activation",
    "'gelu'",
    lambda t, be: gpuconv.conv2d_backward(
        t(arr((2, 4, 4, 3))), t(x4()), t(w4()), t(arr((2, 4, 4, 3))), activation="gelu", backend=be
    ),
)
err(
    "bw-mixed",
    TypeError,
    "conv2d_backward",
    ("dy", "x", "w"),
    "astype",
    lambda t, be: gpuconv.conv2d_backward(t(arr((2, 4, 4, 3), F32)), t(x4()), t(w4()), backend=be),
)
err(
    "bw-int-x",
    TypeError,
    "conv2d_backward",
    ("dy", "x"),
    "int",
    lambda t, be: gpuconv.conv2d_backward(
        t(arr((2, 4, 4, 3))), t(np.ones((2, 6, 6, 2), np.int32)), t(w4()), backend=be
    ),
)
err(
    "bw-channels",
    ERR,
    "conv2d_backward",
    ("x", "w"),
    "",
    lambda t, be: gpuconv.conv2d_backward(t(arr((2, 4, 4, 3))), t(x4(c=3)), t(w4()), backend=be),
)
err(
    "bw-dilation",
    ERR,
    "conv2d_backward",
    "dilation",
    "0",
    lambda t, be: gpuconv.conv2d_backward(t(arr((2, 4, 4, 3))), t(x4()), t(w4()), dilation=0, backend=be),
)


@pytest.mark.parametrize("exc,fname,argnames,got,call", E)
def test_bad_input(backend, to_xp, no_compute, exc, fname, argnames, got, call):
    with pytest.raises(exc) as info:
        call(to_xp, backend)
    check_message(info.value, fname, argnames, got)


# ------------------------------------------------------------------------------------------ conv2d_info
INFO_ERRORS = [
    pytest.param({"x_shape": (6,), "w_shape": (3,)}, ("x", "x_shape"), id="x-1d"),
    pytest.param(
        {"x_shape": (1, 6, 6, 3), "w_shape": (3, 3, 2, 4)}, ("x", "w", "x_shape", "w_shape"), id="channels"
    ),
    pytest.param(
        {"x_shape": (6, 6, 4), "w_shape": (3, 3, 2, 3), "groups": 2}, ("w", "w_shape", "groups"), id="m-groups"
    ),
    pytest.param({"x_shape": (6, 6, 2), "w_shape": (3, 3, 2, 3), "stride": 0}, "stride", id="stride"),
    pytest.param({"x_shape": (6, 6, 2), "w_shape": (3, 3, 2, 3), "dilation": -1}, "dilation", id="dilation"),
    pytest.param({"x_shape": (6, 6, 2), "w_shape": (3, 3, 2, 3), "padding": -2}, "padding", id="padding"),
    pytest.param(
        {"x_shape": (6, 6, 2), "w_shape": (3, 3, 2, 3), "padding": "middle"}, "padding", id="padding-str"
    ),
    pytest.param(
        {"x_shape": (2, 2, 2), "w_shape": (3, 3, 2, 3)},
        ("x", "w", "x_shape", "w_shape", "padding", "output"),
        id="output-below-1",
    ),
]


@pytest.mark.parametrize("kwargs,argnames", INFO_ERRORS)
def test_conv2d_info_bad_input(kwargs, argnames):
    with pytest.raises((ValueError, TypeError)) as info:
        gpuconv.conv2d_info(**kwargs)
    check_message(info.value, "conv2d_info", argnames)


# ------------------------------------------------------------------------------------------ the layer
def test_layer_rejects_bad_options(backend):
    w = w4()
    with pytest.raises((ValueError, TypeError)) as info:
        gpuconv.Conv2D(w, activation="gelu", backend=backend)
    assert "activation" in str(info.value)


def test_layer_bad_input_is_rejected(backend, to_xp, no_compute):
    layer = gpuconv.Conv2D(to_xp(w4(c=2)), to_xp(arr(3)), backend=backend)
    with pytest.raises((ValueError, TypeError)) as info:
        layer(to_xp(x4(c=3)))
    assert "'x'" in str(info.value) or "x" in str(info.value)


def test_nothing_computed_spy_works(backend, to_xp, no_compute):
    """The spy itself: a valid call does reach the backend (so the error tests above are meaningful)."""
    with pytest.raises(AssertionError, match="backend was called"):
        gpuconv.conv2d(to_xp(x4()), to_xp(w4()), backend=backend)


def test_activation_backward_identity_needs_no_y(backend, to_xp, asnumpy):
    """y is only needed by activations whose gradient reads it: with identity, dZ = dU whatever y is (None included)."""
    dy = arr((3, 4))
    np.testing.assert_array_equal(
        asnumpy(gpuconv.activation_backward(to_xp(dy), None, "identity", backend=backend)), dy
    )
    np.testing.assert_array_equal(
        asnumpy(gpuconv.activation_backward(to_xp(dy), None, None, backend=backend)), dy
    )


@pytest.mark.parametrize("valid,invalid", [
    ({"stride": 1}, {"stride": True}),
    ({"stride": 1}, {"stride": 1.0}),
    ({"dilation": (1, 1)}, {"dilation": (1, True)}),
    ({"padding": [1, 1]}, {"padding": [1.0, 1]}),
    ({"groups": 1}, {"groups": True}),
], ids=["stride-bool", "stride-float", "dilation-bool", "padding-float", "groups-bool"])
def test_cached_options_do_not_admit_equal_bad_ones(valid, invalid):
    """The public API caches checked configs; 1, True and 1.0 compare equal but only 1 is valid, every time."""
    x, w = x4(), w4()
    for _ in range(2):
        gpuconv.conv2d(x, w, backend="numpy", **valid)
        with pytest.raises(TypeError) as info:
            gpuconv.conv2d(x, w, backend="numpy", **invalid)
        check_message(info.value, "conv2d", tuple(invalid))
