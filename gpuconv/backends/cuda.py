"""The CUDA backend: launch wrappers for the kernels in ``kernels/*.cu``, written once for both module kinds.

A ``CudaBackend`` is given a module kind ("cupy": cupy.RawModule on a GPU, "emulator": gpuconv's CPU emulator)
and the array module its arrays live in (cupy or numpy). It never knows which one runs the kernels: it gets
kernels from ``gpuconv.cuda.modules.get_module(kind, file)`` (each .cu file registers its template
instantiations, every dtype in one module) and launches them with ``kernel(grid, block, args)``, allocating with
``self.xp``.

Each wrapper does four things in order: allocate the output, compute the grid, launch, return. Contiguity and
the typed scalars (np.int32 / np.int64, never Python ints) are handled once, in ``_contiguous`` and ``_dims``.

Limits: pixel counts (N*H*W, N*OH*OW) and the weight count (KH*KW*C/G*M) must be below 2**30, because the
kernels index pixels and weights in int32; element offsets (pixel * channels) are 64-bit, so x, y, dx may hold
far more than 2**31 elements. Larger problems are refused with a ValueError before anything is allocated.

Gradients of the weights and the bias are deterministic: partial sums over a fixed split of the N*OH*OW pixels
go to a workspace, and a second kernel adds the splits in order. No float atomics. The split depends on the
shape only (and, for dw, on ``gpuconv.set_workspace_limit`` when that is below 64 MiB), never on the device.

Paths: few channels per group (< SMALL_CHANNELS, e.g. depthwise) take direct kernels, the rest tiled implicit
GEMMs; dx runs one launch per stride phase, over only the taps that reach it (``stride_phases``).

Precision: forward, backward_input, backward_weight and backward take ``precision`` ("highest" or "tf32").
float16, bfloat16 and float32 with "tf32" run the tensor-core kernels of kernels/conv_tc_*.cu where the device
has them; the routing is ``gpuconv/backends/cuda_tc.py`` (pure functions of config, dtype, precision, arch).
float32 with "highest" and float64 always take the SIMT kernels. ``math_path`` (what ``gpuconv info`` prints)
and ``rounds_tf32`` say which path a dtype and precision take.
"""
from __future__ import annotations

import math

import numpy as np

from .._config import get_workspace_limit
from . import cuda_tc

ACTIVATION_CODES = {"identity": 0, "relu": 1, "sigmoid": 2}  # GPUCONV_ACT_* in kernels/gpuconv_common.cuh

# Tile sizes, the same as the GPUCONV_* macros of kernels/gpuconv_common.cuh.
BM, BN, BK, THREADS = 64, 64, 16, 256
# Fewer output channels per group than this: the forward and dw kernels take their direct / small-channel path
# (a 64-wide column tile would mostly compute padding). Same rule for input channels per group and dx.
SMALL_CHANNELS = 16
# The direct dx kernel keeps the sums of every input channel of a group, for PX pixels, in registers:
# (CMAX, PX) instantiations, the first with Cg <= CMAX taken (15 sums leave room for one pixel only).
DIRECT_DX_VARIANTS = ((1, 4), (4, 4), (SMALL_CHANNELS - 1, 1))
# Lanes of the direct dx kernel that share one (pixel, group) row, each taking every 8th output channel: 8
# lanes read a whole 32-byte sector of a dz row, and each lane's pass over the taps does 4x the work of 32.
DIRECT_DX_LANES = 8
# The reductions (dw, db) aim at about this many blocks (two per SM of a 132-SM H100). A constant, never a
# property of the device, so that the split and therefore the result are the same on every machine.
TARGET_BLOCKS = 264
WORKSPACE_BYTES = 64 * 2**20  # cap of the dw partial sums (also capped by gpuconv.set_workspace_limit)
INDEX_LIMIT = 2**30  # pixel and weight counts must be below this (int32 indices with headroom)
MAX_GRID_YZ = 65535
MAX_GRID_X = 2**31 - 1

FORWARD_FILE = "conv_forward.cu"
BACKWARD_FILE = "conv_backward.cu"
_CTYPES = {np.dtype(np.float16): "__half", np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           **cuda_tc.TC_CTYPES}
# Kernel names are registered in each .cu file by `// gpuconv-name-expressions:` lines (every dtype of a file
# compiles in one module); a name here is looked up as f"{name}<{ctype}>".


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _acc_dtype(dtype):
    """Accumulator / workspace dtype: float32 for float16 and float32 storage, float64 for float64."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def check_limits(backend: str, cfg) -> None:
    """Refuse (ValueError) a convolution whose pixel or weight counts the int32 kernel indices cannot hold,
    or whose grid would exceed CUDA's limits."""
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
    grids = {
        "groups": cfg.groups,
        "groups * ceil(M/G / 64)": cfg.groups * _cdiv(cfg.mg, BN),
        "ceil(M / 32)": _cdiv(cfg.m, 32),
        "ceil(C / 32)": _cdiv(cfg.c, 32),
    }
    if cfg.cg < SMALL_CHANNELS and _cdiv(cfg.n * cfg.h * cfg.w * cfg.groups, THREADS // 32) > MAX_GRID_X:
        raise ValueError(f"{backend} backend: N*H*W*G = {cfg.n * cfg.h * cfg.w * cfg.groups} (pixel, group) rows "
                         f"of dx exceed CUDA's grid limit; split the batch, or use backend='numpy'")
    for what, count in grids.items():
        if count > MAX_GRID_YZ:
            raise ValueError(
                f"{backend} backend: {what} = {count} exceeds CUDA's grid limit of {MAX_GRID_YZ} blocks in y/z; "
                "use backend='numpy' for this layer"
            )


def _contiguous(xp, *arrays):
    return tuple(None if a is None else xp.ascontiguousarray(a) for a in arrays)


def _aligned16(*arrays) -> bool:
    """Whether every array's data starts on a 16-byte boundary (the tensor-core kernels' 16-byte copies)."""
    for a in arrays:
        if a is None:
            continue
        iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
        if iface["data"][0] % 16:
            return False
    return True


def _dims(cfg) -> tuple:
    """The shape arguments shared by every convolution kernel (GPUCONV_CONV_SHAPE_PARAMS), as typed scalars."""
    return tuple(
        np.int32(v)
        for v in (cfg.n, cfg.h, cfg.w, cfg.c, cfg.kh, cfg.kw, cfg.m, cfg.groups, cfg.oh, cfg.ow,
                  cfg.s1, cfg.s2, cfg.d1, cfg.d2, cfg.pt, cfg.pl)
    )


def stride_phases(cfg) -> list:
    """The stride phases of dx that hold pixels, each as the 16 ints the dx kernels take:
    (h0, Hp, qh0, w0, Wp, qw0, k1f, k1s, T1, k1b, k1i, k2f, k2s, T2, k2b, k2i).

    Phase (ph, pw) holds the input pixels with (h + pt, w + pl) = (ph, pw) modulo (s1, s2): rows h0 + s1 * hp for
    hp < Hp, and (h0 + pt - ph) / s1 = qh0. Only the taps k1 with k1 * d1 = ph modulo s1 reach them: k1 = k1f +
    k1s * i1 for i1 < T1, reaching output row oi = qh0 + hp - (k1b + k1i * i1). Columns likewise.
    """
    def rows(extent, pad, s, ph):
        first = (ph - pad) % s
        return first, max(0, _cdiv(extent - first, s)), (first + pad - ph) // s

    def taps(kk, d, s, ph):
        ks = [k for k in range(kk) if k * d % s == ph]
        if not ks:
            return 0, 1, 0, 0, 0
        step = s // math.gcd(d, s)
        return ks[0], step, len(ks), (ks[0] * d - ph) // s, step * d // s

    out = []
    for ph in range(cfg.s1):
        rh = rows(cfg.h, cfg.pt, cfg.s1, ph)
        for pw in range(cfg.s2):
            rw = rows(cfg.w, cfg.pl, cfg.s2, pw)
            if rh[1] and rw[1]:
                out.append((*rh, *rw, *taps(cfg.kh, cfg.d1, cfg.s1, ph), *taps(cfg.kw, cfg.d2, cfg.s2, pw)))
    return out


def _direct_block(channels: int) -> tuple:
    """Block (bx, by) of the direct kernels: bx threads along channels (a power of two, at most 32), the rest
    along pixels, so that few channels do not leave most threads idle."""
    bx = min(32, 1 << max(0, (channels - 1).bit_length()))
    return bx, THREADS // bx


def _splits(total: int, per_split_min: int, blocks_per_split: int, cap: int) -> tuple:
    """(splits, chunk): cut ``total`` reduction items into splits of ``chunk`` items (a multiple of BK) so
    that about TARGET_BLOCKS blocks run, each split holding at least ``per_split_min`` items."""
    want = _cdiv(TARGET_BLOCKS, max(1, blocks_per_split))
    splits = max(1, min(want, total // max(1, per_split_min), cap, MAX_GRID_YZ))
    chunk = _cdiv(_cdiv(total, splits), BK) * BK
    return _cdiv(total, chunk), chunk


# Which modes of product run on tensor cores, and from which compute capability: gpuconv/backends/cuda_tc.py.
TENSOR_CORE_ARCH = cuda_tc.TENSOR_CORE_ARCH
TENSOR_CORE_MODES = cuda_tc.TENSOR_CORE_MODES
_mode = cuda_tc.mode
uses_tensor_cores = cuda_tc.uses_tensor_cores


def math_path(dtype, precision: str, arch) -> str:
    """Which units compute the products of ``dtype`` in ``precision`` on a device of compute capability
    ``arch`` (e.g. 90; None for the CPU emulator), in words, for ``gpuconv info``."""
    dtype = np.dtype(dtype)
    if dtype not in _CTYPES:
        return f"no {dtype.name} kernels in this build (use backend='numpy')"
    mode = _mode(dtype, precision)
    where = f"GPU sm_{arch}" if arch is not None else "CPU emulator running the CUDA kernels"
    if uses_tensor_cores(dtype, precision, arch):
        return f"{where}: tensor cores, {mode.upper()} products, float32 accumulation"
    what = {"float16": "float16 products in float32", "float32": "strict FP32", "float64": "FP64"}[dtype.name]
    text = f"{where}: CUDA cores, {what}"
    if mode == "tf32":
        why = ("this build has no TF32 kernels" if mode not in TENSOR_CORE_MODES
               else f"sm_{arch} has no TF32 tensor cores (sm_80 and later have)")
        text += f"; tf32 asked for, but {why}: the results are the 'highest' ones"
    elif arch is not None and mode in TENSOR_CORE_ARCH and arch >= TENSOR_CORE_ARCH[mode]:
        text += f" (this GPU has {mode} tensor cores; this build does not use them)"
    return text


class CudaBackend:
    """The five operations of a convolution layer on gpuconv's CUDA kernels (GPU or emulator alike)."""

    def __init__(self, kind: str, xp, get_module=None):
        self.name = kind  # "cupy" or "emulator"
        self.kind = kind
        self.xp = xp
        self._get_module = get_module  # None: gpuconv.cuda.modules.get_module (tests may inject another)
        self._kernels: dict = {}

    def __repr__(self) -> str:
        return f"CudaBackend({self.kind!r}, {self.xp.__name__})"

    def _arch(self):
        """The current CUDA device's compute capability (e.g. 90), None on the emulator."""
        return int(self.xp.cuda.Device().compute_capability) if self.kind == "cupy" else None

    def math_path(self, dtype, precision: str) -> str:
        """``math_path`` on this backend's device."""
        return math_path(dtype, precision, self._arch())

    def rounds_tf32(self) -> bool:
        """Whether precision="tf32" really rounds float32 operands to TF32 here (else it runs strict FP32)."""
        return uses_tensor_cores(np.float32, "tf32", self._arch())

    def dtype_reason(self, dtype):
        """None if the kernels are built for ``dtype``, else why not (the public API raises it as a TypeError)."""
        dtype = np.dtype(dtype)
        if dtype not in _CTYPES:
            return (f"the {self.name} backend has no {dtype.name} kernels in this build; "
                    "use backend='numpy', or float16 / float32")
        arch = self._arch()
        if dtype == cuda_tc.BFLOAT16 and not uses_tensor_cores(dtype, "highest", arch):
            return (f"the {self.name} backend runs bfloat16 on tensor cores only (sm_80 and later), and this GPU "
                    f"is sm_{arch}; use backend='numpy', or float16 / float32")
        return None

    def _kernel(self, fname: str, kernel: str, dtype, *template_ints):
        """The kernel ``kernel<ctype, ints...>`` of kernels/``fname`` (compiled on first use, then cached;
        bool template arguments are spelled true / false)."""
        key = (fname, kernel, np.dtype(dtype), template_ints)
        if key not in self._kernels:
            get_module = self._get_module
            if get_module is None:
                from ..cuda.modules import get_module
            module = get_module(self.kind, fname)
            args = cuda_tc.template_args(_CTYPES[np.dtype(dtype)], template_ints)
            self._kernels[key] = module.get_function(f"{kernel}<{args}>")
        return self._kernels[key]

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x, w, b, cfg, activation, precision="highest"):
        """y = act(conv(x, w) + b), one fused kernel (on tensor cores where ``cuda_tc.forward_route`` says)."""
        check_limits(self.name, cfg)
        x, w, b = _contiguous(self.xp, x, w, b)
        y = self.xp.empty(cfg.y_shape, x.dtype)
        p = cfg.n * cfg.oh * cfg.ow
        tc = cuda_tc.forward_route(cfg, x.dtype, precision, self._arch(), _aligned16(x, w))
        if tc is not None:
            kernel = self._kernel(tc.file, tc.kernel, x.dtype, *tc.template)
            grid, block = tc.grid, tc.block
        elif cfg.mg < SMALL_CHANNELS:
            kernel = self._kernel(FORWARD_FILE, "gpuconv_conv_fwd_direct", x.dtype)
            bx, by = _direct_block(cfg.m)
            grid, block = (_cdiv(p, by), _cdiv(cfg.m, bx), 1), (bx, by, 1)
        else:
            bn = 32 if cfg.mg <= 32 else BN  # 128 x 32 tiles for 16..32 output channels per group
            kernel = self._kernel(FORWARD_FILE, "gpuconv_conv_fwd", x.dtype, bn)
            grid, block = (_cdiv(p, 4 * THREADS // (bn // 4)), _cdiv(cfg.mg, bn), cfg.groups), (THREADS, 1, 1)
        has_bias = np.int32(b is not None)
        kernel(grid, block, (x, w, w if b is None else b, y, *_dims(cfg), has_bias,
                             np.int32(ACTIVATION_CODES[activation])))
        return y

    # -- backward -----------------------------------------------------------------------------------------
    def activation_backward(self, dy, y, activation):
        """dz = dy * act'(z) from the saved output y, elementwise (any shape)."""
        if activation == "identity":
            return dy.copy()
        dy, y = _contiguous(self.xp, dy, y)
        dz = self.xp.empty(dy.shape, dy.dtype)
        if dz.size == 0:
            return dz
        kernel = self._kernel(BACKWARD_FILE, "gpuconv_act_bwd", dy.dtype)
        grid = (min(_cdiv(dz.size, THREADS), 8192), 1, 1)
        kernel(grid, (THREADS, 1, 1), (dy, y, dz, np.int64(dz.size), np.int32(ACTIVATION_CODES[activation])))
        return dz

    def backward_input(self, dz, w, cfg, precision="highest"):
        """dx: the transposed convolution of dz with w."""
        return self.backward_input_fused(dz, None, w, cfg, "identity", precision)

    def backward_weight(self, dz, x, cfg, precision="highest"):
        """dw: dz correlated with the input windows, summed over batch and pixels (deterministic)."""
        return self.backward_weight_fused(dz, None, x, cfg, "identity", precision)

    def backward_bias(self, dz):
        """db: dz summed over every axis but the last (deterministic)."""
        return self.backward_bias_fused(dz, None, "identity")

    def backward(self, dy, y, x, w, cfg, activation, has_bias=True, precision="highest"):
        """(dx, dw, db) straight from dy and the saved output y: each gradient kernel applies the activation
        gradient as it loads, so dz = dy * act'(z) is never written to memory."""
        dx = self.backward_input_fused(dy, y, w, cfg, activation, precision)
        dw = self.backward_weight_fused(dy, y, x, cfg, activation, precision)
        db = self.backward_bias_fused(dy, y, activation) if has_bias else None
        return dx, dw, db

    def backward_input_fused(self, dy, y, w, cfg, activation, precision="highest"):
        """dx from dy (and the saved output y unless activation is identity): one launch per stride phase."""
        check_limits(self.name, cfg)
        dy, y, w = _contiguous(self.xp, dy, y, w)
        dx = self.xp.empty(cfg.x_shape, dy.dtype)
        act = np.int32(ACTIVATION_CODES[activation])
        tc = cuda_tc.backward_input_route(cfg, dy.dtype, precision, self._arch(), _aligned16(dy, y, w))
        if tc is not None:
            kernel = self._kernel(tc.file, tc.kernel, dy.dtype, *tc.template)
            # flag = 1 if w holds inf / NaN: the dx kernel then sums only the taps that reach an output pixel
            # (the NaN rule), decided on the device, without a host sync.
            flag = self.xp.zeros((1,), np.int32)
            check = self._kernel(tc.file, "gpuconv_tc_nonfinite", dy.dtype)
            check((max(1, min(_cdiv(w.size, THREADS), 1024)), 1, 1), (THREADS, 1, 1), (w, np.int32(w.size), flag))
            for phase in stride_phases(cfg):
                grid = cuda_tc.dx_grid(cfg, cfg.n * phase[1] * phase[4], tc.template[0], tc.template[1])
                kernel(grid, tc.block, (dy, dy if y is None else y, w, flag, dx, *_dims(cfg),
                                        *(np.int32(v) for v in phase), act))
            return dx
        direct = cfg.cg < SMALL_CHANNELS
        bn = 32 if cfg.cg <= 32 else BN  # 128 x 32 tiles for 16..32 input channels per group
        if direct:
            cmax, px = next(v for v in DIRECT_DX_VARIANTS if cfg.cg <= v[0])
            kernel = self._kernel(BACKWARD_FILE, "gpuconv_conv_bwd_input_direct", dy.dtype, cmax, px)
            lanes = min(DIRECT_DX_LANES, 1 << max(0, (cfg.mg - 1).bit_length()))  # along a group's outputs
        else:
            kernel = self._kernel(BACKWARD_FILE, "gpuconv_conv_bwd_input", dy.dtype, bn)
        for phase in stride_phases(cfg):
            pixels = cfg.n * phase[1] * phase[4]  # N * Hp * Wp
            if direct:
                rows = _cdiv(pixels, px) * cfg.groups
                grid, block = (_cdiv(rows, THREADS // lanes), 1, 1), (lanes, THREADS // lanes, 1)
            else:
                grid = (_cdiv(pixels, 4 * THREADS // (bn // 4)), _cdiv(cfg.cg, bn), cfg.groups)
                block = (THREADS, 1, 1)
            kernel(grid, block, (dy, dy if y is None else y, w, dx, *_dims(cfg), *(np.int32(v) for v in phase), act))
        return dx

    def backward_weight_fused(self, dy, y, x, cfg, activation, precision="highest"):
        """dw from dy (and y), x: partial sums per split in a workspace, then the splits added in order."""
        check_limits(self.name, cfg)
        dy, y, x = _contiguous(self.xp, dy, y, x)
        dw = self.xp.empty(cfg.w_shape, dy.dtype)
        acc = _acc_dtype(dy.dtype)
        p = cfg.n * cfg.oh * cfg.ow
        k = cfg.kh * cfg.kw * cfg.cg
        e = k * cfg.m
        workspace = min(WORKSPACE_BYTES, get_workspace_limit())
        tc = cuda_tc.backward_weight_route(cfg, dy.dtype, precision, self._arch(), _aligned16(dy, y, x), workspace,
                                           TARGET_BLOCKS)
        if tc is not None:
            kernel = self._kernel(tc.file, tc.kernel, dy.dtype, *tc.template)
            splits, chunk = tc.grid[2], tc.chunk
            grid, block = tc.grid, tc.block
        elif cfg.mg < SMALL_CHANNELS:
            splits, chunk = _splits(p, 8 * 32, _cdiv(e, 32), MAX_GRID_YZ)
            kernel = self._kernel(BACKWARD_FILE, "gpuconv_conv_bwd_weight_small", dy.dtype)
            grid, block = (_cdiv(e, 32), splits, 1), (32, 8, 1)
        else:
            tiles = _cdiv(k, BM) * _cdiv(cfg.mg, BN) * cfg.groups
            cap = max(1, workspace // (e * acc.itemsize))
            splits, chunk = _splits(p, 4 * BK, tiles, cap)
            kernel = self._kernel(BACKWARD_FILE, "gpuconv_conv_bwd_weight", dy.dtype)
            grid, block = (_cdiv(k, BM), _cdiv(cfg.mg, BN) * cfg.groups, splits), (THREADS, 1, 1)
        ws = self.xp.empty((splits, e), acc)
        kernel(grid, block, (dy, dy if y is None else y, x, ws, *_dims(cfg), np.int32(chunk),
                             np.int32(ACTIVATION_CODES[activation])))
        self._sum_partials(ws, dw, e, splits)
        return dw

    def backward_bias_fused(self, dy, y, activation):
        """db from dy (and y): column sums of the (P, M) view, split as for dw."""
        m = dy.shape[-1]
        p = dy.size // m
        if p >= INDEX_LIMIT:
            raise ValueError(f"{self.name} backend: {p} rows of dz to sum is at or above 2**30; "
                             "split the batch, or use backend='numpy'")
        dy, y = _contiguous(self.xp, dy, y)
        db = self.xp.empty((m,), dy.dtype)
        splits, chunk = _splits(p, 8 * 32, _cdiv(m, 32), MAX_GRID_YZ)
        ws = self.xp.empty((splits, m), _acc_dtype(dy.dtype))
        kernel = self._kernel(BACKWARD_FILE, "gpuconv_bias_grad", dy.dtype)
        kernel((_cdiv(m, 32), splits, 1), (32, 8, 1),
               (dy, dy if y is None else y, ws, np.int32(p), np.int32(m), np.int32(chunk),
                np.int32(ACTIVATION_CODES[activation])))
        self._sum_partials(ws, db, m, splits)
        return db

    def _sum_partials(self, ws, out, e: int, splits: int) -> None:
        """out[i] = sum over s of ws[s, i], s in increasing order, rounded once to out's dtype."""
        kernel = self._kernel(BACKWARD_FILE, "gpuconv_sum_partials", out.dtype)
        kernel((_cdiv(e, THREADS), 1, 1), (THREADS, 1, 1), (ws, out, np.int32(e), np.int32(splits)))
