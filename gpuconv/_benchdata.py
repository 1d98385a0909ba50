"""The benchmark shape set, seeded inputs and a timer: shared by ``gpuconv bench`` and the asv suite.

This is the one definition of what gets benchmarked. Both ``gpuconv bench`` (``gpuconv/_bench.py``) and
``asv_bench/benchmarks/`` import it, so a number from one can be set beside a number from the other.
Nothing here computes a convolution: operations go through the public API, FLOP counts come from
``gpuconv.conv2d_info`` (2 FLOPs per multiplication forward; backward dX + dW = 2x forward).
Importing this module never imports CuPy.

It imports gpuconv only absolutely (``from gpuconv import ...``): the asv suite loads this file from its own
checkout, beside the benchmark code, and runs it against whichever commit of gpuconv asv installed, so that
every commit in a history is measured on the same shapes and inputs (and commits older than this file too).
"""
from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import dataclass

import numpy as np

from gpuconv import _dispatch, _registry, conv2d_info

# Spelled out rather than taken from _dispatch: asv matches parameters by position, so the lists must not change
# with the commit being measured (a backend a commit lacks is skipped there). Dtypes and activations follow the
# registry's order, where entries are only ever appended.
BACKENDS = ("numpy", "cupy", "emulator")
DTYPES = _registry.dtype_names()
ACTIVATIONS = _registry.activation_names()
SEED = 20261126

# The CPU emulator runs CUDA threads one at a time on the CPU: only small layers are worth timing there.
EMULATOR_MAX_MULTIPLICATIONS = 20_000_000


@dataclass(frozen=True)
class BenchShape:
    """One benchmark layer: x (n, h, w, c) NHWC, w (kh, kw, c, m) HWIO, bias (m,), stride, symmetric padding."""

    name: str
    n: int
    h: int
    w: int
    c: int
    m: int
    kh: int
    kw: int
    stride: int = 1
    padding: int = 0

    @property
    def x_shape(self) -> tuple:
        return (self.n, self.h, self.w, self.c)

    @property
    def w_shape(self) -> tuple:
        return (self.kh, self.kw, self.c, self.m)

    @property
    def options(self) -> dict:
        """Keyword arguments of conv2d and its gradients for this layer."""
        return {"stride": self.stride, "padding": self.padding}

    @property
    def info(self):
        return conv2d_info(self.x_shape, self.w_shape, **self.options)

    @property
    def y_shape(self) -> tuple:
        return tuple(self.info.output_shape)

    @property
    def forward_flops(self) -> int:
        """2 FLOPs per multiplication of the forward convolution (bias and activation not counted)."""
        return 2 * self.info.multiplications

    @property
    def backward_flops(self) -> int:
        """dX and dW: each as many multiplications as the forward pass (db not counted)."""
        return 2 * self.forward_flops

    @property
    def spec(self) -> str:
        """The command-line spelling: NxHxWxC:M:KHxKW[:sS][:pP]."""
        s = f"{self.n}x{self.h}x{self.w}x{self.c}:{self.m}:{self.kh}x{self.kw}"
        if self.stride != 1:
            s += f":s{self.stride}"
        if self.padding:
            s += f":p{self.padding}"
        return s

    def describe(self) -> str:
        """Human-readable: '8,112,112,3 -> 64, 7x7 s2 p3'."""
        s = f"{self.n},{self.h},{self.w},{self.c} -> {self.m}, {self.kh}x{self.kw}"
        if self.stride != 1:
            s += f" s{self.stride}"
        if self.padding:
            s += f" p{self.padding}"
        return s


# The benchmark set: (N, H, W, C) -> M, KHxKW. Names are used as asv parameters and on the command line.
SHAPES = {
    s.name: s
    for s in (
        BenchShape("tiny", 1, 48, 64, 10, 20, 3, 3),  # one small image, a few channels
        BenchShape("small", 32, 32, 32, 16, 32, 3, 3),  # CIFAR-sized batch
        BenchShape("resnet", 16, 56, 56, 64, 64, 3, 3),  # a ResNet stage-1 3x3 layer
        BenchShape("stem", 8, 112, 112, 3, 64, 7, 7, stride=2, padding=3),  # a ResNet stem
        BenchShape("mnist", 64, 28, 28, 1, 8, 5, 5),  # single-channel images
    )
}
SHAPE_NAMES = tuple(SHAPES)

_SPEC = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+):(\d+):(\d+)x(\d+)((?::[sp]\d+)*)$")


def parse_shape(text: str) -> BenchShape:
    """A shape name from SHAPES, or NxHxWxC:M:KHxKW[:sS][:pP] (checked with conv2d_info)."""
    text = text.strip()
    if text in SHAPES:
        return SHAPES[text]
    match = _SPEC.match(text.lower())
    if not match:
        raise ValueError(
            f"unknown shape {text!r}: use one of {', '.join(SHAPE_NAMES)} or NxHxWxC:M:KHxKW[:sS][:pP] "
            "(e.g. 8x112x112x3:64:7x7:s2:p3)"
        )
    n, h, w, c, m, kh, kw = (int(v) for v in match.groups()[:7])
    extra = {"s": 1, "p": 0}
    for part in filter(None, match.group(8).split(":")):
        extra[part[0]] = int(part[1:])
    shape = BenchShape(text, n, h, w, c, m, kh, kw, stride=extra["s"], padding=extra["p"])
    if min(n, h, w, c, m, kh, kw, shape.stride) < 1:
        raise ValueError(f"shape {text!r}: every size and the stride must be positive")
    conv2d_info(shape.x_shape, shape.w_shape, **shape.options)  # ValueError when the output would be empty
    return shape


def make_inputs(shape: BenchShape, dtype="float32", seed: int = SEED) -> dict:
    """Seeded random host arrays for one layer: x, w, b, and dy (an upstream gradient like the output).

    Values are standard normal (never zeros); w is scaled by 1/sqrt(KH*KW*C) so outputs stay near unit size
    in every dtype (float16 included) and sigmoid/relu see both signs.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    fan_in = shape.kh * shape.kw * shape.c
    x = rng.standard_normal(shape.x_shape, dtype=np.float32)
    w = rng.standard_normal(shape.w_shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))
    b = rng.standard_normal((shape.m,), dtype=np.float32) * np.float32(0.1)
    dy = rng.standard_normal(shape.y_shape, dtype=np.float32)
    return {k: v.astype(dtype) for k, v in {"x": x, "w": w, "b": b, "dy": dy}.items()}


def backend_reason(backend: str, shape: BenchShape | None = None):
    """None if ``backend`` can run ``shape`` in a benchmark here, else why not (backend_status's reason)."""
    reason = _dispatch.backend_status(backend)
    if reason is None and backend == "emulator" and shape is not None:
        mults = shape.info.multiplications
        if mults > EMULATOR_MAX_MULTIPLICATIONS:
            reason = (
                f"the CPU emulator is benchmarked up to {EMULATOR_MAX_MULTIPLICATIONS:,} multiplications; "
                f"shape {shape.name!r} has {mults:,}"
            )
    return reason


def default_backend() -> str:
    """What 'auto' means for a benchmark: GPUCONV_BACKEND if set, else cupy where it runs, else numpy."""
    env = os.environ.get(_dispatch.ENV_BACKEND, "").strip().lower()
    if env and env != "auto":
        return env
    return "cupy" if _dispatch.backend_status("cupy") is None else "numpy"


def array_module(backend: str):
    """The array module a backend computes in (numpy, or cupy for the GPU); the backend must be available."""
    return _dispatch.load_backend(backend).xp


def to_backend(arrays: dict, backend: str) -> dict:
    """The host arrays moved into the backend's array module (a no-op for CPU backends)."""
    xp = array_module(backend)
    return {k: xp.asarray(v) for k, v in arrays.items()}


def synchronizer(backend: str):
    """A function that waits for the backend's queued work (the GPU's current stream; a no-op on the CPU)."""
    xp = array_module(backend)
    if xp is np:
        return _no_sync
    return _cupy_sync(xp)


def _no_sync():
    pass


def _cupy_sync(cupy):
    def sync():
        cupy.cuda.get_current_stream().synchronize()

    return sync


def measure(fn, sync=_no_sync, *, repeat: int = 7, warmup: int = 1, min_sample: float = 2e-3,
            max_time: float = 20.0) -> list:
    """Seconds per call of ``fn``: ``repeat`` samples after ``warmup`` calls, the device synchronized.

    Each sample runs ``fn`` (then ``sync``) enough times in a row to last about ``min_sample`` seconds and
    reports the mean per call; take the median of the list. Sampling stops early after ``max_time`` seconds
    (at least one sample is always taken).
    """
    sync()
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
        sync()
    once = (time.perf_counter() - t0) / max(warmup, 1)
    number = max(1, min(1000, int(min_sample / once) if once > 0 else 1000))
    samples = []
    start = time.perf_counter()
    for _ in range(max(repeat, 1)):
        t = time.perf_counter()
        for _ in range(number):
            fn()
            sync()
        samples.append((time.perf_counter() - t) / number)
        if time.perf_counter() - start > max_time:
            break
    return samples


def median(samples) -> float:
    return statistics.median(samples)


# --- PyTorch, the peer measured beside gpuconv (never a dependency: absent means skipped) -----------------

def torch_reason(device: str = "cpu"):
    """None if PyTorch can run conv2d on ``device`` ('cpu' or 'cuda') here, else why not."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising anything
        return f"PyTorch is not installed ({type(exc).__name__}: {exc})"
    if device == "cuda" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    if device not in ("cpu", "cuda"):
        return f"unknown PyTorch device {device!r}"
    return None


class TorchLayer:
    """The same layer in PyTorch: x channels_last (NHWC in memory, like gpuconv's), weights (M, C, KH, KW).

    ``forward()`` runs conv2d + activation without autograd; ``backward()`` runs autograd's backward of a
    recorded forward (dX + dW + db, through the activation) with gradients cleared first, so that each call
    does the same work. ``sync()`` waits for the device.
    """

    def __init__(self, shape: BenchShape, arrays: dict, activation: str = "identity", device: str = "cpu"):
        import torch
        import torch.nn.functional as F

        self.torch = torch
        dev = torch.device(device)
        x = torch.from_numpy(np.ascontiguousarray(arrays["x"].transpose(0, 3, 1, 2)))
        self.x = x.to(dev).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.from_numpy(np.ascontiguousarray(arrays["w"].transpose(3, 2, 0, 1)))  # HWIO -> (M, C, KH, KW)
        self.w = w.to(dev).requires_grad_()
        self.b = torch.from_numpy(arrays["b"]).to(dev).requires_grad_()
        dy = torch.from_numpy(np.ascontiguousarray(arrays["dy"].transpose(0, 3, 1, 2)))
        self.dy = dy.to(dev).contiguous(memory_format=torch.channels_last)
        peer = _registry.activation(activation, "bench").torch
        act = None if peer is None else getattr(torch, peer)
        stride, padding = shape.stride, shape.padding

        def layer():
            z = F.conv2d(self.x, self.w, self.b, stride=stride, padding=padding)
            return z if act is None else act(z)

        self._layer = layer
        self._y = None
        self.sync = torch.cuda.synchronize if device == "cuda" else _no_sync

    def forward(self):
        with self.torch.no_grad():
            return self._layer()

    def record(self):
        """Run the forward pass with autograd so that backward() has a graph to go through."""
        self._y = self._layer()
        return self._y

    def backward(self):
        if self._y is None:
            self.record()
        self.x.grad = self.w.grad = self.b.grad = None
        self._y.backward(self.dy, retain_graph=True)

    def forward_backward(self):
        self.x.grad = self.w.grad = self.b.grad = None
        self._layer().backward(self.dy)
