"""The gradients of conv2d, one class per operation: activation_backward (dz from dy), conv2d_backward_input
(dx), conv2d_backward_weight (dw), conv2d_backward_bias (db). The upstream gradient is the seeded dy of the
shared inputs."""
from .common import BACKENDS, DTYPES, GFLOPS, OUTPUT_ACTIVATIONS, SHAPES, Case, gpuconv


class _Gradient:
    params = [BACKENDS, DTYPES, SHAPES]
    param_names = ["backend", "dtype", "shape"]
    timeout = 120

    def setup(self, backend, dtype, shape):
        self.case = Case(backend, dtype, shape)
        self.run = self.operation(self.case)
        self.case.warm_up(self.run)

    def time_backward(self, backend, dtype, shape):
        self.run()
        self.case.sync()


class Conv2dBackwardInput(_Gradient):
    @staticmethod
    def operation(c):
        a, x_shape = c.a, c.shape.x_shape
        return lambda: gpuconv.conv2d_backward_input(a["dy"], a["w"], x_shape, **c.options)

    def peakmem_backward(self, backend, dtype, shape):
        self.run()

    def track_gflops(self, backend, dtype, shape):
        return self.case.gflops(self.run, self.case.shape.forward_flops)

    track_gflops.unit = GFLOPS


class Conv2dBackwardWeight(_Gradient):
    @staticmethod
    def operation(c):
        a, w_shape = c.a, c.shape.w_shape
        return lambda: gpuconv.conv2d_backward_weight(a["dy"], a["x"], w_shape, **c.options)

    def peakmem_backward(self, backend, dtype, shape):
        self.run()

    def track_gflops(self, backend, dtype, shape):
        return self.case.gflops(self.run, self.case.shape.forward_flops)

    track_gflops.unit = GFLOPS


class Conv2dBackwardBias(_Gradient):
    @staticmethod
    def operation(c):
        a, plain = c.a, c.plain
        return lambda: gpuconv.conv2d_backward_bias(a["dy"], **plain)


class ActivationBackward:
    """dz = dy * act'(z) from the saved forward output y."""

    params = [BACKENDS, DTYPES, SHAPES, OUTPUT_ACTIVATIONS]
    param_names = ["backend", "dtype", "shape", "activation"]
    timeout = 120

    def setup(self, backend, dtype, shape, activation):
        self.case = c = Case(backend, dtype, shape)
        a = c.a
        y = gpuconv.conv2d(a["x"], a["w"], a["b"], activation=activation, **c.options)
        self.run = lambda: gpuconv.activation_backward(a["dy"], y, activation, **c.plain)
        c.warm_up(self.run)

    def time_activation_backward(self, backend, dtype, shape, activation):
        self.run()
        self.case.sync()
