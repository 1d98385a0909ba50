"""Argument checks and shape arithmetic, written once and shared by every backend.

Notation (used in every module, in Python and in CUDA):
  x  (N, H, W, C)          input, NHWC
  w  (KH, KW, C/G, M)      weights, HWIO; G = groups
  y  (N, OH, OW, M)        output
  s1, s2 strides; d1, d2 dilations; pt, pb, pl, pr paddings (top, bottom, left, right)

Every public operation turns its options into one frozen ``ConvConfig`` here; backends receive it and never
validate anything themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _registry, _validate

ACTIVATIONS = _registry.activation_names()
PADDING_MODES = ("valid", "same", "full")
# The registered dtypes that need no optional package (a fast first check; bfloat16 is found by name).
FLOAT_DTYPES = tuple(d.spec for d in _registry.DTYPES.values() if isinstance(d.spec, np.dtype))
# How float32 products are computed: "highest" (strict FP32, the default) or "tf32" (operands rounded to TF32,
# float32 accumulation). Other dtypes ignore it. gpuconv never uses TF32 unless asked.
PRECISIONS = _registry.precision_names()

_workspace_limit = 256 * 2**20
_float32_precision = "highest"


def set_workspace_limit(nbytes: int) -> None:
    """Cap the temporary buffers (im2col columns) a backend may allocate for one chunk of the batch."""
    if not _validate.is_int(nbytes):  # True would be a 1-byte limit
        raise TypeError(f"set_workspace_limit: argument 'nbytes' must be a positive int, got {nbytes!r}")
    if nbytes < 1:
        raise ValueError(f"set_workspace_limit: argument 'nbytes' must be a positive int, got {nbytes!r}")
    global _workspace_limit
    _workspace_limit = int(nbytes)


def get_workspace_limit() -> int:
    """The current workspace cap in bytes (default 256 MiB)."""
    return _workspace_limit


def check_precision(fname: str, precision, argname: str = "precision") -> str:
    """One of PRECISIONS; anything else is a ValueError naming the function and the argument."""
    if isinstance(precision, str) and precision.lower() in PRECISIONS:
        return precision.lower()
    raise ValueError(f"{fname}: argument '{argname}' must be one of {PRECISIONS}, got {precision!r}")


def set_float32_precision(precision: str) -> None:
    """The process-wide precision of float32 convolutions when a call does not pass ``precision=``.

    "highest" (the default): strict FP32 products. "tf32": both operands of every product rounded to TF32
    (10 explicit mantissa bits, as the GPU's tensor cores take them), float32 accumulation: on a GPU with TF32
    tensor cores (sm_80+) several times faster, with about 1e-3 relative error instead of 1e-6. Other dtypes are
    unaffected. gpuconv never uses TF32 unless asked, here or with ``precision=``.
    """
    global _float32_precision
    _float32_precision = check_precision("set_float32_precision", precision)


def get_float32_precision() -> str:
    """The process-wide float32 precision: "highest" unless changed with ``set_float32_precision``."""
    return _float32_precision


def resolve_precision(fname: str, precision) -> str:
    """``precision=`` of a public call: None means the process-wide default."""
    return _float32_precision if precision is None else check_precision(fname, precision)


@dataclass(frozen=True)
class ConvConfig:
    """Everything a backend needs to know about one convolution, normalized and checked."""

    n: int
    h: int
    w: int
    c: int
    kh: int
    kw: int
    m: int
    groups: int
    s1: int
    s2: int
    d1: int
    d2: int
    pt: int
    pb: int
    pl: int
    pr: int
    oh: int
    ow: int

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def mg(self) -> int:
        """Output channels per group."""
        return self.m // self.groups

    @property
    def x_shape(self) -> tuple:
        return (self.n, self.h, self.w, self.c)

    @property
    def w_shape(self) -> tuple:
        return (self.kh, self.kw, self.cg, self.m)

    @property
    def y_shape(self) -> tuple:
        return (self.n, self.oh, self.ow, self.m)

    @property
    def multiplications(self) -> int:
        """Multiplies in the forward convolution (padding taps counted, bias excluded)."""
        return self.n * self.oh * self.ow * self.m * self.kh * self.kw * self.cg


@dataclass(frozen=True)
class ConvInfo:
    """What ``conv2d_info`` reports about a layer."""

    input_shape: tuple
    weight_shape: tuple
    output_shape: tuple
    in_channels: int
    out_channels: int
    multiplications: int
    parameters: int
    stride: tuple
    dilation: tuple
    padding: tuple  # ((top, bottom), (left, right))
    groups: int


def pair(fname: str, argname: str, value, *, minimum: int) -> tuple:
    """An int or a pair of ints -> (a, b), each at least ``minimum`` and at most MAX_EXTENT."""
    if _is_int(value):
        values = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        values = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{fname}: argument '{argname}' must be an int or a pair of ints, got {value!r}")
    if min(values) < minimum:
        word = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{fname}: argument '{argname}' must be {word}, got {value!r}")
    _validate.check_extent(fname, argname, max(values), "is")
    return values


_is_int = _validate.is_int


def paddings(fname: str, padding, h: int, w: int, kh: int, kw: int, s: tuple, d: tuple) -> tuple:
    """Any accepted ``padding`` -> (top, bottom, left, right)."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "full":
            ph, pw = d[0] * (kh - 1), d[1] * (kw - 1)
            return (ph, ph, pw, pw)
        if mode == "same":
            # TensorFlow's rule: output ceil(size / stride), the odd pixel of padding at the bottom/right.
            out = []
            for size, k, st, dl in ((h, kh, s[0], d[0]), (w, kw, s[1], d[1])):
                total = max((-(-size // st) - 1) * st + (k - 1) * dl + 1 - size, 0)  # ints: exact for any size
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ValueError(
            f"{fname}: argument 'padding' must be one of {PADDING_MODES}, an int or pairs, got {padding!r}"
        )
    if _is_int(padding):
        values = (int(padding),) * 4
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(p) for p in padding):
        values = (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(q) for q in p) for p in padding)
    ):
        values = tuple(int(q) for p in padding for q in p)
    else:
        raise TypeError(
            f"{fname}: argument 'padding' must be 'valid', 'same', 'full', an int, (ph, pw) or "
            f"((top, bottom), (left, right)), got {padding!r}"
        )
    if min(values) < 0:
        raise ValueError(f"{fname}: argument 'padding' must be non-negative, got {padding!r}")
    _validate.check_extent(fname, "padding", max(values), "is")
    return values


def activation_name(fname: str, activation) -> str:
    """None or a name -> one of ACTIVATIONS."""
    if activation is None:
        return "identity"
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return activation.lower()
    raise ValueError(
        f"{fname}: argument 'activation' must be None or one of {ACTIVATIONS}, got {activation!r}"
    )


def needs_output(activation: str) -> bool:
    """Whether the gradient of a (checked) activation reads the saved forward output."""
    return _registry.activation(activation).uses_output


def bfloat16() -> np.dtype:
    """The numpy dtype of ``ml_dtypes.bfloat16`` (an optional dependency, imported only when asked for)."""
    return _registry.DTYPES["bfloat16"].numpy


def dtype_from_name(name: str) -> np.dtype:
    """A registered dtype's name -> its numpy dtype (bfloat16 through ml_dtypes: ImportError naming it if absent)."""
    return _registry.dtype(name).numpy


def is_float_dtype(dtype) -> bool:
    """One of the registered dtypes gpuconv computes in (float16, bfloat16, float32, float64)."""
    if dtype in FLOAT_DTYPES:
        return True
    try:
        _registry.dtype(dtype)
    except TypeError:
        return False
    return True


def check_float_dtype(fname: str, argname: str, dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if not is_float_dtype(dtype):
        raise TypeError(
            f"{fname}: argument '{argname}' must have dtype {', '.join(_registry.dtype_names())}, got {dtype}"
        )
    return dtype


def check_same_dtype(fname: str, ref_name: str, ref_dtype, argname: str, dtype) -> None:
    check_float_dtype(fname, argname, dtype)
    if np.dtype(dtype) != np.dtype(ref_dtype):
        raise TypeError(
            f"{fname}: argument '{argname}' has dtype {np.dtype(dtype)} but '{ref_name}' has "
            f"{np.dtype(ref_dtype)}; convert one with .astype({np.dtype(ref_dtype).name!r}) "
            "(gpuconv never promotes silently)"
        )


def make_config(
    fname: str, x_shape: tuple, w_shape: tuple, *, stride=1, padding="valid", dilation=1, groups=1,
    names: tuple = ("x", "w"),
) -> ConvConfig:
    """Check a 4-D x_shape (N,H,W,C) against a 4-D w_shape (KH,KW,C/G,M) and the options; build the config.

    ``names``: what the caller calls x and w in messages ('x_shape', 'w_shape' where it passed a shape).
    """
    xn, wn = names
    n, h, w, c = (int(v) for v in x_shape)
    kh, kw, cg, m = (int(v) for v in w_shape)
    if not _is_int(groups):
        raise TypeError(f"{fname}: argument 'groups' must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{fname}: argument 'groups' must be positive, got {groups!r}")
    s = pair(fname, "stride", stride, minimum=1)
    d = pair(fname, "dilation", dilation, minimum=1)
    if min(kh, kw, cg, m) < 1:
        raise ValueError(
            f"{fname}: argument '{wn}' must have a non-empty shape (KH, KW, C/groups, M), got {tuple(w_shape)}"
        )
    if c != cg * groups:
        raise ValueError(
            f"{fname}: argument '{xn}' has {c} channels but '{wn}' expects {wn}[2] * groups = "
            f"{cg} * {groups} = {cg * groups}"
        )
    if m % groups:
        raise ValueError(
            f"{fname}: argument '{wn}' has {m} output channels, not divisible by groups={groups}"
        )
    for k, dl in ((kh, d[0]), (kw, d[1])):
        _validate.check_extent(fname, "dilation", dl * (k - 1) + 1, "gives a kernel span d * (K - 1) + 1 of")
    _validate.check_extent(fname, xn, max(h, w), "has an image size of")
    pt, pb, pl, pr = paddings(fname, padding, h, w, kh, kw, s, d)
    _validate.check_extent(fname, "padding", max(h + pt + pb, w + pl + pr), "gives a padded image size of")
    oh = (h + pt + pb - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (w + pl + pr - d[1] * (kw - 1) - 1) // s[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{fname}: argument '{xn}' ({h}x{w}) is too small: the output would be {oh}x{ow} (below 1) with "
            f"padding (({pt}, {pb}), ({pl}, {pr})), kernel {kh}x{kw}, dilation {d}, stride {s}"
        )
    # the output's size, with the widest dtype: blamed on the padding when it is what makes the output big
    _validate.check_bytes(fname, "padding" if pt + pb + pl + pr else xn, (n, oh, ow, m), 8, "an output of")
    return ConvConfig(n, h, w, c, kh, kw, m, int(groups), s[0], s[1], d[0], d[1], pt, pb, pl, pr, oh, ow)


def conv2d_info(x_shape, w_shape, *, stride=1, padding="valid", dilation=1, groups=1, bias=True) -> ConvInfo:
    """Output shape, channels, multiply count and parameter count of a layer, computed from shapes alone.

    ``x_shape`` is (H, W), (H, W, C) or (N, H, W, C); ``w_shape`` is (KH, KW) with a 2-D x, else (KH, KW, C/G, M).
    """
    fname = "conv2d_info"
    x_shape = _validate.shape_tuple(fname, "x_shape", x_shape)
    w_shape = _validate.shape_tuple(fname, "w_shape", w_shape)
    bias = _validate.check_flag(fname, "bias", bias)
    names = ("x_shape", "w_shape")
    x4, w4 = as_4d_shapes(fname, x_shape, w_shape, names=names)
    cfg = make_config(fname, x4, w4, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      names=names)
    y_shape = cfg.y_shape[4 - len(x_shape) :] if len(x_shape) > 2 else (cfg.oh, cfg.ow)
    params = cfg.kh * cfg.kw * cfg.cg * cfg.m + (cfg.m if bias else 0)
    return ConvInfo(
        input_shape=x_shape,
        weight_shape=w_shape,
        output_shape=y_shape,
        in_channels=cfg.c,
        out_channels=cfg.m,
        multiplications=cfg.multiplications,
        parameters=params,
        stride=(cfg.s1, cfg.s2),
        dilation=(cfg.d1, cfg.d2),
        padding=((cfg.pt, cfg.pb), (cfg.pl, cfg.pr)),
        groups=cfg.groups,
    )


def as_4d_shapes(fname: str, x_shape: tuple, w_shape: tuple, names: tuple = ("x", "w")) -> tuple:
    """(H,W)+(KH,KW), (H,W,C)+4-D or (N,H,W,C)+4-D -> the 4-D shapes; anything else is a ValueError."""
    xn, wn = names
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) == 2:
        if len(w_shape) != 2:
            raise ValueError(
                f"{fname}: argument '{wn}' must be 2-D (KH, KW) when '{xn}' is 2-D (H, W), got shape {w_shape}"
            )
        return (1, *x_shape, 1), (*w_shape, 1, 1)
    if len(x_shape) not in (3, 4):
        raise ValueError(
            f"{fname}: argument '{xn}' must be 2-D (H, W), 3-D (H, W, C) or 4-D (N, H, W, C), "
            f"got shape {x_shape}"
        )
    if len(w_shape) != 4:
        raise ValueError(
            f"{fname}: argument '{wn}' must be 4-D (KH, KW, C/groups, M) when '{xn}' is {len(x_shape)}-D, "
            f"got shape {w_shape}"
        )
    return ((1,) * (4 - len(x_shape)) + x_shape, w_shape)


def user_y_shape(cfg: ConvConfig, x_ndim: int) -> tuple:
    """The output shape in the caller's layout (2-D, 3-D or 4-D, following x)."""
    if x_ndim == 2:
        return (cfg.oh, cfg.ow)
    return cfg.y_shape[4 - x_ndim :]
