"""What gpuconv prints about itself: show_config (versions, which backends can run here and why not) and
format_info (a layer's conv2d_info as a table)."""
from __future__ import annotations

import math
import platform

from . import _dispatch
from ._version import __version__


def config_lines() -> list:
    lines = [f"gpuconv   {__version__}", f"platform  {platform.platform()}"]
    for name, version in _dispatch.loaded_modules().items():
        lines.append(f"{name:<9} {version}")
    lines.append("backends:")
    for name in _dispatch.BACKENDS:
        reason = _dispatch.backend_status(name)
        lines.append(f"  {name:<9} {'available' if reason is None else 'unavailable: ' + reason}")
    lines.append("math paths (what computes the products, per dtype and precision; gpuconv never uses TF32 "
                 "unless asked):")
    for name in _dispatch.BACKENDS:
        if _dispatch.backend_status(name) is None:
            lines += [f"  {name:<9} {mode:<16} {path}" for mode, path in math_paths(_dispatch.load_backend(name))]
    return lines


def math_paths(backend) -> list:
    """(mode, description) for every dtype and precision of the registry on ``backend``: float32 in each
    precision, the other dtypes once (precision changes float32 only)."""
    from . import _registry

    out = []
    for entry in _registry.DTYPES.values():
        try:
            dtype = entry.numpy
        except ImportError as exc:
            out.append((entry.name, f"unavailable: {exc}"))
            continue
        precisions = _registry.precision_names() if entry.name == "float32" else ("highest",)
        for p in precisions:
            mode = f"{entry.name} {p}" if entry.name == "float32" else entry.name
            reason = backend.dtype_reason(dtype) if hasattr(backend, "dtype_reason") else None
            out.append((mode, reason if reason is not None else backend.math_path(dtype, p)))
    return out


def show_config() -> None:
    """Print gpuconv's version, the array libraries' versions, and which backends can run here and why not."""
    print("\n".join(config_lines()))


def format_info(info) -> str:
    """conv2d_info as a readable two-column table."""
    x = " x ".join(str(v) for v in info.input_shape)
    (pt, pb), (pl, pr) = info.padding
    weights = math.prod(info.weight_shape)
    biases = info.parameters - weights
    rows = [
        ("input shape", x + ("  (H x W x C)" if len(info.input_shape) == 3 else "")),
        ("kernel shape", " x ".join(str(v) for v in info.weight_shape)
         + ("  (KH x KW x C/groups x M)" if len(info.weight_shape) == 4 else "")),
        ("output shape", " x ".join(str(v) for v in info.output_shape)),
        ("stride", f"{info.stride[0]} x {info.stride[1]}"),
        ("dilation", f"{info.dilation[0]} x {info.dilation[1]}"),
        ("padding", f"top {pt}, bottom {pb}, left {pl}, right {pr}"),
        ("groups", str(info.groups)),
        ("in channels", str(info.in_channels)),
        ("out channels", str(info.out_channels)),
        ("multiplications", f"{info.multiplications:,}"),
        ("parameters", f"{info.parameters:,}  ({weights:,} weights + {biases:,} biases)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
