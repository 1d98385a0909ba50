"""The larger-than-memory example of gpuconv.dask (README, tests/test_dask.py, asv and tools/dask_bench.py):
a zarr-stored RGB image convolved with a 3x3 ReLU layer into another zarr store, on a dask LocalCluster whose
workers each have less memory than the image."""
from __future__ import annotations

import math
import resource

import dask.array as da
import numpy as np

import gpuconv


def write_image(path: str, size: int, chunk: int, channels: int = 3, seed: int = 0) -> None:
    """A (size, size, channels) float32 image of standard normal values, stored in ``chunk``-square chunks,
    generated chunk by chunk (never whole in memory)."""
    image = da.random.default_rng(seed).standard_normal((size, size, channels), chunks=(chunk, chunk, channels),
                                                        dtype=np.float32)
    image.to_zarr(path, overwrite=True)


def relu_layer(channels: int = 3, filters: int = 8, seed: int = 1) -> tuple:
    """w (3, 3, channels, filters) scaled to keep the outputs near unit size, b (filters,)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, 3, channels, filters), dtype=np.float32) / np.float32(math.sqrt(9 * channels))
    return w, (rng.standard_normal(filters, dtype=np.float32) * np.float32(0.1))


def convolve(src: str, dst: str, client, w, b, progress: bool = False) -> None:
    """dst = relu(conv(src, w) + b) with "same" padding, computed on ``client``'s workers, chunk by chunk."""
    x = da.from_zarr(src)
    y = gpuconv.conv2d(x, w, b, padding="same", activation="relu")  # lazy: gpuconv.dask builds the graph
    future = client.compute(y.to_zarr(dst, overwrite=True, compute=False))
    if progress:
        from distributed import progress as progress_bar

        progress_bar(future)
    future.result()


def warm_up(w, b) -> int:
    """Import everything a task needs and run one small convolution (a worker's own footprint, before any
    chunk of the image); returns peak_rss()."""
    gpuconv.conv2d(np.ones((64, 64, w.shape[2]), w.dtype), w, b, padding="same", activation="relu")
    import zarr  # noqa: F401

    return peak_rss()


def peak_rss() -> int:
    """This process's peak resident memory in bytes (run on each worker with ``client.run(peak_rss)``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
