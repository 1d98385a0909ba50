"""Tensor-core launch plans: pure functions of (ConvConfig, dtype, precision, arch), no compiling.

``arch`` is the device's compute capability as an int (e.g. 90), or None for the CPU emulator, which runs every
tensor-core kernel. Each ``*_plan`` returns a list of ``gpuconv.backends._plans.Launch`` (the same form as the
SIMT plans, so the CUDA backend runs either), or None where the SIMT kernels run. The rules:

- float64 never, and float32 only with ``precision="tf32"``: float32 with ``"highest"`` always takes the SIMT
  kernels, bit for bit as before.
- float16 from sm_70, bfloat16 and TF32 from sm_80 (TENSOR_CORE_ARCH).
- With "tf32" (and for bfloat16, which has no SIMT convolution kernels) every shape runs on tensor cores, so
  "tf32" always means TF32-rounded operands. float16 with few channels per group (below ``SMALL_CHANNELS``
  output channels for the forward and dw, input channels for dx unless Mg is whole reduction steps; depthwise
  layers) stays on the SIMT direct kernels (float32 products of the float16 values, as exact as the tensor
  cores'): a 64-wide tile would mostly multiply padding there. The stem's dx (3 input channels, Mg = 64)
  multiplies padding too, but its long reduction runs at tensor-core rates: ~14x the direct kernel's.
- The fast (``vec``) variants copy 16-byte runs with cp.async: they need whole 16-byte runs of channels (see
  each plan) and 16-byte aligned arrays; other shapes (odd channel counts, grouped or not) take the generic
  variant, which loads element by element into the same tiles. The C = 3 stem's forward and dw run on x and w
  zero-padded to one 16-byte run a pixel (``padded_channels``), on the fast variants.
- Tiles 128 x 128 for more than 64 columns, else 128 x 64; forward and dx GEMMs take 96 x 128 or 256 x 64
  where their blocks then fill the SMs' rounds better (WIDE_TILES, NARROW_TILES), with 4 stages of cp.async
  copies in flight (CUTLASS's sm_80 choice for 64-byte reduction steps; 3 for 256 x 64, 2 on sm_70 / sm_75);
  generic variants 128 x 64, 2 stages. The pipeline buffers are dynamic shared memory
  (``smem_bytes``: up to 76 KB a block, so two blocks share an SM), past the 48 KB a kernel gets without
  asking: the CUDA backend raises the kernel's limit to the launch's ``shared_mem``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from .. import _registry
from .._config import get_workspace_limit
from .._validate import env_choice
from . import _plans
from ._plans import Launch, cdiv, dims, stride_phases

TC_FORWARD_FILE = "conv_tc_forward.cu"
WGMMA_FORWARD_FILE = "conv_wgmma_forward.cu"
WGMMA_BACKWARD_FILE = "conv_wgmma_backward.cu"
TC_BACKWARD_FILE = "conv_tc_backward.cu"
BF16_REDUCTIONS_FILE = TC_BACKWARD_FILE  # it includes conv_backward.cu and instantiates four of its kernels
TC_THREADS = 128  # 4 warps a block (GPUCONV_TC_THREADS)
TC_BYTES_K = 64  # bytes of one reduction step of a tile row (GPUCONV_TC_BYTES_K in kernels/gpuconv_tc.cuh)
TC_SCRATCH = 20  # row stride (floats) of a warp's 16 x 16 epilogue scratch on the wmma path (GPUCONV_TC_SCRATCH)
# How each kernel stores its tiles (gpuconv_tc_tile's A_ROW, B_ROW): True = the reduction index (A) or the
# column index (B) fastest.
TC_LAYOUTS = {"gpuconv_tc_fwd": (True, True), "gpuconv_tc_bwd_input": (True, False),
              "gpuconv_tc_bwd_weight": (False, True)}
SMALL_CHANNELS = _plans.SMALL_CHANNELS

try:  # bfloat16 is ml_dtypes' type; without ml_dtypes there is no bfloat16 array to route
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes comes with the test extra
    BFLOAT16 = None

# The first compute capability with tensor cores for each mode of product, from the registry: a dtype's name
# ("float16" from Volta, "bfloat16" from Ampere), or a precision's for float32 ("tf32", from Ampere).
TENSOR_CORE_ARCH = {
    **{d.name: d.tensor_core_arch for d in _registry.DTYPES.values() if d.tensor_core_arch},
    **{p.name: p.tensor_core_arch for p in _registry.PRECISIONS.values() if p.tensor_core_arch},
}
# From this compute capability the warp-level MMAs are ldmatrix + mma.sync (kernels/gpuconv_tc_mma.cuh); before
# it (sm_70 / sm_75, FP16 only) nvcuda::wmma (kernels/gpuconv_tc_wmma.cuh). The emulator runs the mma.sync path.
MMA_SYNC_ARCH = 80
# Hopper's warpgroup MMA (kernels/conv_wgmma_*.cu) is sm_90a's, not a feature later architectures keep: the FP16 /
# BF16 / TF32 forward and dx can take it on compute capability 90 exactly, for GEMMs of more than 64 columns (its
# tile is 128 x 128, one warpgroup) whose reduction runs are whole 16-byte copies (the fast variants'
# conditions). wgmma's TF32 operands are K-major only, and B (w) must hold TF32 values in shared memory: the TF32
# forward first writes w transposed and rounded (TF32_FILTER_KERNEL), dx's first pass over w writes it rounded
# as it sets the NaN rule's flag (TF32_DX_FILTER_KERNEL), each into a scratch array the size of w that the GEMM
# then reads as its w. A goes through registers, rounded there, except a dz that backward's pass stored rounded
# (dz_tf32: dx's DZ_TF32 variant reads it from shared memory, as the 16-bit kernels read theirs). It has
# run on the CPU emulator only, whose wgmma follows our reading of the PTX ISA and CUTLASS: until a GPU run
# confirms it (tools/gpu_check.sh runs the tests with it), the CUDA backend takes it only where GPUCONV_WGMMA=1
# (WGMMA_ENV; the plans' wgmma). WGMMA_STAGES shared buffers of WGMMA_STAGE_BYTES, plus 1024 bytes to align the
# 128-byte swizzle's atoms (gpuconv_wg_tile::SMEM_BYTES, kernels/gpuconv_wg.cuh).
WGMMA_ARCH = 90
WGMMA_ENV = "GPUCONV_WGMMA"
WGMMA_TILE = (128, 128)
WGMMA_STAGES = 4
WGMMA_STAGE_BYTES = 128 * TC_BYTES_K + TC_BYTES_K // 2 * 128 * 2
WGMMA_ALIGN = 1024
WGMMA_ITEMSIZES = {WGMMA_FORWARD_FILE: (2, 4), WGMMA_BACKWARD_FILE: (2, 4)}  # the dtypes' sizes each is built for
TF32_FILTER_KERNEL = "gpuconv_tf32_filter_kmajor"
TF32_DX_FILTER_KERNEL = "gpuconv_tf32_flag_round"
# The modes this build routes to tensor-core kernels where the device has them (the emulator runs them all).
TENSOR_CORE_MODES: frozenset = frozenset({"float16", "bfloat16", "tf32"})
# The tensor-core dtypes: their C types (bfloat16 has no dtype-registry entry: only these kernels and three
# reductions of kernels/conv_backward.cu are built for it).
TC_CTYPES = {np.dtype(np.float16): "__half", np.dtype(np.float32): "float"}
if BFLOAT16 is not None:
    TC_CTYPES[BFLOAT16] = "__nv_bfloat16"


def ctype(dtype) -> str:
    """The kernels' template argument T of ``dtype``."""
    return _registry.dtype(dtype, "CUDA backend").ctype


def kernel_file(filename: str, dtype) -> str:
    """The file a launch's kernel is compiled from for ``dtype``: bfloat16's reductions come from
    BF16_REDUCTIONS_FILE (conv_backward.cu's instantiations are generated for the registered dtypes only)."""
    # (BFLOAT16 is None without ml_dtypes, and np.dtype(x) == None holds for float64: test for it first)
    if filename == _plans.BACKWARD_FILE and BFLOAT16 is not None and np.dtype(dtype) == BFLOAT16:
        return BF16_REDUCTIONS_FILE
    return filename


def name_expression(kernel: str, dtype, template=()) -> str:
    """The C++ name of an instantiation, as the kernel files spell it: bools as true / false."""
    args = ("true" if t is True else "false" if t is False else str(t) for t in template)
    return f"{kernel}<{', '.join((ctype(dtype), *args))}>"


def mode(dtype, precision: str) -> str:
    """The mode of product: the precision's name for float32 with a TF32 precision, else the dtype's name."""
    dtype = np.dtype(dtype)
    return precision if dtype == np.float32 and _registry.PRECISIONS[precision].tf32 else dtype.name


def uses_tensor_cores(dtype, precision: str, arch) -> bool:
    """Whether ``dtype`` in ``precision`` runs tensor-core kernels on compute capability ``arch`` (None: the
    emulator, which runs whatever this build routes to tensor cores)."""
    m = mode(dtype, precision)
    return m in TENSOR_CORE_MODES and (arch is None or arch >= TENSOR_CORE_ARCH[m])


def instructions(arch, dtype=None, wgmma: bool = False) -> str:
    """The tensor-core instructions of ``dtype``'s kernels on compute capability ``arch`` (None: the emulator)."""
    if wgmma and arch == WGMMA_ARCH and dtype is not None and np.dtype(dtype).itemsize in (2, 4):
        return "wgmma for the forward and dx, ldmatrix + mma.sync for dw"
    return "ldmatrix + mma.sync" if arch is None or arch >= MMA_SYNC_ARCH else "wmma"


def wgmma_enabled() -> bool:
    """Whether the user asked for the wgmma kernels (WGMMA_ENV=1; 0 or unset: no; anything else: ValueError)."""
    return env_choice(WGMMA_ENV, ("0", "1"), "0") == "1"


def wgmma_smem_bytes(stages: int = WGMMA_STAGES) -> int:
    """gpuconv_wg_tile<T, stages, B_KMAJOR>::SMEM_BYTES of kernels/gpuconv_wg.cuh (either B layout)."""
    return stages * WGMMA_STAGE_BYTES + WGMMA_ALIGN


def _takes_wgmma(wgmma: bool, fast: bool, arch, dtype, file: str, columns: int) -> bool:
    """Whether a GEMM of ``columns`` columns per group runs on ``file``'s wgmma kernel: asked for, sm_90, a dtype
    the file is built for (WGMMA_ITEMSIZES), the fast variant's channels, and more than 64 columns."""
    return (wgmma and fast and arch == WGMMA_ARCH and np.dtype(dtype).itemsize in WGMMA_ITEMSIZES[file]
            and columns > 64)


def _wgmma_launch(file: str, kernel: str, rows: int, columns: int, groups: int, scalars: tuple,
                  dz_tf32: bool = False) -> Launch:
    """The launch of a wgmma kernel over a GEMM of rows x columns per group; dz_tf32: the DZ_TF32 variant
    (template arguments STAGES, true: A holds TF32 values and stays in shared memory), float32 dx only."""
    grid = (cdiv(rows, WGMMA_TILE[0]), cdiv(columns, WGMMA_TILE[1]), groups)
    template = (WGMMA_STAGES, True) if dz_tf32 else (WGMMA_STAGES,)
    return Launch(file, kernel, template, grid, (TC_THREADS, 1, 1), scalars, wgmma_smem_bytes())


def _pass_blocks(size: int) -> int:
    """The grid of a grid-stride pass over ``size`` elements of w (the NaN rule's flag, the TF32 filters)."""
    return max(1, min(cdiv(size, _plans.THREADS), _plans.FLAG_MAX_BLOCKS))


def _simt(dtype, precision: str, arch, channels: int) -> bool:
    """Whether the SIMT kernels take this operation: no tensor cores for the mode here, or float16 with few
    channels per group."""
    if not uses_tensor_cores(dtype, precision, arch):
        return True
    return np.dtype(dtype) == np.float16 and channels < SMALL_CHANNELS


def _steps(dtype) -> tuple:
    """(BK, VEC): elements of one reduction step of a tile row, and of one 16-byte copy."""
    size = np.dtype(dtype).itemsize
    return TC_BYTES_K // size, 16 // size


# Forward and dx launches take, of the tiles of their width, the one that costs least in rounds of blocks x the
# cost of a block's reduction step. A round is one block an SM (two blocks on an SM each run at half speed), so
# a partial last round costs a whole one. (BM, BN, STAGES, step cost relative to the first tile of the width),
# the costs from tools/tc_model.py's FP16 step clocks on an H100:
# - at most 64 columns: 128 x 64 (4 warps of 32 x 64), or 256 x 64 (4 of 64 x 64: 28% fewer shared bytes per
#   product, 416 clocks a step against 288, both bound by shared memory), which tall GEMMs take once they fill
#   whole rounds with it (ResNet-50's 56 x 56 layers: 784 blocks, 6 rounds against 12 of 128 x 64);
# - more: 128 x 128 (2 x 2 warps of 64 x 64), or 96 x 128 (2 x 2 of 48 x 64; 336 clocks, bound by shared
#   memory, against 394, by the tensor cores; TF32 0.81 forward to 0.94 dx): the 14 x 14 ResNet layer's 196
#   blocks of 128 x 128 take two rounds on 132 SMs, the second a half, where its 262 of 96 x 128 fill both; the
#   7 x 7 layer's 100 blocks leave 32 SMs idle, its 132 of 96 x 128 none.
# Layers of one round either way take the cheaper step. dw keeps 128 x 128 or 128 x 64: its rows are the
# filter's taps x channels (576 for a 3x3 layer of 64 channels), and its split count, which sets its summation
# order, stays a function of the shape alone.
NARROW_TILES = ((128, 64, 4, 1.0), (256, 64, 3, 1.44))
WIDE_TILES = ((128, 128, 4, 1.0), (96, 128, 4, 0.85))
# The blocks of one round where the device is not known (the emulator, tools/tc_model.py): an H100's 132 SMs.
ROUND_BLOCKS = 132


def _tile(columns: int, fast: bool, arch, rows=(), groups: int = 1, sms: Optional[int] = None) -> tuple:
    """(BM, BN, STAGES) of a kernel variant for GEMMs of ``columns`` columns and ``rows`` rows, one launch per
    entry of rows (dx: a launch per stride phase; empty: dw), in ``groups`` groups, on a device with ``sms`` SMs
    (None: ROUND_BLOCKS): NARROW_TILES / WIDE_TILES. The tile never changes a result: each output's sum runs
    through the same reduction steps in the same order whatever the tile. Before sm_80 (the FP16 wmma path) 2
    stages: there is no cp.async hardware to keep more in flight (the copies are synchronous), and an sm_75
    block has at most 64 KB of shared memory, less than 4 stages of a 128 x 128 tile."""
    if not fast:
        return 128, 64, 2
    if arch is not None and arch < MMA_SYNC_ARCH:
        return 128, 128 if columns > 64 else 64, 2
    if not rows:  # dw
        return 128, 128 if columns > 64 else 64, 4
    tiles = WIDE_TILES if columns > 64 else NARROW_TILES
    sms = sms or ROUND_BLOCKS

    def cost(tile):
        bm, bn, _, step = tile
        return step * sum(cdiv(cdiv(r, bm) * cdiv(columns, bn) * groups, sms) for r in rows)

    return min(tiles, key=cost)[:3]


def smem_bytes(kernel: str, dtype, bm: int, bn: int, stages: int) -> int:
    """gpuconv_tc_tile<T, bm, bn, stages, A_ROW, B_ROW>::SMEM_BYTES of kernels/gpuconv_tc.cuh: the pipeline
    buffers, rows padded by 16 bytes (32 for the float tiles the ldmatrix path reads as 32-bit words), or the
    wmma path's epilogue scratch if larger (that path's float rows are never wider, so this covers both).
    tests/test_tc_routing.py compiles static_asserts that the two agree."""
    a_row, b_row = TC_LAYOUTS[kernel]
    size = np.dtype(dtype).itemsize
    bk, vec = _steps(dtype)
    skew_a = 2 * vec if size == 4 and not a_row else vec
    skew_b = 2 * vec if size == 4 and b_row else vec
    a = bm * (bk + skew_a) if a_row else bk * (bm + skew_a)
    b = bk * (bn + skew_b) if b_row else bn * (bk + skew_b)
    return max(stages * (a + b) * size, TC_THREADS // 32 * 16 * TC_SCRATCH * 4)


def padded_channels(cfg, dtype, precision: str, arch) -> Optional[int]:
    """The channel count C' to zero-pad x (and w) to, so that a forward or dw whose channels are no whole
    16-byte run takes the cp.async variants instead of the element loads (the C = 3 stem: 4 floats or 8 halves
    a pixel); or None. Ungrouped layers only, only where the padding at most triples the reduction (not C = 1
    or 2) and the padded x stays within the index limit. The zeros add exact zero products: the sums are those
    of the unpadded layer, and dw keeps the first C channels of its result."""
    if cfg.groups != 1 or _simt(dtype, precision, arch, cfg.mg):
        return None
    _, vec = _steps(dtype)
    if cfg.c % vec == 0 or cfg.mg % vec:
        return None
    c = cdiv(cfg.c, vec) * vec
    if c > 3 * cfg.c or cfg.n * cfg.h * cfg.w * c >= _plans.INDEX_LIMIT:
        return None
    return c


def with_channels(cfg, c: Optional[int]):
    """cfg with c input channels (padded_channels), or cfg itself for None."""
    return cfg if c is None else dataclasses.replace(cfg, c=c)


def _launch(file, kernel, dtype, tile, fast, grid, scalars, dz_tf32: bool = False) -> Launch:
    """A tensor-core GEMM launch of ``tile`` = (BM, BN, STAGES), with its dynamic shared memory. dz_tf32: the
    DZ_TF32 variant (template arguments BM, BN, STAGES, VEC, true), for a float32 dz stored as TF32 values;
    only the fast float variants are built so (kernels/conv_tc_backward.cu)."""
    template = (*tile, fast, True) if dz_tf32 and fast and np.dtype(dtype) == np.float32 else (*tile, fast)
    return Launch(file, kernel, template, grid, (TC_THREADS, 1, 1), scalars, smem_bytes(kernel, dtype, *tile))


def _act(activation: str) -> np.int32:
    return np.int32(_registry.activation(activation, "CUDA backend").code)


def forward_plan(cfg, dtype, precision: str, arch, activation: str, has_bias: bool,
                 aligned: bool = True, sms: Optional[int] = None, wgmma: bool = False) -> Optional[list]:
    """y = act(conv(x, w) + b) on tensor cores (arrays x, w, b, y), or None. vec: Cg and Mg multiples of VEC
    (whole 16-byte runs of x and w; a reduction step may span several taps). sms: the device's SMs (_tile).
    wgmma: the wgmma forward where it applies (WGMMA_ARCH); in TF32 its plan starts with TF32_FILTER_KERNEL
    (arrays w, wt: a scratch array of w's size), and the GEMM takes wt as its w."""
    if _simt(dtype, precision, arch, cfg.mg):
        return None
    _, vec = _steps(dtype)
    fast = aligned and cfg.cg % vec == 0 and cfg.mg % vec == 0
    scalars = (*dims(cfg), np.int32(has_bias), _act(activation))
    rows = cfg.n * cfg.oh * cfg.ow
    if _takes_wgmma(wgmma, fast, arch, dtype, WGMMA_FORWARD_FILE, cfg.mg):
        gemm = _wgmma_launch(WGMMA_FORWARD_FILE, "gpuconv_wgmma_fwd", rows, cfg.mg, cfg.groups, scalars)
        if np.dtype(dtype) != np.float32:
            return [gemm]
        k, m = cfg.kh * cfg.kw * cfg.cg, cfg.m  # TF32: w transposed and rounded first (arrays w, wt)
        return [Launch(WGMMA_FORWARD_FILE, TF32_FILTER_KERNEL, (), (_pass_blocks(k * m), 1, 1),
                       (_plans.THREADS, 1, 1), (np.int32(k), np.int32(m))), gemm]
    tile = _tile(cfg.mg, fast, arch, (rows,), cfg.groups, sms)
    grid = (cdiv(rows, tile[0]), cdiv(cfg.mg, tile[1]), cfg.groups)
    return [_launch(TC_FORWARD_FILE, "gpuconv_tc_fwd", dtype, tile, fast, grid, scalars)]


def backward_input_plan(cfg, dtype, precision: str, arch, w_size: int, aligned: bool = True,
                        has_bias: bool = False, out_activation: str = "identity",
                        sms: Optional[int] = None, dz_tf32: bool = False, wgmma: bool = False) -> Optional[list]:
    """dx from dz on tensor cores, or None: first gpuconv_nonfinite_flag (arrays w, flag: w holds inf / NaN), then
    one launch per stride phase (arrays dz, w, flag, dx, bias); on wgmma in TF32 the first launch is
    TF32_DX_FILTER_KERNEL (arrays w, flag, wr: a scratch array of w's size, written rounded), and the phases take
    wr as their w. vec: Mg a multiple of BK (dz and w runs along
    m). dz = dy * act'(z) is the caller's (gpuconv_act_bwd, or db's pass), once for dx and dw; dz_tf32: stored
    rounded to TF32 by that pass (the DZ_TF32 variants, wgmma's included). has_bias / out_activation: the
    epilogue act(dx + b) of a transposed convolution. sms: the device's SMs (_tile). wgmma: the wgmma kernel
    where it applies (WGMMA_ARCH)."""
    bk, _ = _steps(dtype)
    fast = aligned and cfg.mg % bk == 0
    # float16 with few input channels keeps the SIMT direct kernel only where the reduction is no whole steps:
    # the stem's dx (3 of a tile's 64 columns do work) still runs ~14x the direct kernel's measured rate
    if not uses_tensor_cores(dtype, precision, arch) or (_simt(dtype, precision, arch, cfg.cg) and not fast):
        return None
    phases = stride_phases(cfg)
    tile = _tile(cfg.cg, fast, arch, [cfg.n * p[1] * p[4] for p in phases], cfg.groups, sms)
    on_wgmma = _takes_wgmma(wgmma, fast, arch, dtype, WGMMA_BACKWARD_FILE, cfg.cg)
    # The first pass over w sets the NaN rule's flag: the SIMT dx path's kernel, instantiated in this file too
    # (bfloat16 has no entry in conv_backward.cu's); in TF32 on wgmma one that also writes w rounded.
    if on_wgmma and np.dtype(dtype) == np.float32:
        first = (WGMMA_BACKWARD_FILE, TF32_DX_FILTER_KERNEL)
    else:
        first = (TC_BACKWARD_FILE, "gpuconv_nonfinite_flag")
    out = [Launch(*first, (), (_pass_blocks(w_size), 1, 1), (_plans.THREADS, 1, 1), (np.int64(w_size),))]
    for phase in phases:
        scalars = (*dims(cfg), *(np.int32(v) for v in phase), np.int32(has_bias), _act(out_activation))
        rows = cfg.n * phase[1] * phase[4]
        if on_wgmma:
            out.append(_wgmma_launch(WGMMA_BACKWARD_FILE, "gpuconv_wgmma_bwd_input", rows, cfg.cg, cfg.groups,
                                     scalars, dz_tf32 and np.dtype(dtype) == np.float32))
            continue
        grid = (cdiv(rows, tile[0]), cdiv(cfg.cg, tile[1]), cfg.groups)
        out.append(_launch(TC_BACKWARD_FILE, "gpuconv_tc_bwd_input", dtype, tile, fast, grid, scalars, dz_tf32))
    return out


# The dw split's cost model (a function of the shape only, never of the device, so that the summation order is
# the same everywhere): blocks run in rounds of ROUND_BLOCKS (an H100's 132 SMs, each working through its
# share), a reduction step of a round takes about STEP_NS (a 128 x 128 FP16 step, tools/tc_model.py), and each
# split adds its float32 partial sums to the traffic (written once, read once by gpuconv_sum_partials).
STEP_NS, HBM_BYTES_PER_NS = 224, 3350


def dw_splits(pixels: int, bk: int, tiles: int, elements: int, workspace_bytes: int) -> tuple:
    """(splits, chunk): the pixels cut into splits of ``chunk`` pixels (a multiple of bk, at least 4 steps),
    the float32 partial sums within workspace_bytes. From about TARGET_BLOCKS blocks (two an SM) up to twice
    that, the split with the least rounds x steps plus partial-sum traffic: 261 blocks of 55 steps rather than
    270 of 53 (a third round for 6 blocks), 2 splits of the 144 tiles of a 7x7 layer rather than 1."""
    cap = max(1, workspace_bytes // (4 * elements))
    most = max(1, min(pixels // (4 * bk), cap, _plans.MAX_GRID_YZ))
    lo = max(1, _plans.TARGET_BLOCKS // max(1, tiles))
    best = None
    for n in range(min(lo, most), min(2 * cdiv(_plans.TARGET_BLOCKS, max(1, tiles)), most) + 1):
        chunk = cdiv(cdiv(pixels, n), bk) * bk
        splits = cdiv(pixels, chunk)
        ns = (cdiv(tiles * splits, ROUND_BLOCKS) * (chunk // bk) * STEP_NS
              + splits * elements * 8 / HBM_BYTES_PER_NS)
        if best is None or ns < best[0]:
            best = (ns, splits, chunk)
    return best[1], best[2]


def backward_weight_plan(cfg, dtype, precision: str, arch, aligned: bool = True,
                         workspace_bytes: Optional[int] = None, dz_tf32: bool = False) -> Optional[list]:
    """dw from dz on tensor cores, or None: partial sums per split (arrays dz, x, ws), then gpuconv_sum_partials
    adds the splits in order (arrays ws, dw), as the SIMT plan. vec: Cg and Mg multiples of VEC. dz_tf32: dz
    stored rounded to TF32 (backward_input_plan)."""
    if _simt(dtype, precision, arch, cfg.mg):
        return None
    if workspace_bytes is None:
        workspace_bytes = min(_plans.WORKSPACE_BYTES, get_workspace_limit())
    bk, vec = _steps(dtype)
    fast = aligned and cfg.cg % vec == 0 and cfg.mg % vec == 0
    tile = _tile(cfg.mg, fast, arch)
    bm, bn = tile[:2]
    k = cfg.kh * cfg.kw * cfg.cg
    e = k * cfg.m
    tiles = cdiv(k, bm) * cdiv(cfg.mg, bn) * cfg.groups
    n, chunk = dw_splits(cfg.n * cfg.oh * cfg.ow, bk, tiles, e, workspace_bytes)
    first = _launch(TC_BACKWARD_FILE, "gpuconv_tc_bwd_weight", dtype, tile, fast,
                    (cdiv(k, bm), cdiv(cfg.mg, bn) * cfg.groups, n), (*dims(cfg), np.int32(chunk)), dz_tf32)
    return [first, _plans._sum_partials(e, n)]


def routes(cfg, dtype, precision: str, arch, aligned: bool = True, activation: str = "identity",
           wgmma: bool = False) -> dict:
    """{operation: the tensor-core kernel's name expression, or None for SIMT} (``gpuconv info``, tests), for
    conv2d_backward with ``activation``: with one whose gradient needs the output (relu, sigmoid, tanh), a TF32
    backward's pass stores dz rounded, and dx and dw take the DZ_TF32 variants. wgmma: forward_plan's."""
    padded = with_channels(cfg, padded_channels(cfg, dtype, precision, arch))
    dz_tf32 = mode(dtype, precision) == "tf32" and _registry.activation(activation, "routes").uses_output
    plans = {
        "forward": forward_plan(padded, dtype, precision, arch, "identity", True, aligned, wgmma=wgmma),
        "backward_input": backward_input_plan(cfg, dtype, precision, arch, 1, aligned, dz_tf32=dz_tf32,
                                              wgmma=wgmma),
        "backward_weight": backward_weight_plan(padded, dtype, precision, arch, aligned, dz_tf32=dz_tf32),
    }
    # the GEMM: the last launch of the forward's and dx's plans (after the TF32 filter pass, the NaN flag), dw's first
    gemm = {op: None if plan is None else plan[0 if op == "backward_weight" else -1] for op, plan in plans.items()}
    return {op: None if g is None else name_expression(g.kernel, dtype, g.template) for op, g in gemm.items()}
