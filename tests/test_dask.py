"""gpuconv.dask: chunked conv2d, conv2d_backward, conv2d_transpose (and its backward) on dask arrays.

Forward and dX are compared bitwise with the single call on the emulator backend (the CUDA kernels sum each
pixel in one fixed order, whatever the problem size), and within rounding on the NumPy backend (its BLAS picks
kernels by matrix size); dW and db within the float32 summation bound of the single call, and bitwise equal
across runs, schedulers (threaded, synchronous, a 2-worker distributed LocalCluster) and worker counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, random_array
from hypothesis import given, note, settings
from hypothesis import strategies as st

import gpuconv

da = pytest.importorskip("dask.array", reason="gpuconv.dask needs dask[array]")
distributed = pytest.importorskip("distributed", reason="the cluster tests need distributed")
import dask  # noqa: E402

import gpuconv.dask as gd  # noqa: E402


@pytest.fixture(scope="module")
def client():
    """A distributed LocalCluster of 2 single-threaded workers on 127.0.0.1, in this process (fast to start)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def compute(*arrays, scheduler="threads", **kw):
    return dask.compute(*arrays, scheduler=scheduler, **kw)


def _chunks(draw, size, lo=1):
    """A random chunking of ``size`` (1 to 4 chunks)."""
    cuts = sorted(set(draw(st.lists(st.integers(lo, max(lo, size - 1)), max_size=3))))
    b = [0, *[c for c in cuts if 0 < c < size], size]
    return tuple(b[i + 1] - b[i] for i in range(len(b) - 1))


@st.composite
def problems(draw, transpose=False):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    groups, cg, mg = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(4, 14)), draw(st.integers(4, 14))
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same", "full"]), st.integers(0, 3),
        st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3))),
    ))
    opts = {"stride": s, "padding": padding, "dilation": d, "groups": groups}
    if transpose:
        if padding != "same":
            opts["output_padding"] = (draw(st.integers(0, max(s[0], d[0]) - 1)),
                                      draw(st.integers(0, max(s[1], d[1]) - 1)))
        x_shape, w_shape = (n, h, w, mg * groups), (kh, kw, cg, mg * groups)
    else:
        x_shape, w_shape = (n, h, w, cg * groups), (kh, kw, cg, mg * groups)
    chunks = (_chunks(draw, n), _chunks(draw, h), _chunks(draw, w), _chunks(draw, x_shape[3]))
    return {"x_shape": x_shape, "w_shape": w_shape, "opts": opts, "chunks": chunks,
            "bias": draw(st.booleans()), "activation": draw(st.sampled_from([None, "relu", "sigmoid"])),
            "seed": draw(st.integers(0, 2**32 - 1))}


def _arrays(p, dtype=np.float32):
    rng = np.random.default_rng(p["seed"])
    x, w = random_array(rng, p["x_shape"], dtype), random_array(rng, p["w_shape"], dtype)
    b = random_array(rng, (p["w_shape"][3],), dtype) if p["bias"] else None
    return rng, x, w, b


def _valid(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ValueError:
        return None


def _summation_bound(dz, x, w_shape, n_terms, **opts):
    """|computed - exact| <= gamma_n * sum |terms| for each of two float32 sums: twice that between them."""
    u = np.finfo(np.float32).eps / 2
    gamma = n_terms * u / (1 - n_terms * u)
    absdw = gpuconv.conv2d_backward_weight(np.abs(dz).astype(np.float64), np.abs(x).astype(np.float64), w_shape,
                                           backend="numpy", **opts)
    return 2 * gamma * absdw


# ---------------------------------------------------------------------------------------------- properties
def _skip_unless(backend):
    from gpuconv import _dispatch

    reason = _dispatch.backend_status(backend)
    if reason is not None:
        pytest.skip(f"backend {backend!r} cannot run here: {reason}")


@pytest.mark.parametrize("backend", ["emulator", "numpy"])
def test_forward_and_dx_match_the_single_call(backend):
    """Random chunkings (batch, H, W and split channels) and options; threaded scheduler."""
    _skip_unless(backend)

    @settings(max_examples=25)
    @given(p=problems())
    def run(p):
        note(repr(p))
        rng, x, w, b = _arrays(p)
        opts, act = p["opts"], p["activation"]
        y = _valid(gpuconv.conv2d, x, w, b, activation=act, backend=backend, **opts)
        if y is None:
            with pytest.raises(ValueError, match="conv2d"):
                gd.conv2d(da.from_array(x, chunks=p["chunks"]), w, b, backend=backend, **opts)
            return
        xd = da.from_array(x, chunks=p["chunks"])
        yd = gpuconv.conv2d(xd, w, b, activation=act, backend=backend, **opts)  # dispatches to gpuconv.dask
        assert isinstance(yd, da.Array)
        dy = random_array(rng, y.shape, np.float32)
        g = gpuconv.conv2d_backward(dy, x, w, y, has_bias=b is not None, activation=act, backend=backend, **opts)
        gdk = gd.conv2d_backward(da.from_array(dy, chunks=(p["chunks"][0], 5, 4, -1)), xd, w, da.from_array(y),
                                 has_bias=b is not None, activation=act, backend=backend, **opts)
        y2, dx2, dw2, db2 = compute(yd, gdk.dx, gdk.dw, gdk.db)
        assert isinstance(y2, np.ndarray) and y2.dtype == y.dtype and dx2.shape == x.shape
        if backend == "emulator":
            np.testing.assert_array_equal(y2, y)
            np.testing.assert_array_equal(dx2, g.dx)
        else:
            assert_close(y2, y, np.float32, reduction=w.size)
            assert_close(dx2, g.dx, np.float32, reduction=w.size)
        dz = gpuconv.activation_backward(dy, y, act, backend="numpy")
        geo = {k: v for k, v in opts.items()}
        bound = _summation_bound(dz, x, w.shape, y.size // y.shape[-1], **geo)
        assert np.all(np.abs(dw2.astype(np.float64) - g.dw) <= bound + 1e-30)
        if b is not None:
            n = y.size // y.shape[-1]
            dbound = 2 * n * np.finfo(np.float32).eps * np.abs(dz).reshape(-1, dz.shape[-1]).sum(0)
            assert np.all(np.abs(db2.astype(np.float64) - g.db) <= dbound)
        else:
            assert db2 is None

    run()


def test_transpose_matches_the_single_call():
    _skip_unless("emulator")

    @settings(max_examples=20)
    @given(p=problems(transpose=True))
    def run(p):
        note(repr(p))
        rng, x, w, _ = _arrays(p)
        opts, act = p["opts"], p["activation"]
        b = random_array(rng, (w.shape[2] * opts["groups"],), np.float32) if p["bias"] else None
        y = _valid(gpuconv.conv2d_transpose, x, w, b, activation=act, backend="emulator", **opts)
        if y is None:
            return
        xd = da.from_array(x, chunks=p["chunks"])
        yd = gpuconv.conv2d_transpose(xd, w, b, activation=act, backend="emulator", **opts)
        dy = random_array(rng, y.shape, np.float32)
        g = gpuconv.conv2d_transpose_backward(dy, x, w, y, has_bias=b is not None, activation=act,
                                              backend="emulator", **opts)
        gdk = gd.conv2d_transpose_backward(da.from_array(dy, chunks=(1, 7, 6, -1)), xd, w, da.from_array(y),
                                           has_bias=b is not None, activation=act, backend="emulator", **opts)
        y2, dx2, dw2, db2 = compute(yd, gdk.dx, gdk.dw, gdk.db)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(dx2, g.dx)
        assert_close(dw2, g.dw.astype(np.float64), np.float32, reduction=y.size)
        if b is not None:
            assert_close(db2, g.db.astype(np.float64), np.float32, reduction=y.size)

    run()


# ---------------------------------------------------------------------------------------------- determinism
def _problem(rng, chunks=((2, 1), (5, 6, 5), (7, 9), (6,))):
    x = random_array(rng, (3, 16, 16, 6), np.float32)
    w, b = random_array(rng, (3, 2, 3, 8), np.float32), random_array(rng, (8,), np.float32)
    opts = dict(stride=(2, 1), padding=((2, 0), (1, 1)), dilation=(1, 2), groups=2, activation="sigmoid")
    return da.from_array(x, chunks=chunks), x, w, b, opts


def test_bitwise_across_runs_schedulers_and_worker_counts(client, rng):
    """y, dx, dw, db from the threaded scheduler (1 and 4 workers), the synchronous one, the 2-worker
    distributed cluster and a 1-worker one: all bitwise equal (dw and db are fixed trees of partial sums)."""
    xd, x, w, b, opts = _problem(rng)
    y = gpuconv.conv2d(x, w, b, **opts)
    dy = random_array(rng, y.shape, np.float32)
    yd = gpuconv.conv2d(xd, w, b, **opts)
    g = gpuconv.conv2d_backward(da.from_array(dy, chunks=(1, 3, 4, 8)), xd, w, da.from_array(y), **opts)
    graph = (yd, g.dx, g.dw, g.db)
    runs = [compute(*graph, scheduler="threads", num_workers=1), compute(*graph, scheduler="threads", num_workers=4),
            compute(*graph, scheduler="sync"), compute(*graph, scheduler=client),
            compute(*graph, scheduler=client)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as one, distributed.Client(one) as c1:
        runs.append(compute(*graph, scheduler=c1))
    for run in runs[1:]:
        for a, b_ in zip(runs[0], run):
            np.testing.assert_array_equal(a, b_)
    single = gpuconv.conv2d_backward(dy, x, w, y, **opts)
    assert_close(runs[0][2], single.dw.astype(np.float64), np.float32, reduction=dy.size // 8)
    assert_close(runs[0][3], single.db.astype(np.float64), np.float32, reduction=dy.size // 8)


def test_float16_partials_are_summed_in_float32(rng):
    xd, x, w, b, opts = _problem(rng)
    x16, w16 = x.astype(np.float16), w.astype(np.float16)
    y = gpuconv.conv2d(x16, w16, b.astype(np.float16), **opts)
    dy = random_array(rng, y.shape, np.float16)
    g = gd.conv2d_backward(da.from_array(dy, chunks=(1, 3, 4, 8)), da.from_array(x16, chunks=xd.chunks), w16,
                           da.from_array(y), **opts)
    dw, db = compute(g.dw, g.db)
    assert dw.dtype == db.dtype == np.float16
    ref = gpuconv.conv2d_backward(dy.astype(np.float64), x16.astype(np.float64), w16.astype(np.float64),
                                  y.astype(np.float64), **opts)
    assert_close(dw, ref.dw, np.float16)
    assert_close(db, ref.db, np.float16)


# ---------------------------------------------------------------------------------------------- the graph
def _tasks(a) -> int:
    return len(dict(a.__dask_graph__()))


@pytest.mark.parametrize("along", ["H", "batch"])
def test_tasks_grow_linearly_with_chunks(rng, along):
    """One task per output chunk plus its halo pieces: the counts for n, 2n and 4n chunks lie on a line."""
    w, b = random_array(rng, (3, 3, 4, 5), np.float32), random_array(rng, (5,), np.float32)
    counts = {"y": [], "dx": [], "dw": []}
    for n in (4, 8, 16):
        shape, chunks = ((1, 8 * n, 12, 4), (1, 8, 12, 4)) if along == "H" else ((n, 8, 12, 4), (1, 8, 12, 4))
        x = da.zeros(shape, chunks=chunks, dtype=np.float32)
        y = gpuconv.conv2d(x, w, b, padding="same", activation="relu")
        g = gpuconv.conv2d_backward(da.zeros(y.shape, chunks=y.chunks, dtype=np.float32), x, w, y,
                                    padding="same", activation="relu")
        counts["y"].append(_tasks(y))
        counts["dx"].append(_tasks(g.dx))
        counts["dw"].append(sum(1 for k in dict(g.dw.__dask_graph__()) if "-part" in str(k[0])))
        assert y.numblocks == x.numblocks
    for name, (a, b2, c) in counts.items():
        assert c - b2 == 2 * (b2 - a), (name, counts[name])
    assert counts["dw"] == [4, 8, 16]


def _rows_read(y, x) -> dict:
    """Per output chunk row index j: the input rows its task receives (whole blocks and cut pieces), from the
    graph itself."""
    graph = dict(y.__dask_graph__())
    out = {}
    for key, task in graph.items():
        if not (isinstance(key, tuple) and key[0] == y.name):
            continue
        grid = next(a for a in task.args if isinstance(a, list)) if hasattr(task, "args") else task[1]
        rows = 0
        for line in grid:
            k = line[0]
            k = getattr(k, "key", k)
            rows += (k[5] - k[4]) if "halo" in k[0] else x.chunks[1][k[2]]
        out[key[2]] = rows
    return out


@pytest.mark.parametrize("k, d, s, padding", [(5, 2, 1, "valid"), (3, 1, 1, "same"), (3, 1, 2, ((2, 0), (0, 0))),
                                              (2, 1, 3, "valid"), (4, 3, 2, "full")])
def test_halos_are_exactly_what_the_window_needs(rng, k, d, s, padding):
    """Each output chunk's task receives exactly the input rows its windows cover: (rows - 1) * s + d*(K-1) + 1,
    less what falls in the zero padding."""
    w = random_array(rng, (k, 1, 1, 1), np.float32)
    x = da.zeros((1, 60, 1, 1), chunks=(1, 12, 1, 1), dtype=np.float32)  # boundaries: multiples of 1, 2, 3
    y = gpuconv.conv2d(x, w, stride=(s, 1), dilation=(d, 1), padding=padding)
    cfg = gpuconv._api._config_for("t", (1, 60, 1, 1), w.shape, (s, 1), padding, (d, 1), 1)
    bounds = np.cumsum((0, *y.chunks[1]))
    got = _rows_read(y, x)
    assert len(got) == len(y.chunks[1])
    for j, (o0, o1) in enumerate(zip(bounds[:-1], bounds[1:])):
        r0, r1 = o0 * s - cfg.pt, (o1 - 1) * s - cfg.pt + d * (k - 1) + 1
        assert got[j] == min(r1, 60) - max(r0, 0), (j, got)


@pytest.mark.parametrize("stride,out_chunks", [
    (2, (4, 3, 3)),  # input boundaries moved up to multiples of 2: 7 -> 8, 14 stays
    (3, (3, 2, 2)),  # and of 3: 7 -> 9, 14 -> 15 (output rows 3 and 5 start the next chunks)
])
def test_rechunks_channels_and_unaligned_boundaries(rng, stride, out_chunks):
    x = random_array(rng, (1, 20, 9, 6), np.float32)
    w = random_array(rng, (3, 3, 6, 2), np.float32)
    xd = da.from_array(x, chunks=(1, (7, 7, 6), 9, (4, 2)))  # boundaries 7, 14: not multiples of the stride
    yd = gpuconv.conv2d(xd, w, stride=stride, padding=1)
    assert yd.chunks[1] == out_chunks
    np.testing.assert_allclose(yd.compute(scheduler="threads"), gpuconv.conv2d(x, w, stride=stride, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_lazy_in_lazy_out(rng):
    """Building the graph computes nothing: an input that raises when computed goes through every function."""
    import dask

    def boom():
        raise AssertionError("computed")

    x = da.from_delayed(dask.delayed(boom)(), (2, 8, 8, 3), np.float32)
    w, wt = random_array(rng, (3, 3, 3, 4), np.float32), random_array(rng, (3, 3, 4, 3), np.float32)
    y = gpuconv.conv2d(x, w, padding="same", activation="relu")
    g = gpuconv.conv2d_backward(y, x, w, y, padding="same", activation="relu")
    t = gpuconv.conv2d_transpose(x, wt, stride=2)
    gt = gpuconv.conv2d_transpose_backward(t, x, wt, stride=2)
    for a in (y, *g, t, *gt):
        assert isinstance(a, da.Array)
    with pytest.raises(AssertionError, match="computed"):
        y.compute(scheduler="sync")


def test_layouts_on_dask(rng):
    """data_format / filter_format work on dask arrays as on the single call."""
    x, w = random_array(rng, (2, 3, 10, 9), np.float32), random_array(rng, (4, 3, 3, 3), np.float32)
    single = gpuconv.conv2d(x, w, padding="same", data_format="NCHW", filter_format="OIHW", backend="emulator")
    yd = gpuconv.conv2d(da.from_array(x, chunks=(1, 3, 4, 5)), w, padding="same", data_format="NCHW",
                        filter_format="OIHW", backend="emulator")
    np.testing.assert_array_equal(yd.compute(scheduler="threads"), single)


def test_importing_gpuconv_does_not_import_dask():
    import subprocess
    import sys

    code = "import sys, gpuconv, numpy as np; gpuconv.conv2d(np.ones((4, 4)), np.ones((2, 2))); " \
           "assert 'dask' not in sys.modules, 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_on_dask(rng):
    x = da.zeros((1, 8, 8, 3), chunks=4, dtype=np.float32)
    w = random_array(rng, (3, 3, 3, 4), np.float32)
    with pytest.raises(TypeError, match="conv2d: argument 'w' has dtype float64 but 'x' has float32"):
        gpuconv.conv2d(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="conv2d: argument 'stride' must be positive"):
        gpuconv.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="conv2d: argument 'x' has 3 channels"):
        gpuconv.conv2d(x, random_array(rng, (3, 3, 2, 4), np.float32))
    with pytest.raises(ValueError, match="conv2d: argument 'padding_mode' must be 'zeros' on dask arrays"):
        gpuconv.conv2d(x, w, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="conv2d_backward: argument 'dy' must have shape"):
        gpuconv.conv2d_backward(x, x, w)
    with pytest.raises(ValueError, match="conv2d_transpose: argument 'output_padding' must be smaller"):
        gpuconv.conv2d_transpose(x, random_array(rng, (3, 3, 2, 3), np.float32), output_padding=1)
    with pytest.raises(TypeError, match="conv2d_backward_input: argument 'dz' is a dask array.*gpuconv.dask has no"):
        gpuconv.conv2d_backward_input(x, w, (1, 10, 10, 3))
    unknown = x[x[:, 0, 0, 0] > 0]
    with pytest.raises(ValueError, match="conv2d: argument 'x' has chunks of unknown size"):
        gpuconv.conv2d(unknown, w)


# ---------------------------------------------------------------------------------------------- the example
def test_zarr_example_memory_per_worker_below_half_the_image(tmp_path):
    """The README's example at 2048 x 2048 x 3 (48 MiB; the README's 16k image takes far too long for CI) on
    two worker processes: what each worker's memory grows by during the run (its peak resident memory from
    getrusage, less its footprint after imports and a warm-up call) stays under half the image. (An absolute
    memory_limit below this image is impossible: an idle worker with numpy, dask and zarr is ~100 MiB.)"""
    zarr = pytest.importorskip("zarr")
    from gpuconv import _dask_example as ex

    size, chunk = 2048, 256
    image = size * size * 3 * 4
    src, dst = str(tmp_path / "image.zarr"), str(tmp_path / "relu.zarr")
    ex.write_image(src, size, chunk)
    w, b = ex.relu_layer()
    memory = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
              "distributed.worker.memory.pause": False}
    with dask.config.set(memory), distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        idle = c.run(ex.warm_up, w, b)  # imports and one small convolution: the worker's own footprint
        ex.convolve(src, dst, c, w, b)
        peaks = c.run(ex.peak_rss)
    assert len(peaks) == 2
    for worker, peak in peaks.items():
        assert peak - idle[worker] < image // 2, (peak - idle[worker], image)
    x, y = zarr.open_array(src, mode="r"), zarr.open_array(dst, mode="r")
    assert y.shape == (size, size, 8) and y.chunks == (chunk, chunk, 8)
    corner = gpuconv.conv2d(x[:301, :301], w, b, padding=((1, 0), (1, 0)), activation="relu")
    np.testing.assert_allclose(y[:300, :300], corner, rtol=1e-5, atol=1e-5)
