"""Layouts and padding modes, applied around the NHWC / HWIO, zero-padded operations of ``_api``.

``data_format="NCHW"`` (x, y, dx, dy, dz as (N, C, H, W), (C, H, W) or (H, W)) and ``filter_format="OIHW"``
(w, dw as (M, C/groups, KH, KW)) are transposed on the way in (a view, no copy, when the array is channels
last in memory already, as a channels_last tensor is; else one transposing copy) and with one transposing
copy on the way out (the result is C-contiguous in the caller's layout). ``padding_mode`` "reflect", "replicate" or "circular" (PyTorch's names and results) pads x
explicitly (``xp.pad`` modes "reflect", "edge", "wrap") by the paddings that ``padding`` gives, runs a valid
convolution, and folds the gradient of the padded input back: each padded pixel's gradient is added to the
pixel it copies, row by row in a fixed order (deterministic).
"""
from __future__ import annotations

import dataclasses
import inspect
import numbers
from dataclasses import dataclass

import numpy as np

from . import _config, _dispatch

DATA_FORMATS = ("NHWC", "NCHW")
FILTER_FORMATS = ("HWIO", "OIHW")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_XP_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}

# Axis orders: NCHW -> NHWC and back, by number of dimensions ((H, W) has no channel axis to move).
_TO_NHWC = {4: (0, 2, 3, 1), 3: (1, 2, 0)}
_FROM_NHWC = {4: (0, 3, 1, 2), 3: (2, 0, 1)}
_TO_HWIO = {4: (2, 3, 1, 0)}  # OIHW -> HWIO
_FROM_HWIO = {4: (3, 2, 0, 1)}  # HWIO -> OIHW


@dataclass(frozen=True)
class Roles:
    """What the arguments and the result of one operation are, for the layout options.

    arrays: parameter name -> "x" (an input image, padded by padding_mode), "y" (an output-sized image: y, dy,
    dz) or "w" (a filter); shapes: parameter name -> "x" or "w" (x_shape, w_shape); result: the role of the
    result ("x", "y", "w" or None), or a tuple of them for a NamedTuple result; padding: the operation takes
    stride / padding / dilation / groups (padding_mode applies).
    """

    arrays: dict
    shapes: dict
    result: object
    padding: bool = True

    @property
    def has_filter(self) -> bool:
        return "w" in self.arrays.values() or "w" in self.shapes.values() or self._result_has("w")

    def _result_has(self, role) -> bool:
        r = self.result if isinstance(self.result, tuple) else (self.result,)
        return role in r


def extra_parameters(roles: Roles | None) -> list:
    """The keyword-only parameters that ``roles`` adds to an operation's signature."""
    if roles is None:
        return []
    kw = inspect.Parameter.KEYWORD_ONLY
    out = [inspect.Parameter("data_format", kw, default="NHWC", annotation="str")]
    if roles.has_filter:
        out.append(inspect.Parameter("filter_format", kw, default="HWIO", annotation="str"))
    if roles.padding:
        out.append(inspect.Parameter("padding_mode", kw, default="zeros", annotation="str"))
    return out


def doc(roles: Roles) -> str:
    text = ("\n    data_format: \"NHWC\" (default) or \"NCHW\" for the images (x, y, dx, dy, dz and their shapes).")
    if roles.has_filter:
        text += "\n    filter_format: \"HWIO\" (default) or \"OIHW\" (PyTorch's) for w, dw and w_shape."
    if roles.padding:
        text += ("\n    padding_mode: \"zeros\" (default), \"reflect\", \"replicate\" or \"circular\" (PyTorch's), "
                 "for the pixels that padding adds.")
    return text + "\n"


def check_choice(fname: str, argname: str, value, choices: tuple) -> str:
    """``value`` as one of ``choices`` (case-insensitive), else a ValueError / TypeError naming the argument."""
    if not isinstance(value, str):
        raise TypeError(f"{fname}: argument '{argname}' must be one of {choices}, got {value!r}")
    for c in choices:
        if value.lower() == c.lower():
            return c
    raise ValueError(f"{fname}: argument '{argname}' must be one of {choices}, got {value!r}")


def _asarray(a):
    return a if hasattr(a, "shape") and hasattr(a, "transpose") else np.asarray(a)


def to_nhwc(a, data_format: str):
    """Image ``a`` in NHWC order, C-contiguous: a view when ``a`` is channels last in memory already (a
    channels_last tensor), else one transposing copy (the kernels and the NumPy backend's im2col want
    contiguous rows of channels: on a strided view the NumPy backend ran 2-4x slower)."""
    if data_format == "NHWC" or a is None:
        return a
    a = _asarray(a)
    perm = _TO_NHWC.get(a.ndim)
    return a if perm is None else _dispatch.get_array_module(a).ascontiguousarray(a.transpose(perm))


def from_nhwc(a, data_format: str):
    """Image ``a`` (NHWC) in ``data_format``, C-contiguous."""
    if data_format == "NHWC" or a is None or a.ndim not in _FROM_NHWC:
        return a
    return _dispatch.get_array_module(a).ascontiguousarray(a.transpose(_FROM_NHWC[a.ndim]))


def to_hwio(a, filter_format: str):
    if filter_format == "HWIO" or a is None:
        return a
    a = _asarray(a)
    return a.transpose(_TO_HWIO[4]) if a.ndim == 4 else a


def from_hwio(a, filter_format: str):
    if filter_format == "HWIO" or a is None or a.ndim != 4:
        return a
    return _dispatch.get_array_module(a).ascontiguousarray(a.transpose(_FROM_HWIO[4]))


def _permute_shape(shape, perm_by_ndim: dict):
    """A shape argument permuted like its array would be; anything that is not a sequence is left for the
    operation's own checks to refuse."""
    if not isinstance(shape, (tuple, list)) or len(shape) not in perm_by_ndim:
        return shape
    return tuple(shape[i] for i in perm_by_ndim[len(shape)])


class Plan:
    """What ``prepare`` changed, to undo on the result."""

    def __init__(self, roles: Roles, data_format: str, filter_format: str, mode: str, pads, spatial_axes):
        self.roles, self.data_format, self.filter_format = roles, data_format, filter_format
        self.mode, self.pads, self.axes = mode, pads, spatial_axes  # pads (pt, pb, pl, pr) or None

    def finish(self, result):
        roles = self.roles.result
        if isinstance(roles, tuple):
            return type(result)(*(self._one(r, role) for r, role in zip(result, roles)))
        return self._one(result, roles)

    def _one(self, a, role):
        if a is None or role is None:
            return a
        if role == "w":
            return from_hwio(a, self.filter_format)
        if role == "x" and self.pads is not None:
            a = fold_padding(a, self.mode, self.pads, self.axes)
        return from_nhwc(a, self.data_format)


def prepare(fname: str, roles: Roles, arguments: dict, options: dict) -> Plan:
    """Rewrite ``arguments`` (the operation's bound arguments, in place) to NHWC / HWIO and zero padding."""
    data_format = check_choice(fname, "data_format", options.get("data_format", "NHWC"), DATA_FORMATS)
    filter_format = check_choice(fname, "filter_format", options.get("filter_format", "HWIO"), FILTER_FORMATS)
    mode = check_choice(fname, "padding_mode", options.get("padding_mode", "zeros"), PADDING_MODES)
    for name, role in roles.arrays.items():
        a = arguments.get(name)
        if a is None:
            continue
        arguments[name] = to_hwio(a, filter_format) if role == "w" else to_nhwc(a, data_format)
    for name, role in roles.shapes.items():
        if name in arguments:
            perm = _TO_HWIO if role == "w" and filter_format == "OIHW" else \
                _TO_NHWC if role == "x" and data_format == "NCHW" else {}
            arguments[name] = _permute_shape(arguments[name], perm)
    pads = axes = None
    if mode != "zeros":
        pads, axes = _explicit_padding(fname, roles, arguments, mode)
    return Plan(roles, data_format, filter_format, mode, pads, axes)


def _shape_of(fname: str, roles: Roles, arguments: dict, role: str):
    for name, r in roles.arrays.items():
        if r == role and arguments.get(name) is not None:
            return tuple(_asarray(arguments[name]).shape)
    for name, r in roles.shapes.items():
        if r == role:
            shape = arguments[name]
            if not isinstance(shape, (tuple, list)) or not all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shape):
                raise TypeError(f"{fname}: argument '{name}' must be a tuple of ints, got {shape!r}")
            return tuple(int(v) for v in shape)
    raise AssertionError(role)


def _explicit_padding(fname: str, roles: Roles, arguments: dict, mode: str):
    """Pad the x arguments (and grow x_shape) by the paddings of ``padding`` in ``mode``; padding becomes 0.
    Returns ((pt, pb, pl, pr), spatial axes) or (None, None) when there is nothing to pad."""
    x_shape, w_shape = _shape_of(fname, roles, arguments, "x"), _shape_of(fname, roles, arguments, "w")
    x4, w4 = _config.as_4d_shapes(fname, x_shape, w_shape)
    cfg = _config.make_config(fname, x4, w4, stride=arguments.get("stride", 1),
                              padding=arguments.get("padding", "valid"), dilation=arguments.get("dilation", 1),
                              groups=arguments.get("groups", 1))
    pads = (cfg.pt, cfg.pb, cfg.pl, cfg.pr)
    if not any(pads):
        return None, None
    for (before, after), size, what in (((cfg.pt, cfg.pb), cfg.h, "height"), ((cfg.pl, cfg.pr), cfg.w, "width")):
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(f"{fname}: padding_mode 'reflect' needs each padding below the input's {what} "
                             f"({size}), got {before} and {after}")
        if mode == "circular" and max(before, after) > size:
            raise ValueError(f"{fname}: padding_mode 'circular' needs each padding at most the input's {what} "
                             f"({size}), got {before} and {after}")
    axes = (0, 1) if len(x_shape) <= 3 else (1, 2)
    for name, role in roles.arrays.items():
        if role == "x" and arguments.get(name) is not None:
            a = _asarray(arguments[name])
            widths = [(0, 0)] * a.ndim
            widths[axes[0]], widths[axes[1]] = (cfg.pt, cfg.pb), (cfg.pl, cfg.pr)
            arguments[name] = _dispatch.get_array_module(a).pad(a, widths, mode=_XP_PAD_MODES[mode])
    for name, role in roles.shapes.items():
        if role == "x":
            shape = list(x_shape)
            shape[axes[0]] += cfg.pt + cfg.pb
            shape[axes[1]] += cfg.pl + cfg.pr
            arguments[name] = tuple(shape)
    arguments["padding"] = 0
    return pads, axes


def _source_index(p: int, size: int, mode: str) -> int:
    """The input pixel that padded position p (relative to the first real pixel) copies."""
    if mode == "replicate":
        return min(max(p, 0), size - 1)
    if mode == "circular":
        return p % size
    return -p if p < 0 else 2 * (size - 1) - p  # reflect, without repeating the edge


def fold_padding(g, mode: str, pads: tuple, axes: tuple):
    """The gradient of the unpadded input from ``g``, the gradient of the padded one."""
    xp = _dispatch.get_array_module(g)
    for axis, (before, after) in zip(axes, ((pads[0], pads[1]), (pads[2], pads[3]))):
        size = g.shape[axis] - before - after

        def at(i, _axis=axis):
            return (slice(None),) * _axis + (i,)

        out = xp.ascontiguousarray(g[at(slice(before, before + size))])
        for i in (*range(before), *range(before + size, before + size + after)):
            out[at(_source_index(i - before, size, mode))] += g[at(i)]
        g = out
    return g


def conv2d_info(info, x_shape, w_shape, *, data_format="NHWC", filter_format="HWIO", **options):
    """``info`` (``_config.conv2d_info``) with x_shape / w_shape and the output shape in the given layouts."""
    fname = "conv2d_info"
    data_format = check_choice(fname, "data_format", data_format, DATA_FORMATS)
    filter_format = check_choice(fname, "filter_format", filter_format, FILTER_FORMATS)
    if data_format == "NHWC" and filter_format == "HWIO":
        return info(x_shape, w_shape, **options)
    xs = _permute_shape(x_shape, _TO_NHWC if data_format == "NCHW" else {})
    ws = _permute_shape(w_shape, _TO_HWIO if filter_format == "OIHW" else {})
    out = info(xs, ws, **options)
    return dataclasses.replace(out, input_shape=tuple(x_shape), weight_shape=tuple(w_shape),
                               output_shape=_permute_shape(out.output_shape,
                                                           _FROM_NHWC if data_format == "NCHW" else {}))
