"""gpuconv.dask: the README's larger-than-memory example (a zarr-stored RGB image, a 3x3 ReLU layer, into
another zarr store) on a LocalCluster of 1 and 2 worker processes; the peak worker memory is tracked too.
At 2048 x 2048 here (asv runs every benchmark in CI); tools/dask_bench.py takes larger sizes."""
import shutil
import tempfile


class DaskZarrConv2d:
    params = [[1, 2]]
    param_names = ["workers"]
    timeout = 300
    size, chunk = 2048, 512

    def setup(self, workers):
        try:
            import distributed
            import zarr  # noqa: F401

            from gpuconv import _dask_example as ex
        except ImportError as exc:  # gpuconv[dask] not installed
            raise NotImplementedError(f"gpuconv.dask needs dask, distributed and zarr: {exc}") from None
        self.ex = ex
        self.tmp = tempfile.mkdtemp()
        self.src = f"{self.tmp}/image.zarr"
        ex.write_image(self.src, self.size, self.chunk)
        self.w, self.b = ex.relu_layer()
        self.cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                host="127.0.0.1", dashboard_address=None)
        self.client = distributed.Client(self.cluster)
        self.client.run(ex.warm_up, self.w, self.b)

    def teardown(self, workers):
        self.client.close()
        self.cluster.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_zarr_to_zarr(self, workers):
        self.ex.convolve(self.src, f"{self.tmp}/out.zarr", self.client, self.w, self.b)

    def track_peak_worker_mib(self, workers):
        self.ex.convolve(self.src, f"{self.tmp}/out.zarr", self.client, self.w, self.b)
        return max(self.client.run(self.ex.peak_rss).values()) / 2**20

    track_peak_worker_mib.unit = "MiB"
