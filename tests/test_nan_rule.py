"""Issue 12 case 5: one NaN/Inf rule on every backend and kernel path, the same as PyTorch's CPU results.

The rule (README "NaN and Inf"): the forward pass and dW take the padding as zeros that enter the products
(a NaN or Inf weight reaches every output whose window covers it, padding included; 0 * NaN dz is a term of
dW); dX sums exactly the terms of the chain rule (a tap that reaches no output pixel adds nothing, so a NaN
weight there does not reach dX).

``rule_*`` below compute the rule in float64 from explicitly zero-padded arrays; they are checked against
PyTorch (float64, CPU) where it is installed, and every backend is checked against them.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import assert_close

import gpuconv

pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")

# ------------------------------------------------------------------------------------------------ the rule


def _geometry(x_shape, w_shape, opts):
    geo = ref._Geometry(x_shape, w_shape, opts.get("stride", 1), opts.get("padding", "valid"),
                        opts.get("dilation", 1), opts.get("groups", 1))
    return geo


def _padded(x4, geo):
    return np.pad(x4, ((0, 0), (geo.pt, geo.pb), (geo.pl, geo.pr), (0, 0)))


def _windows(xp, geo, k1, k2):
    """xp (padded) rows / columns read by tap (k1, k2) for every output pixel: (N, OH, OW, C)."""
    r0, c0 = k1 * geo.d1, k2 * geo.d2
    return xp[:, r0 : r0 + geo.s1 * (geo.oh - 1) + 1 : geo.s1, c0 : c0 + geo.s2 * (geo.ow - 1) + 1 : geo.s2]


def rule_forward(x, w, **opts):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    geo = _geometry(x.shape, w.shape, opts)
    xp, w4 = _padded(x.reshape(geo.x4), geo), w.reshape(geo.w4)
    y = np.zeros((geo.n, geo.oh, geo.ow, geo.m))
    with np.errstate(invalid="ignore", over="ignore"):
        for k1 in range(geo.kh):
            for k2 in range(geo.kw):
                win = _windows(xp, geo, k1, k2)
                for _, cs, ms in geo.group_slices():
                    y[..., ms] += _products(win[..., cs], w4[k1, k2, :, ms])
    return y  # 4-D, as every case here


def _products(a, b):
    """a (..., K) times b (K, M) summed over K, elementwise products (so 0 * inf is NaN, as in the rule)."""
    return (a[..., :, None] * b).sum(axis=-2)


def rule_backward_weight(dz, x, w_shape, **opts):
    x = np.asarray(x, np.float64)
    geo = _geometry(x.shape, w_shape, opts)
    xp = _padded(x.reshape(geo.x4), geo)
    dz4 = np.asarray(dz, np.float64).reshape(geo.n, geo.oh, geo.ow, geo.m)
    dw = np.zeros(geo.w4)
    with np.errstate(invalid="ignore", over="ignore"):
        for k1 in range(geo.kh):
            for k2 in range(geo.kw):
                win = _windows(xp, geo, k1, k2)
                for _, cs, ms in geo.group_slices():
                    # sum over (n, i, j) of x * dz, elementwise products
                    dw[k1, k2, :, ms] += (win[..., cs, None] * dz4[..., None, ms]).sum(axis=(0, 1, 2))
    return dw.reshape(w_shape)


def rule_backward_input(dz, w, x_shape, **opts):
    """Exactly the chain-rule terms: tests/reference.py's backward_input (it visits only taps that reach an
    output pixel), with elementwise products."""
    w = np.asarray(w, np.float64)
    geo = _geometry(x_shape, w.shape, opts)
    dz4 = np.asarray(dz, np.float64).reshape(geo.n, geo.oh, geo.ow, geo.m)
    w4 = w.reshape(geo.w4)
    dx = np.zeros(geo.x4)
    with np.errstate(invalid="ignore", over="ignore"):
        for i, j, k1, k2, row, col in geo.taps():
            for _, cs, ms in geo.group_slices():
                dx[:, row, col, cs] += (dz4[:, i, j, None, ms] * w4[k1, k2, :, ms]).sum(axis=-1)
    return dx.reshape(tuple(x_shape))


def geo_opts(opts):
    return {"stride": opts.get("stride", 1), "padding": opts.get("padding", "valid"),
            "dilation": opts.get("dilation", 1), "groups": opts.get("groups", 1)}


# ------------------------------------------------------------------------------------------------ cases
# (x_shape, w_shape, options): the small-channel paths (direct forward, direct dx, small dw) and the tiled
# ones (Cg, Mg >= 16), with groups, stride, dilation and asymmetric padding.
CASES = [
    pytest.param((1, 5, 5, 2), (3, 3, 2, 3), {"padding": 1}, id="small-pad1"),
    pytest.param((1, 5, 5, 4), (3, 3, 2, 4), {"padding": 1, "groups": 2}, id="small-groups2"),
    pytest.param((2, 7, 6, 3), (3, 2, 3, 2), {"padding": ((2, 0), (1, 3)), "stride": 2}, id="small-asym-stride2"),
    pytest.param((1, 7, 7, 2), (3, 3, 1, 2), {"padding": "same", "dilation": 2, "groups": 2}, id="small-depthwise-dil"),
    pytest.param((1, 5, 5, 16), (3, 3, 16, 16), {"padding": 1}, id="tiled-pad1"),
    pytest.param((1, 6, 5, 32), (3, 3, 16, 32), {"padding": (2, 1), "groups": 2, "stride": 2}, id="tiled-groups2-stride2"),
    pytest.param((1, 5, 6, 16), (2, 3, 16, 17), {"padding": "full", "dilation": (2, 1)}, id="tiled-full-dil"),
]


def _with_specials(rng, a, count, values=(np.nan, np.inf, -np.inf)):
    a = a.copy()
    flat = a.reshape(-1)
    for idx, v in zip(rng.choice(flat.size, count, replace=False), rng.choice(values, count)):
        flat[idx] = v
    return a


def _inputs(rng, x_shape, w_shape, opts, where):
    """Random x, w, dz (never zeros), with NaN / Inf put at a few random places of the arrays in ``where``;
    a weight at the corner tap (0, 0) always gets one when w is in ``where`` (it reaches padding)."""
    y_shape = ref.y_shape(x_shape, w_shape, **{k: v for k, v in geo_opts(opts).items() if k != "groups"})
    x = rng.uniform(-1, 1, x_shape)
    w = rng.uniform(-1, 1, w_shape)
    dz = rng.uniform(-1, 1, y_shape)
    if "x" in where:
        x = _with_specials(rng, x, 2)
    if "w" in where:
        w = _with_specials(rng, w, 2)
        w[0, 0].reshape(-1)[0] = np.nan
    if "dz" in where:
        dz = _with_specials(rng, dz, 2)
        dz.reshape(-1)[0] = np.inf  # a corner output pixel: its window covers padding
    return x, w, dz


WHERE = [("w",), ("x",), ("dz",), ("x", "w", "dz")]


@pytest.mark.parametrize("where", WHERE, ids=["-".join(w) for w in WHERE])
@pytest.mark.parametrize("x_shape,w_shape,opts", CASES)
def test_rule_is_pytorchs(rng, x_shape, w_shape, opts, where):
    """The rule references agree with PyTorch (float64, CPU) on NaN, Inf and every finite value."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x, w, dz = _inputs(rng, x_shape, w_shape, opts, where)
    geo = _geometry(x_shape, w_shape, opts)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    # asymmetric padding through F.pad (zeros that are part of the input, as the rule says)
    ty = F.conv2d(F.pad(tx, (geo.pl, geo.pr, geo.pt, geo.pb)), tw, stride=(geo.s1, geo.s2),
                  dilation=(geo.d1, geo.d2), groups=geo.groups)
    tdx, tdw = torch.autograd.grad(ty, (tx, tw), torch.tensor(dz.transpose(0, 3, 1, 2)))
    assert_close(rule_forward(x, w, **opts), ty.detach().numpy().transpose(0, 2, 3, 1), np.float64)
    assert_close(rule_backward_input(dz, w, x_shape, **opts), tdx.numpy().transpose(0, 2, 3, 1), np.float64)
    assert_close(rule_backward_weight(dz, x, w_shape, **opts), tdw.numpy().transpose(2, 3, 1, 0), np.float64)


DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("where", WHERE, ids=["-".join(w) for w in WHERE])
@pytest.mark.parametrize("x_shape,w_shape,opts", CASES)
def test_every_backend_follows_the_rule(backend, rng, x_shape, w_shape, opts, where, dtype):
    if backend == "emulator" and (dtype == np.float64 or (dtype == np.float16) != (where == ("x", "w", "dz"))):
        # time: float32 with each kind of special value; float16 with all at once (float64's code is the same)
        pytest.skip("emulator: float32 for each case, float16 with every special value at once")
    x, w, dz = (a.astype(dtype) for a in _inputs(rng, x_shape, w_shape, opts, where))
    o = geo_opts(opts)
    k = w_shape[0] * w_shape[1] * w_shape[2]
    y = gpuconv.conv2d(x, w, backend=backend, **o)
    assert_close(y, rule_forward(x, w, **opts), dtype, k, err_msg="forward")
    dx = gpuconv.conv2d_backward_input(dz, w, x_shape, backend=backend, **o)
    assert_close(dx, rule_backward_input(dz, w, x_shape, **opts), dtype, k, err_msg="dx")
    dw = gpuconv.conv2d_backward_weight(dz, x, w_shape, backend=backend, **o)
    assert_close(dw, rule_backward_weight(dz, x, w_shape, **opts), dtype, dz.size, err_msg="dw")
    # the fused backward (what conv2d_backward runs) follows the same rule
    grads = gpuconv.conv2d_backward(dz, x, w, backend=backend, **o)
    np.testing.assert_array_equal(np.isnan(grads.dx), np.isnan(dx))
    np.testing.assert_array_equal(np.isnan(grads.dw), np.isnan(dw))
    assert_close(grads.db, dz.astype(np.float64).reshape(-1, dz.shape[-1]).sum(0), dtype, dz.size // dz.shape[-1])


def test_case5_the_issues_example(backend):
    """w[0,0] = nan, padding 1, a 5x5 input: 25 NaN outputs (was 16 on the emulator); dX with groups 2: 16 NaN
    (was 25 on numpy), as PyTorch."""
    x = np.ones((1, 5, 5, 2), np.float32)
    w = np.ones((3, 3, 1, 2), np.float32)
    w[0, 0] = np.nan
    y = gpuconv.conv2d(x, w, padding=1, groups=2, backend=backend)
    assert np.isnan(y).sum() == 25 * 2
    w1 = np.ones((3, 3, 2, 2), np.float32)
    w1[0, 0] = np.nan
    assert np.isnan(gpuconv.conv2d(x, w1, padding=1, backend=backend)).sum() == 25 * 2
    for groups, wg in ((1, w1), (2, w)):
        dx = gpuconv.conv2d_backward_input(np.ones((1, 5, 5, 2), np.float32), wg, (1, 5, 5, 2), padding=1,
                                           groups=groups, backend=backend)
        assert np.isnan(dx).sum() == 16 * 2 and not np.isnan(dx[0, 4]).any() and not np.isnan(dx[0, :, 4]).any()


SPECIAL_Z = np.array([np.nan, -np.inf, np.inf, -1.5, 0.0, -0.0, 2.0, 1e30, -1e30])
# PyTorch's CPU results for act(z) and act'(z) * 1 (relu passes dy where relu(z) is NaN: threshold_backward)
TORCH_ACT = {
    "relu": ([np.nan, 0, np.inf, 0, 0, 0, 2, 1e30, 0], [1, 0, 1, 0, 0, 0, 1, 1, 0]),
    "sigmoid": ([np.nan, 0, 1, 0.18242552380635635, 0.5, 0.5, 0.8807970779778823, 1, 0],
                [np.nan, 0, 0, 0.14914645207033284, 0.25, 0.25, 0.10499358540350662, 0, 0]),
    "tanh": ([np.nan, -1, 1, -0.9051482536448664, 0, 0, 0.9640275800758169, 1, -1],
             [np.nan, 0, 0, 0.18070663892364855, 1, 1, 0.07065082485316443, 0, 0]),
}


@pytest.mark.parametrize("activation", sorted(TORCH_ACT))
def test_activations_follow_pytorch_on_specials(backend, activation):
    x = SPECIAL_Z.reshape(1, -1)
    y = gpuconv.conv2d(x, np.ones((1, 1)), activation=activation, backend=backend)
    want_y, want_dz = TORCH_ACT[activation]
    assert_close(y, np.array(want_y).reshape(1, -1), np.float64)
    dz = gpuconv.activation_backward(np.ones_like(y), y, activation, backend=backend)
    assert_close(dz, np.array(want_dz).reshape(1, -1), np.float64)
    grads = gpuconv.conv2d_backward(np.ones_like(y), x, np.ones((1, 1)), y, activation=activation, backend=backend)
    assert_close(grads.db, [np.nansum(want_dz) if not np.isnan(want_dz).any() else np.nan], np.float64)


def test_torch_activation_table(rng):
    torch = pytest.importorskip("torch")
    z = torch.tensor(SPECIAL_Z, requires_grad=True)
    for name, (want_y, want_dz) in TORCH_ACT.items():
        y = getattr(torch, name)(z)
        (g,) = torch.autograd.grad(y, z, torch.ones_like(z))
        assert_close(y.detach().numpy(), want_y, np.float64, err_msg=name)
        assert_close(g.numpy(), want_dz, np.float64, err_msg=name)


@pytest.mark.parametrize("x_shape,w_shape,opts", [CASES[1], CASES[5]], ids=["small", "tiled"])
def test_transposed_convolution_follows_the_rule(backend, rng, x_shape, w_shape, opts):
    """conv2d_transpose is dX's operation (with a bias): exactly the chain-rule terms, as PyTorch's
    conv_transpose2d; a NaN weight at a tap that reaches no output of the convolution does not spread."""
    x, w, dz = _inputs(rng, x_shape, w_shape, opts, ("w",))
    o = geo_opts(opts)
    b = rng.uniform(-1, 1, x_shape[-1])
    natural = gpuconv.conv2d_transpose(dz, w, b, backend="numpy", **o).shape  # rows the stride leaves out
    extra = (x_shape[1] - natural[1], x_shape[2] - natural[2])  # come back with output_padding
    y = gpuconv.conv2d_transpose(dz, w, b, output_padding=extra, backend=backend, **o)
    want = rule_backward_input(dz, w, x_shape, **opts) + b
    assert_close(y, want, np.float64, w_shape[0] * w_shape[1] * w_shape[3])
