"""conv2d_transpose, conv2d_transpose_backward and Conv2DTranspose: against torch.nn.functional.conv_transpose2d
(forward and autograd gradients, float64, random options), TensorFlow's documented output shapes, finite
differences, every kernel path of the emulator, and bad input.

Layouts: gpuconv x (N,H,W,Ci), w (KH,KW,Co/G,Ci); torch x (N,Ci,H,W), weight (Ci,Co/G,KH,KW).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import (ACTIVATIONS, DTYPE_IDS, DTYPES, OUTPUT_ACTIVATIONS, assert_close, fd_gradient, random_array,
                      sample_coordinates, to_numpy)
from hypothesis import given, note, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import _registry

torch = pytest.importorskip("torch", reason="the transposed convolution is checked against PyTorch")
F = torch.nn.functional


# ---------------------------------------------------------------------------------------------- the reference
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def expected_pads(padding, h, w, kh, kw, s, d):
    """(pt, pb, pl, pr, oh, ow) of a transposed convolution, written out from the specification (not from
    gpuconv): numeric / "valid" / "full" paddings crop the full output, "same" gives H * s with TensorFlow's
    split of the forward convolution's padding (the odd pixel at the bottom / right)."""
    if padding == "same":
        out = []
        for size, k, st_, dl in ((h, kh, s[0], d[0]), (w, kw, s[1], d[1])):
            total = max(dl * (k - 1) + 1 - st_, 0)
            out.append((total // 2, total - total // 2, size * st_))
        return out[0][0], out[0][1], out[1][0], out[1][1], out[0][2], out[1][2]
    if padding == "valid":
        p = ((0, 0), (0, 0))
    elif padding == "full":
        p = ((d[0] * (kh - 1),) * 2, (d[1] * (kw - 1),) * 2)
    elif isinstance(padding, int):
        p = ((padding, padding), (padding, padding))
    elif isinstance(padding[0], int):
        p = ((padding[0], padding[0]), (padding[1], padding[1]))
    else:
        p = padding
    return p[0][0], p[0][1], p[1][0], p[1][1], None, None


def torch_transpose(x, w, b, *, stride=1, padding="valid", output_padding=0, dilation=1, groups=1,
                    activation=None):
    """The reference on torch tensors in gpuconv's layout (x NHWC, w (KH,KW,Co/G,Ci)); differentiable.

    Symmetric numeric padding goes to conv_transpose2d as it is (its padding and output_padding); any other
    padding crops conv_transpose2d's unpadded output, extended with zero rows at the bottom / right where the
    output reaches past it (output_padding, "same")."""
    s, d, op = _pair(stride), _pair(dilation), _pair(output_padding)
    kh, kw = w.shape[:2]
    h, wd = x.shape[1:3]
    xt, wt = x.permute(0, 3, 1, 2).contiguous(), w.permute(3, 2, 0, 1).contiguous()
    pt, pb, pl, pr, oh, ow = expected_pads(padding, h, wd, kh, kw, s, d)
    if oh is None:
        oh = (h - 1) * s[0] - pt - pb + d[0] * (kh - 1) + op[0] + 1
        ow = (wd - 1) * s[1] - pl - pr + d[1] * (kw - 1) + op[1] + 1
    if padding != "same" and pt == pb and pl == pr:
        y = F.conv_transpose2d(xt, wt, b, stride=s, padding=(pt, pl), output_padding=op, groups=groups,
                               dilation=d)
    else:
        full = F.conv_transpose2d(xt, wt, None, stride=s, groups=groups, dilation=d)
        full = F.pad(full, (0, max(0, pl + ow - full.shape[3]), 0, max(0, pt + oh - full.shape[2])))
        y = full[:, :, pt : pt + oh, pl : pl + ow]
        if b is not None:
            y = y + b[None, :, None, None]
    assert tuple(y.shape[2:]) == (oh, ow)
    peer = _registry.activation(activation or "identity").torch  # the registry's torch function
    if peer is not None:
        y = getattr(torch, peer)(y)
    return y.permute(0, 2, 3, 1)


def torch_all(x, w, b, dy, **opts):
    """(y, dx, dw, db) of the reference in float64, the gradients by torch's autograd."""
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    y = torch_transpose(xt, wt, bt, **opts)
    y.backward(torch.tensor(dy))
    db = None if bt is None else bt.grad.numpy()
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), db


# ---------------------------------------------------------------------------------------------- problems
@st.composite
def transpose_problems(draw):
    """A random valid transposed convolution (every option; output_padding below max(stride, dilation))."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    groups, cig, cog = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, h, wd = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same", "full"]),
        st.integers(0, 3),
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3))),
    ))
    if padding == "same":
        op = 0
    else:
        op = (draw(st.integers(0, max(s[0], d[0]) - 1)), draw(st.integers(0, max(s[1], d[1]) - 1)))
        if op[0] == op[1] and draw(st.booleans()):
            op = op[0]
    pt, pb, pl, pr, _, _ = expected_pads(padding, h, wd, kh, kw, s, d)
    opp = _pair(op)
    if (h - 1) * s[0] - pt - pb + d[0] * (kh - 1) + opp[0] + 1 < 1 or \
            (wd - 1) * s[1] - pl - pr + d[1] * (kw - 1) + opp[1] + 1 < 1:
        padding = "valid"  # that draw's output would be empty: keep the rest of the draw
    opts = {"stride": s if s[0] != s[1] else s[0], "padding": padding, "output_padding": op,
            "dilation": d if d[0] != d[1] else d[0], "groups": groups}
    return {"x_shape": (n, h, wd, cig * groups), "w_shape": (kh, kw, cog, cig * groups), "opts": opts,
            "bias": draw(st.booleans()), "activation": draw(st.sampled_from([None, *ACTIVATIONS])),
            "seed": draw(st.integers(0, 2**32 - 1))}


def _arrays(p, dtype=np.float64):
    rng = np.random.default_rng(p["seed"])
    x, w = random_array(rng, p["x_shape"], dtype), random_array(rng, p["w_shape"], dtype)
    b = random_array(rng, (p["w_shape"][2] * p["opts"]["groups"],), dtype) if p["bias"] else None
    return rng, x, w, b


def _reduction(w_shape):
    return w_shape[0] * w_shape[1] * w_shape[3] + 1


# ---------------------------------------------------------------------------------------------- vs PyTorch
def test_transpose_vs_torch_property(backend, to_xp, n_examples):
    """Forward and all gradients against conv_transpose2d + autograd, float64, random options."""

    @settings(max_examples=n_examples(60, 25))
    @given(p=transpose_problems())
    def run(p):
        note(repr(p))
        rng, x, w, b = _arrays(p)
        act = p["activation"]
        y_ref = torch_transpose(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b),
                                activation=act, **p["opts"]).numpy()
        dy = random_array(rng, y_ref.shape)
        y_ref, dx_ref, dw_ref, db_ref = torch_all(x, w, b, dy, activation=act, **p["opts"])
        y = gpuconv.conv2d_transpose(to_xp(x), to_xp(w), to_xp(b), activation=act, backend=backend, **p["opts"])
        assert_close(y, y_ref, np.float64, reduction=_reduction(p["w_shape"]))
        g = gpuconv.conv2d_transpose_backward(to_xp(dy), to_xp(x), to_xp(w), y, has_bias=b is not None,
                                              activation=act, backend=backend, **p["opts"])
        n_out = int(np.prod(y_ref.shape[:-1]))
        assert_close(g.dx, dx_ref, np.float64, reduction=_reduction(p["w_shape"]))
        assert_close(g.dw, dw_ref, np.float64, reduction=n_out)
        if b is None:
            assert g.db is None
        else:
            assert_close(g.db, db_ref, np.float64, reduction=n_out)

    run()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "co_g, groups, stride, dilation, padding, output_padding",
    [
        (2, 1, 1, 1, "valid", 0),          # the direct dx kernel (few output channels per group), one phase
        (3, 2, 2, 1, 1, 1),                # direct, grouped, four stride phases
        (20, 1, 2, 2, ((2, 0), (1, 3)), (1, 0)),  # tiled, 128 x 32 tiles; asymmetric padding
        (36, 1, (3, 2), 1, "same", 0),     # tiled, 64 x 64 tiles; phases no tap reaches (stride > kernel)
        (4, 4, 1, 2, "full", 1),           # depthwise-like, output_padding from the dilation
    ],
)
def test_transpose_paths(backend, to_xp, rng, dtype, co_g, groups, stride, dilation, padding, output_padding):
    """Every dx kernel path with a fused bias and activation, each dtype, against torch in float64 from the
    same rounded inputs."""
    ci = 3 * groups
    x = random_array(rng, (2, 5, 4, ci), dtype)
    w = random_array(rng, (3, 2, co_g, ci), dtype)
    b = random_array(rng, (co_g * groups,), dtype)
    opts = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    for act in OUTPUT_ACTIVATIONS:
        y = gpuconv.conv2d_transpose(to_xp(x), to_xp(w), to_xp(b), activation=act, backend=backend, **opts)
        expected = torch_transpose(torch.tensor(x.astype(np.float64)), torch.tensor(w.astype(np.float64)),
                                   torch.tensor(b.astype(np.float64)), activation=act, **opts).numpy()
        assert_close(y, expected, dtype, reduction=_reduction(w.shape))
        dy = random_array(rng, expected.shape, dtype)
        g = gpuconv.conv2d_transpose_backward(to_xp(dy), to_xp(x), to_xp(w), y, activation=act, backend=backend,
                                              **opts)
        y64 = to_numpy(y).astype(np.float64)
        _, dx_ref, dw_ref, db_ref = torch_all(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                              dy.astype(np.float64), activation=act, **opts)
        if act == "relu":  # the reference's relu' is taken where gpuconv's rounded y is positive
            mask = y64 > 0
            _, dx_ref, dw_ref, db_ref = torch_all(x.astype(np.float64), w.astype(np.float64),
                                                  b.astype(np.float64), dy.astype(np.float64) * mask, **opts)
        elif act == "sigmoid":  # the derivative from the rounded output, as gpuconv takes it
            dz = dy.astype(np.float64) * y64 * (1 - y64)
            _, dx_ref, dw_ref, db_ref = torch_all(x.astype(np.float64), w.astype(np.float64),
                                                  b.astype(np.float64), dz.astype(dtype).astype(np.float64)
                                                  if dtype == np.float16 else dz, **opts)
        n_out = int(np.prod(expected.shape[:-1]))
        assert_close(g.dx, dx_ref, dtype, reduction=_reduction(w.shape))
        assert_close(g.dw, dw_ref, dtype, reduction=n_out)
        assert_close(g.db, db_ref, dtype, reduction=n_out)


def test_transpose_is_backward_input(backend, to_xp, asnumpy, rand):
    """Without bias and activation it is conv2d_backward_input with x_shape the output shape, bit for bit."""
    x, w = rand((2, 4, 5, 6)), rand((3, 3, 4, 6))
    y = asnumpy(gpuconv.conv2d_transpose(to_xp(x), to_xp(w), stride=2, padding=1, output_padding=1,
                                         backend=backend))
    assert y.shape == (2, 8, 10, 4)
    dx = asnumpy(gpuconv.conv2d_backward_input(to_xp(x), to_xp(w), y.shape, stride=2, padding=1,
                                               backend=backend))
    np.testing.assert_array_equal(y, dx)


def test_transpose_2d_and_3d(backend, to_xp, rand):
    """A 2-D x takes a 2-D w; a 3-D x is one image."""
    x2, w2 = rand((4, 5)), rand((2, 3))
    y2 = gpuconv.conv2d_transpose(to_xp(x2), to_xp(w2), stride=2, backend=backend)
    ref2 = torch_transpose(torch.tensor(x2[None, :, :, None]), torch.tensor(w2[:, :, None, None]), None, stride=2)
    assert_close(y2, ref2.numpy()[0, :, :, 0], np.float64)
    x3, w3 = rand((4, 5, 3)), rand((2, 2, 2, 3))
    y3 = gpuconv.conv2d_transpose(to_xp(x3), to_xp(w3), padding="same", backend=backend)
    ref3 = torch_transpose(torch.tensor(x3[None]), torch.tensor(w3), None, padding="same")
    assert_close(y3, ref3.numpy()[0], np.float64)


def test_transpose_finite_differences(backend, to_xp, rng):
    """The gradients of J = sum(y * r) against central differences of the forward, float64."""
    x, w, b = random_array(rng, (1, 3, 4, 2)), random_array(rng, (3, 2, 3, 2)), random_array(rng, (3,))
    opts = dict(stride=(2, 1), padding=((1, 0), (0, 1)), output_padding=(1, 0), dilation=(1, 2),
                activation="sigmoid", backend=backend)
    y = to_numpy(gpuconv.conv2d_transpose(to_xp(x), to_xp(w), to_xp(b), **opts))
    r = random_array(rng, y.shape)

    def loss():
        return float(np.sum(to_numpy(gpuconv.conv2d_transpose(to_xp(x), to_xp(w), to_xp(b), **opts)) * r))

    g = gpuconv.conv2d_transpose_backward(to_xp(r), to_xp(x), to_xp(w), to_xp(y), **opts)
    for arr, grad in ((x, g.dx), (w, g.dw), (b, g.db)):
        coords = sample_coordinates(rng, arr.shape, 12)
        fd = fd_gradient(loss, arr, coords)
        np.testing.assert_allclose(np.array([to_numpy(grad)[c] for c in coords]), fd, rtol=1e-6, atol=1e-8)


def test_transpose_layer(backend, to_xp, rand):
    w, b = rand((3, 3, 4, 6)), rand((4,))
    layer = gpuconv.Conv2DTranspose(to_xp(w), to_xp(b), stride=2, padding="same", activation="relu",
                                    backend=backend)
    x = rand((2, 5, 4, 6))
    y = layer(to_xp(x))
    assert_close(y, torch_transpose(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=2, padding="same",
                                    activation="relu").numpy(), np.float64, reduction=_reduction(w.shape))
    dy = rand(y.shape)
    dx = layer.backward(to_xp(dy))
    g = gpuconv.conv2d_transpose_backward(to_xp(dy), to_xp(x), to_xp(w), y, stride=2, padding="same",
                                          activation="relu", backend=backend)
    np.testing.assert_array_equal(to_numpy(dx), to_numpy(g.dx))
    np.testing.assert_array_equal(to_numpy(layer.dw), to_numpy(g.dw))
    np.testing.assert_array_equal(to_numpy(layer.db), to_numpy(g.db))
    assert "Conv2DTranspose(w=(3, 3, 4, 6)" in repr(layer)


# ------------------------------------------------------------------------------------ TensorFlow's shapes
# tf.keras.layers.Conv2DTranspose documents its output shape: with output_padding given,
#   new_rows = (rows - 1) * strides[0] + kernel_size[0] - 2 * padding[0] + output_padding[0]
# (padding[0] = 0 for "valid", kernel_size[0] // 2 for "same"; a dilated kernel counts
# kernel_size + (kernel_size - 1) * (dilation - 1)); without output_padding, "same" gives rows * strides[0].
# tf.nn.conv2d_transpose takes output_shape from the caller and accepts exactly those sizes.
TF_SHAPES = [
    # (rows, cols), kernel, strides, padding, output_padding, dilation -> (new_rows, new_cols)
    ((4, 4), (3, 3), (2, 2), "valid", (1, 1), (1, 1), (10, 10)),   # (4-1)*2 + 3 - 0 + 1
    ((5, 7), (3, 3), (1, 1), "valid", (0, 0), (1, 1), (7, 9)),     # (5-1)*1 + 3
    ((5, 7), (3, 3), (2, 2), "same", None, (1, 1), (10, 14)),      # rows * strides
    ((5, 7), (1, 1), (3, 3), "same", None, (1, 1), (15, 21)),      # rows * strides, kernel below stride
    ((6, 6), (4, 4), (2, 2), "same", None, (1, 1), (12, 12)),      # even kernel
    ((3, 5), (5, 3), (2, 3), "valid", (1, 2), (1, 1), (10, 17)),   # (3-1)*2+5+1, (5-1)*3+3+2
    ((4, 4), (3, 3), (1, 1), "valid", (0, 0), (2, 2), (8, 8)),     # dilated kernel 5: (4-1)+5
    ((8, 8), (3, 3), (2, 2), "valid", (0, 0), (1, 1), (17, 17)),   # (8-1)*2 + 3
]


@pytest.mark.parametrize("hw, k, s, padding, op, d, expected", TF_SHAPES)
def test_tensorflow_documented_shapes(hw, k, s, padding, op, d, expected):
    x = np.ones((1, *hw, 2), np.float32)
    w = np.ones((*k, 3, 2), np.float32)
    y = gpuconv.conv2d_transpose(x, w, stride=s, padding=padding, output_padding=op or 0, dilation=d)
    assert y.shape == (1, *expected, 3)
    if padding == "same" and op is None:
        assert y.shape[1:3] == (hw[0] * s[0], hw[1] * s[1])
    else:  # Keras's formula, written out
        kd = [k[i] + (k[i] - 1) * (d[i] - 1) for i in range(2)]
        pad = [0, 0] if padding == "valid" else [kd[0] // 2, kd[1] // 2]
        assert y.shape[1:3] == tuple((hw[i] - 1) * s[i] + kd[i] - 2 * pad[i] + op[i] for i in range(2))


def test_output_size_formula():
    """(H - 1) * s - (pt + pb) + d * (K - 1) + output_padding + 1, for numeric padding."""
    x, w = np.ones((1, 9, 7, 1)), np.ones((4, 3, 1, 1))
    y = gpuconv.conv2d_transpose(x, w, stride=(3, 2), padding=((2, 1), (0, 3)), output_padding=(2, 0),
                                 dilation=(2, 1))
    assert y.shape[1:3] == ((9 - 1) * 3 - 3 + 2 * 3 + 2 + 1, (7 - 1) * 2 - 3 + 1 * 2 + 0 + 1)
    assert math.prod(y.shape) > 0


# ------------------------------------------------------------------------------------------ bad input
X, W = np.ones((1, 4, 4, 2)), np.ones((3, 3, 5, 2))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(output_padding=2, stride=2), ValueError, "'output_padding' must be smaller than the stride"),
        (dict(output_padding=(0, 1)), ValueError, "'output_padding' must be smaller"),
        (dict(output_padding=-1, stride=2), ValueError, "'output_padding' must be non-negative"),
        (dict(output_padding=1.0, stride=2), TypeError, "'output_padding' must be an int or a pair"),
        (dict(output_padding=1, stride=2, padding="same"), ValueError, "'output_padding' must be 0 with"),
        (dict(padding="bogus"), ValueError, "'padding' must be one of"),
        (dict(padding=-1), ValueError, "'padding' must be non-negative"),
        (dict(padding=5), ValueError, "too small"),
        (dict(stride=0), ValueError, "'stride' must be positive"),
        (dict(dilation=(1,)), TypeError, "'dilation' must be an int or a pair"),
        (dict(groups=0), ValueError, "'groups' must be positive"),
        (dict(groups=2.0), TypeError, "'groups' must be an int"),
        (dict(activation="swish"), ValueError, "'activation' must be None or one of"),
        (dict(backend="bogus"), ValueError, "backend"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        gpuconv.conv2d_transpose(X, W, **kwargs)
    assert "conv2d_transpose" in str(info.value)


def test_bad_arrays():
    with pytest.raises(ValueError, match=r"conv2d_transpose: argument 'x' has 2 channels but 'w' expects"):
        gpuconv.conv2d_transpose(X, np.ones((3, 3, 5, 3)))
    with pytest.raises(ValueError, match=r"conv2d_transpose: argument 'x' has 3 channels, not divisible"):
        gpuconv.conv2d_transpose(np.ones((1, 4, 4, 3)), np.ones((3, 3, 1, 3)), groups=2)
    with pytest.raises(ValueError, match=r"conv2d_transpose: argument 'b' must have shape \(5,\)"):
        gpuconv.conv2d_transpose(X, W, np.ones(2))
    with pytest.raises(ValueError, match=r"conv2d_transpose: argument 'b' must have shape \(10,\)"):
        gpuconv.conv2d_transpose(np.ones((1, 4, 4, 2)), np.ones((3, 3, 5, 2)), np.ones(5), groups=2)
    with pytest.raises(TypeError, match=r"conv2d_transpose: argument 'w' has dtype float32"):
        gpuconv.conv2d_transpose(X, W.astype(np.float32))
    with pytest.raises(ValueError, match=r"conv2d_transpose: argument 'w' must be 4-D"):
        gpuconv.conv2d_transpose(X, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"conv2d_transpose: argument 'w' must have a non-empty shape"):
        gpuconv.conv2d_transpose(X, np.ones((3, 0, 5, 2)))


def test_bad_backward_arguments():
    y = gpuconv.conv2d_transpose(X, W, activation="relu")
    fname = "conv2d_transpose_backward"
    with pytest.raises(ValueError, match=f"{fname}: argument 'y' .* required for activation 'relu'"):
        gpuconv.conv2d_transpose_backward(y, X, W, activation="relu")
    with pytest.raises(ValueError, match=rf"{fname}: argument 'dy' must have shape \(1, 6, 6, 5\)"):
        gpuconv.conv2d_transpose_backward(y[:, :5], X, W, y[:, :5], activation="relu")
    with pytest.raises(ValueError, match=rf"{fname}: argument 'y' must have shape"):
        gpuconv.conv2d_transpose_backward(y, X, W, y[:, :5], activation="relu")
    with pytest.raises(ValueError, match=rf"{fname}: argument 'output_padding' must be smaller"):
        gpuconv.conv2d_transpose_backward(y, X, W, output_padding=1)


def test_bad_layer_options():
    with pytest.raises(ValueError, match=r"Conv2DTranspose: argument 'output_padding' must be smaller"):
        gpuconv.Conv2DTranspose(W, output_padding=1)
    with pytest.raises(ValueError, match=r"Conv2DTranspose: argument 'b' must have shape \(5,\)"):
        gpuconv.Conv2DTranspose(W, np.ones(3))
    with pytest.raises(ValueError, match=r"Conv2DTranspose: argument 'w' must be 2-D .* or 4-D"):
        gpuconv.Conv2DTranspose(np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match=r"Conv2DTranspose: argument 'x' has 2 channels, not divisible"):
        gpuconv.Conv2DTranspose(W, groups=4)
    with pytest.raises(RuntimeError, match="Conv2DTranspose.backward: call forward"):
        gpuconv.Conv2DTranspose(W).backward(np.ones((1, 6, 6, 5)))
    # a large padding is fine at construction: it needs a larger input, known only at the first call
    layer = gpuconv.Conv2DTranspose(W, padding=((4, 3), (2, 5)), stride=3)
    assert layer(np.ones((1, 4, 4, 2))).shape == (1, 5, 5, 5)


# ------------------------------------------------------------------------------------------ precision
def test_transpose_precision(backend, to_xp, asnumpy, rand):
    """precision= reaches the products: tf32 is conv2d_backward_input's tf32 bit for bit, and a bad name is
    refused naming the function."""
    x, w = rand((1, 4, 5, 6), np.float32), rand((3, 3, 4, 6), np.float32)
    opts = dict(stride=2, padding=1, backend=backend)
    for prec in ("highest", "tf32"):
        y = asnumpy(gpuconv.conv2d_transpose(to_xp(x), to_xp(w), precision=prec, **opts))
        dx = asnumpy(gpuconv.conv2d_backward_input(to_xp(x), to_xp(w), y.shape, precision=prec, **opts))
        np.testing.assert_array_equal(y, dx)
    with pytest.raises(ValueError, match="conv2d_transpose: argument 'precision'"):
        gpuconv.conv2d_transpose(to_xp(x), to_xp(w), precision="fp8", **opts)
    with pytest.raises(ValueError, match="Conv2DTranspose: argument 'precision'"):
        gpuconv.Conv2DTranspose(w, precision="fp8")


def test_transpose_bfloat16_numpy(rand):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    x, w, b = rand((2, 4, 5, 6)).astype(bf16), rand((3, 3, 4, 6)).astype(bf16), rand((4,)).astype(bf16)
    y = gpuconv.conv2d_transpose(x, w, b, stride=2, activation="relu", backend="numpy")
    assert y.dtype == bf16
    ref = torch_transpose(torch.tensor(x.astype(np.float64)), torch.tensor(w.astype(np.float64)),
                          torch.tensor(b.astype(np.float64)), stride=2, activation="relu").numpy()
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())
    g = gpuconv.conv2d_transpose_backward(y, x, w, y, stride=2, activation="relu", backend="numpy")
    assert g.dx.dtype == g.dw.dtype == g.db.dtype == bf16


# ------------------------------------------------------------------------------------------ layouts, torch
def test_transpose_torch_layouts(rand):
    """data_format="NCHW" and filter_format="OIHW" (the forward convolution's, i.e. ConvTranspose2d's weight)
    take torch tensors straight: torch in, torch out, equal to conv_transpose2d and its autograd."""
    x = torch.tensor(rand((2, 6, 5, 4)))
    w, b = torch.tensor(rand((6, 2, 3, 3))), torch.tensor(rand((4,)))
    opts = dict(stride=2, padding=1, output_padding=1, groups=2)
    y = gpuconv.conv2d_transpose(x, w, b, data_format="NCHW", filter_format="OIHW", **opts)
    xx, ww, bb = (t.clone().requires_grad_() for t in (x, w, b))
    ref = F.conv_transpose2d(xx, ww, bb, **opts)
    assert isinstance(y, torch.Tensor) and y.shape == ref.shape
    assert_close(y.numpy(), ref.detach().numpy(), np.float64, reduction=3 * 3 * 2)
    dy = torch.tensor(rand(tuple(ref.shape)))
    ref.backward(dy)
    g = gpuconv.conv2d_transpose_backward(dy, x, w, data_format="NCHW", filter_format="OIHW", **opts)
    for got, want in zip(g, (xx.grad, ww.grad, bb.grad)):
        assert isinstance(got, torch.Tensor)
        assert_close(got.numpy(), want.numpy(), np.float64, reduction=int(np.prod(ref.shape)))
    layer = gpuconv.Conv2DTranspose(w, b, data_format="NCHW", filter_format="OIHW", **opts)
    np.testing.assert_array_equal(layer(x).numpy(), y.numpy())
    np.testing.assert_array_equal(layer.backward(dy).numpy(), g.dx.numpy())
    with pytest.raises(ValueError, match="Conv2DTranspose: argument 'data_format'"):
        gpuconv.Conv2DTranspose(w, data_format="NWHC")
