"""show_config: versions, and which backends can run here (and why not)."""
from __future__ import annotations

import platform

from . import _config, _dispatch


def config_lines() -> list:
    from . import __version__

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
    """(mode, description) for every dtype and precision on ``backend``: float32 in each precision, the other
    dtypes once (precision changes float32 only)."""
    out = []
    for dtype_name in ("float32", "float16", "bfloat16", "float64"):
        try:
            dtype = _config.dtype_from_name(dtype_name)
        except ImportError:
            out.append((dtype_name, "needs the ml_dtypes package (not installed)"))
            continue
        precisions = _config.PRECISIONS if dtype_name == "float32" else ("highest",)
        for p in precisions:
            mode = f"{dtype_name} {p}" if dtype_name == "float32" else dtype_name
            reason = backend.dtype_reason(dtype) if hasattr(backend, "dtype_reason") else None
            out.append((mode, reason if reason is not None else backend.math_path(dtype, p)))
    return out


def show_config() -> None:
    """Print gpuconv's version, the array libraries' versions, and which backends can run here and why not."""
    print("\n".join(config_lines()))
