"""Tests specific to the NumPy backend: every option against a float64 naive reference, chunking under a tiny
workspace limit, work-buffer reuse between calls and threads, non-contiguous inputs, the float16 path.

The backend-parametrized suite (every backend against this one) lives elsewhere; here the NumPy backend is
checked against `_ref_*`, a direct loop over kernel taps and groups written for clarity, in float64.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import reference as ref
from conftest import ACTIVATIONS, DTYPES, LOW_PRECISION_DTYPES

import gpuconv
from gpuconv._config import make_config
from gpuconv.backends import _threads
from gpuconv.backends import numpy as npb

BE = npb.load()


# ---------------------------------------------------------------------------------------------------------------
# float64 reference: one explicit product per kernel tap and group, on an np.pad-ed input
# ---------------------------------------------------------------------------------------------------------------
def _tap_slices(cfg, a, b):
    """Slices of the padded input read by kernel tap (a, b) for every output pixel."""
    r = slice(a * cfg.d1, a * cfg.d1 + (cfg.oh - 1) * cfg.s1 + 1, cfg.s1)
    c = slice(b * cfg.d2, b * cfg.d2 + (cfg.ow - 1) * cfg.s2 + 1, cfg.s2)
    return r, c


def _pad(x, cfg):
    return np.pad(x, ((0, 0), (cfg.pt, cfg.pb), (cfg.pl, cfg.pr), (0, 0)))


def _ref_forward(x, w, b, cfg, activation):
    x, w = x.astype(np.float64), w.astype(np.float64)
    xp = _pad(x, cfg)
    y = np.zeros(cfg.y_shape)
    for a in range(cfg.kh):
        for bb in range(cfg.kw):
            r, c = _tap_slices(cfg, a, bb)
            for g in range(cfg.groups):
                xs = xp[:, r, c, g * cfg.cg : (g + 1) * cfg.cg]
                y[..., g * cfg.mg : (g + 1) * cfg.mg] += xs @ w[a, bb, :, g * cfg.mg : (g + 1) * cfg.mg]
    if b is not None:
        y += b.astype(np.float64)
    return ref.activate(y, activation)


def _ref_backward_input(dz, w, cfg):
    dz, w = dz.astype(np.float64), w.astype(np.float64)
    dxp = np.zeros((cfg.n, cfg.h + cfg.pt + cfg.pb, cfg.w + cfg.pl + cfg.pr, cfg.c))
    for a in range(cfg.kh):
        for bb in range(cfg.kw):
            r, c = _tap_slices(cfg, a, bb)
            for g in range(cfg.groups):
                wg = w[a, bb, :, g * cfg.mg : (g + 1) * cfg.mg]
                dxp[:, r, c, g * cfg.cg : (g + 1) * cfg.cg] += dz[..., g * cfg.mg : (g + 1) * cfg.mg] @ wg.T
    return dxp[:, cfg.pt : cfg.pt + cfg.h, cfg.pl : cfg.pl + cfg.w]


def _ref_backward_weight(dz, x, cfg):
    dz, x = dz.astype(np.float64), x.astype(np.float64)
    xp = _pad(x, cfg)
    dw = np.zeros(cfg.w_shape)
    for a in range(cfg.kh):
        for bb in range(cfg.kw):
            r, c = _tap_slices(cfg, a, bb)
            for g in range(cfg.groups):
                xs = xp[:, r, c, g * cfg.cg : (g + 1) * cfg.cg].reshape(-1, cfg.cg)
                dzg = dz[..., g * cfg.mg : (g + 1) * cfg.mg].reshape(-1, cfg.mg)
                dw[a, bb, :, g * cfg.mg : (g + 1) * cfg.mg] = xs.T @ dzg
    return dw


# ---------------------------------------------------------------------------------------------------------------
# cases: (x_shape, w_shape, options)
# ---------------------------------------------------------------------------------------------------------------
CASES = [
    ((2, 9, 11, 3), (3, 3, 3, 5), {}),
    ((1, 7, 6, 1), (2, 3, 1, 4), {}),  # N=1, one channel (tap-major), even kernel
    ((3, 10, 9, 6), (3, 2, 6, 7), {"stride": (2, 3)}),
    ((2, 12, 13, 5), (3, 3, 5, 4), {"stride": 2, "padding": "same"}),
    ((2, 8, 9, 4), (3, 3, 4, 6), {"padding": "full"}),
    ((2, 11, 10, 3), (3, 3, 3, 2), {"dilation": (2, 3), "padding": ((1, 3), (2, 0))}),
    ((2, 7, 8, 8), (2, 2, 8, 3), {"stride": 3}),  # stride > kernel
    ((2, 5, 6, 2), (2, 2, 2, 3), {"padding": ((4, 1), (0, 5))}),  # padding bigger than the kernel
    ((1, 4, 5, 3), (3, 3, 3, 2), {"padding": 4, "stride": 2}),
    ((2, 9, 8, 6), (3, 3, 2, 9), {"groups": 3}),
    ((2, 9, 8, 6), (3, 3, 3, 4), {"groups": 2, "stride": 2, "padding": 1}),
    ((2, 10, 9, 8), (3, 3, 1, 8), {"groups": 8, "padding": "same"}),  # depthwise
    ((2, 10, 9, 4), (5, 3, 1, 8), {"groups": 4, "stride": 2, "dilation": 2, "padding": (3, 1)}),  # depthwise, x2
    ((3, 13, 12, 2), (4, 4, 2, 5), {"stride": (1, 2), "dilation": (2, 1), "padding": ((3, 2), (1, 4))}),
    ((2, 6, 7, 12), (1, 1, 12, 5), {}),  # 1x1
    ((2, 6, 7, 12), (1, 1, 4, 6), {"stride": 2, "groups": 3}),
    ((1, 16, 15, 1), (5, 5, 1, 3), {"stride": 2, "padding": 2}),  # tap-major with stride: col2im
    # stride 1 with few outputs: dX's transposed convolution has tap-major columns
    ((2, 9, 8, 6), (3, 2, 6, 3), {"padding": ((2, 0), (1, 3)), "dilation": (1, 2)}),
    ((2, 7, 9, 5), (2, 3, 5, 6), {"padding": ((3, 1), (0, 4))}),  # padding past d*(k-1): dZ is cropped for dX
]
IDS = [f"x{c[0]}-w{c[1]}-{c[2]}" for c in CASES]


def _inputs(x_shape, w_shape, cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    w = rng.uniform(-1, 1, w_shape).astype(dtype)
    b = rng.uniform(-1, 1, w_shape[3]).astype(dtype)
    dz = rng.uniform(-1, 1, cfg.y_shape).astype(dtype)
    return x, w, b, dz


def _tol(dtype, k):
    """Absolute tolerance for sums of k products of values in [-1, 1]."""
    eps = {np.float16: 1e-3, np.float32: 2e-6, np.float64: 1e-13}[dtype]
    return eps * (k + 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_option_against_reference(case, dtype):
    x_shape, w_shape, opts = case
    cfg = make_config("test", x_shape, w_shape, **opts)
    x, w, b, dz = _inputs(x_shape, w_shape, cfg, dtype)
    k = cfg.kh * cfg.kw * cfg.cg
    for act in ACTIVATIONS:
        y = BE.forward(x, w, b, cfg, act)
        assert y.dtype == dtype and y.shape == cfg.y_shape
        np.testing.assert_allclose(y, _ref_forward(x, w, b, cfg, act), rtol=0, atol=_tol(dtype, k))
    dx = BE.backward_input(dz, w, cfg)
    assert dx.dtype == dtype and dx.shape == cfg.x_shape
    k_dx = cfg.kh * cfg.kw * cfg.mg
    np.testing.assert_allclose(dx, _ref_backward_input(dz, w, cfg), rtol=0, atol=_tol(dtype, k_dx))
    dw = BE.backward_weight(dz, x, cfg)
    assert dw.dtype == dtype and dw.shape == cfg.w_shape
    p = cfg.n * cfg.oh * cfg.ow
    np.testing.assert_allclose(dw, _ref_backward_weight(dz, x, cfg), rtol=0, atol=_tol(dtype, p))
    db = BE.backward_bias(dz)
    assert db.dtype == dtype and db.shape == (cfg.m,)
    np.testing.assert_allclose(db, dz.astype(np.float64).sum(axis=(0, 1, 2)), rtol=0, atol=_tol(dtype, p))


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_backward(dtype):
    rng = np.random.default_rng(1)
    dy = rng.uniform(-1, 1, (2, 5, 6, 3)).astype(dtype)
    z = rng.uniform(-3, 3, dy.shape)
    z[0, 0, 0] = 0
    y_relu = np.maximum(z, 0).astype(dtype)
    np.testing.assert_array_equal(BE.activation_backward(dy, y_relu, "relu"), np.where(y_relu > 0, dy, 0))
    # exactly where(y > 0, dy, 0): non-finite dy where y <= 0 gives +0, and any memory layout works
    dy2, y2 = dy.copy(), y_relu.copy()
    dy2[0, 0, 0], y2[0, 0, 0] = [np.inf, np.nan, -0.0], [0, -1, 0]
    dyt, yt = dy2.transpose(2, 1, 0, 3), y2[:, ::-1].transpose(2, 1, 0, 3)
    got = BE.activation_backward(dyt, yt, "relu")
    want = np.where(yt > 0, dyt, 0)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == dtype and not np.signbit(got[yt <= 0]).any()
    y_sig = (1 / (1 + np.exp(-z))).astype(dtype)
    ref = dy.astype(np.float64) * y_sig * (1 - y_sig.astype(np.float64))
    got = BE.activation_backward(dy, y_sig, "sigmoid")
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=0, atol=_tol(dtype, 0))
    ident = BE.activation_backward(dy, y_sig, "identity")
    np.testing.assert_array_equal(ident, dy)
    assert not np.shares_memory(ident, dy)


def test_float16_rounded_once():
    """float16 results are the float32 computation rounded once: equal to the rounded float64 reference to within
    one float16 ulp (the float32 sums are far more precise than float16)."""
    x_shape, w_shape = (2, 9, 10, 16), (3, 3, 16, 8)
    cfg = make_config("test", x_shape, w_shape, padding=1)
    x, w, b, _dz = _inputs(x_shape, w_shape, cfg, np.float16, seed=5)
    y = BE.forward(x, w, b, cfg, "identity")
    ref = _ref_forward(x, w, b, cfg, "identity")
    ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
    assert np.all(np.abs(y.astype(np.float64) - ref) <= ulp)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[9], CASES[12], CASES[16], CASES[17], CASES[18]],
                         ids=lambda c: str(c[2]))
def test_tiny_workspace_limit_gives_the_same_results(case):
    """A limit far below one image forces row bands of one image (one output row at a time)."""
    x_shape, w_shape, opts = case
    cfg = make_config("test", x_shape, w_shape, **opts)
    x, w, b, dz = _inputs(x_shape, w_shape, cfg, np.float64, seed=2)
    runs = []
    old = gpuconv.get_workspace_limit()
    for limit in (old, 1):
        gpuconv.set_workspace_limit(limit)
        try:
            runs.append((BE.forward(x, w, b, cfg, "relu"), BE.backward_input(dz, w, cfg),
                         BE.backward_weight(dz, x, cfg)))
        finally:
            gpuconv.set_workspace_limit(old)
    for whole, banded in zip(*runs):
        np.testing.assert_allclose(banded, whole, rtol=1e-13, atol=1e-13)


def test_chunks_respect_the_limit_and_cover_every_row():
    cfg = make_config("test", (7, 40, 30, 8), (3, 3, 8, 16), padding=1)
    old = gpuconv.get_workspace_limit()
    try:
        for limit in (1, 50_000, 400_000, 10**9):
            gpuconv.set_workspace_limit(limit)
            seen = np.zeros((cfg.n, cfg.oh), int)
            for n0, n1, i0, i1 in npb._chunks(cfg, 4):
                seen[n0:n1, i0:i1] += 1
                if i1 - i0 > 1 or n1 - n0 > 1:  # more than one output row: must fit the limit
                    cols = (n1 - n0) * (i1 - i0) * cfg.ow * cfg.kh * cfg.kw * cfg.c * 4
                    assert cols <= limit
            np.testing.assert_array_equal(seen, 1)
    finally:
        gpuconv.set_workspace_limit(old)


def test_work_buffers_do_not_leak_between_calls():
    """Alternate large and small problems (the cache holds the large buffers); results never alias a buffer."""
    big = ((4, 20, 18, 6), (3, 3, 6, 5), {"padding": 2})
    small = ((1, 5, 4, 6), (2, 2, 6, 3), {"stride": 2, "padding": 1})
    results = {}
    for round_ in range(2):
        for name, (xs, ws, opts) in (("big", big), ("small", small)):
            cfg = make_config("test", xs, ws, **opts)
            x, w, b, dz = _inputs(xs, ws, cfg, np.float64, seed=3)
            out = (BE.forward(x, w, b, cfg, "sigmoid"), BE.backward_input(dz, w, cfg), BE.backward_weight(dz, x, cfg))
            for a in out:
                for buf in npb._local.buffers.values():
                    assert not np.shares_memory(a, buf)
            if round_ == 0:
                results[name] = [a.copy() for a in out]
                for a in out:
                    a[...] = np.nan  # scribbling on a result must not reach later calls
            else:
                for got, want in zip(out, results[name]):
                    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(results["big"][0], _ref_forward(*_inputs(*big[:2], make_config("t", *big[:2], **big[2]),
                                                                        np.float64, seed=3)[:3],
                                                               make_config("t", *big[:2], **big[2]), "sigmoid"),
                               atol=1e-12)


@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_backward_equals_the_separate_calls(activation, dtype):
    """backward() (used by the public API) gives the bits of activation_backward + the three gradient calls, and
    its dZ buffer, reused between calls, never reaches a result."""
    for xs, ws, opts in (((2, 9, 8, 6), (3, 3, 6, 5), {"padding": 1}), ((1, 11, 7, 2), (3, 2, 2, 4), {"stride": 2}),
                         CASES[17], CASES[9]):
        cfg = make_config("test", xs, ws, **opts)
        x, w, b, dy = _inputs(xs, ws, cfg, dtype, seed=5)
        y = BE.forward(x, w, b, cfg, activation)
        dz = dy if activation == "identity" else BE.activation_backward(dy, y, activation)
        want = (BE.backward_input(dz, w, cfg), BE.backward_weight(dz, x, cfg), BE.backward_bias(dz))
        first = BE.backward(dy, y, x, w, cfg, activation, True)
        BE.backward(-dy, y, x, w, cfg, activation, True)  # a second call overwrites the dZ buffer
        for got, ref in zip(first, want):
            assert got.dtype == ref.dtype and got.shape == ref.shape and got.tobytes() == ref.tobytes()
            for buf in npb._local.buffers.values():
                assert not np.shares_memory(got, buf)
        assert BE.backward(dy, y, x, w, cfg, activation, False)[2] is None


def test_threads_have_their_own_buffers():
    xs, ws, opts = (3, 16, 15, 5), (3, 3, 5, 4), {"padding": 1}
    cfg = make_config("test", xs, ws, **opts)
    inputs = [_inputs(xs, ws, cfg, np.float32, seed=s) for s in range(4)]
    want = [BE.forward(x, w, b, cfg, "relu") for x, w, b, _ in inputs]
    got = [None] * 4

    def work(i):
        x, w, b, _ = inputs[i]
        for _ in range(20):
            got[i] = BE.forward(x, w, b, cfg, "relu")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, wnt in zip(got, want):
        np.testing.assert_array_equal(g, wnt)


def _non_contiguous(a, rng):
    """The same values as `a`, in a strided, reversed view of a bigger array."""
    big = rng.uniform(-9, 9, tuple(2 * s for s in a.shape)).astype(a.dtype)
    view = big[tuple(slice(None, None, -2) for _ in a.shape)]
    view[...] = a
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3], CASES[9], CASES[11], CASES[16]],
                         ids=lambda c: f"{c[0]}-{c[2]}")
def test_non_contiguous_inputs(case):
    x_shape, w_shape, opts = case
    cfg = make_config("test", x_shape, w_shape, **opts)
    x, w, b, dz = _inputs(x_shape, w_shape, cfg, np.float32, seed=4)
    rng = np.random.default_rng(9)
    xn, wn, bn, dzn = (_non_contiguous(a, rng) for a in (x, w, b, dz))
    np.testing.assert_array_equal(BE.forward(xn, wn, bn, cfg, "relu"), BE.forward(x, w, b, cfg, "relu"))
    np.testing.assert_array_equal(BE.backward_input(dzn, wn, cfg), BE.backward_input(dz, w, cfg))
    np.testing.assert_allclose(BE.backward_weight(dzn, xn, cfg), BE.backward_weight(dz, x, cfg), rtol=1e-6,
                               atol=1e-5)
    np.testing.assert_allclose(BE.backward_bias(dzn), BE.backward_bias(dz), rtol=1e-6, atol=1e-5)
    # the transposed layout (as from an NCHW array) too
    xt = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(BE.forward(xt, w, b, cfg, "relu"), BE.forward(x, w, b, cfg, "relu"))


def test_public_api_uses_this_backend():
    x = np.random.default_rng(6).uniform(-1, 1, (12, 14, 3)).astype(np.float32)
    w = np.random.default_rng(7).uniform(-1, 1, (3, 3, 3, 4)).astype(np.float32)
    y = gpuconv.conv2d(x, w, padding="same", stride=2, backend="numpy")
    cfg = make_config("test", (1, *x.shape), w.shape, padding="same", stride=2)
    np.testing.assert_allclose(y, _ref_forward(x[None], w, None, cfg, "identity")[0], atol=1e-5)


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[9], CASES[16], CASES[17],
                                  ((5, 9, 8, 3), (3, 3, 3, 4), {"stride": 2})],
                         ids=lambda c: f"{c[0]}-{c[2]}")
def test_worker_threads_give_the_serial_results(case, monkeypatch):
    """The same chunks (3 workers' worth, tiny) give the same bits on worker threads as one after another in
    this thread: chunks write disjoint outputs, and dW's per-chunk parts are summed in chunk order."""
    x_shape, w_shape, opts = case
    cfg = make_config("test", x_shape, w_shape, **opts)
    x, w, b, dz = _inputs(x_shape, w_shape, cfg, np.float32, seed=8)

    def run():
        return (BE.forward(x, w, b, cfg, "relu"), BE.backward_input(dz, w, cfg), BE.backward_weight(dz, x, cfg))

    monkeypatch.setattr(npb, "_CHUNK_MIN", 1)
    monkeypatch.setattr(npb, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(npb, "_CHUNK_TARGET", 2000)
    monkeypatch.setattr(_threads, "workers", lambda: 3)
    assert len(npb._chunks(cfg, 4, 3)) > 1
    if _threads.blas_controller() is None:
        pytest.skip("threadpoolctl cannot control this BLAS: the backend runs single-threaded")
    threaded = run()
    parallel_map = _threads.map_tasks
    monkeypatch.setattr(_threads, "map_tasks", lambda fn, tasks, workers: parallel_map(fn, tasks, 1))  # same chunks, in turn
    for got, want in zip(threaded, run()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_gets_a_new_pool(monkeypatch):
    """A child forked after the pool ran must not wait on the parent's (absent) worker threads."""
    import multiprocessing

    monkeypatch.setattr(npb, "_CHUNK_MIN", 1)
    monkeypatch.setattr(npb, "_PARALLEL_MIN", 0)
    monkeypatch.setattr(npb, "_CHUNK_TARGET", 2000)
    xs, ws = (4, 12, 11, 3), (3, 3, 3, 4)
    cfg = make_config("test", xs, ws)
    x, w, b, _ = _inputs(xs, ws, cfg, np.float32, seed=12)
    want = BE.forward(x, w, b, cfg, "relu")  # starts the pool in the parent (when BLAS can be limited)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put(BE.forward(x, w, b, cfg, "relu")))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, want)


def test_random_configs_against_reference():
    """Seeded random options (float64): groups, depthwise, stride/padding beyond the kernel, tiny limits."""
    rng = np.random.default_rng(123)
    old = gpuconv.get_workspace_limit()
    checked = 0
    try:
        while checked < 80:
            g = int(rng.choice([1, 1, 2, 3]))
            cg, mg = int(rng.integers(1, 5)), int(rng.integers(1, 5))
            if rng.random() < 0.15:  # depthwise
                g, cg, mg = int(rng.integers(2, 7)), 1, int(rng.integers(1, 3))
            kh, kw = (int(v) for v in rng.integers(1, 6, 2))
            opts = {"stride": tuple(int(v) for v in rng.integers(1, 4, 2)),
                        "dilation": tuple(int(v) for v in rng.integers(1, 3, 2)),
                        "padding": tuple(tuple(int(v) for v in rng.integers(0, 7, 2)) for _ in range(2)), "groups": g}
            shape = (int(rng.integers(1, 4)), int(rng.integers(1, 14)), int(rng.integers(1, 14)), cg * g)
            try:
                cfg = make_config("test", shape, (kh, kw, cg, mg * g), **opts)
            except ValueError:  # output below 1x1
                continue
            gpuconv.set_workspace_limit(int(rng.integers(1, 5000)) if rng.random() < 0.3 else old)
            x, w, b, dz = (rng.uniform(-1, 1, s) for s in (cfg.x_shape, cfg.w_shape, (cfg.m,), cfg.y_shape))
            np.testing.assert_allclose(BE.forward(x, w, b, cfg, "identity"),
                                       _ref_forward(x, w, b, cfg, "identity"), rtol=0, atol=1e-12)
            np.testing.assert_allclose(BE.backward_input(dz, w, cfg), _ref_backward_input(dz, w, cfg),
                                       rtol=0, atol=1e-12)
            np.testing.assert_allclose(BE.backward_weight(dz, x, cfg), _ref_backward_weight(dz, x, cfg),
                                       rtol=0, atol=1e-12)
            checked += 1
    finally:
        gpuconv.set_workspace_limit(old)
