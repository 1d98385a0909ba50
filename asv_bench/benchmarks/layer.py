"""gpuconv.Conv2D: a whole layer step, forward (relu) then backward (dx, dw, db), as in training; and a first
layer's step, whose input needs no gradient (backward for dw and db only, as gpuconv.torch asks then)."""
from .common import BACKENDS, DATA_FORMATS, DTYPES, GFLOPS, SHAPES, Case, gpuconv

ACTIVATION = "relu"


class Conv2DLayer:
    params = [BACKENDS, DTYPES, SHAPES, DATA_FORMATS]
    param_names = ["backend", "dtype", "shape", "data_format"]
    timeout = 180

    def setup(self, backend, dtype, shape, data_format):
        self.case = c = Case(backend, dtype, shape, data_format)
        a = c.a
        layer = gpuconv.Conv2D(a["w"], a["b"], activation=ACTIVATION, **c.options)

        def run():
            layer(a["x"])
            return layer.backward(a["dy"])

        def first_layer():
            layer(a["x"])
            return layer.backward(a["dy"], grads=("dw", "db"))

        self.run, self.first_layer = run, first_layer
        c.warm_up(run)
        c.warm_up(first_layer)

    def time_forward_backward(self, backend, dtype, shape, data_format):
        self.run()
        self.case.sync()

    def time_first_layer_step(self, backend, dtype, shape, data_format):
        self.first_layer()
        self.case.sync()

    def peakmem_forward_backward(self, backend, dtype, shape, data_format):
        self.run()

    def track_gflops(self, backend, dtype, shape, data_format):
        s = self.case.shape
        return self.case.gflops(self.run, s.forward_flops + s.backward_flops)

    track_gflops.unit = GFLOPS
