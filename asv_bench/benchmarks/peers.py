"""PyTorch's conv2d, measured in the same run as gpuconv so that a ratio reads straight off one results file.

Same shapes, dtypes and seeded inputs; x in channels_last memory (NHWC, like gpuconv's). The pairs:
peers.TorchConv2d.time_conv2d <-> conv2d.Conv2d.time_conv2d, and
peers.TorchConv2DLayer.time_forward_backward <-> layer.Conv2DLayer.time_forward_backward.
Skipped (n/a) where PyTorch is not installed, and on 'cuda' where it sees no GPU.
"""
from .common import ACTIVATIONS, DTYPES, GFLOPS, SHAPES, TORCH_DEVICES, TorchCase
from .layer import ACTIVATION as LAYER_ACTIVATION


class TorchConv2d:
    params = [TORCH_DEVICES, DTYPES, SHAPES, ACTIVATIONS]
    param_names = ["device", "dtype", "shape", "activation"]
    timeout = 120

    def setup(self, device, dtype, shape, activation):
        self.case = TorchCase(device, dtype, shape, activation)
        self.case.layer.forward()
        self.case.sync()

    def time_conv2d(self, device, dtype, shape, activation):
        self.case.layer.forward()
        self.case.sync()

    def track_gflops(self, device, dtype, shape, activation):
        return self.case.gflops(self.case.layer.forward, self.case.shape.forward_flops)

    track_gflops.unit = GFLOPS


class TorchConv2DLayer:
    params = [TORCH_DEVICES, DTYPES, SHAPES]
    param_names = ["device", "dtype", "shape"]
    timeout = 180

    def setup(self, device, dtype, shape):
        self.case = TorchCase(device, dtype, shape, LAYER_ACTIVATION)
        self.case.layer.forward_backward()
        self.case.sync()

    def time_forward_backward(self, device, dtype, shape):
        self.case.layer.forward_backward()
        self.case.sync()

    def track_gflops(self, device, dtype, shape):
        s = self.case.shape
        return self.case.gflops(self.case.layer.forward_backward, s.forward_flops + s.backward_flops)

    track_gflops.unit = GFLOPS
