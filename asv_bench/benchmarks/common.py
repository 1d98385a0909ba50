"""What every benchmark module shares: the shape set and seeded inputs of gpuconv._benchdata (the same ones
``gpuconv bench`` uses), and the setup that skips what cannot run here.

Conventions of this suite:
- params are backend x dtype x shape (names from gpuconv._benchdata.SHAPES); forward adds the activation;
  the forward and the layer step add the data format last (NCHW: PyTorch's layouts, transposes included).
  The dtype parameter is a mode of gpuconv._benchdata.MODES: a dtype ("bfloat16" needs ml_dtypes), or a dtype
  with a precision ("float32-tf32": float32 arrays, precision="tf32"; PyTorch then allows TF32 too). Select
  one with e.g. ``asv run -b "float32-tf32"``.
- the training-size shapes (rn50-*) are skipped on the CPU backends unless GPUCONV_BENCH_LARGE=1.
- ``setup`` raises NotImplementedError (asv's skip, shown as n/a) when a backend or a peer cannot run here,
  with the reason; it also compiles, uploads and runs the operation once, so timed bodies hold no warm-up.
- GPU bodies end with a stream synchronization, so a time is that of the finished work.
- Nothing here imports CuPy or PyTorch at import time: discovery imports every module on every machine.
"""
import importlib.util
import inspect
import os
import sys

import gpuconv


def _load_benchdata():
    """gpuconv/_benchdata.py of this checkout, the file beside these benchmarks.

    asv runs the benchmark code of the checkout against the gpuconv of each commit it measures: taking the
    shape set and input generator from the checkout too keeps them the same for every commit of a history,
    including commits from before the file existed. Outside a checkout, the installed gpuconv's copy is used.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "gpuconv", "_benchdata.py")
    if not os.path.exists(path):
        from gpuconv import _benchdata

        return _benchdata
    spec = importlib.util.spec_from_file_location("gpuconv_asv_benchdata", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bd = _load_benchdata()

BACKENDS = list(bd.BACKENDS)
DTYPES = list(bd.MODES)
SHAPES = list(bd.SHAPE_NAMES)
ACTIVATIONS = list(bd.ACTIVATIONS)
# The activations whose gradient reads the saved output: every one but identity, in the registry's order.
OUTPUT_ACTIVATIONS = [a for a in bd.ACTIVATIONS if bd._registry.activation(a).uses_output]
TORCH_DEVICES = ["cpu", "cuda"]
DATA_FORMATS = list(bd.DATA_FORMATS)  # "NCHW": NCHW inputs with OIHW filters (bd.in_layout)

GFLOPS = "GFLOP/s"


class Case:
    """One benchmark's inputs on one backend: ``a`` (x, w, b, dy in the backend's array module), ``shape``,
    ``options`` for the gpuconv calls, ``sync`` to wait for the device."""

    def __init__(self, backend, mode, shape, data_format="NHWC"):
        self.shape = bd.SHAPES[shape]
        dtype, precision = bd.split_mode(mode)
        reason = bd.backend_reason(backend, self.shape) or bd.mode_reason(backend, dtype, precision)
        if reason is not None:
            raise NotImplementedError(reason)
        if data_format != "NHWC" and "data_format" not in inspect.signature(gpuconv.conv2d).parameters:
            raise NotImplementedError("this gpuconv has no data_format option")
        self.host = bd.make_inputs(self.shape, dtype)
        self.a = bd.to_backend(bd.in_layout(self.host, data_format), backend)
        self.sync = bd.synchronizer(backend)
        self.options = dict(self.shape.options, backend=backend, **bd.precision_options(precision),
                            **bd.layout_options(data_format))
        # the options of the operations without products (bias, activation gradients)
        self.plain = {"backend": backend, **bd.precision_options(precision)}

    def warm_up(self, fn):
        """Compile, launch once and wait: the first call's cost stays out of every timed body."""
        fn()
        self.sync()

    def gflops(self, fn, flops):
        """GFLOP/s of ``fn`` from the median of a few synchronized runs (for track_ benchmarks)."""
        return flops / bd.median(bd.measure(fn, self.sync, repeat=5, warmup=1, max_time=10.0)) / 1e9


class TorchCase:
    """The same layer in PyTorch (the peer); NotImplementedError when PyTorch or the device is missing."""

    def __init__(self, device, mode, shape, activation):
        self.shape = bd.SHAPES[shape]
        dtype, precision = bd.split_mode(mode)
        reason = bd.torch_reason(device)
        reason = reason or bd.large_reason(device, self.shape)
        if reason is None:
            try:
                bd.numpy_dtype(dtype)
            except ImportError as exc:
                reason = str(exc)
        if reason is not None:
            raise NotImplementedError(reason)
        self.layer = bd.TorchLayer(self.shape, bd.make_inputs(self.shape, dtype), activation, device, precision)
        self.sync = self.layer.sync

    def gflops(self, fn, flops):
        return flops / bd.median(bd.measure(fn, self.sync, repeat=5, warmup=1, max_time=10.0)) / 1e9


__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "DATA_FORMATS",
    "DTYPES",
    "GFLOPS",
    "OUTPUT_ACTIVATIONS",
    "SHAPES",
    "TORCH_DEVICES",
    "Case",
    "TorchCase",
    "bd",
    "gpuconv",
]
