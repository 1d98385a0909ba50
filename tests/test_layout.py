"""Layouts (data_format, filter_format), padding modes and the grads option, against PyTorch in float64.

PyTorch is the reference here: F.conv2d on NCHW / OIHW tensors, its padding modes through F.pad (as
nn.Conv2d does), and its autograd for the gradients. Problems are drawn with hypothesis inside the test so
that the example count follows the backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, hypothesis_examples, random_array
from hypothesis import given, note, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import _dispatch, _registry

torch = pytest.importorskip("torch")
F = torch.nn.functional

MODES = ["zeros", "reflect", "replicate", "circular"]


def _torch_reference(x, w, b, dy, cfg, activation):
    """y and (dx, dw, db) from PyTorch (NCHW / OIHW, float64); cfg holds numeric paddings (top, bottom, left,
    right), stride, dilation, groups, mode."""
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    bt = None if b is None else torch.from_numpy(b).requires_grad_()
    pt, pb, pl, pr = cfg["pads"]
    mode = cfg["mode"]
    if mode == "zeros":
        xp = F.pad(xt, (pl, pr, pt, pb))
    else:
        xp = F.pad(xt, (pl, pr, pt, pb), mode=mode)
    z = F.conv2d(xp, wt, bt, stride=cfg["stride"], dilation=cfg["dilation"], groups=cfg["groups"])
    torch_name = _registry.ACTIVATIONS[activation or "identity"].torch
    y = z if torch_name is None else getattr(torch, torch_name)(z)
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), (xt.grad.numpy(), wt.grad.numpy(), None if bt is None else bt.grad.numpy())


@st.composite
def problems(draw):
    groups, cg, mg = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(3, 7)), draw(st.integers(3, 7))
    mode = draw(st.sampled_from(MODES))
    limit = 2 if mode == "reflect" else 3  # reflect needs padding below the size (3 at least)
    pads = tuple(draw(st.integers(0, limit)) for _ in range(4))
    return {
        "x": (draw(st.integers(1, 2)), cg * groups, h, w), "w": (mg * groups, cg, kh, kw), "groups": groups,
        "stride": (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        "dilation": (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        "pads": pads, "mode": mode, "bias": draw(st.booleans()),
        "activation": draw(st.sampled_from([None, *sorted(_registry.ACTIVATIONS)])),
        "data_format": draw(st.sampled_from(["NHWC", "NCHW"])),
        "filter_format": draw(st.sampled_from(["HWIO", "OIHW"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _to_data(a, fmt):  # NCHW reference arrays -> the layout under test
    return a if fmt == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _to_filter(a, fmt):
    return a if fmt == "OIHW" else np.ascontiguousarray(a.transpose(2, 3, 1, 0))


def test_layouts_and_padding_modes_against_torch(backend):
    @settings(max_examples=hypothesis_examples(backend, 40, 8))
    @given(problems())
    def run(p):
        note(p)
        rng = np.random.default_rng(p["seed"])
        x = random_array(rng, p["x"])
        w = random_array(rng, p["w"])
        b = random_array(rng, (p["w"][0],)) if p["bias"] else None
        (kh, kw), (d1, d2), (s1, s2) = p["w"][2:], p["dilation"], p["stride"]
        oh = (p["x"][2] + p["pads"][0] + p["pads"][1] - d1 * (kh - 1) - 1) // s1 + 1
        ow = (p["x"][3] + p["pads"][2] + p["pads"][3] - d2 * (kw - 1) - 1) // s2 + 1
        if oh < 1 or ow < 1:
            return
        dy = random_array(rng, (p["x"][0], p["w"][0], oh, ow))
        y_ref, grads_ref = _torch_reference(x, w, b, dy, p, p["activation"])
        df, ff = p["data_format"], p["filter_format"]
        opts = {"stride": p["stride"], "dilation": p["dilation"], "groups": p["groups"],
                "padding": ((p["pads"][0], p["pads"][1]), (p["pads"][2], p["pads"][3])),
                "padding_mode": p["mode"], "data_format": df, "backend": backend}
        xl, wl, dyl = _to_data(x, df), _to_filter(w, ff), _to_data(dy, df)
        y = gpuconv.conv2d(xl, wl, b, activation=p["activation"], filter_format=ff, **opts)
        assert_close(y, _to_data(y_ref, df), np.float64)
        g = gpuconv.conv2d_backward(dyl, xl, wl, y, has_bias=b is not None, activation=p["activation"],
                                    filter_format=ff, **opts)
        assert_close(g.dx, _to_data(grads_ref[0], df), np.float64, err_msg="dx")
        assert_close(g.dw, _to_filter(grads_ref[1], ff), np.float64, err_msg="dw")
        if b is not None:
            assert_close(g.db, grads_ref[2], np.float64, err_msg="db")
        if p["activation"] is None:  # the separate gradients, on dz = dy
            dx = gpuconv.conv2d_backward_input(dyl, wl, xl.shape, filter_format=ff, **opts)
            dw = gpuconv.conv2d_backward_weight(dyl, xl, wl.shape, filter_format=ff, **opts)
            assert_close(dx, _to_data(grads_ref[0], df), np.float64, err_msg="conv2d_backward_input")
            assert_close(dw, _to_filter(grads_ref[1], ff), np.float64, err_msg="conv2d_backward_weight")
            if b is not None:
                db = gpuconv.conv2d_backward_bias(dyl, data_format=df, backend=backend)
                assert_close(db, grads_ref[2], np.float64, err_msg="conv2d_backward_bias")

    run()


@pytest.mark.parametrize("mode", MODES)
def test_padding_mode_same_and_layer(backend, rand, mode):
    """padding="same" with a mode, through the layer (NCHW / OIHW), against nn.Conv2d."""
    m = torch.nn.Conv2d(4, 6, 3, padding="same", padding_mode=mode, dtype=torch.float64)
    x = rand((2, 4, 5, 6))
    layer = gpuconv.Conv2D(m.weight.detach().numpy(), m.bias.detach().numpy(), padding="same",
                           padding_mode=mode, data_format="NCHW", filter_format="OIHW", backend=backend)
    xt = torch.from_numpy(x).requires_grad_()
    yt = m(xt)
    dy = rand(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    assert_close(layer(x), yt.detach().numpy(), np.float64)
    assert_close(layer.backward(dy), xt.grad.numpy(), np.float64)
    assert_close(layer.dw, m.weight.grad.numpy(), np.float64)
    assert_close(layer.db, m.bias.grad.numpy(), np.float64)


def test_nchw_2d_and_3d_inputs(rand):
    x3, w = rand((3, 6, 5)), rand((4, 3, 2, 2))  # (C, H, W) and OIHW
    y = gpuconv.conv2d(x3, w, data_format="NCHW", filter_format="OIHW")
    want = gpuconv.conv2d(x3.transpose(1, 2, 0), w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(y, want.transpose(2, 0, 1))
    assert y.flags.c_contiguous
    x2, w2 = rand((6, 5)), rand((2, 3))  # 2-D: nothing to move
    np.testing.assert_array_equal(gpuconv.conv2d(x2, w2, data_format="NCHW", filter_format="OIHW"),
                                  gpuconv.conv2d(x2, w2))


def test_conv2d_info_in_layouts():
    info = gpuconv.conv2d_info((8, 3, 32, 30), (16, 3, 5, 5), stride=2, padding="same", data_format="NCHW",
                               filter_format="OIHW")
    assert info.input_shape == (8, 3, 32, 30) and info.weight_shape == (16, 3, 5, 5)
    assert info.output_shape == (8, 16, 16, 15) and info.in_channels == 3 and info.out_channels == 16
    layer = gpuconv.Conv2D(np.zeros((16, 3, 5, 5)), data_format="NCHW", filter_format="OIHW")
    assert layer.info((8, 3, 32, 30)).output_shape == (8, 16, 28, 26)


# --------------------------------------------------------------------------------------------- grads
class Counting:
    """A backend proxy that counts the calls of each operation."""

    def __init__(self, be):
        self._be, self.calls = be, []

    def __getattr__(self, name):
        attr = getattr(self._be, name)
        if callable(attr):
            def call(*args, **kwargs):
                self.calls.append(name)
                return attr(*args, **kwargs)
            return call
        return attr


def _counted(calls, name, method):
    def call(*args, **kwargs):
        calls.append(name)
        return method(*args, **kwargs)
    return call


@pytest.mark.parametrize("grads", [("dx",), ("dw",), ("db",), ("dw", "db"), ("dx", "dw"), ("dx", "dw", "db")])
def test_only_the_gradients_asked_for(backend, rand, monkeypatch, grads):
    x, w, b = rand((2, 5, 6, 3)), rand((3, 3, 3, 4)), rand((4,))
    y = gpuconv.conv2d(x, w, b, padding=1, activation="relu", backend=backend)
    dy = rand(y.shape)
    full = gpuconv.conv2d_backward(dy, x, w, y, padding=1, activation="relu", backend=backend)
    real = _dispatch.load_backend(backend)
    be = Counting(real)
    monkeypatch.setattr(_dispatch, "load_backend", lambda name: be)
    inner = []  # the gradient methods the backend's own backward calls
    for method in ("backward_input", "backward_input_fused", "backward_weight", "backward_weight_fused"):
        if hasattr(real, method):
            monkeypatch.setattr(real, method, _counted(inner, method.replace("_fused", ""), getattr(real, method)))
    g = gpuconv.conv2d_backward(dy, x, w, y, padding=1, activation="relu", backend=backend, grads=grads)
    for name, got, want in zip(("dx", "dw", "db"), g, full):
        if name in grads:
            np.testing.assert_array_equal(got, want)
        else:
            assert got is None
    # every subset goes through the backend's fused backward, which computes only the gradients asked for
    calls = be.calls if "backward" not in be.calls else inner
    assert ("backward_input" in calls) == ("dx" in grads) and ("backward_weight" in calls) == ("dw" in grads)
    assert "backward" in be.calls or not hasattr(real, "backward")
    layer = gpuconv.Conv2D(w, b, padding=1, activation="relu", backend=backend)
    layer(x)
    dx = layer.backward(dy, grads=grads)
    assert (dx is None) == ("dx" not in grads)
    assert (layer.dw is None) == ("dw" not in grads) and (layer.db is None) == ("db" not in grads)


# --------------------------------------------------------------------------------------------- bad input
X, W = np.ones((1, 5, 5, 2)), np.ones((3, 3, 2, 2))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: gpuconv.conv2d(X, W, data_format="NWHC"), ValueError, r"conv2d: argument 'data_format' must be one of"),
    (lambda: gpuconv.conv2d(X, W, data_format=None), TypeError, r"conv2d: argument 'data_format'"),
    (lambda: gpuconv.conv2d(X, W, filter_format="IOHW"), ValueError, r"conv2d: argument 'filter_format'"),
    (lambda: gpuconv.conv2d(X, W, padding_mode="mirror"), ValueError, r"conv2d: argument 'padding_mode'"),
    (lambda: gpuconv.conv2d(X, W, padding_mode=0), TypeError, r"conv2d: argument 'padding_mode'"),
    (lambda: gpuconv.conv2d(X, W, padding=5, padding_mode="reflect"), ValueError,
     r"conv2d: padding_mode 'reflect' needs each padding below the input's height \(5\)"),
    (lambda: gpuconv.conv2d(X, W, padding=6, padding_mode="circular"), ValueError,
     r"conv2d: padding_mode 'circular' needs each padding at most the input's height \(5\)"),
    (lambda: gpuconv.conv2d_backward_bias(X, data_format="nchw ") , ValueError,
     r"conv2d_backward_bias: argument 'data_format'"),
    (lambda: gpuconv.conv2d_backward_input(X, W, X.shape, filter_format=1), TypeError,
     r"conv2d_backward_input: argument 'filter_format'"),
    (lambda: gpuconv.conv2d_backward(np.ones((1, 3, 3, 2)), X, W, grads=("dz",)), ValueError,
     r"conv2d_backward: argument 'grads' must name at least one of"),
    (lambda: gpuconv.conv2d_backward(np.ones((1, 3, 3, 2)), X, W, grads=()), ValueError,
     r"conv2d_backward: argument 'grads'"),
    (lambda: gpuconv.conv2d_backward(np.ones((1, 3, 3, 2)), X, W, grads="dx"), TypeError,
     r"conv2d_backward: argument 'grads' must be a tuple"),
    (lambda: gpuconv.conv2d_info((1, 2, 5, 5), (2, 2, 3, 3), data_format="CHWN"), ValueError,
     r"conv2d_info: argument 'data_format'"),
    (lambda: gpuconv.Conv2D(W, data_format="NCWH"), ValueError, r"Conv2D: argument 'data_format'"),
    (lambda: gpuconv.Conv2D(W, padding_mode="wrap"), ValueError, r"Conv2D: argument 'padding_mode'"),
    (lambda: gpuconv.conv2d(X, W, bogus=1), TypeError, r"unexpected keyword argument 'bogus'"),
])
def test_bad_layout_options(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("x_shape", ["abc", None, (1, 5.5, 5, 2), (1, True, 5, 2), ("1", 5, 5, 2)])
def test_bad_shapes_with_a_padding_mode(x_shape):
    with pytest.raises(TypeError, match=r"conv2d_backward_input: argument 'x_shape' must be a tuple of ints"):
        gpuconv.conv2d_backward_input(np.ones((1, 5, 5, 2)), W, x_shape, padding=1, padding_mode="reflect")
    with pytest.raises(TypeError, match=r"conv2d_backward_weight: argument 'w_shape' must be a tuple of ints"):
        gpuconv.conv2d_backward_weight(np.ones((1, 5, 5, 2)), X, x_shape, padding=1, padding_mode="circular")


def test_layer_backward_bad_grads(rand):
    layer = gpuconv.Conv2D(W)
    layer(X)
    with pytest.raises(ValueError, match="conv2d_backward: argument 'grads'"):
        layer.backward(np.ones((1, 3, 3, 2)), grads=("dy",))
