"""show_config: versions, and which backends can run here (and why not)."""
from __future__ import annotations

import platform

from . import _dispatch


def config_lines() -> list:
    from . import __version__

    lines = [f"gpuconv   {__version__}", f"platform  {platform.platform()}"]
    for name, version in _dispatch.loaded_modules().items():
        lines.append(f"{name:<9} {version}")
    lines.append("backends:")
    for name in _dispatch.BACKENDS:
        reason = _dispatch.backend_status(name)
        lines.append(f"  {name:<9} {'available' if reason is None else 'unavailable: ' + reason}")
    return lines


def show_config() -> None:
    """Print gpuconv's version, the array libraries' versions, and which backends can run here and why not."""
    print("\n".join(config_lines()))
