"""Launch plans of the CUDA backend: pure functions from (ConvConfig, dtype) to the kernel launches.

A plan is a list of ``Launch`` (kernel file, kernel name, template arguments after the dtype, grid, block, the
typed scalar arguments after the arrays). ``gpuconv.backends.cuda`` runs them; ``check_limits`` checks the same
plans against CUDA's grid limits; tests inspect them without compiling anything.

The launch constants are named here once. Those the kernels depend on reach them as -D macros
(``kernel_defines``: tile sizes, the reduction block) or as template arguments (``INSTANTIATIONS``: the tile
widths and direct-dx variants, for every dtype of ``gpuconv._registry.DTYPES`` with kernels); kernels/gpuconv_common.cuh
refuses to compile without them.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _registry
from .._config import get_workspace_limit

FORWARD_FILE = "conv_forward.cu"
BACKWARD_FILE = "conv_backward.cu"

# Implicit-GEMM tiles (GPUCONV_BM, ... in the kernels): a block of THREADS threads computes a BM x BN tile,
# stepping through the reduction BK at a time; shared rows are padded by PAD elements.
BM, BN, BK, THREADS, PAD = 64, 64, 16, 256, 4
# The forward and dx kernels also come with 128 x 32 tiles (template BN = NARROW_BN) for 16..32 channels per
# group; the pixels one block covers are 4 * THREADS / (bn / 4) for either width.
NARROW_BN = 32
TILE_WIDTHS = (BN, NARROW_BN)
# Fewer output channels per group than this: the forward and dw kernels take their direct / small-channel path
# (a 64-wide column tile would mostly compute padding). Same rule for input channels per group and dx.
SMALL_CHANNELS = 16
# The direct dx kernel keeps the sums of every input channel of a group, for PX pixels, in registers:
# (CMAX, PX) instantiations, the first with Cg <= CMAX taken (15 sums leave room for one pixel only).
DIRECT_DX_VARIANTS = ((1, 4), (4, 4), (SMALL_CHANNELS - 1, 1))
# Lanes of the direct dx kernel that share one (pixel, group) row, each taking every 8th output channel: 8
# lanes read a whole 32-byte sector of a dz row, and each lane's pass over the taps does 4x the work of 32.
DIRECT_DX_LANES = 8
# Block (RED_X, RED_Y) of the column reductions (small-channel dw, db): RED_X columns, RED_Y row phases added
# in order through shared memory (GPUCONV_RED_X / GPUCONV_RED_Y in the kernels).
RED_X, RED_Y = 32, 8
# The elementwise activation gradient runs a grid-stride loop over at most this many blocks.
ACT_BWD_MAX_BLOCKS = 8192
# The reductions (dw, db) aim at about this many blocks (two per SM of a 132-SM H100). A constant, never a
# property of the device, so that the split and therefore the result are the same on every machine.
TARGET_BLOCKS = 264
WORKSPACE_BYTES = 64 * 2**20  # cap of the dw partial sums (also capped by gpuconv.set_workspace_limit)
INDEX_LIMIT = 2**30  # pixel and weight counts must be below this (int32 indices with headroom)
MAX_GRID_YZ = 65535
# Blocks of gpuconv_nonfinite_flag and gpuconv_conv_bwd_input_exact (grid-stride loops): enough to read a large
# w at full bandwidth, few enough that the exact kernel's early return (the usual case) costs little.
FLAG_MAX_BLOCKS = 256
MAX_GRID_X = 2**31 - 1

# Template instantiations of each kernel file, as (kernel, template arguments after T); each is compiled for
# every dtype of the registry (name_expressions).
INSTANTIATIONS = {
    FORWARD_FILE: (
        *(("gpuconv_conv_fwd", (bn,)) for bn in TILE_WIDTHS),
        ("gpuconv_conv_fwd_direct", ()),
    ),
    BACKWARD_FILE: (
        ("gpuconv_nonfinite_flag", ()),
        ("gpuconv_act_bwd", ()),
        *(("gpuconv_conv_bwd_input", (bn,)) for bn in TILE_WIDTHS),
        ("gpuconv_conv_bwd_input_exact", ()),
        *(("gpuconv_conv_bwd_input_direct", v) for v in DIRECT_DX_VARIANTS),
        ("gpuconv_conv_bwd_weight", ()),
        ("gpuconv_conv_bwd_weight_small", ()),
        ("gpuconv_bias_grad", ()),
        ("gpuconv_sum_partials", ()),
    ),
}


def name_expression(kernel: str, dtype, template=()) -> str:
    """The kernel's C++ name for NVRTC, e.g. "gpuconv_conv_fwd<__half, 64>"."""
    return f"{kernel}<{', '.join((_registry.dtype(dtype).ctype, *(str(t) for t in template)))}>"


def name_expressions(filename: str) -> tuple:
    """Every instantiation of a kernel file of the package, for every registered dtype with kernels (() for other
    files)."""
    return tuple(name_expression(kernel, d, template) for kernel, template in INSTANTIATIONS.get(filename, ())
                 for d in _registry.kernel_dtypes())


def kernel_defines() -> tuple:
    """The -D options every package kernel file is compiled with: activation codes and launch constants."""
    consts = {"BM": BM, "BN": BN, "BK": BK, "THREADS": THREADS, "PAD": PAD, "RED_X": RED_X, "RED_Y": RED_Y}
    return (*_registry.activation_defines(), *(f"-DGPUCONV_{k}={v}" for k, v in consts.items()))


class Launch(NamedTuple):
    """One kernel launch: ``file``'s ``kernel<ctype, *template>`` on ``grid`` x ``block`` with ``shared_mem``
    bytes of dynamic shared memory; the arrays come first in its arguments, then ``scalars``."""

    file: str
    kernel: str
    template: tuple
    grid: tuple
    block: tuple
    scalars: tuple
    shared_mem: int = 0

    @property
    def name(self) -> str:
        return f"{self.kernel}<T{''.join(f', {t}' for t in self.template)}>"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def dims(cfg) -> tuple:
    """The shape arguments shared by every convolution kernel (GPUCONV_CONV_SHAPE_PARAMS), as typed scalars."""
    return tuple(
        np.int32(v)
        for v in (cfg.n, cfg.h, cfg.w, cfg.c, cfg.kh, cfg.kw, cfg.m, cfg.groups, cfg.oh, cfg.ow,
                  cfg.s1, cfg.s2, cfg.d1, cfg.d2, cfg.pt, cfg.pl)
    )


def _act(activation: str) -> np.int32:
    return np.int32(_registry.activation(activation, "CUDA backend").code)


def stride_phases(cfg) -> list:
    """The stride phases of dx that hold pixels, each as the 16 ints the dx kernels take:
    (h0, Hp, qh0, w0, Wp, qw0, k1f, k1s, T1, k1b, k1i, k2f, k2s, T2, k2b, k2i).

    Phase (ph, pw) holds the input pixels with (h + pt, w + pl) = (ph, pw) modulo (s1, s2): rows h0 + s1 * hp for
    hp < Hp, and (h0 + pt - ph) / s1 = qh0. Only the taps k1 with k1 * d1 = ph modulo s1 reach them: k1 = k1f +
    k1s * i1 for i1 < T1, reaching output row oi = qh0 + hp - (k1b + k1i * i1). Columns likewise.
    """
    def rows(extent, pad, s, ph):
        first = (ph - pad) % s
        return first, max(0, cdiv(extent - first, s)), (first + pad - ph) // s

    def taps(kk, d, s, ph):
        ks = [k for k in range(kk) if k * d % s == ph]
        if not ks:
            return 0, 1, 0, 0, 0
        step = s // math.gcd(d, s)
        return ks[0], step, len(ks), (ks[0] * d - ph) // s, step * d // s

    def phases(extent, pad, s):  # the phases that hold pixels, in order: at most min(s, extent), whatever s
        return sorted({(first + pad) % s for first in range(min(s, extent))})

    out = []
    for ph in phases(cfg.h, cfg.pt, cfg.s1):
        rh = rows(cfg.h, cfg.pt, cfg.s1, ph)
        for pw in phases(cfg.w, cfg.pl, cfg.s2):
            rw = rows(cfg.w, cfg.pl, cfg.s2, pw)
            if rh[1] and rw[1]:
                out.append((*rh, *rw, *taps(cfg.kh, cfg.d1, cfg.s1, ph), *taps(cfg.kw, cfg.d2, cfg.s2, pw)))
    return out


def _direct_block(channels: int) -> tuple:
    """Block (bx, by) of the direct kernels: bx threads along channels (a power of two, at most 32), the rest
    along pixels, so that few channels do not leave most threads idle."""
    bx = min(32, 1 << max(0, (channels - 1).bit_length()))
    return bx, THREADS // bx


def _tile_width(channels: int) -> int:
    """The tiled kernels' column tile: 128 x 32 tiles for 16..32 channels per group, else 64 x 64."""
    return NARROW_BN if channels <= NARROW_BN else BN


def _tile_pixels(bn: int) -> int:
    """Output (or dx) pixels one tiled block covers: 4 rows per thread, bn / 4 threads along the columns."""
    return 4 * THREADS // (bn // 4)


def splits(total: int, per_split_min: int, blocks_per_split: int, cap: int) -> tuple:
    """(splits, chunk): cut ``total`` reduction items into splits of ``chunk`` items (a multiple of BK) so
    that about TARGET_BLOCKS blocks run, each split holding at least ``per_split_min`` items."""
    want = cdiv(TARGET_BLOCKS, max(1, blocks_per_split))
    n = max(1, min(want, total // max(1, per_split_min), cap, MAX_GRID_YZ))
    chunk = cdiv(cdiv(total, n), BK) * BK
    return cdiv(total, chunk), chunk


# ------------------------------------------------------------------------------------------------ plans
def forward(cfg, activation: str, has_bias: bool) -> list:
    """y = act(conv(x, w) + b): one fused launch (arrays x, w, b, y)."""
    p = cfg.n * cfg.oh * cfg.ow
    tail = (*dims(cfg), np.int32(has_bias), _act(activation))
    if cfg.mg < SMALL_CHANNELS:
        bx, by = _direct_block(cfg.m)
        return [Launch(FORWARD_FILE, "gpuconv_conv_fwd_direct", (), (cdiv(p, by), cdiv(cfg.m, bx), 1),
                       (bx, by, 1), tail)]
    bn = _tile_width(cfg.mg)
    return [Launch(FORWARD_FILE, "gpuconv_conv_fwd", (bn,), (cdiv(p, _tile_pixels(bn)), cdiv(cfg.mg, bn), cfg.groups),
                   (THREADS, 1, 1), tail)]


def activation_backward(size: int, activation: str, tf32: bool = False) -> list:
    """dz = dy * act'(z) elementwise over ``size`` elements (arrays dy, y, dz); [] when there is nothing to do.
    tf32: dz stored rounded to TF32 (float32; the DZ_TF32 tensor-core kernels take it as it is)."""
    code = _act(activation)
    if size == 0:
        return []
    grid = (min(cdiv(size, THREADS), ACT_BWD_MAX_BLOCKS), 1, 1)
    return [Launch(BACKWARD_FILE, "gpuconv_act_bwd", (), grid, (THREADS, 1, 1),
                   (np.int64(size), code, np.int32(tf32)))]


def backward_input(cfg, activation: str, has_bias: bool = False, out_activation: str = "identity") -> list:
    """dx: one launch per stride phase that holds pixels (arrays dy, y, w, dx, bias). A transposed convolution
    (conv2d_transpose) adds the bias and applies out_activation in the epilogue; a gradient has neither."""
    code = (_act(activation), np.int32(has_bias), _act(out_activation))
    out = []
    if cfg.cg < SMALL_CHANNELS:
        cmax, px = next(v for v in DIRECT_DX_VARIANTS if cfg.cg <= v[0])
        lanes = min(DIRECT_DX_LANES, 1 << max(0, (cfg.mg - 1).bit_length()))  # along a group's outputs
        for phase in stride_phases(cfg):
            rows = cdiv(cfg.n * phase[1] * phase[4], px) * cfg.groups  # (pixel, group) rows of N * Hp * Wp
            out.append(Launch(BACKWARD_FILE, "gpuconv_conv_bwd_input_direct", (cmax, px),
                              (cdiv(rows, THREADS // lanes), 1, 1), (lanes, THREADS // lanes, 1),
                              (*dims(cfg), *(np.int32(v) for v in phase), *code)))
        return out
    bn = _tile_width(cfg.cg)
    # first a flag, on the device, of a NaN or Inf in w (arrays w, flag); last the exact dx (arrays dy, y, w,
    # flag, dx), which returns at once unless the flag is set (the NaN/Inf rule: the tiles' zero dz of a tap
    # that reaches no output pixel, times a NaN weight, is a term the chain rule does not have)
    e = cfg.kh * cfg.kw * cfg.cg * cfg.m
    out.append(Launch(BACKWARD_FILE, "gpuconv_nonfinite_flag", (), (min(cdiv(e, THREADS), FLAG_MAX_BLOCKS), 1, 1),
                      (THREADS, 1, 1), (np.int64(e),)))
    for phase in stride_phases(cfg):
        pixels = cfg.n * phase[1] * phase[4]
        out.append(Launch(BACKWARD_FILE, "gpuconv_conv_bwd_input", (bn,),
                          (cdiv(pixels, _tile_pixels(bn)), cdiv(cfg.cg, bn), cfg.groups), (THREADS, 1, 1),
                          (*dims(cfg), *(np.int32(v) for v in phase), *code)))
    dx_size = cfg.n * cfg.h * cfg.w * cfg.c
    out.append(Launch(BACKWARD_FILE, "gpuconv_conv_bwd_input_exact", (),
                      (min(cdiv(dx_size, THREADS), FLAG_MAX_BLOCKS), 1, 1), (THREADS, 1, 1), (*dims(cfg), *code)))
    return out


def partials_shape(sum_launch: Launch) -> tuple:
    """(splits, elements) of the workspace of partial sums that a sum_partials launch adds up."""
    e, n = sum_launch.scalars
    return int(n), int(e)


def _sum_partials(e: int, n: int) -> Launch:
    """out[i] = sum over s < n of ws[s, i], in order (arrays ws, out)."""
    return Launch(BACKWARD_FILE, "gpuconv_sum_partials", (), (cdiv(e, THREADS), 1, 1), (THREADS, 1, 1),
                  (np.int32(e), np.int32(n)))


def backward_weight(cfg, dtype, activation: str) -> list:
    """dw: partial sums per split into a (splits, E) workspace (arrays dy, y, x, ws), then the splits added in
    order (arrays ws, dw); the workspace is partials_shape(second launch), of the accumulator dtype."""
    code = _act(activation)
    p = cfg.n * cfg.oh * cfg.ow
    k = cfg.kh * cfg.kw * cfg.cg
    e = k * cfg.m
    if cfg.mg < SMALL_CHANNELS:
        n, chunk = splits(p, RED_X * RED_Y, cdiv(e, RED_X), MAX_GRID_YZ)
        first = Launch(BACKWARD_FILE, "gpuconv_conv_bwd_weight_small", (), (cdiv(e, RED_X), n, 1),
                       (RED_X, RED_Y, 1), (*dims(cfg), np.int32(chunk), code))
    else:
        acc = _registry.dtype(dtype, "CUDA backend").acc
        tiles = cdiv(k, BM) * cdiv(cfg.mg, BN) * cfg.groups
        cap = max(1, min(WORKSPACE_BYTES, get_workspace_limit()) // (e * acc.itemsize))
        n, chunk = splits(p, 4 * BK, tiles, cap)
        first = Launch(BACKWARD_FILE, "gpuconv_conv_bwd_weight", (), (cdiv(k, BM), cdiv(cfg.mg, BN) * cfg.groups, n),
                       (THREADS, 1, 1), (*dims(cfg), np.int32(chunk), code))
    return [first, _sum_partials(e, n)]


def backward_bias(p: int, m: int, activation: str, store_dz: bool = False, tf32: bool = False) -> list:
    """db of a (p, m) view of dy: partial sums per split (arrays dy, y, ws, dz), then the splits added in order.
    store_dz: the first launch also writes dz = dy * act'(z) (for the tensor-core kernels), else dz is unused;
    tf32: that dz rounded to TF32 (db still sums the unrounded values)."""
    code = _act(activation)
    n, chunk = splits(p, RED_X * RED_Y, cdiv(m, RED_X), MAX_GRID_YZ)
    return [Launch(BACKWARD_FILE, "gpuconv_bias_grad", (), (cdiv(m, RED_X), n, 1), (RED_X, RED_Y, 1),
                   (np.int32(p), np.int32(m), np.int32(chunk), code, np.int32(store_dz), np.int32(tf32))),
            _sum_partials(m, n)]


# ------------------------------------------------------------------------------------------------ limits
def check_limits(backend: str, cfg, dtype=np.float32) -> None:
    """Refuse (ValueError) a convolution whose pixel or weight counts the int32 kernel indices cannot hold,
    or one of whose launches (the same plans the wrappers run) would exceed CUDA's grid limits."""
    counts = {
        "input pixels N*H*W": cfg.n * cfg.h * cfg.w,
        "output pixels N*OH*OW": cfg.n * cfg.oh * cfg.ow,
        "weights KH*KW*C/G*M": cfg.kh * cfg.kw * cfg.cg * cfg.m,
    }
    for what, count in counts.items():
        if count >= INDEX_LIMIT:
            raise ValueError(
                f"{backend} backend: {what} = {count} is at or above 2**30, past what its kernels index in "
                "int32; split the batch (or the image) into smaller calls, or use backend='numpy'"
            )
    launches = (*forward(cfg, "identity", True), *backward_input(cfg, "identity"),
                *backward_weight(cfg, dtype, "identity"), *backward_bias(cfg.n * cfg.oh * cfg.ow, cfg.m, "identity"))
    for launch in launches:
        if launch.grid[0] > MAX_GRID_X:
            raise ValueError(
                f"{backend} backend: {launch.grid[0]} blocks of {launch.name} along x exceed CUDA's grid limit of "
                f"{MAX_GRID_X}; split the batch, or use backend='numpy'"
            )
        if max(launch.grid[1:]) > MAX_GRID_YZ:
            raise ValueError(
                f"{backend} backend: {launch.name} would need a grid of {launch.grid} blocks, past CUDA's grid "
                f"limit of {MAX_GRID_YZ} blocks in y/z; use backend='numpy' for this layer"
            )
