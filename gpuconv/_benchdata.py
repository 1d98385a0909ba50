"""The benchmark shape set, seeded inputs, the timers and the PyTorch peer: shared by ``gpuconv bench``, the asv
suite and the tools (tools/bench_numpy_vs_torch.py, tools/gpu_check.py).

This is the one definition of what gets benchmarked. ``gpuconv bench`` (``gpuconv/_bench.py``),
``asv_bench/benchmarks/`` and ``tools/`` import it, so a number from one can be set beside a number from another.
Shapes are named (``SHAPES``; ``VARIANTS`` for the padded layers the GPU checks time). One timer per clock:
``measure`` (a host clock, wall time by default) and ``measure_events`` (CUDA events).
Nothing here computes a convolution: operations go through the public API, FLOP counts come from
``gpuconv.conv2d_info`` (2 FLOPs per multiplication forward; backward dX + dW = 2x forward).
Importing this module never imports CuPy.

It imports gpuconv only absolutely (``from gpuconv import ...``): the asv suite loads this file from its own
checkout, beside the benchmark code, and runs it against whichever commit of gpuconv asv installed, so that
every commit in a history is measured on the same shapes and inputs (and commits older than this file too).
"""
from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass

import numpy as np

from gpuconv import _dispatch, _registry, _validate, conv2d_info

# Spelled out rather than taken from _dispatch: asv matches parameters by position, so the lists must not change
# with the commit being measured (a backend a commit lacks is skipped there). Dtypes and activations follow the
# registry's order, where entries are only ever appended.
BACKENDS = ("numpy", "cupy", "emulator")
DTYPES = _registry.dtype_names()
ACTIVATIONS = _registry.activation_names()
PRECISIONS = _registry.precision_names()
# asv's dtype parameter: a dtype, or a dtype and a precision other than "highest" ("float32-tf32": float32
# arrays, precision="tf32"). Spelled out and only appended to (asv matches parameters by position); a test
# checks that it covers every dtype and precision of the registry.
MODES = ("float32", "float16", "float64", "bfloat16", "float32-tf32")
SEED = 20261126
# Layouts a benchmark can run in: "NHWC" (x, dy NHWC; w HWIO: the kernels' own) or "NCHW" (x, dy NCHW; w OIHW,
# as PyTorch callers hold them: the wrapper's transposes are part of the time).
DATA_FORMATS = ("NHWC", "NCHW")

# The CPU emulator runs CUDA threads one at a time on the CPU: only small layers are worth timing there.
EMULATOR_MAX_MULTIPLICATIONS = 20_000_000
# Layers above this many multiplications (the training-size ones) are skipped on the CPU backends unless asked
# for by name (gpuconv bench --shape NAME) or with GPUCONV_BENCH_LARGE=1 (asv): they would take minutes there.
SLOW_BACKENDS = ("numpy", "emulator", "cpu")  # "cpu": the PyTorch peer on the CPU
LARGE_MULTIPLICATIONS = 2_000_000_000
ENV_LARGE = "GPUCONV_BENCH_LARGE"


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
        # ResNet-50 at training size (batch 64, 224x224 images): 6.6-15 GFLOP a forward pass, where tensor cores
        # decide the speed
        BenchShape("rn50-stem", 64, 224, 224, 3, 64, 7, 7, stride=2, padding=3),  # conv1
        BenchShape("rn50-3x3-56", 64, 56, 56, 64, 64, 3, 3, padding=1),  # stage 1 (conv2_x)
        BenchShape("rn50-3x3-28", 64, 28, 28, 128, 128, 3, 3, padding=1),  # stage 2 (conv3_x)
        BenchShape("rn50-3x3-14", 64, 14, 14, 256, 256, 3, 3, padding=1),  # stage 3 (conv4_x)
        BenchShape("rn50-3x3-7", 64, 7, 7, 512, 512, 3, 3, padding=1),  # stage 4 (conv5_x)
        BenchShape("rn50-1x1-up", 64, 56, 56, 64, 256, 1, 1),  # bottleneck expansion, stage 1
        BenchShape("rn50-1x1-down", 64, 56, 56, 256, 64, 1, 1),  # bottleneck reduction, stage 1
        BenchShape("rn50-3x3s2", 64, 56, 56, 128, 128, 3, 3, stride=2, padding=1),  # downsampling 3x3 (v1.5)
        BenchShape("rn50-1x1s2", 64, 56, 56, 256, 512, 1, 1, stride=2),  # projection shortcut, stage 2
    )
}
SHAPE_NAMES = tuple(SHAPES)
# Named variants: the same layers with "same" padding ((K - 1) / 2: the output keeps the input's size), as the
# GPU checks time them (docs/gpu-results). Not asv parameters; accepted wherever a shape name is.
VARIANTS = {
    f"{s.name}-same": BenchShape(f"{s.name}-same", s.n, s.h, s.w, s.c, s.m, s.kh, s.kw, s.stride, (s.kh - 1) // 2)
    for s in SHAPES.values()
    if s.padding != (s.kh - 1) // 2
}
# The layers the GPU checks time: each benchmark layer with "same" padding (the stem has it already).
GPU_SHAPE_NAMES = tuple(f"{n}-same" if f"{n}-same" in VARIANTS else n for n in SHAPE_NAMES)

_SPEC = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+):(\d+):(\d+)x(\d+)((?::[sp]\d+)*)$")


def parse_shape(text: str) -> BenchShape:
    """A shape name from SHAPES or VARIANTS, or NxHxWxC:M:KHxKW[:sS][:pP] (checked with conv2d_info)."""
    text = text.strip()
    if text in SHAPES:
        return SHAPES[text]
    if text in VARIANTS:
        return VARIANTS[text]
    match = _SPEC.match(text.lower())
    if not match:
        raise ValueError(
            f"unknown shape {text!r}: use one of {', '.join((*SHAPE_NAMES, *VARIANTS))} or NxHxWxC:M:KHxKW[:sS][:pP] "
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


def split_mode(mode: str) -> tuple:
    """An asv dtype parameter (MODES) -> (dtype name, precision): "float32-tf32" -> ("float32", "tf32")."""
    dtype, _, precision = mode.partition("-")
    return dtype, precision or "highest"


def numpy_dtype(name: str) -> np.dtype:
    """The dtype called ``name``; bfloat16 is ml_dtypes.bfloat16 (an ImportError naming ml_dtypes without it)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as exc:
            raise ImportError("bfloat16 needs the ml_dtypes package (pip install ml_dtypes)") from exc
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def mode_reason(backend: str, dtype: str, precision: str = "highest"):
    """None if the gpuconv being measured can run ``dtype`` in ``precision`` on ``backend``, else why not
    (ml_dtypes missing, a gpuconv from before the option, a backend without kernels for the dtype)."""
    import gpuconv

    if precision != "highest" and not hasattr(gpuconv, "set_float32_precision"):
        return f"this gpuconv ({gpuconv.__version__}) has no precision option"
    try:
        dt = numpy_dtype(dtype)
    except ImportError as exc:
        return str(exc)
    if dtype == "bfloat16":
        try:
            be = _dispatch.load_backend(backend)
        except _dispatch.BackendUnavailable as exc:
            return str(exc)
        reason = be.dtype_reason(dt) if hasattr(be, "dtype_reason") else None
        if reason is None and not hasattr(gpuconv, "get_float32_precision"):
            reason = f"this gpuconv ({gpuconv.__version__}) has no bfloat16"
        return reason
    return None


def precision_options(precision: str) -> dict:
    """The keyword to pass for ``precision``: none for "highest", so that gpuconv from before the option runs."""
    return {} if precision == "highest" else {"precision": precision}


def make_inputs(shape: BenchShape, dtype="float32", seed: int = SEED) -> dict:
    """Seeded random host arrays for one layer: x, w, b, and dy (an upstream gradient like the output).

    Values are standard normal (never zeros); w is scaled by 1/sqrt(KH*KW*C) so outputs stay near unit size
    in every dtype (float16 and bfloat16 included) and sigmoid/relu see both signs.
    """
    rng = np.random.default_rng(seed)
    dtype = numpy_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    fan_in = shape.kh * shape.kw * shape.c
    x = rng.standard_normal(shape.x_shape, dtype=np.float32)
    w = rng.standard_normal(shape.w_shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))
    b = rng.standard_normal((shape.m,), dtype=np.float32) * np.float32(0.1)
    dy = rng.standard_normal(shape.y_shape, dtype=np.float32)
    return {k: v.astype(dtype) for k, v in {"x": x, "w": w, "b": b, "dy": dy}.items()}


def in_layout(arrays: dict, data_format: str) -> dict:
    """The host arrays of ``make_inputs`` (NHWC / HWIO) in ``data_format``: for "NCHW", x and dy NCHW and w OIHW,
    each C-contiguous (as a PyTorch caller's tensors are)."""
    if data_format == "NHWC":
        return dict(arrays)
    if data_format != "NCHW":
        raise ValueError(f"data format must be one of {DATA_FORMATS}, got {data_format!r}")
    out = dict(arrays)
    for k in ("x", "dy"):
        out[k] = np.ascontiguousarray(arrays[k].transpose(0, 3, 1, 2))
    out["w"] = np.ascontiguousarray(arrays["w"].transpose(3, 2, 0, 1))
    return out


def layout_options(data_format: str) -> dict:
    """The gpuconv options for arrays from ``in_layout(..., data_format)``."""
    return {} if data_format == "NHWC" else {"data_format": "NCHW", "filter_format": "OIHW"}


def backend_reason(backend: str, shape: BenchShape | None = None):
    """None if ``backend`` can run ``shape`` in a benchmark here, else why not (backend_status's reason, or
    the shape being too large for a CPU backend: see large_reason)."""
    reason = _dispatch.backend_status(backend)
    if reason is None and backend == "emulator" and shape is not None:
        mults = shape.info.multiplications
        if mults > EMULATOR_MAX_MULTIPLICATIONS:
            reason = (
                f"the CPU emulator is benchmarked up to {EMULATOR_MAX_MULTIPLICATIONS:,} multiplications; "
                f"shape {shape.name!r} has {mults:,}"
            )
    if reason is None and shape is not None:
        reason = large_reason(backend, shape)
    return reason


def large_reason(where: str, shape: BenchShape):
    """Why ``shape`` is skipped by default on ``where`` (a backend, or "cpu" for the PyTorch peer), or None:
    training-size layers on the CPU. GPUCONV_BENCH_LARGE=1 lifts it."""
    mults = shape.info.multiplications
    lifted = _validate.env_choice(ENV_LARGE, ("0", "1"), "0") == "1"  # read (and checked) on every call
    if where in SLOW_BACKENDS and mults > LARGE_MULTIPLICATIONS and not lifted:
        return (f"shape {shape.name!r} ({mults:,} multiplications) is skipped on {where} by default "
                f"(above {LARGE_MULTIPLICATIONS:,}); name it with --shape, or set {ENV_LARGE}=1")
    return None


def default_backend() -> str:
    """What 'auto' means for a benchmark: GPUCONV_BACKEND if set, else cupy where it runs, else numpy."""
    env = _dispatch.env_backend()
    if env != "auto":
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
    be = _dispatch.load_backend(backend)
    sync = getattr(be, "synchronize", None)
    if sync is not None:
        return sync
    # gpuconv before the backends had synchronize() (asv measures older commits with this file too)
    return _no_sync if be.xp is np else be.xp.cuda.get_current_stream().synchronize


def _no_sync():
    pass


def measure(fn, sync=_no_sync, *, repeat: int = 7, warmup: int = 1, min_sample: float = 2e-3,
            max_time: float = 20.0, clock=time.perf_counter) -> list:
    """Seconds per call of ``fn`` by a host clock (wall time; e.g. time.process_time for CPU time):
    ``repeat`` samples after ``warmup`` calls, the device synchronized.

    Each sample runs ``fn`` (then ``sync``) enough times in a row to last about ``min_sample`` seconds (once
    with min_sample=0) and reports the mean per call; take the median of the list. Sampling stops early after
    ``max_time`` seconds of wall time (at least one sample is always taken).
    """
    sync()
    t0 = clock()
    for _ in range(max(warmup, 1)):
        fn()
        sync()
    once = (clock() - t0) / max(warmup, 1)
    number = max(1, min(1000, int(min_sample / once) if once > 0 else 1000))
    samples = []
    start = time.perf_counter()
    for _ in range(max(repeat, 1)):
        t = clock()
        for _ in range(number):
            fn()
            sync()
        samples.append((clock() - t) / number)
        if time.perf_counter() - start > max_time:
            break
    return samples


def measure_events(fn, new_event, elapsed_ms, *, repeat: int = 50, warmup: int = 1) -> list:
    """Seconds of device time per call of ``fn``, by CUDA events: ``repeat`` samples after ``warmup`` calls.

    ``new_event()`` makes an event with ``record()`` / ``synchronize()`` and ``elapsed_ms(start, end)`` reads
    two (cupy: ``cupy.cuda.Event``, ``cupy.cuda.get_elapsed_time``; torch: ``event_timer``).
    """
    for _ in range(max(warmup, 1)):
        fn()
    samples = []
    for _ in range(max(repeat, 1)):
        start, end = new_event(), new_event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(1e-3 * elapsed_ms(start, end))
    return samples


def event_timer(xp):
    """(new_event, elapsed_ms) of CUDA events for ``measure_events`` from cupy or torch; None for numpy (a CPU
    backend: use ``measure``)."""
    if xp is np:
        return None
    if xp.__name__ == "torch":
        return (lambda: xp.cuda.Event(enable_timing=True)), (lambda a, b: a.elapsed_time(b))
    return xp.cuda.Event, xp.cuda.get_elapsed_time


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
    """The same layer in PyTorch: x and dy channels_last (NHWC in memory, like gpuconv's; ``memory_format="nchw"``
    for torch's default), weights (M, C, KH, KW). The one PyTorch peer of gpuconv bench, asv and tools/.

    ``forward()`` runs conv2d + activation without autograd; ``backward()`` runs autograd's backward of a
    recorded forward (dX + dW + db, through the activation) with gradients cleared first, so that each call
    does the same work; ``backward_input()`` / ``backward_weight()`` take dX / dW alone. ``sync()`` waits for
    the device; ``to_nhwc`` / ``to_hwio`` give results back as host arrays in gpuconv's layouts (for checks).
    """

    def __init__(self, shape: BenchShape, arrays: dict, activation: str = "identity", device: str = "cpu",
                 precision: str = "highest", memory_format: str = "channels_last"):
        import torch
        import torch.nn.functional as F

        self.torch = torch
        dev = torch.device(device)
        mf = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}[memory_format]

        def tensor(a):  # torch.from_numpy knows no ml_dtypes.bfloat16: through float32 (exact both ways)
            if a.dtype.name == "bfloat16":
                return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)
            return torch.from_numpy(np.ascontiguousarray(a))

        x = tensor(arrays["x"].transpose(0, 3, 1, 2))
        self.x = x.to(dev).contiguous(memory_format=mf).requires_grad_()
        w = tensor(arrays["w"].transpose(3, 2, 0, 1))  # HWIO -> (M, C, KH, KW)
        self.w = w.to(dev).requires_grad_()  # contiguous (M, C, KH, KW) in either format, as asv has measured
        self.b = tensor(arrays["b"]).to(dev).requires_grad_()
        dy = tensor(arrays["dy"].transpose(0, 3, 1, 2))
        self.dy = dy.to(dev).contiguous(memory_format=mf)
        peer = _registry.activation(activation, "bench").torch
        act = None if peer is None else getattr(torch, peer)
        stride, padding = shape.stride, shape.padding
        self.allow_tf32 = precision == "tf32"  # the same mode as gpuconv's, set explicitly either way

        def layer():
            set_torch_tf32(torch, self.allow_tf32)  # global flags: set on every call (another layer may differ)
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
        set_torch_tf32(self.torch, self.allow_tf32)
        self._y.backward(self.dy, retain_graph=True)

    def forward_backward(self):
        self.x.grad = self.w.grad = self.b.grad = None
        self._layer().backward(self.dy)

    def backward_input(self):
        """dX alone, through the activation of a recorded forward."""
        if self._y is None:
            self.record()
        set_torch_tf32(self.torch, self.allow_tf32)
        return self.torch.autograd.grad(self._y, self.x, self.dy, retain_graph=True)[0]

    def backward_weight(self):
        """dW alone, through the activation of a recorded forward."""
        if self._y is None:
            self.record()
        set_torch_tf32(self.torch, self.allow_tf32)
        return self.torch.autograd.grad(self._y, self.w, self.dy, retain_graph=True)[0]

    @staticmethod
    def to_nhwc(t) -> np.ndarray:
        """An activation-shaped torch result (N, C, H, W) as a host NHWC array (gpuconv's layout)."""
        return _host(t).transpose(0, 2, 3, 1)

    @staticmethod
    def to_hwio(t) -> np.ndarray:
        """A weight-shaped torch result (M, C, KH, KW) as a host HWIO array (gpuconv's layout)."""
        return _host(t).transpose(2, 3, 1, 0)


def _host(t) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()  # numpy knows no torch.bfloat16


def set_torch_tf32(torch, allow: bool) -> None:
    """TF32 on or off for PyTorch's convolutions (cuDNN) and matmuls, both flags set explicitly."""
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cuda.matmul.allow_tf32 = allow


def torch_tf32_flags(torch) -> str:
    """The two flags as they are now, for a table header."""
    return (f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
