"""The transposed convolution ("deconvolution"): the input-gradient operation of a convolution, as a layer.

Shapes (channels last): x (H,W) | (H,W,Ci) | (N,H,W,Ci); w (KH,KW) with a 2-D x, else (KH,KW,Co/groups,Ci), the
filter of TensorFlow's ``conv2d_transpose``: the HWIO filter of the convolution whose input gradient this is;
bias (Co,); output (OH,OW) | (OH,OW,Co) | (N,OH,OW,Co), following x, with

    OH = (H - 1) * s1 - (pt + pb) + d1 * (KH - 1) + output_padding + 1     (numeric padding, "valid", "full")
    OH = H * s1                                                             ("same")

and OW likewise. Everything is built on one ``ConvConfig``, that of the forward convolution mapping the output
(N,OH,OW,Co) to x (N,H,W,Ci) (as CUTLASS's kDeconv shares kDgrad's branch):

    y  = act(backward_input(x, w) + b)     the backends fuse the bias and activation into their dx epilogue
    dx = forward(dz, w)                    dz = dy * act'(y)
    dw = backward_weight(x, dz)            the roles of input and output gradient swapped
    db = sum of dz

output_padding > 0 adds rows at the bottom (columns at the right) that no tap of the forward convolution
reads back: the config gets pb - output_padding there (a crop when negative), so that its output size is H.
"""
from __future__ import annotations

from . import _config, _dispatch, _interop, _layout, _validate
from ._api import Conv2DGrads, _back, _check_dtypes, _check_shape, _prepare
from ._config import ConvConfig
from ._interop import public
from ._layout import Roles
from ._types import Array, ArrayLike, IntPair, Padding


def transpose_config(fname: str, x_shape: tuple, w_shape: tuple, *, stride=1, padding="valid", output_padding=0,
                     dilation=1, groups=1) -> ConvConfig:
    """Check a 4-D x_shape (N,H,W,Ci) against a 4-D w_shape (KH,KW,Co/G,Ci) and the options; the config of the
    forward convolution (N,OH,OW,Co) -> (N,H,W,Ci) whose input gradient the transposed convolution is."""
    n, h, w, ci = (int(v) for v in x_shape)
    kh, kw, cog, wci = (int(v) for v in w_shape)
    if not _config._is_int(groups):
        raise TypeError(f"{fname}: argument 'groups' must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{fname}: argument 'groups' must be positive, got {groups!r}")
    s = _config.pair(fname, "stride", stride, minimum=1)
    d = _config.pair(fname, "dilation", dilation, minimum=1)
    op = _config.pair(fname, "output_padding", output_padding, minimum=0)
    if min(kh, kw, cog, wci) < 1:
        raise ValueError(f"{fname}: argument 'w' must have a non-empty shape (KH, KW, Co/groups, Ci), got {w_shape}")
    if ci != wci:
        raise ValueError(f"{fname}: argument 'x' has {ci} channels but 'w' expects w.shape[3] = {wci} "
                         "(w is (KH, KW, out_channels/groups, in_channels), as TensorFlow's conv2d_transpose)")
    if ci % groups:
        raise ValueError(f"{fname}: argument 'x' has {ci} channels, not divisible by groups={groups}")
    for i, axis in enumerate(("rows", "columns")):
        if op[i] >= max(s[i], d[i]):
            raise ValueError(f"{fname}: argument 'output_padding' must be smaller than the stride or the dilation "
                             f"(as in PyTorch), got {op[i]} for the {axis} with stride {s[i]}, dilation {d[i]}")
    same = isinstance(padding, str) and padding.lower() == "same"
    if same:
        if op != (0, 0):
            raise ValueError(f"{fname}: argument 'output_padding' must be 0 with padding='same' (the output is "
                             f"H * stride), got {output_padding!r}")
        oh, ow = h * s[0], w * s[1]
        # TensorFlow's "same" padding of the forward convolution on the H * s output gives back H
        pt, pb, pl, pr = _config.paddings(fname, "same", oh, ow, kh, kw, s, d)
    else:
        pt, pb, pl, pr = _config.paddings(fname, padding, h, w, kh, kw, s, d)
        oh = (h - 1) * s[0] - (pt + pb) + d[0] * (kh - 1) + op[0] + 1
        ow = (w - 1) * s[1] - (pl + pr) + d[1] * (kw - 1) + op[1] + 1
        if oh < 1 or ow < 1:
            raise ValueError(
                f"{fname}: argument 'x' ({h}x{w}) is too small: the output would be {oh}x{ow} (below 1) with "
                f"padding (({pt}, {pb}), ({pl}, {pr})), kernel {kh}x{kw}, dilation {d}, stride {s}, "
                f"output_padding {op}")
        pb, pr = pb - op[0], pr - op[1]
    return ConvConfig(n, oh, ow, cog * groups, kh, kw, ci, int(groups), s[0], s[1], d[0], d[1], pt, pb, pl, pr,
                      h, w)


def _config_for(fname, x_shape, w_shape, options) -> ConvConfig:
    x4, w4 = _config.as_4d_shapes(fname, tuple(x_shape), tuple(w_shape))
    return transpose_config(fname, x4, w4, **options)


def _user_shape(cfg: ConvConfig, ndim: int) -> tuple:
    """The transposed convolution's output shape in the caller's layout (following x's ndim)."""
    if ndim == 2:
        return (cfg.h, cfg.w)
    return cfg.x_shape[4 - ndim:]


def _options(stride, padding, output_padding, dilation, groups) -> dict:
    return {"stride": stride, "padding": padding, "output_padding": output_padding, "dilation": dilation,
            "groups": groups}


# Layouts: x and the output are images (data_format); w is a filter (filter_format "OIHW" is the forward
# convolution's (Ci, Co/G, KH, KW), PyTorch's ConvTranspose2d weight). Zero padding only, as PyTorch's.
@public(arrays=("x", "w", "b"), like="x", layout=Roles({"x": "y", "w": "w"}, {}, "x", padding=False))
def conv2d_transpose(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None, *, stride: IntPair = 1,
                     padding: Padding = "valid", output_padding: IntPair = 0, dilation: IntPair = 1,
                     groups: int = 1, activation: str | None = None, backend: str = "auto",
                     precision: str | None = None) -> Array:
    """act(conv_transpose(x, w) + b): the transposed convolution, bias and activation fused, channels last.

    w is (KH, KW, Co/groups, Ci) as TensorFlow's conv2d_transpose filter (the forward convolution's HWIO
    filter); b (Co,). The output is (N, OH, OW, Co) with OH = (H-1)*s - (pt+pb) + d*(KH-1) + output_padding + 1
    for "valid", "full" and numeric padding (the padding of that forward convolution: it crops the output),
    OH = H*s for "same". output_padding (int or pair) must be below max(stride, dilation), as in PyTorch, and 0
    with "same". Other options as ``conv2d``. Equals ``torch.nn.functional.conv_transpose2d`` after the layout
    change (NHWC <-> NCHW, w (KH,KW,Co/G,Ci) <-> torch's (Ci, Co/G, KH, KW)). ``precision`` as ``conv2d``
    (the products; the bias and activation are never rounded to TF32).
    """
    fname = "conv2d_transpose"
    prec = _config.resolve_precision(fname, precision)
    be, a = _prepare(fname, backend, {"x": x, "w": w, "b": b}, required=("x", "w"))
    _check_dtypes(fname, a, be)
    act = _config.activation_name(fname, activation)
    cfg = _config_for(fname, a["x"].shape, a["w"].shape,
                      _options(stride, padding, output_padding, dilation, groups))
    if a["b"] is not None:
        _check_shape(fname, "b", a["b"], (cfg.c,))
    if cfg.n == 0:
        y = be.xp.zeros(cfg.x_shape, a["x"].dtype)
    else:
        y = be.backward_input(a["x"].reshape(cfg.y_shape), a["w"].reshape(cfg.w_shape), cfg, precision=prec,
                              b=a["b"], activation=act)
    return _back(y.reshape(_user_shape(cfg, a["x"].ndim)), x)


@public(arrays=("dy", "x", "w", "y"), like="dy",
        layout=Roles({"dy": "x", "x": "y", "w": "w", "y": "x"}, {}, ("y", "w", None), padding=False))
def conv2d_transpose_backward(dy: ArrayLike, x: ArrayLike, w: ArrayLike, y: ArrayLike | None = None, *,
                              has_bias: bool = True, stride: IntPair = 1, padding: Padding = "valid",
                              output_padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                              activation: str | None = None, backend: str = "auto",
                              precision: str | None = None) -> Conv2DGrads:
    """All gradients of ``conv2d_transpose`` from dy = dJ/dy: Conv2DGrads(dx, dw, db).

    dx = conv2d(dz, w) (a forward convolution), dw the weight gradient with the roles of input and output
    swapped, db = dz summed; dz = dy * act'(y) from ``y``, the forward output (needed for relu and sigmoid).
    db is None when ``has_bias`` is False. ``precision`` applies to the products of dx and dw.
    """
    fname = "conv2d_transpose_backward"
    prec = _config.resolve_precision(fname, precision)
    act = _config.activation_name(fname, activation)
    if y is None and act != "identity":
        raise ValueError(f"{fname}: argument 'y' (the forward output) is required for activation {act!r}")
    be, a = _prepare(fname, backend, {"dy": dy, "x": x, "w": w, "y": y}, required=("dy", "x", "w"))
    _check_dtypes(fname, a, be)
    cfg = _config_for(fname, a["x"].shape, a["w"].shape,
                      _options(stride, padding, output_padding, dilation, groups))
    y_shape = _user_shape(cfg, a["x"].ndim)
    _check_shape(fname, "dy", a["dy"], y_shape)
    if a["y"] is not None:
        _check_shape(fname, "y", a["y"], y_shape)
    dtype = a["dy"].dtype
    if cfg.n == 0:
        dx, dw = be.xp.zeros(cfg.y_shape, dtype), be.xp.zeros(cfg.w_shape, dtype)
        db = be.xp.zeros((cfg.c,), dtype) if has_bias else None
    else:
        dz = a["dy"] if act == "identity" else be.activation_backward(a["dy"], a["y"], act)
        dz4, x4 = dz.reshape(cfg.x_shape), a["x"].reshape(cfg.y_shape)
        dx = be.forward(dz4, a["w"].reshape(cfg.w_shape), None, cfg, "identity", precision=prec)
        dw = be.backward_weight(x4, dz4, cfg, precision=prec)
        db = be.backward_bias(dz4) if has_bias else None
    return Conv2DGrads(_back(dx.reshape(a["x"].shape), dy), _back(dw.reshape(a["w"].shape), dy), _back(db, dy))


class Conv2DTranspose:
    """A transposed convolution layer: ``layer(x)`` runs the fused forward pass and keeps what backward needs;
    ``layer.backward(dy)`` returns dx and sets ``layer.dw`` and ``layer.db``.

    w is (KH, KW, Co/groups, Ci), b (Co,) or None; the options are those of ``conv2d_transpose``, checked when
    the layer is built; ``precision=None`` follows the process default at each call.
    """

    def __init__(self, w: ArrayLike, b: ArrayLike | None = None, *, stride: IntPair = 1,
                 padding: Padding = "valid", output_padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                 activation: str | None = None, backend: str = "auto", precision: str | None = None,
                 data_format: str = "NHWC", filter_format: str = "HWIO") -> None:
        # what conv2d_transpose takes (lists, ...) is taken here too; arrays are kept as they are
        self.w = _validate.as_array("Conv2DTranspose", "w", w)
        self.b = None if b is None else _validate.as_array("Conv2DTranspose", "b", b)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.dilation, self.groups = dilation, groups
        self.activation = _config.activation_name("Conv2DTranspose", activation)
        _dispatch.backend_name("Conv2DTranspose", backend)
        self.backend = backend
        self.precision = None if precision is None else _config.check_precision("Conv2DTranspose", precision)
        fname = "Conv2DTranspose"
        self.data_format = _layout.check_choice(fname, "data_format", data_format, _layout.DATA_FORMATS)
        self.filter_format = _layout.check_choice(fname, "filter_format", filter_format, _layout.FILTER_FORMATS)
        self._check_options()
        self.dw = self.db = None
        self._x = self._y = None

    def _check_options(self) -> None:
        """Fail at construction on anything checkable without an input (on a dummy input large enough for
        any padding)."""
        fname = "Conv2DTranspose"
        w_shape = tuple(_layout.to_hwio(_interop.host_view(self.w), self.filter_format).shape)
        if len(w_shape) not in (2, 4):
            raise ValueError(f"{fname}: argument 'w' must be 2-D (KH, KW) or 4-D (KH, KW, Co/groups, Ci), "
                             f"got shape {w_shape}")
        d = _config.pair(fname, "dilation", self.dilation, minimum=1)
        pads = self.padding if not isinstance(self.padding, str) else 0
        try:
            size = 1 + 2 * max([int(v) for v in _flatten(pads)] + [0])
        except (TypeError, ValueError):
            size = 1  # a malformed padding: transpose_config says what is wrong with it
        size += 2 * max(d) * max(w_shape[:2])  # room for "full" padding
        x_shape = (size, size) if len(w_shape) == 2 else (size, size, w_shape[3])
        geometry = _options(self.stride, self.padding, self.output_padding, self.dilation, self.groups)
        cfg = _config_for(fname, x_shape, w_shape, geometry)
        b = None if self.b is None else _interop.host_view(self.b)
        _check_dtypes(fname, {"w": _interop.host_view(self.w), "b": b})
        if b is not None:
            _check_shape(fname, "b", b, (cfg.c,))

    def _geometry(self) -> dict:
        """The options of conv2d_transpose (and its backward) other than activation, backend and precision."""
        return {**_options(self.stride, self.padding, self.output_padding, self.dilation, self.groups),
                "data_format": self.data_format, "filter_format": self.filter_format}

    def forward(self, x: ArrayLike) -> Array:
        """y = act(conv_transpose(x, w) + b); keeps x and y for backward."""
        y = conv2d_transpose(x, self.w, self.b, activation=self.activation, backend=self.backend,
                             precision=self.precision, **self._geometry())
        self._x, self._y = x, y
        return y

    __call__ = forward

    def backward(self, dy: ArrayLike) -> Array:
        """dx from dy = dJ/dy of the last forward; sets ``self.dw`` and ``self.db``."""
        if self._x is None:
            raise RuntimeError("Conv2DTranspose.backward: call forward(x) first; backward needs its saved input "
                               "and output")
        grads = conv2d_transpose_backward(dy, self._x, self.w, self._y, has_bias=self.b is not None,
                                          activation=self.activation, backend=self.backend,
                                          precision=self.precision, **self._geometry())
        self.dw, self.db = grads.dw, grads.db
        return grads.dx

    def __repr__(self) -> str:
        return (f"Conv2DTranspose(w={tuple(self.w.shape)}, bias={self.b is not None}, stride={self.stride!r}, "
                f"padding={self.padding!r}, output_padding={self.output_padding!r}, "
                f"dilation={self.dilation!r}, groups={self.groups}, activation={self.activation!r})")


def _flatten(v):
    if isinstance(v, (tuple, list)):
        for i in v:
            yield from _flatten(i)
    else:
        yield v
