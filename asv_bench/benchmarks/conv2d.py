"""gpuconv.conv2d: the fused forward pass act(conv(x, w) + b)."""
from .common import ACTIVATIONS, BACKENDS, DTYPES, GFLOPS, SHAPES, Case, gpuconv


class Conv2d:
    params = [BACKENDS, DTYPES, SHAPES, ACTIVATIONS]
    param_names = ["backend", "dtype", "shape", "activation"]
    timeout = 120

    def setup(self, backend, dtype, shape, activation):
        self.case = c = Case(backend, dtype, shape)
        a = c.a

        def run():
            return gpuconv.conv2d(a["x"], a["w"], a["b"], activation=activation, **c.options)

        self.run = run
        c.warm_up(run)

    def time_conv2d(self, backend, dtype, shape, activation):
        self.run()
        self.case.sync()

    def peakmem_conv2d(self, backend, dtype, shape, activation):
        self.run()

    def track_gflops(self, backend, dtype, shape, activation):
        return self.case.gflops(self.run, self.case.shape.forward_flops)

    track_gflops.unit = GFLOPS
