"""gpuconv.conv2d: the fused forward pass act(conv(x, w) + b)."""
from .common import ACTIVATIONS, BACKENDS, DATA_FORMATS, DTYPES, GFLOPS, SHAPES, Case, gpuconv


class Conv2d:
    params = [BACKENDS, DTYPES, SHAPES, ACTIVATIONS, DATA_FORMATS]
    param_names = ["backend", "dtype", "shape", "activation", "data_format"]
    timeout = 120

    def setup(self, backend, dtype, shape, activation, data_format):
        self.case = c = Case(backend, dtype, shape, data_format)
        a = c.a

        def run():
            return gpuconv.conv2d(a["x"], a["w"], a["b"], activation=activation, **c.options)

        self.run = run
        c.warm_up(run)

    def time_conv2d(self, backend, dtype, shape, activation, data_format):
        self.run()
        self.case.sync()

    def peakmem_conv2d(self, backend, dtype, shape, activation, data_format):
        self.run()

    def track_gflops(self, backend, dtype, shape, activation, data_format):
        return self.case.gflops(self.run, self.case.shape.forward_flops)

    track_gflops.unit = GFLOPS
