"""The public operations: validate once, pick a backend, call it, give the result back in the caller's layout.

Shapes (channels last): x (H,W) | (H,W,C) | (N,H,W,C); w (KH,KW) with a 2-D x, else (KH,KW,C/groups,M);
bias (M,); output (OH,OW) | (OH,OW,M) | (N,OH,OW,M), following x. Results have the array type and dtype of
the first array argument; a numpy array forced onto the cupy backend (or the reverse) comes back as it went in.

``precision`` (every operation): None (the process default, ``gpuconv.get_float32_precision()``, "highest"
unless changed), "highest" (strict FP32 products) or "tf32" (both operands of each product rounded to TF32, as
tensor cores take them, float32 accumulation). It changes float32 only; float16 and bfloat16 always multiply
exactly (their products fit in float32) and accumulate in float32, float64 is float64 throughout.
gpuconv never uses TF32 unless asked.

NaN and Inf, one rule on every backend and kernel path (PyTorch's CPU results, float64): the forward pass and
dW take the padding as zeros that enter the products (0 * NaN = NaN: a NaN weight reaches every output whose
window covers it, padding included); dX sums exactly the chain-rule terms (a tap that reaches no output pixel
adds nothing). Arguments are checked before any work (gpuconv._validate: shapes, limits, flags, environment
variables); results do not depend on the memory layout of an input.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from . import _config, _dispatch, _interop, _layout, _validate
from ._config import ConvConfig, ConvInfo
from ._dispatch import module_of, select_backend, to_module
from ._interop import public
from ._layout import Roles
from ._types import Array, ArrayLike, IntPair, Padding, Shape

GRADS = ("dx", "dw", "db")  # what conv2d_backward can compute


class Conv2DGrads(NamedTuple):
    """Gradients of a convolution layer: dx like x, dw like w, db like the bias (None without one)."""

    dx: Array
    dw: Array
    db: Array


def _prepare(fname: str, backend: str, named: dict, required: tuple = ()):
    """Pick the backend and move every array argument into its array module (None stays None, but for the
    names in ``required``: there it is a TypeError)."""
    if all(type(v) is np.ndarray or (v is None and k not in required) for k, v in named.items()):
        # the common case, plain numpy arrays: nothing to convert when the backend is numpy's
        be = select_backend(fname, backend, named, kind="numpy")
        if be.xp is np:
            return be, named
    for k, v in named.items():
        if v is None and k in required:
            raise TypeError(f"{fname}: argument '{k}' must be an array, got None")
    named = {k: (None if v is None else _validate.as_array(fname, k, v)) for k, v in named.items()}
    be = select_backend(fname, backend, named)
    return be, {k: to_module(v, be.xp) for k, v in named.items()}


def _check_dtypes(fname: str, arrays: dict, be=None) -> None:
    """Every array float16/bfloat16/float32/float64, all of one dtype (the first one's), and one the backend
    ``be`` computes in (a backend without kernels for a dtype says so in ``dtype_reason``)."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    ref_name, ref = items[0]
    if not (ref.dtype in _config.FLOAT_DTYPES and all(v.dtype == ref.dtype for _, v in items[1:])):
        _config.check_float_dtype(fname, ref_name, ref.dtype)
        for k, v in items[1:]:
            _config.check_same_dtype(fname, ref_name, ref.dtype, k, v.dtype)
    reason = None if be is None or not hasattr(be, "dtype_reason") else be.dtype_reason(ref.dtype)
    if reason is not None:
        raise TypeError(f"{fname}: argument '{ref_name}' has dtype {ref.dtype}: {reason}")


def _check_shape(fname: str, argname: str, a, expected: tuple) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{fname}: argument '{argname}' must have shape {tuple(expected)}, got {tuple(a.shape)}")


def _config_for(fname, x_shape, w_shape, stride, padding, dilation, groups, names=("x", "w")) -> ConvConfig:
    """The checked config, from a cache of recent ones (checking costs ~15 us, a lookup ~2 us).

    The cache is keyed on the options' types as well as their values: 1, True, 1.0 and np.int64(1) are equal
    and hash alike, but not all of them are valid. Errors are never cached: a bad call raises every time.
    """
    args = (fname, tuple(x_shape), tuple(w_shape), stride, padding, dilation, groups)
    try:
        key = args[:3] + _typed(args[3:])  # the shapes hold ints already (names follow from fname)
        cfg = _configs.get(key)
    except TypeError:  # an unhashable option (a numpy array as padding, ...): checked without the cache
        return _make_config(*args, names)
    if cfg is None:
        cfg = _make_config(*args, names)
        if len(_configs) >= 256:
            _configs.clear()
        _configs[key] = cfg
    return cfg


_configs: dict = {}


def _typed(v):
    """v with the type of every item beside it, lists as tuples: a hashable cache key that tells 1 from True."""
    if isinstance(v, (tuple, list)):
        return type(v), tuple(_typed(i) for i in v)
    return type(v), v


def _make_config(fname, x_shape, w_shape, stride, padding, dilation, groups, names=("x", "w")) -> ConvConfig:
    x4, w4 = _config.as_4d_shapes(fname, x_shape, w_shape, names)
    return _config.make_config(fname, x4, w4, stride=stride, padding=padding, dilation=dilation, groups=groups,
                               names=names)


def _check_bias(fname: str, b, cfg: ConvConfig) -> None:
    if b is not None:
        _check_shape(fname, "b", b, (cfg.m,))


def _back(result, like):
    """A C-contiguous result, moved back to the array module of ``like`` (the caller's array)."""
    if result is None:
        return None
    if type(result) is np.ndarray and type(like) is np.ndarray:
        return np.ascontiguousarray(result)
    xp = module_of(like)
    return xp.ascontiguousarray(to_module(result, xp))


@public(arrays=("x", "w", "b"), like="x", layout=Roles({"x": "x", "w": "w"}, {}, "y"))
def conv2d(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None, *, stride: IntPair = 1,
           padding: Padding = "valid", dilation: IntPair = 1, groups: int = 1, activation: str | None = None,
           backend: str = "auto", precision: str | None = None) -> Array:
    """act(conv(x, w) + b), cross-correlation with channels last, fused in one pass.

    stride, dilation: int or (s1, s2). padding: "valid", "same" (output ceil(H/s), odd pixel bottom/right),
    "full", int, (ph, pw) or ((top, bottom), (left, right)). activation: None or a name of gpuconv._registry.ACTIVATIONS
    ("identity", "relu", "sigmoid", "tanh").
    backend: "auto" (cupy arrays -> GPU, numpy arrays -> NumPy; GPUCONV_BACKEND overrides), "numpy",
    "cupy" or "emulator". precision: None (the process default), "highest" or "tf32" (float32 only; see the
    module docstring). dtypes: float16, bfloat16 (ml_dtypes.bfloat16), float32, float64.
    """
    fname = "conv2d"
    prec = _config.resolve_precision(fname, precision)
    be, a = _prepare(fname, backend, {"x": x, "w": w, "b": b}, required=("x", "w"))
    _check_dtypes(fname, a, be)
    act = _config.activation_name(fname, activation)
    cfg = _config_for(fname, a["x"].shape, a["w"].shape, stride, padding, dilation, groups)
    _check_bias(fname, a["b"], cfg)
    if cfg.n == 0:
        y = be.xp.zeros(cfg.y_shape, a["x"].dtype)
    else:
        y = be.forward(a["x"].reshape(cfg.x_shape), a["w"].reshape(cfg.w_shape), a["b"], cfg, act, precision=prec)
    return _back(y.reshape(_config.user_y_shape(cfg, a["x"].ndim)), x)


@public(arrays=("dy", "y"), like="dy")
def activation_backward(dy: ArrayLike, y: ArrayLike | None, activation: str | None, *, backend: str = "auto",
                        precision: str | None = None) -> Array:
    """dz = dy * act'(z), computed from the saved output y (relu: y > 0; sigmoid: y * (1 - y); tanh: 1 - y * y);
    any shape.

    y may be None for the identity (dz is then a copy of dy). ``precision`` is checked and has no effect:
    there are no products to round (accepted so that one set of options fits every operation).
    """
    fname = "activation_backward"
    _config.resolve_precision(fname, precision)
    act = _config.activation_name(fname, activation)
    if y is None and _config.needs_output(act):
        raise ValueError(f"{fname}: argument 'y' (the forward output) is required for activation {act!r}")
    be, a = _prepare(fname, backend, {"dy": dy, "y": y}, required=("dy",))
    _check_dtypes(fname, a, be)
    if not _config.needs_output(act):
        return _back(a["dy"].copy(), dy)
    _check_shape(fname, "y", a["y"], a["dy"].shape)
    return _back(be.activation_backward(a["dy"], a["y"], act), dy)


@public(arrays=("dz", "w"), like="dz", layout=Roles({"dz": "y", "w": "w"}, {"x_shape": "x"}, "x"))
def conv2d_backward_input(dz: ArrayLike, w: ArrayLike, x_shape: Shape, *, stride: IntPair = 1,
                          padding: Padding = "valid", dilation: IntPair = 1, groups: int = 1,
                          backend: str = "auto", precision: str | None = None) -> Array:
    """dx, the gradient with respect to the input: the transposed convolution of dz with w (products of dz and
    w in ``precision``)."""
    fname = "conv2d_backward_input"
    prec = _config.resolve_precision(fname, precision)
    x_shape = _validate.shape_tuple(fname, "x_shape", x_shape)
    be, a = _prepare(fname, backend, {"dz": dz, "w": w}, required=("dz", "w"))
    _check_dtypes(fname, a, be)
    cfg = _config_for(fname, x_shape, a["w"].shape, stride, padding, dilation, groups, ("x_shape", "w"))
    _check_shape(fname, "dz", a["dz"], _config.user_y_shape(cfg, len(x_shape)))
    if cfg.n == 0:
        dx = be.xp.zeros(cfg.x_shape, a["dz"].dtype)
    else:
        dx = be.backward_input(a["dz"].reshape(cfg.y_shape), a["w"].reshape(cfg.w_shape), cfg, precision=prec)
    return _back(dx.reshape(x_shape), dz)


@public(arrays=("dz", "x"), like="dz", layout=Roles({"dz": "y", "x": "x"}, {"w_shape": "w"}, "w"))
def conv2d_backward_weight(dz: ArrayLike, x: ArrayLike, w_shape: Shape, *, stride: IntPair = 1,
                           padding: Padding = "valid", dilation: IntPair = 1, groups: int = 1,
                           backend: str = "auto", precision: str | None = None) -> Array:
    """dw, the gradient with respect to the weights: dz correlated with the input windows, summed over the batch
    (products of dz and x in ``precision``)."""
    fname = "conv2d_backward_weight"
    prec = _config.resolve_precision(fname, precision)
    w_shape = _validate.shape_tuple(fname, "w_shape", w_shape)
    be, a = _prepare(fname, backend, {"dz": dz, "x": x}, required=("dz", "x"))
    _check_dtypes(fname, a, be)
    cfg = _config_for(fname, a["x"].shape, w_shape, stride, padding, dilation, groups, ("x", "w_shape"))
    _check_shape(fname, "dz", a["dz"], _config.user_y_shape(cfg, a["x"].ndim))
    if cfg.n == 0:
        dw = be.xp.zeros(cfg.w_shape, a["dz"].dtype)
    else:
        dw = be.backward_weight(a["dz"].reshape(cfg.y_shape), a["x"].reshape(cfg.x_shape), cfg, precision=prec)
    return _back(dw.reshape(w_shape), dz)


@public(arrays=("dz",), like="dz", layout=Roles({"dz": "y"}, {}, None, padding=False))
def conv2d_backward_bias(dz: ArrayLike, *, backend: str = "auto", precision: str | None = None) -> Array:
    """db, dz summed over every axis but the last (shape (M,)). ``precision`` is checked and has no effect (a sum
    has no products): db is the same in every precision."""
    fname = "conv2d_backward_bias"
    _config.resolve_precision(fname, precision)
    be, a = _prepare(fname, backend, {"dz": dz}, required=("dz",))
    _check_dtypes(fname, a, be)
    if a["dz"].ndim < 1:
        raise ValueError(f"{fname}: argument 'dz' must have at least 1 dimension, got a scalar")
    return _back(_bias_grad(be, a["dz"], a["dz"].shape[-1]), dz)


def _bias_grad(be, dz, m: int):
    if dz.size == 0:
        return be.xp.zeros((m,), dz.dtype)
    return be.backward_bias(dz.reshape(1, 1, -1, m))


@public(arrays=("dy", "x", "w", "y"), like="dy",
        layout=Roles({"dy": "y", "x": "x", "w": "w", "y": "y"}, {}, ("x", "w", None)))
def conv2d_backward(
    dy: ArrayLike, x: ArrayLike, w: ArrayLike, y: ArrayLike | None = None, *, has_bias: bool = True,
    stride: IntPair = 1, padding: Padding = "valid", dilation: IntPair = 1, groups: int = 1,
    activation: str | None = None, backend: str = "auto", precision: str | None = None,
    grads: Sequence[str] = GRADS,
) -> Conv2DGrads:
    """All gradients of ``conv2d`` from dy = dJ/dy: returns Conv2DGrads(dx, dw, db).

    ``y``, the forward output, is needed for every activation but identity (the derivative is taken from it).
    db is None when ``has_bias`` is False; with a 2-D x it has shape (1,). ``precision`` applies to the
    products of dx and dw (dz = dy * act'(z) and db are float32 sums in every precision). ``grads``: the
    gradients wanted, any of ("dx", "dw", "db") (default all); the others come back None and are not computed
    (as gpuconv.torch asks for a first layer's ("dw", "db") when its input needs no gradient).
    """
    fname = "conv2d_backward"
    want = _grads_wanted(fname, grads)
    prec = _config.resolve_precision(fname, precision)
    act = _config.activation_name(fname, activation)
    has_bias = _validate.check_flag(fname, "has_bias", has_bias)
    if y is None and _config.needs_output(act):
        raise ValueError(f"{fname}: argument 'y' (the forward output) is required for activation {act!r}")
    be, a = _prepare(fname, backend, {"dy": dy, "x": x, "w": w, "y": y}, required=("dy", "x", "w"))
    _check_dtypes(fname, a, be)
    cfg = _config_for(fname, a["x"].shape, a["w"].shape, stride, padding, dilation, groups)
    y_shape = _config.user_y_shape(cfg, a["x"].ndim)
    _check_shape(fname, "dy", a["dy"], y_shape)
    if a["y"] is not None:
        _check_shape(fname, "y", a["y"], y_shape)
    dtype, x4, w4 = a["dy"].dtype, a["x"].reshape(cfg.x_shape), a["w"].reshape(cfg.w_shape)
    has_bias = has_bias and "db" in want
    fused = getattr(be, "backward", None)
    if cfg.n == 0:
        dx, dw = be.xp.zeros(cfg.x_shape, dtype), be.xp.zeros(cfg.w_shape, dtype)
        db = be.xp.zeros((cfg.m,), dtype) if has_bias else None
    elif fused is not None:  # act' applied as dy is read, or dz written once for all the gradients wanted
        y4 = a["y"].reshape(cfg.y_shape) if _config.needs_output(act) else None
        dx, dw, db = fused(a["dy"].reshape(cfg.y_shape), y4, x4, w4, cfg, act, has_bias, precision=prec,
                           grads=want)
    else:
        dz = be.activation_backward(a["dy"], a["y"], act) if _config.needs_output(act) else a["dy"]
        dz4 = dz.reshape(cfg.y_shape)
        dx = be.backward_input(dz4, w4, cfg, precision=prec) if "dx" in want else None
        dw = be.backward_weight(dz4, x4, cfg, precision=prec) if "dw" in want else None
        db = _bias_grad(be, dz4, cfg.m) if has_bias else None
    dx = _back(dx.reshape(a["x"].shape), dy) if "dx" in want else None
    dw = _back(dw.reshape(a["w"].shape), dy) if "dw" in want else None
    return Conv2DGrads(dx, dw, _back(db, dy))


def _grads_wanted(fname: str, grads) -> frozenset:
    """The ``grads`` option -> a non-empty set of names from GRADS."""
    if isinstance(grads, str) or not isinstance(grads, (tuple, list, set, frozenset)):
        raise TypeError(f"{fname}: argument 'grads' must be a tuple of names from {GRADS}, got {grads!r}")
    bad = [g for g in grads if g not in GRADS]
    if bad or not grads:
        raise ValueError(f"{fname}: argument 'grads' must name at least one of {GRADS}, got {grads!r}")
    return frozenset(grads)


class Conv2D:
    """A convolution layer: ``layer(x)`` runs the fused forward pass and keeps what backward needs;
    ``layer.backward(dy)`` returns dx and sets ``layer.dw`` and ``layer.db``.

    The options are those of ``conv2d``; they are checked when the layer is built. ``precision=None`` follows
    the process default at each call (``gpuconv.set_float32_precision``); a name fixes it for this layer.
    """

    def __init__(self, w: ArrayLike, b: ArrayLike | None = None, *, stride: IntPair = 1,
                 padding: Padding = "valid", dilation: IntPair = 1, groups: int = 1, activation: str | None = None,
                 backend: str = "auto", precision: str | None = None, data_format: str = "NHWC",
                 filter_format: str = "HWIO", padding_mode: str = "zeros") -> None:
        # what conv2d takes (lists, ...) is taken here too; arrays (numpy, cupy, torch) are kept as they are
        self.w = _validate.as_array("Conv2D", "w", w)
        self.b = None if b is None else _validate.as_array("Conv2D", "b", b)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.activation = _config.activation_name("Conv2D", activation)
        _dispatch.backend_name("Conv2D", backend)
        self.backend = backend
        self.data_format = _layout.check_choice("Conv2D", "data_format", data_format, _layout.DATA_FORMATS)
        self.filter_format = _layout.check_choice("Conv2D", "filter_format", filter_format, _layout.FILTER_FORMATS)
        self.padding_mode = _layout.check_choice("Conv2D", "padding_mode", padding_mode, _layout.PADDING_MODES)
        self.precision = None if precision is None else _config.check_precision("Conv2D", precision)
        self._check_options()
        self.dw = self.db = None
        self._x = self._y = None

    def _check_options(self) -> None:
        """Fail at construction, not at the first forward, on anything checkable without an input."""
        fname = "Conv2D"
        w_shape = tuple(_layout.to_hwio(_interop.host_view(self.w), self.filter_format).shape)
        if len(w_shape) not in (2, 4):
            raise ValueError(f"{fname}: argument 'w' must be 2-D (KH, KW) or 4-D (KH, KW, C/groups, M), "
                             f"got shape {w_shape}")
        if not _validate.is_int(self.groups):
            raise TypeError(f"{fname}: argument 'groups' must be an int, got {self.groups!r}")
        # The output size is only known with the input: check the rest on a dummy input as large as the
        # kernel's span (one output pixel whatever the stride and padding).
        d = _config.pair(fname, "dilation", self.dilation, minimum=1)
        size = (max(d[0] * (w_shape[0] - 1) + 1, 1), max(d[1] * (w_shape[1] - 1) + 1, 1))
        x_shape = size if len(w_shape) == 2 else (*size, w_shape[2] * self.groups)
        x4, w4 = _config.as_4d_shapes(fname, x_shape, w_shape)
        cfg = _config.make_config(fname, x4, w4, stride=self.stride, padding=self.padding, dilation=d,
                                  groups=self.groups)
        b = None if self.b is None else _interop.host_view(self.b)
        _check_dtypes(fname, {"w": _interop.host_view(self.w), "b": b})
        _check_bias(fname, b, cfg)

    def _options(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                "groups": self.groups, "backend": self.backend, "precision": self.precision,
                "data_format": self.data_format, "filter_format": self.filter_format,
                "padding_mode": self.padding_mode}

    def forward(self, x: ArrayLike) -> Array:
        """y = act(conv(x, w) + b) for this layer; keeps x and y for ``backward``."""
        y = conv2d(x, self.w, self.b, activation=self.activation, **self._options())
        self._x, self._y = x, y
        return y

    __call__ = forward

    def backward(self, dy: ArrayLike, *, grads: Sequence[str] = GRADS) -> Array | None:
        """dx from dy = dJ/dy (None unless "dx" is in ``grads``); sets ``self.dw`` and ``self.db`` (each None
        when not asked for in ``grads``, as ``conv2d_backward``)."""
        if self._x is None:
            raise RuntimeError("Conv2D.backward: call forward(x) first; backward needs its saved input and output")
        grads = conv2d_backward(dy, self._x, self.w, self._y, has_bias=self.b is not None,
                                activation=self.activation, grads=grads, **self._options())
        self.dw, self.db = grads.dw, grads.db
        return grads.dx

    def info(self, x_shape: Shape) -> ConvInfo:
        """conv2d_info of this layer for an input of shape ``x_shape``."""
        return conv2d_info(x_shape, self.w.shape, stride=self.stride, padding=self.padding,
                           dilation=self.dilation, groups=self.groups, bias=self.b is not None,
                           data_format=self.data_format, filter_format=self.filter_format)

    def __repr__(self) -> str:
        return (f"Conv2D(w={tuple(self.w.shape)}, bias={self.b is not None}, stride={self.stride!r}, "
                f"padding={self.padding!r}, dilation={self.dilation!r}, groups={self.groups}, "
                f"activation={self.activation!r}"
                + ("" if self.precision is None else f", precision={self.precision!r}") + ")")


def conv2d_info(x_shape: Shape, w_shape: Shape, *, stride: IntPair = 1, padding: Padding = "valid",
                dilation: IntPair = 1, groups: int = 1, bias: bool = True, data_format: str = "NHWC",
                filter_format: str = "HWIO") -> ConvInfo:
    """Output shape, channels, multiply count and parameter count of a layer, computed from shapes alone.

    ``x_shape`` is (H, W), (H, W, C) or (N, H, W, C) (with data_format "NCHW": (C, H, W) or (N, C, H, W));
    ``w_shape`` is (KH, KW) with a 2-D x, else (KH, KW, C/G, M) (filter_format "OIHW": (M, C/G, KH, KW)).
    The shapes in the result are in the same layouts.
    """
    return _layout.conv2d_info(_config.conv2d_info, x_shape, w_shape, stride=stride, padding=padding,
                               dilation=dilation, groups=groups, bias=bias, data_format=data_format,
                               filter_format=filter_format)
