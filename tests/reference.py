"""A naive float64 reference written straight from gpuconv's specification (not from its implementation).

Cross-correlation, channels last, indices from 0:

    Z[b,i,j,m] = sum_{k1,k2,n} W[k1,k2,n,m] * X[b, i*s1 + k1*d1 - p_top, j*s2 + k2*d2 - p_left, g*Cg + n]
                 + bias[m]

with g = m // Mg, Cg = C / groups, Mg = M / groups; X reads outside the image are zero. U = act(Z).
Backward from dU: dZ = dU * act'(Z) taken from U; dW and dbias are the sums the formula implies; dX is the
adjoint of the forward map (each product X[...] * W[...] sends dZ[b,i,j,m] * W[...] back to the X pixel
it read).

Loops run over output pixels and kernel taps (tiny sizes only); every sum is done in float64.
Shapes: x (H,W) with w (KH,KW), (H,W,C) or (N,H,W,C) with w (KH,KW,C/groups,M); results follow x.
"""

from __future__ import annotations

import math

import numpy as np

from gpuconv import _registry


# ------------------------------------------------------------------------------------------------ options
def as_pair(v) -> tuple:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def resolve_padding(padding, h, w, kh, kw, stride, dilation) -> tuple:
    """Any accepted padding -> (top, bottom, left, right), from the specification's rules."""
    s1, s2 = as_pair(stride)
    d1, d2 = as_pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "full":
            return d1 * (kh - 1), d1 * (kh - 1), d2 * (kw - 1), d2 * (kw - 1)
        if padding == "same":
            # Output size ceil(size / stride); the odd pixel of padding goes bottom / right (TensorFlow).
            out = []
            for size, k, s, d in ((h, kh, s1, d1), (w, kw, s2, d2)):
                o = math.ceil(size / s)
                total = max((o - 1) * s + d * (k - 1) + 1 - size, 0)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ValueError(padding)
    if isinstance(padding, int):
        return (padding,) * 4
    a, b = padding
    if isinstance(a, int):
        return a, a, b, b
    return a[0], a[1], b[0], b[1]


def output_hw(h, w, kh, kw, stride=1, padding="valid", dilation=1) -> tuple:
    s1, s2 = as_pair(stride)
    d1, d2 = as_pair(dilation)
    pt, pb, pl, pr = resolve_padding(padding, h, w, kh, kw, stride, dilation)
    return (h + pt + pb - d1 * (kh - 1) - 1) // s1 + 1, (w + pl + pr - d2 * (kw - 1) - 1) // s2 + 1


def _to4(x_shape, w_shape):
    if len(x_shape) == 2:
        return (1, *x_shape, 1), (*w_shape, 1, 1)
    if len(x_shape) == 3:
        return (1, *x_shape), tuple(w_shape)
    return tuple(x_shape), tuple(w_shape)


def y_shape(x_shape, w_shape, stride=1, padding="valid", dilation=1) -> tuple:
    """The output shape in the caller's layout."""
    x4, w4 = _to4(x_shape, w_shape)
    oh, ow = output_hw(x4[1], x4[2], w4[0], w4[1], stride, padding, dilation)
    full = (x4[0], oh, ow, w4[3])
    return (oh, ow) if len(x_shape) == 2 else full[4 - len(x_shape) :]


class _Geometry:
    """Shapes and the index map of one convolution (4-D)."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups):
        self.x4, self.w4 = _to4(tuple(x_shape), tuple(w_shape))
        self.n, self.h, self.w, self.c = self.x4
        self.kh, self.kw, self.cg, self.m = self.w4
        self.groups = groups
        assert self.c == self.cg * groups and self.m % groups == 0
        self.mg = self.m // groups
        self.s1, self.s2 = as_pair(stride)
        self.d1, self.d2 = as_pair(dilation)
        self.pt, self.pb, self.pl, self.pr = resolve_padding(
            padding, self.h, self.w, self.kh, self.kw, stride, dilation
        )
        self.oh, self.ow = output_hw(self.h, self.w, self.kh, self.kw, stride, padding, dilation)

    def taps(self):
        """(i, j, k1, k2, row, col) for every output pixel and kernel tap that reads inside the image."""
        for i in range(self.oh):
            for j in range(self.ow):
                for k1 in range(self.kh):
                    row = i * self.s1 + k1 * self.d1 - self.pt
                    if not 0 <= row < self.h:
                        continue
                    for k2 in range(self.kw):
                        col = j * self.s2 + k2 * self.d2 - self.pl
                        if 0 <= col < self.w:
                            yield i, j, k1, k2, row, col

    def group_slices(self):
        for g in range(self.groups):
            yield g, slice(g * self.cg, (g + 1) * self.cg), slice(g * self.mg, (g + 1) * self.mg)


# ------------------------------------------------------------------------------------------------ activations
# The registry's NumPy functions, in float64 (tests/test_gradcheck.py checks each gradient against finite
# differences of its forward; tests/test_forward.py and test_backward.py check values independently).
def activate(z, activation):
    return _registry.activation(activation or "identity").forward(np.array(z, np.float64))


def activation_backward(dy, y, activation):
    """dZ from dU and the saved output U."""
    dy = np.array(dy, np.float64)
    return _registry.activation(activation or "identity").backward(dy, np.asarray(y, np.float64))


# ------------------------------------------------------------------------------------------------ forward
def conv2d_linear(x, w, b=None, *, stride=1, padding="valid", dilation=1, groups=1):
    """Z = conv(x, w) + b, float64, shaped like the caller's layout."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation, groups)
    x4, w4 = x.reshape(geo.x4), w.reshape(geo.w4)
    z = np.zeros((geo.n, geo.oh, geo.ow, geo.m))
    for i, j, k1, k2, row, col in geo.taps():
        for _, cs, ms in geo.group_slices():
            # sum over n of X[b, row, col, g*Cg + n] * W[k1, k2, n, m], for every b and every m of group g
            z[:, i, j, ms] += x4[:, row, col, cs] @ w4[k1, k2, :, ms]
    if b is not None:
        z += np.asarray(b, np.float64).reshape(geo.m)
    return z.reshape(y_shape(x.shape, w.shape, stride, padding, dilation))


def conv2d(x, w, b=None, *, stride=1, padding="valid", dilation=1, groups=1, activation=None):
    """U = act(conv(x, w) + b), float64."""
    z = conv2d_linear(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return activate(z, activation)


# ------------------------------------------------------------------------------------------------ backward
def backward_input(dz, w, x_shape, *, stride=1, padding="valid", dilation=1, groups=1):
    """dX: each product X[b,row,col,g*Cg+n] * W[k1,k2,n,m] returns dZ[b,i,j,m] * W[k1,k2,n,m] to its pixel."""
    w = np.asarray(w, np.float64)
    geo = _Geometry(tuple(x_shape), w.shape, stride, padding, dilation, groups)
    dz4 = np.asarray(dz, np.float64).reshape(geo.n, geo.oh, geo.ow, geo.m)
    w4 = w.reshape(geo.w4)
    dx = np.zeros(geo.x4)
    for i, j, k1, k2, row, col in geo.taps():
        for _, cs, ms in geo.group_slices():
            dx[:, row, col, cs] += dz4[:, i, j, ms] @ w4[k1, k2, :, ms].T
    return dx.reshape(tuple(x_shape))


def backward_weight(dz, x, w_shape, *, stride=1, padding="valid", dilation=1, groups=1):
    """dW[k1,k2,n,m] = sum_{b,i,j} dZ[b,i,j,m] * X[b, i*s1+k1*d1-p_top, j*s2+k2*d2-p_left, g*Cg+n]."""
    x = np.asarray(x, np.float64)
    geo = _Geometry(x.shape, tuple(w_shape), stride, padding, dilation, groups)
    dz4 = np.asarray(dz, np.float64).reshape(geo.n, geo.oh, geo.ow, geo.m)
    x4 = x.reshape(geo.x4)
    dw = np.zeros(geo.w4)
    for i, j, k1, k2, row, col in geo.taps():
        for _, cs, ms in geo.group_slices():
            dw[k1, k2, :, ms] += x4[:, row, col, cs].T @ dz4[:, i, j, ms]
    return dw.reshape(tuple(w_shape))


def backward_bias(dz):
    """dbias[m] = sum over every axis but the last."""
    dz = np.asarray(dz, np.float64)
    return dz.reshape(-1, dz.shape[-1]).sum(axis=0)


# ------------------------------------------------------------------------------------------------ cases
def case(name, x_shape, w_shape, *, bias=True, activation=None, **options):
    return {
        "name": name,
        "x_shape": tuple(x_shape),
        "w_shape": tuple(w_shape),
        "bias": bias,
        "activation": activation,
        "options": options,
    }


# Tiny configurations covering every option of the specification; shared by the forward, backward, layer
# and gradient-check tests. A 2-D x has one output channel, so its bias has shape (1,).
OPTION_CASES = [
    case("2d-valid", (6, 7), (3, 2), bias=False),
    case("2d-full-stride", (5, 6), (2, 3), bias=False, padding="full", stride=2),
    case("2d-bias-sigmoid", (6, 5), (2, 2), activation="sigmoid", padding=((1, 0), (0, 1))),
    case("3d-valid", (6, 5, 3), (3, 3, 3, 4)),
    case("4d-valid", (2, 6, 7, 3), (3, 2, 3, 4)),
    case("4d-nobias", (2, 6, 5, 2), (2, 2, 2, 3), bias=False),
    case("stride2", (2, 7, 8, 2), (3, 3, 2, 3), stride=2),
    case("stride-pair", (1, 8, 7, 2), (2, 3, 2, 2), stride=(3, 2)),
    case("stride-gt-kernel", (1, 9, 8, 2), (1, 2, 2, 2), stride=3),
    case("pad-int", (2, 5, 5, 2), (3, 3, 2, 3), padding=1),
    case("pad-pair", (1, 5, 6, 2), (3, 2, 2, 2), padding=(2, 1)),
    case("pad-asym", (1, 5, 6, 2), (3, 3, 2, 2), padding=((0, 2), (3, 1))),
    case("pad-asym-stride", (2, 6, 5, 2), (2, 3, 2, 3), padding=((1, 0), (0, 2)), stride=(2, 3)),
    case("pad-large", (1, 3, 3, 1), (2, 2, 1, 2), padding=3),
    # padding on the right or bottom only, with more than 4 channels (the NumPy backend's pixel-major path,
    # whose input block is a view of x when no padding is reached and a zero-bordered copy otherwise)
    case("pad-right-only-c6", (1, 5, 6, 6), (2, 3, 6, 3), padding=((0, 0), (0, 2))),
    case("pad-bottom-only-c5", (2, 5, 4, 5), (3, 2, 5, 3), padding=((0, 2), (0, 0)), stride=2),
    case("same-odd", (2, 6, 5, 2), (3, 3, 2, 3), padding="same"),
    case("same-even", (1, 6, 7, 2), (2, 4, 2, 2), padding="same"),
    case("same-stride2", (1, 7, 8, 2), (3, 2, 2, 3), padding="same", stride=2),
    case("same-stride3-dil", (1, 8, 7, 2), (3, 3, 2, 2), padding="same", stride=(3, 2), dilation=(2, 1)),
    case("full", (1, 4, 5, 2), (3, 2, 2, 3), padding="full"),
    case("full-dilated", (1, 4, 4, 2), (2, 3, 2, 2), padding="full", dilation=2),
    case("dilation2", (2, 8, 7, 2), (3, 2, 2, 3), dilation=2),
    case("dilation-pair", (1, 9, 8, 2), (2, 3, 2, 2), dilation=(3, 2)),
    case("dil-stride-pad", (1, 9, 9, 2), (3, 3, 2, 2), dilation=2, stride=2, padding=2),
    case("groups2", (2, 6, 6, 4), (3, 3, 2, 6), groups=2),
    case("groups3-stride", (1, 7, 6, 6), (2, 2, 2, 3), groups=3, stride=2, padding=1),
    case("depthwise", (2, 6, 5, 4), (3, 3, 1, 4), groups=4, padding="same"),
    case("depthwise-mult2", (1, 6, 6, 3), (3, 2, 1, 6), groups=3, dilation=(1, 2)),
    case("kernel-1x1", (2, 4, 5, 3), (1, 1, 3, 4)),
    case("kernel-is-image", (2, 3, 4, 2), (3, 4, 2, 3)),
    case("relu", (2, 6, 6, 3), (3, 3, 3, 4), activation="relu", padding=1),
    case("sigmoid", (2, 6, 6, 3), (3, 3, 3, 4), activation="sigmoid", stride=2),
    case("identity", (1, 5, 5, 2), (2, 2, 2, 2), activation="identity"),
    case(
        "relu-groups-same-stride",
        (2, 7, 6, 4),
        (3, 3, 2, 4),
        activation="relu",
        groups=2,
        padding="same",
        stride=2,
    ),
    case("sigmoid-3d-dil", (7, 7, 2), (2, 2, 2, 3), activation="sigmoid", dilation=3),
    case("2d-relu-dil-same", (7, 6), (3, 2), bias=False, activation="relu", dilation=2, padding="same"),
]
# The same options on the CUDA backend's tiled paths (16+ input and output channels per group: the tiled
# forward, dx and dw GEMMs), so that the whole shared suite, not only tests/test_kernels.py, reaches them; each
# as small as the path allows (the emulator runs them). Tiles: forward and dx 128 x 32 up to 32 channels per
# group, 64 x 64 above; dx dilation (2, 1) tells the tap-row step from the tap-column one (and its 17 channels
# make a reduction length K that is not a multiple of the 16-deep step); "tiled-splits-groups"
# has 544 output pixels and 2 groups, so the dw and db reductions take several splits (each group's dw too).
TILED_CASES = [
    case("tiled-asym-stride", (1, 6, 7, 16), (3, 2, 16, 16), activation="relu", padding=((1, 0), (0, 2)),
         stride=(2, 1)),
    case("tiled-dil21", (1, 7, 6, 17), (3, 3, 17, 17), activation="sigmoid", padding=1, dilation=(2, 1)),
    case("tiled-groups-same", (1, 5, 5, 32), (2, 2, 16, 32), activation="tanh", groups=2, padding="same"),
    case("tiled-full-dil12", (1, 4, 5, 16), (2, 3, 16, 17), bias=False, padding="full", dilation=(1, 2)),
    case("tiled-wide-stride3", (2, 5, 6, 40), (2, 2, 40, 40), activation="relu", stride=3, padding=(1, 0)),
    case("tiled-splits-groups", (2, 16, 16, 32), (1, 1, 16, 32), activation="sigmoid", groups=2,
         padding=((0, 1), (0, 0))),
]
OPTION_CASES += TILED_CASES
OPTION_IDS = [c["name"] for c in OPTION_CASES]


def reduction_lengths(c) -> dict:
    """How many products each result element sums (for the float32 tolerance)."""
    x4, w4 = _to4(c["x_shape"], c["w_shape"])
    groups = c["options"].get("groups", 1)
    oh, ow = output_hw(
        x4[1],
        x4[2],
        w4[0],
        w4[1],
        c["options"].get("stride", 1),
        c["options"].get("padding", "valid"),
        c["options"].get("dilation", 1),
    )
    return {
        "forward": w4[0] * w4[1] * w4[2] + 1,
        "dx": w4[0] * w4[1] * (w4[3] // groups),
        "dw": x4[0] * oh * ow,
        "db": x4[0] * oh * ow,
    }


def geometry(c):
    """(stride, padding, dilation, groups) keyword options of a case, with the defaults filled in."""
    o = c["options"]
    return {
        "stride": o.get("stride", 1),
        "padding": o.get("padding", "valid"),
        "dilation": o.get("dilation", 1),
        "groups": o.get("groups", 1),
    }
