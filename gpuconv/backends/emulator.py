"""The emulator backend: gpuconv's CUDA kernels run on the CPU by gpuconv's CUDA emulator, on numpy arrays.

Slow, and meant for tests: it runs the very kernel text the GPU runs.
"""
import numpy

from .._dispatch import BackendUnavailable


def load():
    try:
        from ..cuda.modules import emulator_unavailable_reason
    except ImportError as exc:
        raise BackendUnavailable(f"the CUDA emulator is not part of this build: {exc}") from None
    reason = emulator_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    from .cuda import CudaBackend

    return CudaBackend("emulator", numpy)
