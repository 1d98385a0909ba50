"""gpuconv: 2D convolution layers (forward + every gradient) as raw CUDA kernels, with a NumPy fallback.

    >>> import numpy as np, gpuconv
    >>> x = np.random.rand(1, 48, 64, 10).astype(np.float32)   # NHWC
    >>> w = np.random.rand(3, 3, 10, 20).astype(np.float32)    # HWIO
    >>> gpuconv.conv2d(x, w, activation="relu").shape
    (1, 46, 62, 20)
"""
from ._api import (
    Conv2D,
    Conv2DGrads,
    activation_backward,
    conv2d,
    conv2d_backward,
    conv2d_backward_bias,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_info,
)
from ._config import (
    PRECISIONS,
    ConvInfo,
    get_float32_precision,
    get_workspace_limit,
    set_float32_precision,
    set_workspace_limit,
)
from ._transpose import Conv2DTranspose, conv2d_transpose, conv2d_transpose_backward
from ._dispatch import get_array_module
from ._show import show_config

from ._version import __version__


def _load_dask():
    """gpuconv.dask, imported when the first dask array reaches a public function (never at import: it
    imports dask)."""
    from . import dask

    return dask


from . import _interop  # noqa: E402

_interop.set_dask_loader(_load_dask)

__all__ = [
    "PRECISIONS",
    "Conv2D",
    "Conv2DGrads",
    "Conv2DTranspose",
    "ConvInfo",
    "activation_backward",
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_bias",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_info",
    "conv2d_transpose",
    "conv2d_transpose_backward",
    "get_array_module",
    "get_float32_precision",
    "get_workspace_limit",
    "set_float32_precision",
    "set_workspace_limit",
    "show_config",
]
