"""Issue 12: every argument answered clearly, NaN the same on every path, fork-safe, layout-independent.

One test (or one parametrized group) per numbered case of the issue; the case number is in the test's name.
x = ones((2,7,6,4)), w = ones((3,3,4,5)) as in the issue, with random values where a number is compared.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import cli

X_SHAPE, W_SHAPE = (2, 7, 6, 4), (3, 3, 4, 5)
DZ_SHAPE = (2, 5, 4, 5)


def _arrays(rand, dtype=np.float64):
    return rand(X_SHAPE, dtype), rand(W_SHAPE, dtype), rand(DZ_SHAPE, dtype)


def _raises_naming(exc, fname, argname, call):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    fnames = (fname,) if isinstance(fname, str) else fname
    assert msg.split(":")[0] in fnames and f"'{argname}'" in msg, msg
    return msg


# ----------------------------------------------------------------------------------- 1. shape arguments
BAD_SHAPES = [
    pytest.param("abc", TypeError, id="str"),
    pytest.param(None, TypeError, id="None"),
    pytest.param(5, TypeError, id="int"),
    pytest.param((2, 7.5, 6, 4), TypeError, id="float-item"),
    pytest.param(("2", 7, 6, 4), TypeError, id="str-item"),
    pytest.param((True, 7, 6, 4), TypeError, id="bool-item"),
    pytest.param((np.bool_(True), 7, 6, 4), TypeError, id="np-bool-item"),
    pytest.param((-2, 7, 6, 4), ValueError, id="negative"),
]


@pytest.mark.parametrize("value,exc", BAD_SHAPES)
def test_case1_x_shape_is_checked(backend, rand, value, exc):
    x, w, dz = _arrays(rand)
    _raises_naming(exc, "conv2d_backward_input", "x_shape",
                   lambda: gpuconv.conv2d_backward_input(dz, w, value, backend=backend))


@pytest.mark.parametrize("value,exc", BAD_SHAPES)
def test_case1_w_shape_is_checked(backend, rand, value, exc):
    x, w, dz = _arrays(rand)
    value = value if not isinstance(value, tuple) or value[0] != -2 else (-3, 3, 4, 5)
    _raises_naming(exc, "conv2d_backward_weight", "w_shape",
                   lambda: gpuconv.conv2d_backward_weight(dz, x, value, backend=backend))


@pytest.mark.parametrize("value,exc", BAD_SHAPES)
def test_case1_conv2d_info_shapes_are_checked(value, exc):
    _raises_naming(exc, "conv2d_info", "x_shape", lambda: gpuconv.conv2d_info(value, W_SHAPE))
    _raises_naming(exc, "conv2d_info", "w_shape", lambda: gpuconv.conv2d_info(X_SHAPE, value))


def test_case1_conv2d_info_negative_is_refused_not_counted():
    """The issue's case: multiplications = -3600 before; a ValueError naming x_shape now."""
    msg = _raises_naming(ValueError, "conv2d_info", "x_shape", lambda: gpuconv.conv2d_info((-1, 7, 6, 4), W_SHAPE))
    assert "(-1, 7, 6, 4)" in msg


def test_case1_numpy_ints_and_lists_are_shapes(rand):
    x, w, dz = _arrays(rand)
    ref = gpuconv.conv2d_backward_input(dz, w, X_SHAPE, backend="numpy")
    for shape in ([2, 7, 6, 4], tuple(np.int64(v) for v in X_SHAPE), tuple(np.int32(v) for v in X_SHAPE)):
        np.testing.assert_array_equal(gpuconv.conv2d_backward_input(dz, w, shape, backend="numpy"), ref)
    info = gpuconv.conv2d_info(tuple(np.int16(v) for v in X_SHAPE), [3, 3, 4, 5])
    assert info == gpuconv.conv2d_info(X_SHAPE, W_SHAPE)
    assert all(type(v) is int for v in info.input_shape + info.weight_shape + info.output_shape)


def test_case1_bias_flags_are_bools(rand):
    x, w, dz = _arrays(rand)
    _raises_naming(TypeError, "conv2d_info", "bias", lambda: gpuconv.conv2d_info(X_SHAPE, W_SHAPE, bias="no"))
    _raises_naming(TypeError, "conv2d_backward", "has_bias",
                   lambda: gpuconv.conv2d_backward(dz, x, w, has_bias=None, backend="numpy"))


# ----------------------------------------------------------------------------------- 2. huge values
HUGE = [
    pytest.param({"stride": 2**62}, "stride", id="stride-2**62"),
    pytest.param({"stride": (1, 2**31)}, "stride", id="stride-2**31"),
    pytest.param({"dilation": 2**40}, "dilation", id="dilation-2**40"),
    pytest.param({"dilation": 2**30}, "dilation", id="dilation-span"),
    pytest.param({"padding": 2**31}, "padding", id="padding-2**31"),
    pytest.param({"padding": 10**20}, "padding", id="padding-10**20"),
    pytest.param({"padding": ((0, 2**31 - 5), (0, 0))}, "padding", id="padded-size"),
    pytest.param({"padding": 2**30 - 10}, "padding", id="output-too-big"),
]


@pytest.mark.parametrize("opts,argname", HUGE)
def test_case2_huge_options_are_clear_value_errors(backend, rand, opts, argname):
    x, w, dz = _arrays(rand)
    for fname, call in (
        ("conv2d", lambda: gpuconv.conv2d(x, w, backend=backend, **opts)),
        ("conv2d_backward_input", lambda: gpuconv.conv2d_backward_input(dz, w, X_SHAPE, backend=backend, **opts)),
        ("conv2d_backward_weight", lambda: gpuconv.conv2d_backward_weight(dz, x, W_SHAPE, backend=backend, **opts)),
        ("conv2d_backward", lambda: gpuconv.conv2d_backward(dz, x, w, backend=backend, **opts)),
        ("conv2d_info", lambda: gpuconv.conv2d_info(X_SHAPE, W_SHAPE, **opts)),
        # refused when built where the options alone say so, else at the first call (the padded size)
        (("Conv2D", "conv2d"), lambda: gpuconv.Conv2D(w, backend=backend, **opts)(x)),
    ):
        msg = _raises_naming(ValueError, fname, argname, call)
        assert "2**31 - 1" in msg or "2**63 - 1" in msg, msg


@pytest.mark.parametrize("shape,argname", [
    ((2**40, 2**20, 2**20, 1), "x_shape"),
    ((2**62, 1, 1, 4), "x_shape"),
])
def test_case2_shape_products_beyond_memory(rand, shape, argname):
    w = rand((1, 1, 4, 5))
    msg = _raises_naming(ValueError, "conv2d_backward_input", argname,
                         lambda: gpuconv.conv2d_backward_input(rand((1, 1, 1, 5)), w, shape, backend="numpy"))
    assert "2**63 - 1" in msg
    _raises_naming(ValueError, "conv2d_info", argname, lambda: gpuconv.conv2d_info(shape, (1, 1, 4, 5)))


def test_case2_largest_stride_still_computes(backend, rand):
    """stride 2**31 - 1 is valid (the output is one pixel): the same numbers as any stride that gives 1 pixel."""
    x, w, _ = _arrays(rand)
    dz = rand((2, 1, 1, 5))
    big, small = {"stride": 2**31 - 1}, {"stride": 7}
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, backend=backend, **big),
                                  gpuconv.conv2d(x, w, backend=backend, **small))
    np.testing.assert_array_equal(gpuconv.conv2d_backward_input(dz, w, X_SHAPE, backend=backend, **big),
                                  gpuconv.conv2d_backward_input(dz, w, X_SHAPE, backend=backend, **small))
    np.testing.assert_array_equal(gpuconv.conv2d_backward_weight(dz, x, W_SHAPE, backend=backend, **big),
                                  gpuconv.conv2d_backward_weight(dz, x, W_SHAPE, backend=backend, **small))


def _cli(capsys, *argv):
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", [
    ("bench", "--shape", "1x8x8x3:4:3x3:p99999999999"),
    ("bench", "--shape", "1x8x8x3:4:3x3:s4611686018427387904"),
    ("bench", "--shape", "1x8x8x3:4:3x3:p999999"),  # fits the limits; numpy cannot allocate the output
    ("bench", "--shape", "nonsense"),
    ("bench", "--repeat", "0", "--shape", "tiny"),
    ("bench", "--dtype", "int8"),
    ("summary", "--input", "8x8x3", "--kernel", "3x3x3x4", "--padding", "99999999999"),
    ("summary", "--input", "8x8x3", "--kernel", "3x3x3x4", "--stride", "abc"),
    ("summary", "--input", "-8x8x3", "--kernel", "3x3x3x4"),
    ("summary", "--input", "8x8x3"),
    ("demo", "--backend", "tpu"),
    ("frobnicate",),
])
def test_case2_cli_bad_input_is_one_line_on_stderr(capsys, argv):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("gpuconv"), err


# ----------------------------------------------------------------------------------- 3. flags, lists, masks
@pytest.mark.parametrize("value,exc", [
    (True, TypeError), (np.bool_(False), TypeError), (1.5, TypeError), ("1024", TypeError), (None, TypeError),
    (0, ValueError), (-1, ValueError),
])
def test_case3_workspace_limit_refuses_non_sizes(restore_workspace_limit, value, exc):
    before = gpuconv.get_workspace_limit()
    _raises_naming(exc, "set_workspace_limit", "nbytes", lambda: gpuconv.set_workspace_limit(value))
    assert gpuconv.get_workspace_limit() == before
    gpuconv.set_workspace_limit(np.int64(2**20))
    assert gpuconv.get_workspace_limit() == 2**20


def test_case3_layer_takes_lists_like_conv2d(backend, rand):
    w = [[1.0, -1.0], [1.0, -1.0]]
    x = rand((5, 6))
    layer = gpuconv.Conv2D(w, backend=backend)
    y = layer(x)
    np.testing.assert_array_equal(y, gpuconv.conv2d(x, w, backend=backend))
    dy = rand(y.shape)
    np.testing.assert_array_equal(layer.backward(dy),
                                  gpuconv.conv2d_backward(dy, x, w, has_bias=False, backend=backend).dx)
    layer4 = gpuconv.Conv2D(rand((3, 3, 2, 4)).tolist(), rand(4).tolist(), groups=np.int64(2), backend=backend)
    assert layer4(rand((1, 5, 5, 4))).shape == (1, 3, 3, 4)


MASKED_CALLS = {
    "conv2d": lambda m, x, w, dz: gpuconv.conv2d(m(x), w, backend="numpy"),
    "conv2d_backward_input": lambda m, x, w, dz: gpuconv.conv2d_backward_input(m(dz), w, X_SHAPE, backend="numpy"),
    "conv2d_backward_weight": lambda m, x, w, dz: gpuconv.conv2d_backward_weight(dz, m(x), W_SHAPE, backend="numpy"),
    "conv2d_backward_bias": lambda m, x, w, dz: gpuconv.conv2d_backward_bias(m(dz), backend="numpy"),
    "conv2d_backward": lambda m, x, w, dz: gpuconv.conv2d_backward(dz, x, m(w), backend="numpy"),
    "activation_backward": lambda m, x, w, dz: gpuconv.activation_backward(m(dz), dz, "relu", backend="numpy"),
    "Conv2D": lambda m, x, w, dz: gpuconv.Conv2D(m(w)),
}


@pytest.mark.parametrize("fname", MASKED_CALLS)
def test_case3_masked_arrays_are_refused(rand, fname):
    x, w, dz = _arrays(rand)

    def masked(a):
        return np.ma.masked_array(a, mask=a > 0.5)

    with pytest.raises(TypeError, match=r"masked array.*fill") as info:
        MASKED_CALLS[fname](masked, x, w, dz)
    assert str(info.value).startswith(f"{fname}:")
    # a mask of nothing is still refused: whether a mask is empty is not the question
    with pytest.raises(TypeError, match="masked"):
        MASKED_CALLS[fname](lambda a: np.ma.masked_array(a), x, w, dz)


def test_case3_ragged_lists_name_the_argument():
    _raises_naming(TypeError, "conv2d", "x", lambda: gpuconv.conv2d([[1.0, 2.0], [3.0]], np.ones((1, 1))))
    _raises_naming(TypeError, "conv2d", "x", lambda: gpuconv.conv2d(None, np.ones((1, 1))))


# ----------------------------------------------------------------------------------- 4. environment variables
def test_case4_backend_variable_is_named_with_its_value(monkeypatch, rand):
    monkeypatch.setenv("GPUCONV_BACKEND", "garbage")
    x, w, dz = _arrays(rand)
    for fname, call in (("conv2d", lambda: gpuconv.conv2d(x, w)),
                        ("conv2d_backward_bias", lambda: gpuconv.conv2d_backward_bias(dz))):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"{fname}:") and "GPUCONV_BACKEND='garbage'" in msg and "numpy" in msg, msg
    monkeypatch.setenv("GPUCONV_BACKEND", " NumPy ")  # case and spaces, as before
    assert type(gpuconv.conv2d(x, w)) is np.ndarray


def test_case4_backend_variable_in_the_cli(monkeypatch, capsys):
    monkeypatch.setenv("GPUCONV_BACKEND", "garbage")
    for argv in (("demo",), ("bench", "--shape", "tiny")):
        rc, out, err = _cli(capsys, *argv)
        assert rc == 2 and out == "" and "GPUCONV_BACKEND='garbage'" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("var,value", [
    ("GPUCONV_EMULATOR_WORKERS", "many"),
    ("GPUCONV_EMULATOR_WORKERS", "0"),
    ("GPUCONV_EMULATOR_TIMEOUT", "soon"),
    ("GPUCONV_EMULATOR_TIMEOUT", "nan"),
    ("GPUCONV_EMULATOR_SEED", "0x1f"),
    ("GPUCONV_EMULATOR_SCHEDULE", "sideways"),
])
def test_case4_emulator_variables_are_named_with_their_value(monkeypatch, rand, var, value):
    from gpuconv import _dispatch

    if _dispatch.backend_status("emulator") is not None:
        pytest.skip(_dispatch.backend_status("emulator"))
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as info:
        gpuconv.conv2d(rand((1, 4, 4, 1)), rand((2, 2, 1, 1)), backend="emulator")
    assert f"{var}={value!r}" in str(info.value), str(info.value)


# ----------------------------------------------------------------------------------- 9. memory layout
def _layouts(a):
    """The same values as ``a`` in other memory layouts: negative strides on each axis, Fortran order, a
    strided slice of a larger array."""
    out = {"f-order": np.asfortranarray(a)}
    for axis in range(a.ndim):
        flipped = np.flip(np.flip(a, axis).copy(), axis)  # a view with a negative stride on ``axis``
        out[f"negative-stride-{axis}"] = flipped
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    big[tuple(slice(None, None, 2) for _ in a.shape)] = a
    out["step-2"] = big[tuple(slice(None, None, 2) for _ in a.shape)]
    for name, v in out.items():
        assert np.array_equal(v, a) and (v.flags.c_contiguous is False or name == "f-order" and a.ndim < 2), name
    return out


LAYOUT_CALLS = {
    "conv2d": (("x", "w", "b"), lambda be, x, w, b, dz, y: gpuconv.conv2d(x, w, b, padding=1, backend=be)),
    "conv2d_backward_input": (("dz", "w"), lambda be, x, w, b, dz, y: gpuconv.conv2d_backward_input(
        dz, w, X_SHAPE, padding=1, backend=be)),
    "conv2d_backward_weight": (("dz", "x"), lambda be, x, w, b, dz, y: gpuconv.conv2d_backward_weight(
        dz, x, W_SHAPE, padding=1, backend=be)),
    "conv2d_backward_bias": (("dz",), lambda be, x, w, b, dz, y: gpuconv.conv2d_backward_bias(dz, backend=be)),
    "activation_backward": (("dz", "y"), lambda be, x, w, b, dz, y: gpuconv.activation_backward(
        dz, y, "sigmoid", backend=be)),
    "conv2d_backward": (("dz", "x", "w", "y"), lambda be, x, w, b, dz, y: gpuconv.conv2d_backward(
        dz, x, w, y, padding=1, activation="sigmoid", backend=be)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("fname", LAYOUT_CALLS)
def test_case9_results_do_not_depend_on_memory_layout(backend, rand, fname, dtype):
    """Bit for bit: every input of every operation in every layout gives the contiguous input's result."""
    names, call = LAYOUT_CALLS[fname]
    args = {"x": rand(X_SHAPE, dtype), "w": rand(W_SHAPE, dtype), "b": rand((5,), dtype),
            "dz": rand((2, 7, 6, 5), dtype), "y": rand((2, 7, 6, 5), dtype, 0.05, 0.95)}
    want = call(backend, **args)
    layouts = [(n, k, v) for n in names for k, v in _layouts(args[n]).items()]
    if backend == "emulator":  # time: one layout of each kind per argument
        layouts = [t for t in layouts if t[1] in ("f-order", "negative-stride-0", "negative-stride-3", "step-2")]
    for name, kind, value in layouts:
        got = call(backend, **{**args, name: value})
        for g, e in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(g, e, err_msg=f"{name} {kind}")


def test_case9_the_issues_example():
    dz = np.random.default_rng(9).standard_normal((2, 5, 4, 64))
    view = dz[..., ::-1]
    assert view.strides[-1] < 0
    np.testing.assert_array_equal(gpuconv.conv2d_backward_bias(view, backend="numpy"),
                                  gpuconv.conv2d_backward_bias(np.ascontiguousarray(view), backend="numpy"))


@pytest.mark.parametrize("var,value,call", [
    ("GPUCONV_CUDA_INCLUDE", "/no/such/folder", lambda: __import__("gpuconv.cuda._headers").cuda._headers.cuda_include_dirs()),
    ("GPUCONV_NVDISASM", "/no/such/nvdisasm", lambda: __import__("gpuconv.cuda.sass").cuda.sass.nvdisasm_path()),
    ("GPUCONV_BENCH_LARGE", "yes", lambda: __import__("gpuconv._benchdata")._benchdata.large_reason(
        "numpy", __import__("gpuconv._benchdata")._benchdata.SHAPES["tiny"])),
])
def test_case4_path_and_flag_variables_are_checked(monkeypatch, var, value, call):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as info:
        call()
    assert f"environment variable {var}={value!r}" in str(info.value), str(info.value)
    monkeypatch.delenv(var)
    call()  # unset: no error
