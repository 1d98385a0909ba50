"""The NumPy backend: the CPU fallback and the oracle for every other backend.

Notation as in gpuconv._config: x (N,H,W,C), w (KH,KW,Cg,M) with Cg = C/G and Mg = M/G, y (N,OH,OW,M).
A *chunk* is a block of output rows: a few whole images, or a band of rows of one image; P = its pixel count.
K = KH*KW*Cg is the length of one im2col row.

How every operation is computed:
- The output rows are cut into chunks so that the work buffers of one chunk fit a cache-sized target and never
  exceed ``get_workspace_limit()``, whatever N is. Work buffers are kept per thread and reused between calls
  (fresh big buffers cost page faults on every call).
- im2col is one ``np.copyto`` from a strided window view of the input chunk into a work buffer; padding is a
  zero-bordered copy of the chunk (no copy at all when the chunk needs no padding). Two column layouts:
    pixel-major  (G, P, KH, KW, Cg): rows contiguous; the default.
    tap-major    (KH, KW, C, P):     for few channels and one group (C <= _TAPMAJOR_MAX_C), where a
                                     pixel-major row would be copied a handful of values at a time.
- Products go to BLAS through ``np.matmul`` (one GEMM per chunk, batched over groups), written straight into
  the output chunk; bias and activation are applied in place on the chunk while it is in cache.
- dX: when both strides are 1 (and the columns are pixel-major), a forward convolution of dZ with the flipped,
  transposed kernel (padding d*(k-1) - p; a negative padding crops); otherwise a GEMM into column space
  followed by KH*KW shifted adds (col2im), into a buffer ordered by stride phase so that each add is contiguous.
- dW: one GEMM cols^T @ dZ per chunk, summed over the chunks in chunk order. db: ones @ dZ. Activations and
  their gradients (from the saved output y) are the NumPy functions of ``gpuconv._registry.ACTIVATIONS``.
- ``backward`` (what the public API's conv2d_backward calls) runs those steps in turn; dZ goes to a work buffer
  reused between calls (fresh memory costs page faults on every call).
- Big calls run their chunks on worker threads when threadpoolctl can hold BLAS at one thread
  (``gpuconv.backends._threads``); the results are the same bits as running the same chunks in turn.
float16 and bfloat16 are computed in float32 and rounded once at the end (round to nearest even); float32 and
float64 are computed in their own type.

Precision (the ``precision`` keyword of forward, backward_input, backward_weight and backward): "highest"
computes as above. "tf32" changes float32 only: both operands of every product (x and w; dz and w; dz and x)
are first rounded to TF32 exactly as the GPU's conversion cvt.rna.tf32.f32 does (``tf32_round``), then the same
float32 GEMMs run. A product of two TF32 values has at most 22 significant bits, so it is exact in float32: the
result is what a tensor core computes, up to the order of the float32 additions. Bias, activation, dz and db
stay float32 (they are not products of two operands).
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import _registry
from . import _threads
from .._config import ConvConfig, get_workspace_limit

# Work buffers of one chunk aim at this size (bytes), below the workspace limit: small enough to stay in cache
# between the im2col copy and the GEMM, large enough for BLAS to run at speed. Measured: docs/performance.md.
_CHUNK_TARGET = 4 * 2**20
# Up to this many input channels (with one group) the columns are built tap-major.
_TAPMAJOR_MAX_C = 4
# Below this size (bytes) a chunk is not split further just to give every worker thread a share.
_CHUNK_MIN = 256 * 2**10
# Below this much work (bytes of chunk buffers in all) a call does not use the worker threads.
_PARALLEL_MIN = 8 * 2**20

_local = threading.local()

def _work_buffer(slot: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialized array from this thread's buffer cache; ``slot`` names one buffer in use at a time."""
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buf = cache.get(slot)
    if buf is None or buf.nbytes < nbytes:
        cache.pop(slot, None)
        if sum(b.nbytes for b in cache.values()) + nbytes > get_workspace_limit():
            cache.clear()  # the limit was lowered since these were made: keep the cache under it
        buf = np.empty(max(nbytes, 1), np.uint8)
        cache[slot] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def _compute_dtype(dtype) -> np.dtype:
    # the registry's accumulator dtype: float16 and bfloat16 are computed in float32 and rounded once at the end
    return _registry.accumulator(dtype, "numpy backend")


_TF32_HALF = np.uint32(0x1000)  # half of the lowest kept mantissa bit (bit 13)
_TF32_KEEP = np.uint32(0xFFFFE000)  # sign, exponent and the 10 explicit mantissa bits TF32 keeps


def tf32_round(a) -> np.ndarray:
    """float32 ``a`` with every value rounded to TF32 as the GPU's cvt.rna.tf32.f32 does (a new array).

    On the bit pattern u of a finite value: u = (u + 0x1000) & 0xFFFFE000, i.e. round to nearest with ties away
    from zero, keeping 10 explicit mantissa bits (a value near the float32 maximum may round to inf, as on the
    GPU). NaN and inf are unchanged. The result is float32 with the low 13 mantissa bits zero.
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    r = u + _TF32_HALF  # wraps only for NaN patterns, which are put back below
    r &= _TF32_KEEP
    finite = np.isfinite(a)
    if not finite.all():
        np.copyto(r, u, where=~finite)
    return r.view(np.float32)


def _operands(precision: str, *arrays) -> tuple:
    """The operands of the products in ``precision``: float32 rounded to TF32 for "tf32", else unchanged (None
    stays None: an operand no product needs)."""
    if precision != "tf32" or arrays[0].dtype != np.float32:
        return arrays
    return tuple(None if a is None else tf32_round(a) for a in arrays)


def _tapmajor(cfg: ConvConfig) -> bool:
    return cfg.groups == 1 and cfg.c <= _TAPMAJOR_MAX_C


def _input_span(i0: int, i1: int, s: int, d: int, k: int, p: int) -> tuple:
    """Input rows [r0, r1) read by output rows [i0, i1) (may reach outside the image: that is padding)."""
    return i0 * s - p, (i1 - 1) * s + (k - 1) * d + 1 - p


def _chunks(cfg: ConvConfig, itemsize: int, workers: int = 1) -> list:
    """(n0, n1, i0, i1) for each chunk: output rows [i0, i1) of images [n0, n1), in order.

    Sized to the chunk target, to the workspace limit shared by the ``workers`` running at once, and to give
    every worker a chunk when there is enough work. Counted per chunk: its im2col columns, a converted copy of
    its dZ and its padded input block. A single output row above the limit is still done whole.
    """
    pixel = (cfg.kh * cfg.kw * cfg.c + cfg.m) * itemsize
    in_row = (cfg.w + cfg.pl + cfg.pr) * cfg.c * itemsize

    def cost(rows):  # bytes for a band of `rows` output rows of one image
        r0, r1 = _input_span(0, rows, cfg.s1, cfg.d1, cfg.kh, 0)
        return rows * cfg.ow * pixel + (r1 - r0) * in_row

    total = cfg.n * cost(cfg.oh)
    if total < _PARALLEL_MIN:  # small: one chunk in the calling thread (the thread pool costs more than it gives)
        workers = 1
    budget = max(1, min(_CHUNK_TARGET, get_workspace_limit() // workers))
    if workers > 1:  # a multiple of `workers` chunks, so that none waits for the others at the end
        pieces = -(-total // budget)
        pieces = -(-pieces // workers) * workers
        budget = min(budget, max(total // pieces, _CHUNK_MIN))
    if cost(cfg.oh) <= budget:  # whole images, spread evenly over as few chunks as fit (a multiple of workers)
        pieces = -(-cfg.n // max(1, budget // cost(cfg.oh)))
        pieces = min(cfg.n, -(-pieces // workers) * workers)
        return [(k * cfg.n // pieces, (k + 1) * cfg.n // pieces, 0, cfg.oh) for k in range(pieces)]
    rows = 1
    while rows < cfg.oh and cost(rows + 1) <= budget:
        rows += 1
    bands = -(-cfg.oh // rows)  # as few bands as fit, of nearly equal height
    while (cfg.n * bands) % workers and bands < cfg.oh:
        bands += 1
    return [(n0, n0 + 1, k * cfg.oh // bands, (k + 1) * cfg.oh // bands)
            for n0 in range(cfg.n) for k in range(bands)]


def _input_block(x, cfg: ConvConfig, n0, n1, i0, i1, ct, channel_major: bool):
    """x[n0:n1] rows and columns under output rows [i0, i1), zero where they leave x, as (nb, rows, cols, C).

    A view of x when no padding is needed (im2col then reads x directly, converting the dtype as it copies);
    else a zero-bordered copy in dtype ``ct``, stored channel-major (C, nb, rows, cols) if asked.
    """
    r0, r1 = _input_span(i0, i1, cfg.s1, cfg.d1, cfg.kh, cfg.pt)
    c0, c1 = _input_span(0, cfg.ow, cfg.s2, cfg.d2, cfg.kw, cfg.pl)
    if r0 >= 0 and c0 >= 0 and r1 <= cfg.h and c1 <= cfg.w and (not channel_major or cfg.c == 1):
        return x[n0:n1, r0:r1, c0:c1]
    nb, c = n1 - n0, cfg.c
    if channel_major:
        block = _work_buffer("input", (c, nb, r1 - r0, c1 - c0), ct).transpose(1, 2, 3, 0)
    else:
        block = _work_buffer("input", (nb, r1 - r0, c1 - c0, c), ct)
    block.fill(0)
    ir0, ir1, ic0, ic1 = max(r0, 0), min(r1, cfg.h), max(c0, 0), min(c1, cfg.w)
    if ir0 < ir1 and ic0 < ic1:
        block[:, ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] = x[n0:n1, ir0:ir1, ic0:ic1]
    return block


def _im2col(x, cfg: ConvConfig, n0, n1, i0, i1, ct):
    """Columns of one chunk: tap-major (KH*KW*C, P) or pixel-major (G, P, KH*KW*Cg), in a work buffer."""
    tapmajor = _tapmajor(cfg)
    xb = _input_block(x, cfg, n0, n1, i0, i1, ct, channel_major=tapmajor)
    nb, ohc = n1 - n0, i1 - i0
    sn, sh, sw, sc = xb.strides
    # win[n, i, j, a, b, c] = xb[n, i*s1 + a*d1, j*s2 + b*d2, c]: the window under output pixel (n, i, j).
    # A dimension of size 1 gets stride 0: its step is never taken, and s * sh could pass int64 (stride 2**31).
    shape = (nb, ohc, cfg.ow, cfg.kh, cfg.kw, cfg.c)
    steps = (sn, cfg.s1 * sh, cfg.s2 * sw, cfg.d1 * sh, cfg.d2 * sw, sc)
    win = as_strided(xb, shape, tuple(st if n > 1 else 0 for n, st in zip(shape, steps)), writeable=False)
    p, g = nb * ohc * cfg.ow, cfg.groups
    if tapmajor:
        cols = _work_buffer("cols", (cfg.kh, cfg.kw, cfg.c, nb, ohc, cfg.ow), ct)
        np.copyto(cols, win.transpose(3, 4, 5, 0, 1, 2))
        return cols.reshape(cfg.kh * cfg.kw * cfg.c, p)
    cols = _work_buffer("cols", (g, nb, ohc, cfg.ow, cfg.kh, cfg.kw, cfg.cg), ct)
    np.copyto(cols, win.reshape(nb, ohc, cfg.ow, cfg.kh, cfg.kw, g, cfg.cg).transpose(5, 0, 1, 2, 3, 4, 6))
    return cols.reshape(g, p, cfg.kh * cfg.kw * cfg.cg)


def _weight_matrix(w, cfg: ConvConfig, ct):
    """w (KH,KW,Cg,M) -> (G, K, Mg), contiguous, dtype ct: the GEMM operand of each group."""
    k = cfg.kh * cfg.kw * cfg.cg
    wg = w.astype(ct, copy=False).reshape(cfg.kh, cfg.kw, cfg.cg, cfg.groups, cfg.mg)
    return np.ascontiguousarray(wg.transpose(3, 0, 1, 2, 4)).reshape(cfg.groups, k, cfg.mg)


def _conv(x, w, cfg: ConvConfig, ct, b=None, activation="identity"):
    """act(conv(x, w) + b) as a new (N,OH,OW,M) array of dtype ct, one GEMM per chunk written in place."""
    activate = _registry.activation(activation, "numpy backend").forward
    y = np.empty(cfg.y_shape, ct)
    wmat = _weight_matrix(w, cfg, ct)
    # the bias repeated along one output row: adding it to (rows, OW*M) runs in long contiguous strips, where a
    # (pixels, M) broadcast would loop M values at a time (slow for few output channels)
    bias_row = None if b is None else np.tile(b.astype(ct, copy=False), cfg.ow)

    def chunk(c):
        n0, n1, i0, i1 = c
        yc = y[n0:n1, i0:i1]  # contiguous: whole images, or a band of rows of one image
        p = yc.size // cfg.m
        cols = _im2col(x, cfg, n0, n1, i0, i1, ct)
        if _tapmajor(cfg):
            np.matmul(cols.T, wmat[0], out=yc.reshape(p, cfg.m))
        else:
            np.matmul(cols, wmat, out=yc.reshape(p, cfg.groups, cfg.mg).transpose(1, 0, 2))
        if bias_row is not None:
            rows = yc.reshape(-1, bias_row.size)
            np.add(rows, bias_row, out=rows)
        activate(yc)

    workers = _threads.workers()
    for _ in _threads.map_tasks(chunk, _chunks(cfg, ct.itemsize, workers), workers):
        pass
    return y


def _transposed_config(cfg: ConvConfig) -> ConvConfig:
    """The stride-1 forward convolution that maps dZ (N,OH,OW,M) to dX (N,H,W,C).

    Its kernel is w flipped in space with in/out channels swapped per group (_transposed_weight); its padding
    is d*(k-1) - p on each side, which is negative (a crop of dZ) when p > d*(k-1).
    """
    ph, pw = cfg.d1 * (cfg.kh - 1), cfg.d2 * (cfg.kw - 1)
    return ConvConfig(
        n=cfg.n, h=cfg.oh, w=cfg.ow, c=cfg.m, kh=cfg.kh, kw=cfg.kw, m=cfg.c, groups=cfg.groups,
        s1=1, s2=1, d1=cfg.d1, d2=cfg.d2,
        pt=ph - cfg.pt, pb=ph - cfg.pb, pl=pw - cfg.pl, pr=pw - cfg.pr, oh=cfg.h, ow=cfg.w,
    )


def _transposed_weight(w, cfg: ConvConfig):
    """wt[a, b, m, g*Cg + c] = w[KH-1-a, KW-1-b, c, g*Mg + m]: shape (KH, KW, Mg, C)."""
    wg = w.reshape(cfg.kh, cfg.kw, cfg.cg, cfg.groups, cfg.mg)[::-1, ::-1]
    return wg.transpose(0, 1, 4, 3, 2).reshape(cfg.kh, cfg.kw, cfg.mg, cfg.c)


def _taps(i0, i1, s, off, size):
    """For output indices i in [i0, i1) reading input index i*s + off: the (lo, hi) where that is in [0, size)
    (lo, hi relative to i0) and the input slice they read."""
    lo = max(i0, _ceil_div(-off, s))
    hi = min(i1, _ceil_div(size - off, s))
    if hi <= lo:
        return None
    return lo - i0, hi - i0, slice(lo * s + off, (hi - 1) * s + off + 1, s)


def _ceil_div(a, b):
    return -(-a // b)


def _col2im_backward_input(dz, w, cfg: ConvConfig, ct):
    """dX by a GEMM into column space, then one shifted add per kernel tap (any stride).

    The adds go to a phase-major buffer, where input pixel (h, w) sits at [h % s1, w % s2, h // s1, w // s2]: a
    tap reads every s-th input pixel, and there they are neighbours, so each add runs along contiguous rows
    (into dX itself it would run at a stride: 1.2 ms vs ~0.3 for the 49 taps of one image of shape stem). One copy
    per phase at the end puts dX in order (none with stride 1). Each element still gets its taps in the same
    order, so the bits are those of adding into dX directly.
    """
    tapmajor = _tapmajor(cfg)
    s1, s2 = cfg.s1, cfg.s2
    hq, wq = _ceil_div(cfg.h, s1), _ceil_div(cfg.w, s2)
    wmat = _weight_matrix(w, cfg, ct)  # (G, K, Mg)
    # tap-major accumulates channel-major (C, N, ...): its adds then run along rows, not across channels
    # input pixel h is in phase h % s1 < min(s1, H): a stride above the image size has no more phases than H
    # (and s1 * s2 phases of a huge stride would not fit in memory)
    p1, p2 = min(s1, cfg.h), min(s2, cfg.w)
    dxp = np.zeros((cfg.c, cfg.n, p1, p2, hq, wq) if tapmajor else (cfg.n, p1, p2, hq, wq, cfg.c), ct)
    k = cfg.kh * cfg.kw * cfg.cg

    def phase_slice(i0, i1, s, off, size):  # (lo, hi) of the chunk's outputs, the phase and the rows it adds to
        taps = _taps(i0, i1, s, off, size)
        if taps is None:
            return None
        lo, hi, where = taps
        q0, ph = divmod(where.start, s)
        return lo, hi, ph, slice(q0, q0 + hi - lo)

    def chunk(c):
        n0, n1, i0, i1 = c
        nb, ohc = n1 - n0, i1 - i0
        p = nb * ohc * cfg.ow
        dzc = np.ascontiguousarray(dz[n0:n1, i0:i1], dtype=ct).reshape(p, cfg.m)
        if tapmajor:
            dcols = _work_buffer("cols", (cfg.kh, cfg.kw, cfg.c, nb, ohc, cfg.ow), ct)
            np.matmul(wmat[0], dzc.T, out=dcols.reshape(k, p))
            dst = dxp[:, n0:n1]
        else:
            dcols = _work_buffer("cols", (cfg.groups, p, k), ct)
            np.matmul(dzc.reshape(p, cfg.groups, cfg.mg).transpose(1, 0, 2), wmat.transpose(0, 2, 1), out=dcols)
            # (nb, OHc, OW, KH, KW, G, Cg) view, like the forward windows
            dcols = dcols.reshape(cfg.groups, nb, ohc, cfg.ow, cfg.kh, cfg.kw, cfg.cg).transpose(1, 2, 3, 4, 5, 0, 6)
            dst = dxp[n0:n1].reshape(nb, p1, p2, hq, wq, cfg.groups, cfg.cg)
        for a in range(cfg.kh):
            rows = phase_slice(i0, i1, s1, a * cfg.d1 - cfg.pt, cfg.h)
            if rows is None:
                continue
            for bb in range(cfg.kw):
                cols = phase_slice(0, cfg.ow, s2, bb * cfg.d2 - cfg.pl, cfg.w)
                if cols is None:
                    continue
                if tapmajor:
                    dst[:, :, rows[2], cols[2], rows[3], cols[3]] += dcols[a, bb, :, :, rows[0] : rows[1],
                                                                           cols[0] : cols[1]]
                else:
                    dst[:, rows[2], cols[2], rows[3], cols[3]] += dcols[:, rows[0] : rows[1], cols[0] : cols[1], a, bb]

    def image(bands):  # the bands of one image add into overlapping rows of dx: one worker does them in turn
        for c in bands:
            chunk(c)

    workers = _threads.workers()
    chunks = _chunks(cfg, ct.itemsize, workers)
    tasks = [[c] for c in chunks]
    if chunks[0][1] - chunks[0][0] == 1 and len(chunks) > cfg.n:  # row bands: one task per image
        tasks = [[c for c in chunks if c[0] == n] for n in range(cfg.n)]
    for _ in _threads.map_tasks(image, tasks, workers):
        pass
    if s1 == s2 == 1:  # one phase: the buffer is dX already (channel-major if tap-major; with C = 1 no copy)
        return dxp[:, :, 0, 0].transpose(1, 2, 3, 0) if tapmajor else dxp[:, 0, 0]
    dx = np.empty(cfg.x_shape, ct)
    for ph in range(p1):
        for pw in range(p2):
            part = dx[:, ph::s1, pw::s2]  # (N, rows, cols, C) of this phase
            src = dxp[:, :, ph, pw].transpose(1, 2, 3, 0) if tapmajor else dxp[:, ph, pw]
            part[...] = src[:, : part.shape[1], : part.shape[2]]
    return dx


class NumpyBackend:
    name = "numpy"
    xp = np

    def synchronize(self) -> None:
        """Nothing to wait for: every operation has finished when it returns."""

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def rounds_tf32(self) -> bool:
        """precision="tf32" rounds float32 operands to TF32 here (this backend is the oracle of that mode)."""
        return True

    def math_path(self, dtype, precision: str) -> str:
        """What computes the products of ``dtype`` in ``precision`` here, in words (for ``gpuconv info``)."""
        dtype = np.dtype(dtype)
        if dtype.itemsize == 2:
            return "CPU, float32 BLAS GEMMs (the products are exact), rounded once to nearest even on store"
        if dtype == np.float32 and precision == "tf32":
            return "CPU, both operands rounded to TF32 (as cvt.rna.tf32.f32), then float32 BLAS GEMMs"
        return f"CPU, {dtype.name} BLAS GEMMs"

    def forward(self, x, w, b, cfg, activation, precision="highest"):
        x, w = _operands(precision, x, w)
        y = _conv(x, w, cfg, _compute_dtype(x.dtype), b, activation)
        return y.astype(x.dtype, copy=False)

    def activation_backward(self, dy, y, activation):
        return _registry.activation(activation, "numpy backend").backward(dy, y)

    def backward(self, dy, y, x, w, cfg, activation, has_bias=True, precision="highest", grads=("dx", "dw")):
        """(dx, dw, db) from dy: activation_backward, backward_input, backward_weight, backward_bias in turn
        (the public API calls this when a backend has it), with the same results. Only the gradients named in
        grads are computed (dx, dw; db where has_bias), the others are None.

        The one difference: dZ goes to a work buffer kept between calls, not to a new array. Fresh memory is
        page-faulted on first write, which made relu backward cost ~4 ms instead of ~0.5 on shape small's fwd+bwd
        (docs/performance.md). dZ never leaves this method, so reusing its memory is safe.
        With "tf32", db is summed from the float32 dz and dz, x, w are rounded once for both GEMMs.
        """
        act = _registry.activation(activation, "numpy backend")
        if not act.uses_output:
            dz = dy
        elif dy.nbytes <= get_workspace_limit() // 4:
            dz = act.backward(dy, y, out=_work_buffer("dz", dy.shape, dy.dtype))
        else:
            dz = act.backward(dy, y)
        db = self.backward_bias(dz) if has_bias else None
        if "dx" not in grads and "dw" not in grads:
            return None, None, db
        dz, x, w = _operands(precision, dz, x if "dw" in grads else None, w if "dx" in grads else None)
        return (None if w is None else self.backward_input(dz, w, cfg),
                None if x is None else self.backward_weight(dz, x, cfg), db)

    def backward_input(self, dz, w, cfg, precision="highest", b=None, activation="identity"):
        """dx; with a bias b (C,) and an activation, act(dx + b) (conv2d_transpose), in the compute dtype
        before the one rounding, as the GPU kernels' epilogue (the bias is never rounded to TF32)."""
        dz, w = _operands(precision, dz, w)
        ct = _compute_dtype(dz.dtype)
        # stride 1: a forward convolution of dZ, unless x has few channels (tap-major), where the col2im adds run
        # channel-major along whole rows and beat building KH*KW*M-wide columns of dZ (measured: 2.0 vs 4.6 ms
        # on shape mnist, docs/performance.md)
        # The convolution of dZ takes dZ's padding as zeros: with a NaN/Inf weight, 0 * w would add NaN terms
        # that are not in the chain rule (taps that reach no output pixel); col2im adds exactly the terms of the
        # rule, so a non-finite w goes there (np.isfinite(w).all(): ~10 us on a 3x3x64x64 w).
        if cfg.s1 == 1 and cfg.s2 == 1 and not _tapmajor(cfg) and np.isfinite(w).all():
            tcfg = _transposed_config(cfg)
            dx = _conv(dz, _transposed_weight(w, cfg), tcfg, ct, b, activation)
        else:
            dx = _col2im_backward_input(dz, w, cfg, ct)
            if b is not None or activation != "identity":
                dx = np.ascontiguousarray(dx)
                if b is not None:
                    rows = dx.reshape(-1, cfg.c)
                    np.add(rows, b.astype(ct, copy=False), out=rows)
                _registry.activation(activation, "numpy backend").forward(dx)
        return np.ascontiguousarray(dx, dtype=dz.dtype)

    def backward_weight(self, dz, x, cfg, precision="highest"):
        dz, x = _operands(precision, dz, x)
        ct = _compute_dtype(dz.dtype)
        g = cfg.groups

        def chunk(c):  # this chunk's share of dw, (G, K, Mg)
            n0, n1, i0, i1 = c
            cols = _im2col(x, cfg, n0, n1, i0, i1, ct)
            p = (n1 - n0) * (i1 - i0) * cfg.ow
            dzc = np.ascontiguousarray(dz[n0:n1, i0:i1], dtype=ct).reshape(p, cfg.m)
            if _tapmajor(cfg):
                return (cols @ dzc)[None]
            return np.matmul(cols.transpose(0, 2, 1), dzc.reshape(p, g, cfg.mg).transpose(1, 0, 2))

        workers = _threads.workers()
        dw = None
        for part in _threads.map_tasks(chunk, _chunks(cfg, ct.itemsize, workers), workers):  # summed in chunk order
            dw = part if dw is None else np.add(dw, part, out=dw)
        dw = dw.reshape(g, cfg.kh, cfg.kw, cfg.cg, cfg.mg).transpose(1, 2, 3, 0, 4)
        return np.ascontiguousarray(dw, dtype=dz.dtype).reshape(cfg.w_shape)

    def backward_bias(self, dz):
        ct = _compute_dtype(dz.dtype)
        # C order first: a view with a negative or odd stride would be summed in another order by BLAS (the last
        # bit of float64 db then depended on the memory layout of dz)
        d = np.ascontiguousarray(dz.reshape(-1, dz.shape[-1]), dtype=ct)
        # ones @ dz: a BLAS GEMV, 5-20x faster here than d.sum(axis=0), which adds one M-wide row at a time
        (db,) = _threads.map_tasks(lambda ones: ones @ d, [np.ones(d.shape[0], ct)], _threads.workers())
        return db.astype(dz.dtype, copy=False)


def load():
    return NumpyBackend()
