"""gpuconv.dask measurements for docs/performance.md (CPU, NumPy backend):

  python tools/dask_bench.py overhead --size 4096 [--scheduler sync|threads]   # one large chunk vs one call
  python tools/dask_bench.py workers --size 4096     # the zarr example on a LocalCluster of 1 and of 2 workers

Both use the README example's layer (3x3, 3 -> 8 channels, ReLU, "same" padding) on a float32 RGB image.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time


def overhead(size: int, repeat: int, scheduler: str) -> None:
    import dask
    import dask.array as da
    import numpy as np

    import gpuconv
    from gpuconv import _dask_example as ex

    x = np.random.default_rng(0).standard_normal((size, size, 3), dtype=np.float32)
    w, b = ex.relu_layer()
    opts = dict(padding="same", activation="relu")
    xd = da.from_array(x, chunks=x.shape)  # one chunk: the dask path's whole cost is its graph and scheduling
    gpuconv.conv2d(x, w, b, **opts)
    direct, persisted, computed = [], [], []
    for _ in range(repeat):  # interleaved, so that all three see the same machine load
        t = time.perf_counter()
        gpuconv.conv2d(x, w, b, **opts)
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()  # the chunk computed and kept as a dask array (as before a to_zarr)
        (y,) = dask.persist(gpuconv.conv2d(xd, w, b, **opts), scheduler=scheduler)
        persisted.append(time.perf_counter() - t)
        del y
        t = time.perf_counter()  # and assembled into one numpy array by dask (a copy of the result)
        gpuconv.conv2d(xd, w, b, **opts).compute(scheduler=scheduler)
        computed.append(time.perf_counter() - t)
    d, p, c = (statistics.median(v) for v in (direct, persisted, computed))
    print(f"{size}x{size}x3 -> 8, one chunk, {scheduler} scheduler (medians of {repeat}): direct {d * 1e3:.0f} ms; "
          f"gpuconv.dask persist {p * 1e3:.0f} ms ({100 * (p - d) / d:+.1f}%), compute {c * 1e3:.0f} ms "
          f"({100 * (c - d) / d:+.1f}%)")


def workers(size: int, chunk: int) -> None:
    import distributed

    from gpuconv import _dask_example as ex

    tmp = tempfile.mkdtemp()
    try:
        src = f"{tmp}/image.zarr"
        ex.write_image(src, size, chunk)
        w, b = ex.relu_layer()
        times = {}
        for n in (1, 2):
            with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                          dashboard_address=None) as cluster, distributed.Client(cluster) as c:
                c.run(ex.warm_up, w, b)
                t = time.perf_counter()
                ex.convolve(src, f"{tmp}/out{n}.zarr", c, w, b)
                times[n] = time.perf_counter() - t
                peak = max(c.run(ex.peak_rss).values())
            print(f"{n} worker(s): {times[n]:.1f} s, peak worker RSS {peak / 2**20:.0f} MiB", flush=True)
        print(f"{size}x{size}x3 in {chunk}-square chunks: 1 worker / 2 workers = {times[1] / times[2]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("overhead", "workers"))
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scheduler", default="sync", choices=("sync", "threads"))
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.size, args.repeat, args.scheduler)
    else:
        workers(args.size, args.chunk)


if __name__ == "__main__":
    main()
