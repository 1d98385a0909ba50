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
