"""The NumPy backend: the CPU fallback and the oracle for every other backend (im2col + one GEMM)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _compute_dtype(dtype):
    # float16 is computed in float32 and rounded once at the end.
    return np.float32 if dtype == np.float16 else dtype


def _windows(x, cfg):
    """Zero-padded x (N,H,W,C) -> view (N,OH,OW,KH,KW,C) of the input window under each output pixel."""
    xp = np.pad(x, ((0, 0), (cfg.pt, cfg.pb), (cfg.pl, cfg.pr), (0, 0)))
    span = ((cfg.kh - 1) * cfg.d1 + 1, (cfg.kw - 1) * cfg.d2 + 1)
    v = sliding_window_view(xp, span, axis=(1, 2))  # (N, H', W', C, span1, span2)
    v = v[:, : (cfg.oh - 1) * cfg.s1 + 1 : cfg.s1, : (cfg.ow - 1) * cfg.s2 + 1 : cfg.s2, :, :: cfg.d1, :: cfg.d2]
    return v.transpose(0, 1, 2, 4, 5, 3)


class NumpyBackend:
    name = "numpy"
    xp = np

    def forward(self, x, w, b, cfg, activation):
        ct = _compute_dtype(x.dtype)
        g = cfg.groups
        cols = _windows(x.astype(ct, copy=False), cfg).reshape(cfg.n, cfg.oh, cfg.ow, cfg.kh, cfg.kw, g, cfg.cg)
        wg = w.astype(ct, copy=False).reshape(cfg.kh, cfg.kw, cfg.cg, g, cfg.mg)
        z = np.einsum("nijabgc,abcgm->nijgm", cols, wg, optimize=True).reshape(cfg.y_shape)
        if b is not None:
            z += b.astype(ct, copy=False)
        return _activate(z, activation).astype(x.dtype, copy=False)

    def activation_backward(self, dy, y, activation):
        if activation == "identity":
            return dy.copy()
        ct = _compute_dtype(dy.dtype)
        dy32, y32 = dy.astype(ct, copy=False), y.astype(ct, copy=False)
        if activation == "relu":
            dz = np.where(y32 > 0, dy32, 0)
        else:
            dz = dy32 * y32 * (1 - y32)
        return dz.astype(dy.dtype, copy=False)

    def backward_input(self, dz, w, cfg):
        ct = _compute_dtype(dz.dtype)
        g = cfg.groups
        dzg = dz.astype(ct, copy=False).reshape(cfg.n, cfg.oh, cfg.ow, g, cfg.mg)
        wg = w.astype(ct, copy=False).reshape(cfg.kh, cfg.kw, cfg.cg, g, cfg.mg)
        dcols = np.einsum("nijgm,abcgm->abnijgc", dzg, wg, optimize=True)
        dcols = dcols.reshape(cfg.kh, cfg.kw, cfg.n, cfg.oh, cfg.ow, cfg.c)
        hp, wp = cfg.h + cfg.pt + cfg.pb, cfg.w + cfg.pl + cfg.pr
        dxp = np.zeros((cfg.n, hp, wp, cfg.c), ct)
        for a in range(cfg.kh):  # col2im: one shifted, strided add per kernel tap
            for bb in range(cfg.kw):
                dxp[
                    :,
                    a * cfg.d1 : a * cfg.d1 + (cfg.oh - 1) * cfg.s1 + 1 : cfg.s1,
                    bb * cfg.d2 : bb * cfg.d2 + (cfg.ow - 1) * cfg.s2 + 1 : cfg.s2,
                ] += dcols[a, bb]
        dx = dxp[:, cfg.pt : cfg.pt + cfg.h, cfg.pl : cfg.pl + cfg.w]
        return np.ascontiguousarray(dx).astype(dz.dtype, copy=False)

    def backward_weight(self, dz, x, cfg):
        ct = _compute_dtype(dz.dtype)
        g = cfg.groups
        cols = _windows(x.astype(ct, copy=False), cfg).reshape(cfg.n, cfg.oh, cfg.ow, cfg.kh, cfg.kw, g, cfg.cg)
        dzg = dz.astype(ct, copy=False).reshape(cfg.n, cfg.oh, cfg.ow, g, cfg.mg)
        dw = np.einsum("nijabgc,nijgm->abcgm", cols, dzg, optimize=True)
        return dw.reshape(cfg.w_shape).astype(dz.dtype, copy=False)

    def backward_bias(self, dz):
        ct = _compute_dtype(dz.dtype)
        return dz.astype(ct, copy=False).sum(axis=(0, 1, 2)).astype(dz.dtype, copy=False)


def _activate(z, activation):
    if activation == "relu":
        return np.maximum(z, 0, out=z)
    if activation == "sigmoid":
        with np.errstate(over="ignore"):  # exp overflow gives inf, and 1/(1+inf) = 0 exactly as wanted
            return np.reciprocal(1 + np.exp(-z), out=z)
    return z


def load():
    return NumpyBackend()
