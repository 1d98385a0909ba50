"""The GPU backend: gpuconv's CUDA kernels through cupy.RawModule, on cupy arrays."""
from .._dispatch import BackendUnavailable, cupy_gpu_reason, import_cupy


def load():
    reason = cupy_gpu_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    from .cuda import CudaBackend

    return CudaBackend("cupy", import_cupy())
