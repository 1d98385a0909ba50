"""Which convolutions run on tensor cores: pure functions of (ConvConfig, dtype, precision, arch), no compiling.

``arch`` is the device's compute capability as an int (e.g. 90), or None for the CPU emulator, which runs every
tensor-core kernel. The CUDA backend asks these before each launch; tests call them directly. The rules:

- float64 never, and float32 only with ``precision="tf32"``: float32 with ``"highest"`` always takes today's
  SIMT kernels, bit for bit.
- float16 from sm_70, bfloat16 and TF32 from sm_80 (TENSOR_CORE_ARCH).
- With "tf32" (and for bfloat16, which has no SIMT kernels) every shape runs on tensor cores, so that "tf32"
  always means TF32-rounded operands. float16 with few channels per group (below ``SMALL_CHANNELS`` output
  channels for the forward and dw, input channels for dx; depthwise layers) stays on the SIMT direct kernels
  (float32 products of the float16 values, as exact as the tensor cores' products): a 64-wide tile would mostly
  multiply padding there.
- The fast (``vec``) variants copy 16-byte runs with cp.async: they need the channel runs to be whole 16-byte
  chunks (Cg a multiple of one reduction step, Mg a multiple of 16 bytes) and 16-byte aligned arrays; other
  shapes (the C = 3 stem, odd channel counts) take the generic variant, which loads element by element.

A route is a ``TcLaunch``: the kernel file, name and template arguments (the kernels' own order), and the grid.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

PRECISIONS = ("highest", "tf32")
TC_FORWARD_FILE = "conv_tc_forward.cu"
TC_BACKWARD_FILE = "conv_tc_backward.cu"
TC_THREADS = 256
TC_BYTES_K = 64  # bytes of one reduction step of a tile row (GPUCONV_TC_BYTES_K in kernels/gpuconv_tc.cuh)
SMALL_CHANNELS = 16  # the same threshold as gpuconv/backends/cuda.py

try:  # bfloat16 is ml_dtypes' type; without ml_dtypes there is no bfloat16 array to route
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is installed with the test extra
    BFLOAT16 = None

# Storage dtype -> the C type of the kernels' template argument.
TC_CTYPES = {np.dtype(np.float16): "__half", np.dtype(np.float32): "float"}
if BFLOAT16 is not None:
    TC_CTYPES[BFLOAT16] = "__nv_bfloat16"

# The first compute capability with tensor cores for each mode of product: "float16" (from Volta), "bfloat16"
# and "tf32" (float32 with precision="tf32"; both from Ampere).
TENSOR_CORE_ARCH = {"float16": 70, "bfloat16": 80, "tf32": 80}
# The modes this build routes to tensor-core kernels where the device has them (the emulator runs them all).
TENSOR_CORE_MODES: frozenset = frozenset({"float16", "bfloat16", "tf32"})


class TcLaunch(NamedTuple):
    file: str
    kernel: str
    template: tuple  # template arguments after the storage type, e.g. (128, 128, 2, True)
    grid: tuple
    block: tuple
    chunk: int = 0  # dw: output pixels per split


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_precision(fname: str, precision) -> str:
    """``precision`` itself if it is one of PRECISIONS, else a ValueError naming the function and argument."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{fname}: argument 'precision' must be one of {PRECISIONS}, got {precision!r}")
    return precision


def mode(dtype, precision: str) -> str:
    """The mode of product: "tf32" for float32 with precision="tf32", else the dtype's name."""
    dtype = np.dtype(dtype)
    return "tf32" if dtype == np.float32 and precision == "tf32" else dtype.name


def uses_tensor_cores(dtype, precision: str, arch) -> bool:
    """Whether ``dtype`` in ``precision`` runs tensor-core kernels on compute capability ``arch`` (None: the
    emulator, which runs whatever this build routes to tensor cores)."""
    m = mode(dtype, precision)
    return m in TENSOR_CORE_MODES and (arch is None or arch >= TENSOR_CORE_ARCH[m])


def _simt_small(dtype, channels: int) -> bool:
    """float16 with few channels per group: the SIMT direct / small-channel kernels."""
    return np.dtype(dtype) == np.float16 and channels < SMALL_CHANNELS


def _template_bool(v: bool) -> str:
    return "true" if v else "false"


def template_args(ctype: str, template: tuple) -> str:
    """The template argument list as the kernel files' name expressions spell it."""
    return ", ".join([ctype, *(_template_bool(v) if isinstance(v, bool) else str(v) for v in template)])


def forward_route(cfg, dtype, precision: str, arch, aligned: bool = True) -> Optional[TcLaunch]:
    """The tensor-core launch of the forward pass, or None for the SIMT kernels."""
    if not uses_tensor_cores(dtype, precision, arch) or _simt_small(dtype, cfg.mg):
        return None
    dtype = np.dtype(dtype)
    bk = TC_BYTES_K // dtype.itemsize
    vec = 16 // dtype.itemsize
    fast = aligned and cfg.cg % bk == 0 and cfg.mg % vec == 0
    if fast:
        bm, bn, stages = (128, 128, 2) if cfg.mg > 64 else (128, 64, 3)
    else:
        bm, bn, stages = 128, 64, 2
    p = cfg.n * cfg.oh * cfg.ow
    grid = (_cdiv(p, bm), _cdiv(cfg.mg, bn), cfg.groups)
    return TcLaunch(TC_FORWARD_FILE, "gpuconv_tc_fwd", (bm, bn, stages, fast), grid, (TC_THREADS, 1, 1))


def _backward_tile(dtype, columns: int, fast: bool) -> tuple:
    """(BM, BN, STAGES) of the dx / dw kernels: TF32 keeps to 128 x 64 (register budget), see the kernel file."""
    if not fast:
        return 128, 64, 2
    if np.dtype(dtype) != np.float32 and columns > 64:
        return 128, 128, 2
    return 128, 64, 3


def backward_input_route(cfg, dtype, precision: str, arch, aligned: bool = True) -> Optional[TcLaunch]:
    """The tensor-core dx launch (its grid is that of the first stride phase's pixel count N*Hp*Wp taken as
    N*H*W; the backend computes each phase's grid with ``dx_grid``), or None for the SIMT kernels."""
    if not uses_tensor_cores(dtype, precision, arch) or _simt_small(dtype, cfg.cg):
        return None
    dtype = np.dtype(dtype)
    fast = aligned and cfg.mg % (TC_BYTES_K // dtype.itemsize) == 0
    bm, bn, stages = _backward_tile(dtype, cfg.cg, fast)
    grid = dx_grid(cfg, cfg.n * cfg.h * cfg.w, bm, bn)
    return TcLaunch(TC_BACKWARD_FILE, "gpuconv_tc_bwd_input", (bm, bn, stages, fast), grid, (TC_THREADS, 1, 1))


def dx_grid(cfg, pixels: int, bm: int, bn: int) -> tuple:
    """Grid of one stride phase of dx holding ``pixels`` input pixels."""
    return (_cdiv(pixels, bm), _cdiv(cfg.cg, bn), cfg.groups)


def backward_weight_route(cfg, dtype, precision: str, arch, aligned: bool = True,
                          workspace_bytes: int = 64 * 2**20, target_blocks: int = 264) -> Optional[TcLaunch]:
    """The tensor-core dw launch (grid z = the fixed number of pixel splits), or None for the SIMT kernels.
    The split, and so the summation order, depends on the shape, dtype and ``workspace_bytes`` only."""
    if not uses_tensor_cores(dtype, precision, arch) or _simt_small(dtype, cfg.mg):
        return None
    dtype = np.dtype(dtype)
    vec = 16 // dtype.itemsize
    fast = aligned and cfg.cg % vec == 0 and cfg.mg % vec == 0
    bm, bn, stages = _backward_tile(dtype, cfg.mg, fast)
    bk = TC_BYTES_K // dtype.itemsize
    k = cfg.kh * cfg.kw * cfg.cg
    tiles = _cdiv(k, bm) * _cdiv(cfg.mg, bn) * cfg.groups
    splits, chunk = dw_splits(cfg.n * cfg.oh * cfg.ow, bk, tiles, k * cfg.m, workspace_bytes, target_blocks)
    grid = (_cdiv(k, bm), _cdiv(cfg.mg, bn) * cfg.groups, splits)
    return TcLaunch(TC_BACKWARD_FILE, "gpuconv_tc_bwd_weight", (bm, bn, stages, fast), grid, (TC_THREADS, 1, 1),
                    chunk)


def dw_splits(pixels: int, bk: int, tiles: int, elements: int, workspace_bytes: int, target_blocks: int) -> tuple:
    """(splits, chunk): the pixels cut into splits of ``chunk`` pixels (a multiple of bk, at least 4 steps)
    so that about target_blocks blocks run, the float32 partial sums within workspace_bytes."""
    cap = max(1, workspace_bytes // (4 * elements))
    want = _cdiv(target_blocks, max(1, tiles))
    splits = max(1, min(want, pixels // (4 * bk), cap, 65535))
    chunk = _cdiv(_cdiv(pixels, splits), bk) * bk
    return _cdiv(pixels, chunk), chunk


def routes(cfg, dtype, precision: str, arch, aligned: bool = True) -> dict:
    """{operation: kernel name with template arguments, or None for SIMT}: what `gpuconv info` can print."""
    ctype = TC_CTYPES.get(np.dtype(dtype))
    out = {}
    for op, route in (("forward", forward_route), ("backward_input", backward_input_route),
                      ("backward_weight", backward_weight_route)):
        r = route(cfg, dtype, precision, arch, aligned)
        out[op] = None if r is None else f"{r.kernel}<{template_args(ctype, r.template)}>"
    return out
