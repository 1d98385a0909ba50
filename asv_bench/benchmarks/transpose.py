"""gpuconv.conv2d_transpose (bias and activation fused into the dX kernels' epilogue) and its backward, on the
shared shapes: the transposed convolution of each layer maps its output (dy) back to its input's shape."""
from .common import ACTIVATIONS, BACKENDS, DTYPES, GFLOPS, SHAPES, Case, gpuconv


def _transpose_options(shape) -> dict:
    """stride, padding and the output_padding that make the output exactly the layer's input shape."""
    opts = dict(shape.options)
    s, p, k = opts["stride"], opts["padding"], (shape.kh, shape.kw)
    oh, ow = shape.y_shape[1:3]
    opts["output_padding"] = tuple(size - ((o - 1) * s - 2 * p + (kk - 1) + 1)
                                   for size, o, kk in ((shape.h, oh, k[0]), (shape.w, ow, k[1])))
    return opts


class Conv2dTranspose:
    params = [BACKENDS, DTYPES, SHAPES, ACTIVATIONS]
    param_names = ["backend", "dtype", "shape", "activation"]
    timeout = 120

    def setup(self, backend, dtype, shape, activation):
        self.case = c = Case(backend, dtype, shape)
        a, opts = c.a, dict(_transpose_options(c.shape), backend=backend)
        b = a["x"][0, 0, 0]  # a seeded (C,) bias in the backend's array module

        def run():
            return gpuconv.conv2d_transpose(a["dy"], a["w"], b, activation=activation, **opts)

        self.run = run
        y = run()
        assert tuple(y.shape) == tuple(c.shape.x_shape)
        c.warm_up(run)
        self.backward = lambda: gpuconv.conv2d_transpose_backward(a["x"], a["dy"], a["w"], y,
                                                                  activation=activation, **opts)
        c.warm_up(self.backward)

    def time_conv2d_transpose(self, backend, dtype, shape, activation):
        self.run()
        self.case.sync()

    def time_conv2d_transpose_backward(self, backend, dtype, shape, activation):
        self.backward()
        self.case.sync()

    def peakmem_conv2d_transpose(self, backend, dtype, shape, activation):
        self.run()

    def track_gflops(self, backend, dtype, shape, activation):
        return self.case.gflops(self.run, self.case.shape.forward_flops)

    track_gflops.unit = GFLOPS
