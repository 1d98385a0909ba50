"""The FP16 / BF16 / TF32 forward and dx on Hopper's wgmma kernels (kernels/conv_wgmma_*.cu), which the CUDA
backend takes only on sm_90 with GPUCONV_WGMMA=1 until a GPU run confirms them. Compare with Conv2d (activation
relu, NHWC) and Conv2dBackwardInput of the same mode and shape, which run the mma.sync kernels there;
time_backward_relu is relu's whole backward (dx, dw, db), whose TF32 dx reads the dz that db's pass rounded."""
import os

from .common import GFLOPS, SHAPES, Case, gpuconv

WGMMA_ENV = "GPUCONV_WGMMA"


def _wgmma_reason():
    """None where the wgmma kernels can run (cupy on an sm_90 GPU, a gpuconv that has them), else why not."""
    try:
        from gpuconv.backends import cuda_tc
    except ImportError:
        return "this gpuconv has no tensor-core plans"
    if not hasattr(cuda_tc, "WGMMA_ENV"):
        return "this gpuconv has no wgmma kernels"
    from gpuconv._dispatch import backend_status

    reason = backend_status("cupy")
    if reason is not None:
        return reason
    import cupy

    cc = int(cupy.cuda.Device().compute_capability)
    return None if cc == cuda_tc.WGMMA_ARCH else f"wgmma is sm_90's; this GPU is sm_{cc}"


class WgmmaKernels:
    params = [["float16", "bfloat16", "float32-tf32"], SHAPES]
    param_names = ["dtype", "shape"]
    timeout = 120

    def setup(self, dtype, shape):
        reason = _wgmma_reason()
        if reason is not None:
            raise NotImplementedError(reason)
        self.case = c = Case("cupy", dtype, shape)  # may skip: the variable is set only after it
        self.saved = os.environ.get(WGMMA_ENV)
        os.environ[WGMMA_ENV] = "1"
        a, x_shape = c.a, c.shape.x_shape
        self.forward = lambda: gpuconv.conv2d(a["x"], a["w"], a["b"], activation="relu", **c.options)
        self.dx = lambda: gpuconv.conv2d_backward_input(a["dy"], a["w"], x_shape, **c.options)
        # relu's whole backward: dz from db's pass (stored TF32-rounded in tf32), so dx takes the wgmma variant
        # that reads it from shared memory (DZ_TF32), then dw on mma.sync
        y = self.forward()
        self.backward = lambda: gpuconv.conv2d_backward(a["dy"], a["x"], a["w"], y, activation="relu", **c.options)
        c.warm_up(self.forward)
        c.warm_up(self.dx)
        c.warm_up(self.backward)

    def teardown(self, dtype, shape):
        if self.saved is None:
            os.environ.pop(WGMMA_ENV, None)
        else:
            os.environ[WGMMA_ENV] = self.saved

    def time_forward(self, dtype, shape):
        self.forward()
        self.case.sync()

    def time_backward_input(self, dtype, shape):
        self.dx()
        self.case.sync()

    def time_backward_relu(self, dtype, shape):
        self.backward()
        self.case.sync()

    def track_forward_gflops(self, dtype, shape):
        return self.case.gflops(self.forward, self.case.shape.forward_flops)

    track_forward_gflops.unit = GFLOPS
