"""gpuconv on dask arrays: conv2d, conv2d_backward, conv2d_transpose and conv2d_transpose_backward, lazily,
chunk by chunk (optional extra ``gpuconv[dask]``; importing gpuconv never imports dask).

Every function takes the arguments of its public counterpart and checks them the same way, from shapes and
dtypes alone; it returns dask arrays and computes nothing. ``gpuconv.conv2d(dask_array, ...)`` (and
conv2d_backward, conv2d_transpose, conv2d_transpose_backward) come here. Each chunk runs the public operation
on the chunk's own array type: numpy chunks on the NumPy backend, CuPy chunks on the GPU of the worker that
holds them (``backend`` is passed through).

Chunking (x (N,H,W,C) as in ``gpuconv._api``):
- The batch, H and W may be chunked; the channels are kept in one chunk (rechunked when split).
- Chunk boundaries along H and W are multiples of the stride (others are moved up to the next multiple: a
  rechunk). Output row o belongs to the chunk holding input row o*s, so with stride 1 and "same" padding the
  output is chunked exactly as the input.
- Forward: one task per output chunk, rows [o0, o1) reading input rows [o0*s - pt, (o1-1)*s - pt + d*(K-1) + 1):
  its own chunk, a halo of pt rows from the chunk above and d*(K-1) + 1 - s - pt rows from the chunks below
  (when positive; columns likewise), cut out of the neighbours by small getitem tasks; rows outside the image
  are the call's zero padding.
- dX: chunked like x; one task per x chunk reading the output-gradient rows whose windows reach it (its own
  output chunk and the halos those windows need).
- dW and db: one partial sum per output chunk, added in a tree of fixed shape (SPLIT_EVERY terms a node, in
  chunk order) whatever the scheduler or the worker count, so that the result is bitwise the same on every
  run. float16 partials are summed in float32 and rounded once.

Forward and dX of a chunk are bitwise those of the single call wherever a backend's per-pixel sum does not
depend on the problem size: the CUDA kernels (GPU and emulator) sum each pixel in one fixed order. The NumPy
backend's BLAS picks its kernels by matrix size (OpenBLAS's small-matrix kernels), so there chunked results
agree with the single call to rounding, not bitwise; they are bitwise the same from run to run.
"""
from __future__ import annotations

import functools
import operator

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import _api, _config, _layout, _transpose
from ._api import Conv2DGrads
from ._config import ConvConfig

SPLIT_EVERY = 8  # partial sums added per node of the dW / db reduction tree
# The operations that have a chunked version here (gpuconv's public functions dispatch to them on dask arrays).
OPERATIONS = ("conv2d", "conv2d_backward", "conv2d_transpose", "conv2d_transpose_backward")


# ---------------------------------------------------------------------------------------------- arrays
def is_dask_array(a) -> bool:
    """Whether ``a`` is a dask array (checked without importing dask where it is not loaded)."""
    return type(a).__module__.split(".")[0] == "dask" and hasattr(a, "chunks") and hasattr(a, "dask")


def _to_4d(a, ndim: int):
    """(H,W) -> (1,H,W,1), (H,W,C) -> (1,H,W,C); a dask array, lazily."""
    if ndim == 2:
        return a[None, :, :, None]
    if ndim == 3:
        return a[None]
    return a


def _user_block(a, ndim: int):
    """A 4-D block in the caller's ndim (inside a task: an outer getitem would cost dask a copy of the result)."""
    return a if ndim == 4 else a[0] if ndim == 3 else a[0, :, :, 0]


def _user_key(name: str, bn: int, j: int, l: int, ndim: int) -> tuple:
    return (name, bn, j, l, 0) if ndim == 4 else (name, j, l, 0) if ndim == 3 else (name, j, l)


def _user_chunks(chunks: tuple, ndim: int) -> tuple:
    return chunks if ndim == 4 else chunks[1:] if ndim == 3 else chunks[1:3]


def _known_chunks(fname: str, argname: str, a) -> None:
    if any(np.isnan(c) for cs in a.chunks for c in cs):
        raise ValueError(f"{fname}: argument '{argname}' has chunks of unknown size; call "
                         f"{argname}.compute_chunk_sizes() first")


def _small(a):
    """w or b as a one-chunk dask array (a numpy / cupy array is wrapped; a chunked dask array rechunked)."""
    if a is None:
        return None
    if is_dask_array(a):
        return a.rechunk(a.shape)
    return da.from_array(a, chunks=a.shape, asarray=False)


def _key0(a):
    return None if a is None else (a.name,) + (0,) * a.ndim


def _meta(a, dtype, ndim=4):
    return meta_from_array(a._meta, ndim=ndim, dtype=dtype)


def _check_kinds(fname: str, backend, named: dict) -> None:
    """The public API's backend and array-kind checks, on the chunks' type (a dask array's meta)."""
    _api._prepare(fname, backend, {k: (v._meta if is_dask_array(v) else v) for k, v in named.items()})


class _Layouts:
    """data_format / filter_format of a call, checked as the public API checks them; lazy transposes."""

    def __init__(self, fname: str, data_format, filter_format, padding_mode="zeros"):
        self.data = _layout.check_choice(fname, "data_format", data_format, _layout.DATA_FORMATS)
        self.filter = _layout.check_choice(fname, "filter_format", filter_format, _layout.FILTER_FORMATS)
        mode = _layout.check_choice(fname, "padding_mode", padding_mode, _layout.PADDING_MODES)
        if mode != "zeros":
            raise ValueError(f"{fname}: argument 'padding_mode' must be 'zeros' on dask arrays (gpuconv.dask has "
                             f"no halos of reflected or wrapped pixels yet), got {padding_mode!r}")

    def image(self, a):
        perm = _layout._TO_NHWC.get(a.ndim) if self.data == "NCHW" and a is not None else None
        return a if perm is None else a.transpose(perm)

    def image_back(self, a):
        perm = _layout._FROM_NHWC.get(a.ndim) if self.data == "NCHW" and a is not None else None
        return a if perm is None else a.transpose(perm)

    def filter_(self, w):
        return w.transpose(_layout._TO_HWIO[4]) if self.filter == "OIHW" and w.ndim == 4 else w

    def filter_back(self, w):
        return w.transpose(_layout._FROM_HWIO[4]) if self.filter == "OIHW" and w.ndim == 4 else w


def call(fname: str, argname: str, arguments: dict):
    """``gpuconv.<fname>(**arguments)`` with a dask array (``argname``) among them: the chunked operation of
    this module (lazy in, lazy out), or a TypeError for an operation it does not have."""
    fn = globals().get(fname) if fname in OPERATIONS else None
    if fn is None:
        raise TypeError(f"{fname}: argument '{argname}' is a dask array, and gpuconv.dask has no chunked {fname} "
                        f"(it has {', '.join(OPERATIONS)}); pass a computed array (a.compute()) to run it whole")
    return fn(**arguments)


# ---------------------------------------------------------------------------------------------- geometry
def _bounds(chunks) -> list:
    out = [0]
    for c in chunks:
        out.append(out[-1] + int(c))
    return out


def _aligned(chunks, size: int, s: int) -> tuple:
    """Chunk sizes whose inner boundaries are multiples of the stride s: each moved up to the next one."""
    inner = []
    for a in _bounds(chunks)[1:-1]:
        a += (-a) % s
        if 0 < a < size and (not inner or a > inner[-1]):
            inner.append(a)
    b = [0, *inner, size]
    return tuple(b[i + 1] - b[i] for i in range(len(b) - 1))


def _out_bounds(in_bounds: list, s: int, out_size: int) -> list:
    """Output chunk bounds of stride-aligned input bounds: output row o belongs to the chunk holding row o*s
    (with stride 1 and "same" padding the output is chunked exactly as the input)."""
    inner = []
    for a in in_bounds[1:-1]:
        o = a // s
        if 0 < o < out_size and (not inner or o > inner[-1]):
            inner.append(o)
    return [0, *inner, out_size]


def _read_span(o0: int, o1: int, s: int, d: int, k: int, pad: int) -> tuple:
    """Input rows [r0, r1) that output rows [o0, o1) read (outside [0, size) is padding)."""
    return o0 * s - pad, (o1 - 1) * s - pad + d * (k - 1) + 1


def _reach(a0: int, a1: int, s: int, d: int, k: int, pad: int, out_size: int) -> tuple:
    """Output rows [i0, i1) whose windows reach input rows [a0, a1), and the local top padding a0 + pad - i0*s."""
    i0 = max(0, -(-(a0 + pad - d * (k - 1)) // s))
    i1 = min(out_size, (a1 - 1 + pad) // s + 1)
    return i0, i1, a0 + pad - i0 * s


def _pieces(bounds: list, c0: int, c1: int) -> list:
    """(block, slice in the block, whole block?) of every chunk of ``bounds`` that [c0, c1) overlaps."""
    out = []
    for k in range(len(bounds) - 1):
        lo, hi = max(c0, bounds[k]), min(c1, bounds[k + 1])
        if lo < hi:
            out.append((k, slice(lo - bounds[k], hi - bounds[k]), lo == bounds[k] and hi == bounds[k + 1]))
    return out


def _gather(layer: dict, halo: str, a, bn: int, rows: list, cols: list) -> list:
    """Keys of the pieces of a's blocks (bn, k, l, 0) covering rows x cols (a nested list, rows outer); a
    piece that is not a whole block is cut out by a getitem task (added to ``layer``, shared by its users)."""
    grid = []
    for k, rs, rfull in rows:
        line = []
        for l, cs, cfull in cols:
            key = (a.name, bn, k, l, 0)
            if not (rfull and cfull):
                piece = (halo, bn, k, l, rs.start, rs.stop, cs.start, cs.stop)
                layer.setdefault(piece, (operator.getitem, key, (slice(None), rs, cs, slice(None))))
                key = piece
            line.append(key)
        grid.append(line)
    return grid


def _concat(grid):
    """The array of a nested list of blocks (rows outer)."""
    from ._dispatch import get_array_module

    xp = get_array_module(grid[0][0])
    lines = [line[0] if len(line) == 1 else xp.concatenate(line, axis=2) for line in grid]
    return lines[0] if len(lines) == 1 else xp.concatenate(lines, axis=1)


def _region(grid, ref, spans, pads):
    """The input region of a task: its pieces joined, or zeros of the padded size when it lies wholly in the
    padding (then no padding is left to apply)."""
    if grid and grid[0]:
        return _concat(grid), pads
    from ._dispatch import get_array_module

    xp = get_array_module(ref)
    (r0, r1), (c0, c1) = spans
    return xp.zeros((ref.shape[0], r1 - r0, c1 - c0, ref.shape[3]), ref.dtype), ((0, 0), (0, 0))


# ---------------------------------------------------------------------------------------------- the tasks
def _forward_task(grid, ygrid, ref, spans, pads, w, b, geometry, activation, grad_activation, run, ndim):
    """act(conv(x region) + b) of one output chunk; x is act'(dy, y) first when grad_activation is given (the
    dX of a transposed convolution)."""
    x, pads = _region(grid, ref, spans, pads)
    if grad_activation != "identity":
        y, _ = _region(ygrid, ref, spans, pads)
        x = _api.activation_backward(x, y, grad_activation, **run)
    return _user_block(_api.conv2d(x, w, b, padding=pads, activation=activation, **run, **geometry), ndim)


def _dx_task(grid, ygrid, w, b, cfg, grad_activation, out_activation, run, ndim):
    """dx of one x chunk (or the output chunk of a transposed convolution) from the output-gradient rows that
    reach it, through the backend as the single call goes: the fused dy * act'(y) loads where the backend has
    them (the CUDA kernels), else activation_backward then backward_input."""
    dy = _concat(grid)
    y = _concat(ygrid) if grad_activation != "identity" else None
    be, a = _api._prepare("gpuconv.dask", run["backend"], {"dy": dy, "y": y, "w": w, "b": b})
    fused = getattr(be, "backward_input_fused", None)
    kwargs = {} if a["b"] is None and out_activation == "identity" else {"b": a["b"], "activation": out_activation}
    if fused is not None:
        if kwargs:
            dx = fused(a["dy"], a["y"], a["w"], cfg, grad_activation, a["b"], out_activation)
        else:
            dx = fused(a["dy"], a["y"], a["w"], cfg, grad_activation)
    else:
        dz = a["dy"] if grad_activation == "identity" else be.activation_backward(a["dy"], a["y"], grad_activation)
        dx = be.backward_input(dz, a["w"], cfg, precision=run["precision"], **kwargs)
    return _user_block(_api._back(dx, dy), ndim)


def _const_task(ref, b, shape, out_activation, run, ndim):
    """A chunk no output pixel reaches: 0, or act(0 + b) computed by the backend's own epilogue (a 1x1
    transposed convolution of zeros with a zero kernel: no product of w enters, as in the single call)."""
    from ._dispatch import get_array_module

    xp = get_array_module(ref)
    if b is None and out_activation == "identity":
        return _user_block(xp.zeros(shape, ref.dtype), ndim)
    c = shape[3]
    zeros = xp.zeros((1, 1, 1, 1), ref.dtype)
    one = _transpose.conv2d_transpose(zeros, xp.zeros((1, 1, c, 1), ref.dtype), b, activation=out_activation,
                                **run)
    return _user_block(xp.ascontiguousarray(xp.broadcast_to(one, shape)), ndim)


def _acc(a, acc):
    return a if a.dtype == acc else a.astype(acc)


def _dz(dy, y, activation, acc, run):
    dy = _acc(dy, acc)
    return dy if activation == "identity" else _api.activation_backward(dy, _acc(y, acc), activation,
                                                                        **run)


def _dw_task(dz_grid, dz_y, x_grid, x_ygrid, ref, spans, pads, w_shape, geometry, dz_act, x_act, acc, run):
    """This output chunk's share of dW (in the accumulation dtype): dz (act' applied for conv2d_backward) with
    the x region it read (act' applied for the transposed convolution, whose x is an output gradient)."""
    dz = _dz(_concat(dz_grid), None if dz_y is None else _concat(dz_y), dz_act, acc, run)
    x, pads = _region(x_grid, ref, spans, pads)
    if x_act != "identity":
        y, _ = _region(x_ygrid, ref, spans, pads)
        x = _dz(x, y, x_act, acc, run)
    return _api.conv2d_backward_weight(dz, _acc(x, acc), w_shape, padding=pads, **run, **geometry)


def _db_task(dz_grid, dz_y, act, acc, run):
    return _api.conv2d_backward_bias(_dz(_concat(dz_grid), None if dz_y is None else _concat(dz_y), act, acc,
                                         run), **run)


def _sum_task(parts):
    """The parts added left to right (a fixed order)."""
    return functools.reduce(operator.add, parts)


def _finish_task(total, dtype, shape):
    return total.astype(dtype).reshape(shape)


def _tree(layer: dict, name: str, keys: list, dtype, shape) -> tuple:
    """Add the partial sums ``keys`` in a tree of SPLIT_EVERY-wide nodes, in order; the root (name, 0, ...)."""
    level = 0
    while len(keys) > 1:
        nxt = []
        for i in range(0, len(keys), SPLIT_EVERY):
            key = (f"{name}-sum{level}", i // SPLIT_EVERY)
            layer[key] = (_sum_task, list(keys[i : i + SPLIT_EVERY]))
            nxt.append(key)
        keys, level = nxt, level + 1
    root = (name,) + (0,) * len(shape)
    layer[root] = (_finish_task, keys[0], dtype, shape)
    return root


# ---------------------------------------------------------------------------------------------- graphs
def _geometry(cfg: ConvConfig) -> dict:
    return {"stride": (cfg.s1, cfg.s2), "dilation": (cfg.d1, cfg.d2), "groups": cfg.groups}


def _prepare_input(x4, cfg: ConvConfig):
    """x4 with the channels in one chunk and H, W boundaries aligned to the stride (a rechunk when needed)."""
    chunks = (x4.chunks[0], _aligned(x4.chunks[1], cfg.h, cfg.s1), _aligned(x4.chunks[2], cfg.w, cfg.s2), (cfg.c,))
    return x4 if chunks == x4.chunks else x4.rechunk(chunks)


def _out_chunks(x4, cfg: ConvConfig) -> tuple:
    """Output chunk bounds along H and W of an aligned x4."""
    return _out_bounds(_bounds(x4.chunks[1]), cfg.s1, cfg.oh), _out_bounds(_bounds(x4.chunks[2]), cfg.s2, cfg.ow)


def _diffs(b: list) -> tuple:
    return tuple(b[i + 1] - b[i] for i in range(len(b) - 1))


def _read_plan(x4, cfg: ConvConfig, ob_h: list, ob_w: list):
    """Per output chunk (j, l): the input spans, their pieces and the chunk's own zero padding."""
    xb_h, xb_w = _bounds(x4.chunks[1]), _bounds(x4.chunks[2])
    rows, cols = [], []
    for ob, xb, s, d, k, pad, size, out in ((ob_h, xb_h, cfg.s1, cfg.d1, cfg.kh, cfg.pt, cfg.h, rows),
                                             (ob_w, xb_w, cfg.s2, cfg.d2, cfg.kw, cfg.pl, cfg.w, cols)):
        for j in range(len(ob) - 1):
            r0, r1 = _read_span(ob[j], ob[j + 1], s, d, k, pad)
            c0, c1 = max(r0, 0), min(r1, size)
            out.append(((r0, r1), _pieces(xb, c0, c1) if c0 < c1 else [], (c0 - r0, max(0, r1 - c1))))
    return rows, cols


def _forward_graph(fname, x4, w, b, cfg, activation, run, y4=None, grad_activation="identity", ndim=4):
    """The chunked forward convolution of an aligned x4 (for the transposed backward: of act'(x4, y4))."""
    ob_h, ob_w = _out_chunks(x4, cfg)
    token = tokenize(fname, x4.name, None if y4 is None else y4.name, _key0(w), _key0(b), cfg, activation,
                     grad_activation, run)
    name, halo, yhalo = f"{fname}-{token}", f"{fname}-halo-{token}", f"{fname}-yhalo-{token}"
    rows, cols = _read_plan(x4, cfg, ob_h, ob_w)
    layer = {}
    geometry = _geometry(cfg)
    for bn in range(len(x4.chunks[0])):
        for j, (rspan, rp, rpad) in enumerate(rows):
            for l, (cspan, cp, cpad) in enumerate(cols):
                grid = _gather(layer, halo, x4, bn, rp, cp) if rp and cp else []
                ygrid = _gather(layer, yhalo, y4, bn, rp, cp) if (rp and cp and y4 is not None) else []
                ref = (x4.name, bn, 0, 0, 0) if not grid else None
                layer[_user_key(name, bn, j, l, ndim)] = (_forward_task, grid, ygrid, ref, (rspan, cspan),
                                                          (rpad, cpad), _key0(w), _key0(b), geometry, activation,
                                                          grad_activation, run, ndim)
    deps = [a for a in (x4, y4, w, b) if a is not None]
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    chunks = (x4.chunks[0], _diffs(ob_h), _diffs(ob_w), (cfg.m,))
    return da.Array(graph, name, _user_chunks(chunks, ndim), meta=_meta(x4, x4.dtype, ndim))


def _dx_graph(fname, dy4, y4, w, b, cfg, x_chunks, grad_activation, out_activation, run, ndim=4):
    """dx (N,H,W,C) chunked as ``x_chunks`` (aligned) from dy4 (N,OH,OW,M) chunked as its output chunks."""
    xb_h, xb_w = _bounds(x_chunks[1]), _bounds(x_chunks[2])
    ob_h, ob_w = _bounds(dy4.chunks[1]), _bounds(dy4.chunks[2])
    token = tokenize(fname, dy4.name, None if y4 is None else y4.name, _key0(w), _key0(b), cfg, x_chunks,
                     grad_activation, out_activation, run)
    name, halo, yhalo = f"{fname}-{token}", f"{fname}-halo-{token}", f"{fname}-yhalo-{token}"
    layer = {}
    plans = []
    for xb, ob, s, d, k, pad, size in ((xb_h, ob_h, cfg.s1, cfg.d1, cfg.kh, cfg.pt, cfg.oh),
                                       (xb_w, ob_w, cfg.s2, cfg.d2, cfg.kw, cfg.pl, cfg.ow)):
        axis = []
        for j in range(len(xb) - 1):
            i0, i1, p0 = _reach(xb[j], xb[j + 1], s, d, k, pad, size)
            axis.append((xb[j + 1] - xb[j], i0, i1, p0, _pieces(ob, i0, i1) if i0 < i1 else []))
        plans.append(axis)
    for bn, nb in enumerate(x_chunks[0]):
        for j, (hj, i0, i1, pt, rp) in enumerate(plans[0]):
            for l, (wl, q0, q1, pl, cp) in enumerate(plans[1]):
                key = _user_key(name, bn, j, l, ndim)
                if not (rp and cp):  # no output pixel reaches this chunk: dx is 0, or act(0 + b)
                    layer[key] = (_const_task, (dy4.name, bn, 0, 0, 0), _key0(b), (nb, hj, wl, cfg.c),
                                  out_activation, run, ndim)
                    continue
                local = _local_config(cfg, nb, hj, wl, i0, i1, pt, q0, q1, pl)
                grid = _gather(layer, halo, dy4, bn, rp, cp)
                ygrid = _gather(layer, yhalo, y4, bn, rp, cp) if grad_activation != "identity" else []
                layer[key] = (_dx_task, grid, ygrid, _key0(w), _key0(b), local, grad_activation, out_activation,
                              run, ndim)
    deps = [a for a in (dy4, y4, w, b) if a is not None]
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, _user_chunks((x_chunks[0], x_chunks[1], x_chunks[2], (cfg.c,)), ndim),
                    meta=_meta(dy4, dy4.dtype, ndim))


def _local_config(cfg: ConvConfig, nb, hj, wl, i0, i1, pt, q0, q1, pl) -> ConvConfig:
    """The convolution of one x chunk (nb, hj, wl) with the output rows [i0, i1) x columns [q0, q1) that reach
    it: top / left padding pt, pl; bottom / right whatever makes the output exactly that (a crop if negative)."""
    oh, ow = i1 - i0, q1 - q0
    pb = (oh - 1) * cfg.s1 + cfg.d1 * (cfg.kh - 1) + 1 - hj - pt
    pr = (ow - 1) * cfg.s2 + cfg.d2 * (cfg.kw - 1) + 1 - wl - pl
    return ConvConfig(nb, hj, wl, cfg.c, cfg.kh, cfg.kw, cfg.m, cfg.groups, cfg.s1, cfg.s2, cfg.d1, cfg.d2,
                      pt, pb, pl, pr, oh, ow)


def _weight_graph(fname, dz4, dz_y4, x4, x_y4, cfg, w_shape, dz_act, x_act, dtype, run):
    """dW as a fixed tree of per-output-chunk partial sums (float16 summed in float32), shaped ``w_shape``.

    dz4 (act' from dz_y4 when dz_act is given) is chunked as the output chunks of the aligned x4; each
    partial reads its x region with halos, act'(x4, x_y4) first when x_act is given (the transposed
    convolution, whose "x" is an output gradient)."""
    acc = _acc_dtype(dtype)
    ob_h, ob_w = _bounds(dz4.chunks[1]), _bounds(dz4.chunks[2])
    token = tokenize(fname, dz4.name, None if dz_y4 is None else dz_y4.name, x4.name,
                     None if x_y4 is None else x_y4.name, cfg, w_shape, dz_act, x_act, run)
    name, halo, yhalo = f"{fname}-dw-{token}", f"{fname}-dwhalo-{token}", f"{fname}-dwyhalo-{token}"
    rows, cols = _read_plan(x4, cfg, ob_h, ob_w)
    layer, parts = {}, []
    geometry = _geometry(cfg)
    for bn in range(len(x4.chunks[0])):
        for j, (rspan, rp, rpad) in enumerate(rows):
            for l, (cspan, cp, cpad) in enumerate(cols):
                dz_grid = [[(dz4.name, bn, j, l, 0)]]
                dz_y = None if dz_act == "identity" else [[(dz_y4.name, bn, j, l, 0)]]
                grid = _gather(layer, halo, x4, bn, rp, cp) if rp and cp else []
                ygrid = _gather(layer, yhalo, x_y4, bn, rp, cp) if (rp and cp and x_act != "identity") else []
                ref = (x4.name, bn, 0, 0, 0) if not grid else None
                key = (f"{name}-part", bn, j, l)
                layer[key] = (_dw_task, dz_grid, dz_y, grid, ygrid, ref, (rspan, cspan), (rpad, cpad),
                              cfg.w_shape, geometry, dz_act, x_act, acc, run)
                parts.append(key)
    _tree(layer, name, parts, dtype, w_shape)
    deps = [a for a in (dz4, dz_y4, x4, x_y4) if a is not None]
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, tuple((v,) for v in w_shape),
                    meta=meta_from_array(x4._meta, ndim=len(w_shape), dtype=dtype))


def _bias_graph(fname, dz4, dz_y4, act, dtype, run):
    """db: a fixed tree of the per-chunk sums of dz = act'(dz4, dz_y4) (float16 summed in float32)."""
    acc = _acc_dtype(dtype)
    name = f"{fname}-db-{tokenize(fname, dz4.name, None if dz_y4 is None else dz_y4.name, act, run)}"
    layer, parts = {}, []
    for idx in np.ndindex(*dz4.numblocks):
        key = (f"{name}-part", *idx)
        dz_y = None if act == "identity" else [[(dz_y4.name, *idx)]]
        layer[key] = (_db_task, [[(dz4.name, *idx)]], dz_y, act, acc, run)
        parts.append(key)
    m = dz4.shape[3]
    _tree(layer, name, parts, dtype, (m,))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[a for a in (dz4, dz_y4) if a is not None])
    return da.Array(graph, name, ((m,),), meta=meta_from_array(dz4._meta, ndim=1, dtype=dtype))


def _acc_dtype(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


# ---------------------------------------------------------------------------------------------- public
def _lazy(a):
    """A dask array of ``a`` (a numpy / cupy array becomes one chunk), None stays None."""
    if a is None or is_dask_array(a):
        return a
    return da.from_array(a, chunks=a.shape, asarray=False)


def _run(fname: str, backend, precision) -> dict:
    """The options every chunk's call gets: the backend, and the precision resolved now (the caller's default,
    not a worker's)."""
    return {"backend": backend, "precision": _config.resolve_precision(fname, precision)}


def conv2d(x, w, b=None, *, stride=1, padding="valid", dilation=1, groups=1, activation=None, backend="auto",
           precision=None, data_format="NHWC", filter_format="HWIO", padding_mode="zeros"):
    """``gpuconv.conv2d`` on a dask array x (w and b small: numpy, cupy or dask arrays); a dask array, chunked
    like x along the batch and, along H and W, as the output rows of x's (stride-aligned) chunks."""
    fname = "conv2d"
    lay = _Layouts(fname, data_format, filter_format, padding_mode)
    run = _run(fname, backend, precision)
    x, w = lay.image(_lazy(x)), lay.filter_(w)
    _api._check_dtypes(fname, {"x": x, "w": w, "b": b})
    act = _config.activation_name(fname, activation)
    _check_kinds(fname, backend, {"x": x, "w": w, "b": b})
    _known_chunks(fname, "x", x)
    cfg = _api._config_for(fname, x.shape, w.shape, stride, padding, dilation, groups)
    _api._check_bias(fname, b, cfg)
    x4 = _prepare_input(_to_4d(x, x.ndim), cfg)
    y4 = _forward_graph(fname, x4, _small(w).reshape(cfg.w_shape), _small(b), cfg, act, run, ndim=x.ndim)
    return lay.image_back(y4)


def _gradient_arguments(fname, backend, lay, act, dy, x, w, y, config_of, y_shape_of) -> tuple:
    """The checks of both backward functions, in order: y given where the activation needs it, the layouts
    applied, one dtype and kind of array, dy (and y) of the output's shape, chunks of known size. config_of(x
    shape, w shape) -> the ConvConfig; y_shape_of(cfg, ndim) -> the output's shape. Returns (dy, x, w, y, cfg)."""
    if y is None and act != "identity":
        raise ValueError(f"{fname}: argument 'y' (the forward output) is required for activation {act!r}")
    dy, x, y, w = lay.image(_lazy(dy)), lay.image(_lazy(x)), lay.image(_lazy(y)), lay.filter_(w)
    _api._check_dtypes(fname, {"dy": dy, "x": x, "w": w, "y": y})
    _check_kinds(fname, backend, {"dy": dy, "x": x, "w": w, "y": y})
    cfg = config_of(x.shape, w.shape)
    y_shape = y_shape_of(cfg, x.ndim)
    _api._check_shape(fname, "dy", dy, y_shape)
    if y is not None:
        _api._check_shape(fname, "y", y, y_shape)
    for argname, a in (("x", x), ("dy", dy), ("y", y)):
        if a is not None:
            _known_chunks(fname, argname, a)
    return dy, x, w, y, cfg


def conv2d_backward(dy, x, w, y=None, *, has_bias=True, stride=1, padding="valid", dilation=1, groups=1,
                    activation=None, backend="auto", precision=None, grads=_api.GRADS, data_format="NHWC",
                    filter_format="HWIO", padding_mode="zeros"):
    """``gpuconv.conv2d_backward`` on dask arrays: Conv2DGrads of dask arrays; dx chunked like x (after the
    alignment rechunk), dw and db one chunk each, sums of per-chunk partials in a fixed tree."""
    fname = "conv2d_backward"
    lay = _Layouts(fname, data_format, filter_format, padding_mode)
    run = _run(fname, backend, precision)
    want = _api._grads_wanted(fname, grads)
    act = _config.activation_name(fname, activation)
    dy, x, w, y, cfg = _gradient_arguments(
        fname, backend, lay, act, dy, x, w, y,
        lambda xs, ws: _api._config_for(fname, xs, ws, stride, padding, dilation, groups), _config.user_y_shape)
    x4 = _prepare_input(_to_4d(x, x.ndim), cfg)
    ob_h, ob_w = _out_chunks(x4, cfg)
    out_chunks = (x4.chunks[0], _diffs(ob_h), _diffs(ob_w), (cfg.m,))
    dy4 = _to_4d(dy, x.ndim).rechunk(out_chunks)
    y4 = None if act == "identity" else _to_4d(y, x.ndim).rechunk(out_chunks)
    w4 = _small(w).reshape(cfg.w_shape)
    dx = dw = db = None
    if "dx" in want:
        dx = lay.image_back(_dx_graph(fname + "-dx", dy4, y4, w4, None, cfg, x4.chunks, act, "identity", run,
                                      ndim=x.ndim))
    if "dw" in want:
        dw = lay.filter_back(_weight_graph(fname, dy4, y4, x4, None, cfg, tuple(w.shape), act, "identity",
                                           dy.dtype, run))
    if "db" in want and has_bias:
        db = _bias_graph(fname, dy4, y4, act, dy.dtype, run)
    return Conv2DGrads(dx, dw, db)


def conv2d_transpose(x, w, b=None, *, stride=1, padding="valid", output_padding=0, dilation=1, groups=1,
                     activation=None, backend="auto", precision=None, data_format="NHWC", filter_format="HWIO"):
    """``gpuconv.conv2d_transpose`` on a dask array x: a dask array whose chunk boundaries are x's times the
    stride (minus the padding)."""
    fname = "conv2d_transpose"
    lay = _Layouts(fname, data_format, filter_format)
    run = _run(fname, backend, precision)
    x, w = lay.image(_lazy(x)), lay.filter_(w)
    _api._check_dtypes(fname, {"x": x, "w": w, "b": b})
    act = _config.activation_name(fname, activation)
    _check_kinds(fname, backend, {"x": x, "w": w, "b": b})
    _known_chunks(fname, "x", x)
    opts = _transpose._options(stride, padding, output_padding, dilation, groups)
    cfg = _transpose._config_for(fname, x.shape, w.shape, opts)
    if b is not None:
        _api._check_shape(fname, "b", b, (cfg.c,))
    x4 = _to_4d(x, x.ndim)
    # Output chunks: each boundary o of x's chunks maps to output row o*s (a multiple of the stride); x is then
    # rechunked to those chunks' own output chunks (a boundary past the output drops out; channels join).
    out = (x4.chunks[0], _transposed_chunks(x4.chunks[1], cfg.s1, cfg.h), _transposed_chunks(x4.chunks[2], cfg.s2,
                                                                                            cfg.w), (cfg.c,))
    back = (x4.chunks[0], _diffs(_out_bounds(_bounds(out[1]), cfg.s1, cfg.oh)),
            _diffs(_out_bounds(_bounds(out[2]), cfg.s2, cfg.ow)), (cfg.m,))
    x4 = x4 if x4.chunks == back else x4.rechunk(back)
    y4 = _dx_graph(fname, x4, None, _small(w).reshape(cfg.w_shape), _small(b), cfg, out, "identity", act, run,
                   ndim=x.ndim)
    return lay.image_back(y4)


def _transposed_chunks(chunks, s: int, size: int) -> tuple:
    inner = []
    for o in _bounds(chunks)[1:-1]:
        a = o * s
        if 0 < a < size and (not inner or a > inner[-1]):
            inner.append(a)
    return _diffs([0, *inner, size])


def conv2d_transpose_backward(dy, x, w, y=None, *, has_bias=True, stride=1, padding="valid", output_padding=0,
                              dilation=1, groups=1, activation=None, backend="auto", precision=None,
                              data_format="NHWC", filter_format="HWIO"):
    """``gpuconv.conv2d_transpose_backward`` on dask arrays: dx chunked like x, dw and db sums of per-chunk
    partials in a fixed tree."""
    fname = "conv2d_transpose_backward"
    lay = _Layouts(fname, data_format, filter_format)
    run = _run(fname, backend, precision)
    act = _config.activation_name(fname, activation)
    opts = _transpose._options(stride, padding, output_padding, dilation, groups)
    dy, x, w, y, cfg = _gradient_arguments(fname, backend, lay, act, dy, x, w, y,
                                           lambda xs, ws: _transpose._config_for(fname, xs, ws, opts),
                                           _transpose._user_shape)
    # dy, y: the input of the forward convolution cfg (aligned); x: its output (chunked as dy's output chunks)
    dy4 = _prepare_input(_to_4d(dy, x.ndim), cfg)
    y4 = None if act == "identity" else _to_4d(y, x.ndim).rechunk(dy4.chunks)
    ob_h, ob_w = _out_chunks(dy4, cfg)
    x4 = _to_4d(x, x.ndim).rechunk((dy4.chunks[0], _diffs(ob_h), _diffs(ob_w), (cfg.m,)))
    w4 = _small(w).reshape(cfg.w_shape)
    dx4 = _forward_graph(fname + "-dx", dy4, w4, None, cfg, "identity", run, y4=y4, grad_activation=act,
                         ndim=x.ndim)
    dw = _weight_graph(fname, x4, None, dy4, y4, cfg, tuple(w.shape), "identity", act, dy.dtype, run)
    db = _bias_graph(fname, dy4, y4, act, dy.dtype, run) if has_bias else None
    return Conv2DGrads(lay.image_back(dx4), lay.filter_back(dw), db)
