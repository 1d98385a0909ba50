"""Where the CUDA headers NVRTC needs are (cuda_fp16.h is not built into NVRTC 12.9): used by the NVRTC checks
(gpuconv.cuda.nvrtc) and by the cupy module path (gpuconv.cuda.modules) alike."""
from __future__ import annotations

import os

from .._validate import env_path

ENV_INCLUDE = "GPUCONV_CUDA_INCLUDE"


def cuda_include_dirs() -> list:
    """Folders holding cuda_fp16.h and crt/mma.h for NVRTC (GPUCONV_CUDA_INCLUDE, pip wheels, CUDA toolkit), or []."""
    candidates = []
    chosen = env_path(ENV_INCLUDE, "dir")  # a value that is no folder is a ValueError naming it
    if chosen:
        candidates.append(chosen)
    try:
        import nvidia

        for base in getattr(nvidia, "__path__", []):
            candidates.append(os.path.join(base, "cuda_runtime", "include"))
            candidates.append(os.path.join(base, "cuda_nvcc", "include"))
            candidates.append(os.path.join(base, "cu12", "include"))
            candidates.append(os.path.join(base, "cu13", "include"))  # CUDA 13 wheels' layout
    except ImportError:
        pass
    try:
        from cuda import pathfinder

        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            candidates.append(str(found))
    except Exception:  # noqa: BLE001, S110 - cuda-pathfinder missing, too old, or finding nothing
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates.append("/usr/local/cuda/include")
    found = next((d for d in candidates if os.path.isfile(os.path.join(d, "cuda_fp16.h"))), None)
    if found is None:
        return []
    # mma.h (the tensor-core kernels) includes crt/mma.h, which the runtime wheel lacks: a toolkit has it
    # beside cuda_fp16.h, pip installs have it in the nvcc wheel (nvidia-cuda-nvcc-cu12).
    if os.path.isfile(os.path.join(found, "crt", "mma.h")):
        return [found]
    crt = next((d for d in candidates if os.path.isfile(os.path.join(d, "crt", "mma.h"))), None)
    return [found] if crt is None else [found, crt]
