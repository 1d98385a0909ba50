"""gpuconv bench: forward and backward times and GFLOP/s on the benchmark shapes, optionally beside PyTorch.

Shapes, inputs and the timer come from ``gpuconv._benchdata``, which the asv suite (asv_bench/) shares.
Times are medians of repeated runs after warm-up; on the GPU every run ends with a device synchronization.
Forward = conv2d (+ bias + activation); backward = conv2d_backward (dX + dW + db, through the activation).
``--precision tf32`` times float32 with TF32 products; the PyTorch peer runs in the same mode, with
torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 set explicitly (on for "tf32", off
for "highest"). On the CPU backends the training-size layers are left out of the default set (name them with
--shape to time them).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import _benchdata as bd
from .backends._threads import blas_description


def add_arguments(parser) -> None:
    parser.description = __doc__.split("\n")[0]
    parser.add_argument(
        "--backend", default="auto", choices=("auto",) + bd.BACKENDS,
        help="backend to time (default auto: GPUCONV_BACKEND if set, else cupy where it runs, else numpy)",
    )
    parser.add_argument(
        "--shape", dest="shapes", action="extend", nargs="+", metavar="SHAPE",
        help=f"a benchmark shape ({', '.join(bd.SHAPE_NAMES)}) or NxHxWxC:M:KHxKW[:sS][:pP], e.g. "
             "8x112x112x3:64:7x7:s2:p3 (default: the whole benchmark set)",
    )
    parser.add_argument("--dtype", default="float32", choices=bd.DTYPES,
                        help="default float32 (bfloat16 needs ml_dtypes)")
    parser.add_argument("--precision", default="highest", choices=bd.PRECISIONS,
                        help="float32 products: highest (default, strict FP32) or tf32 (TF32 tensor-core products; "
                             "the torch peer then allows TF32 too)")
    parser.add_argument(
        "--activation", default="identity", choices=("none",) + bd.ACTIVATIONS,
        help="activation fused into the forward pass (default identity, i.e. none)",
    )
    parser.add_argument("--repeat", type=int, default=7, metavar="K",
                        help="timed samples per measurement, after warm-up; the median is shown (default 7)")
    parser.add_argument("--data-format", default="NHWC", choices=bd.DATA_FORMATS,
                        help="layout of x and dy (default NHWC, w HWIO); NCHW times NCHW inputs with OIHW "
                             "filters, PyTorch's layouts, the wrapper's transposes included")
    parser.add_argument("--compare", choices=("torch",), help="also time PyTorch's conv2d and show the ratio")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="draw a progress bar on stderr (default: when stderr is a terminal)")


class Progress:
    """A one-line progress bar on stderr: [#####-----] 3/10 resnet backward."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream if stream is not None else sys.stderr
        self._width = 0

    def show(self, label: str) -> None:
        if not self.enabled:
            return
        filled = round(20 * self.done / max(self.total, 1))
        line = f"[{'#' * filled}{'-' * (20 - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def step(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def _fmt_ms(seconds) -> str:
    if seconds is None:
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_gflops(flops, seconds) -> str:
    if seconds is None:
        return "n/a"
    v = flops / seconds / 1e9
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_ratio(a, b) -> str:
    # three significant digits: a fixed 2 decimals printed 0.00 for a peer 200x slower (its warm-up, once)
    return "n/a" if a is None or b is None else f"{a / b:.3g}"


def run(args) -> int:
    out = sys.stdout
    try:
        shapes = [bd.parse_shape(s) for s in (args.shapes or bd.SHAPE_NAMES)]
        bd.numpy_dtype(args.dtype)
    except (ValueError, ImportError) as exc:
        print(f"gpuconv bench: {exc}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print(f"gpuconv bench: --repeat must be at least 1, got {args.repeat}", file=sys.stderr)
        return 2
    backend = bd.default_backend() if args.backend == "auto" else args.backend
    if backend not in bd.BACKENDS:
        print(f"gpuconv bench: GPUCONV_BACKEND={backend!r} is not one of {bd.BACKENDS}", file=sys.stderr)
        return 2
    reason = bd.backend_reason(backend)
    if reason is not None:
        print(f"gpuconv bench: cannot run backend {backend!r} here: {reason}", file=sys.stderr)
        return 1
    reason = bd.mode_reason(backend, args.dtype, args.precision)
    if reason is not None:
        print(f"gpuconv bench: cannot run {args.dtype} ({args.precision}) on backend {backend!r}: {reason}",
              file=sys.stderr)
        return 1
    if not args.shapes:  # the default set: training-size layers only where they take seconds, not minutes
        left_out = [s.name for s in shapes if bd.large_reason(backend, s) is not None]
        shapes = [s for s in shapes if s.name not in left_out]
        if left_out:
            print(f"gpuconv bench: note: the training-size layers ({', '.join(left_out)}) are left out on the "
                  f"{backend} backend; name them with --shape to time them", file=sys.stderr)
    activation = "identity" if args.activation == "none" else args.activation
    if backend == "emulator":
        big = [s.name for s in shapes if bd.backend_reason(backend, s) is not None]
        if big:
            print(f"gpuconv bench: note: the CPU emulator runs CUDA threads one at a time; {', '.join(big)} "
                  "may take minutes", file=sys.stderr)

    peer_device = None
    if args.compare == "torch":
        peer_device = "cuda" if backend == "cupy" and bd.torch_reason("cuda") is None else "cpu"
        reason = bd.torch_reason(peer_device)
        if reason is not None:
            print(f"gpuconv bench: --compare torch needs PyTorch: {reason}. Install it (e.g. pip install "
                  "torch) or leave out --compare.", file=sys.stderr)
            return 1

    sync = bd.synchronizer(backend)
    steps_per_shape = 4 if peer_device else 2
    progress = Progress(len(shapes) * steps_per_shape,
                        sys.stderr.isatty() if args.progress is None else args.progress)
    rows, errors = [], []
    try:
        for shape in shapes:
            host = bd.make_inputs(shape, args.dtype)
            row = {"shape": shape}
            row["fwd"], row["bwd"] = _time_gpuconv(shape, host, backend, activation, args.precision, sync,
                                                   args.repeat, errors, progress, args.data_format)
            if peer_device:
                row["torch_fwd"], row["torch_bwd"] = _time_torch(shape, host, activation, args.precision,
                                                                 peer_device, args.repeat, errors, progress)
            rows.append(row)
    finally:
        progress.close()

    _print_header(out, backend, args, activation, peer_device)
    _print_table(out, rows, peer_device)
    for e in errors:
        print(f"error: {e}", file=out)
    return 1 if errors else 0


def _time_gpuconv(shape, host, backend, activation, precision, sync, repeat, errors, progress,
                  data_format="NHWC"):
    """gpuconv's forward (conv2d) and backward (conv2d_backward) times: (seconds or None, seconds or None)."""
    import gpuconv

    a = bd.to_backend(bd.in_layout(host, data_format), backend)
    opts = dict(shape.options, backend=backend, **bd.precision_options(precision), **bd.layout_options(data_format))
    saved = {}

    def forward():
        return gpuconv.conv2d(a["x"], a["w"], a["b"], activation=activation, **opts)

    def backward():
        return gpuconv.conv2d_backward(a["dy"], a["x"], a["w"], saved["y"], activation=activation, **opts)

    progress.show(f"{shape.name} forward")
    fwd = _timed(forward, sync, repeat, errors, f"{shape.name} forward")
    progress.step()
    progress.show(f"{shape.name} backward")
    bwd = None
    if fwd is not None:  # backward needs the forward output
        saved["y"] = forward()
        bwd = _timed(backward, sync, repeat, errors, f"{shape.name} backward")
    progress.step()
    return fwd, bwd


def _time_torch(shape, host, activation, precision, device, repeat, errors, progress):
    """PyTorch's forward and backward times on the same inputs: (seconds or None, seconds or None)."""
    label = f"{shape.name} torch"
    progress.show(f"{label} forward")
    try:
        peer = bd.TorchLayer(shape, host, activation, device, precision)
    except Exception as exc:  # noqa: BLE001 - e.g. a dtype PyTorch does not support here
        errors.append(f"{label}: {type(exc).__name__}: {exc}")
        progress.step()
        progress.step()
        return None, None
    # PyTorch's first calls of a shape on the CPU run slow (oneDNN sets up its primitives: ~30 ms each for
    # the first ~7 calls of a tiny layer, measured): more warm-up, so that its samples time the steady state
    fwd = _timed(peer.forward, peer.sync, repeat, errors, f"{label} forward", warmup=TORCH_WARMUP)
    progress.step()
    progress.show(f"{label} backward")
    bwd = _timed(peer.backward, peer.sync, repeat, errors, f"{label} backward",  # records a forward first
                 warmup=TORCH_WARMUP)
    progress.step()
    return fwd, bwd


TORCH_WARMUP = 10


def _timed(fn, sync, repeat, errors, label, warmup=2):
    try:
        return bd.median(bd.measure(fn, sync, repeat=repeat, warmup=warmup))
    except Exception as exc:  # noqa: BLE001 - any error is reported in the table's notes, the run goes on
        errors.append(f"{label}: {type(exc).__name__}: {exc}")
        return None


def _print_header(out, backend, args, activation, peer_device):
    import numpy

    import gpuconv

    print(f"gpuconv {gpuconv.__version__} bench: backend {backend}, {args.dtype}, precision {args.precision}, "
          f"activation {activation}; median of {args.repeat} timed runs after warm-up"
          + ("" if args.data_format == "NHWC" else f"; {args.data_format} inputs, OIHW filters"), file=out)
    libs = f"numpy {numpy.__version__}"
    blas = blas_description()
    if blas:
        libs += f" [{blas}]"
    if peer_device:
        import torch

        libs += f"; torch {torch.__version__} on {peer_device}"
        if peer_device == "cpu":
            libs += f", {torch.get_num_threads()} threads"
        bd.set_torch_tf32(torch, args.precision == "tf32")
        libs += f" ({bd.torch_tf32_flags(torch)})"
    print(libs, file=out)
    be = gpuconv._dispatch.load_backend(backend)
    if hasattr(be, "math_path"):
        print(f"products: {be.math_path(bd.numpy_dtype(args.dtype), args.precision)}", file=out)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            print(f"note: {var}={os.environ[var]} is set (it changes numpy's speed)", file=out)


def _print_table(out, rows, peer_device):
    header = ["shape", "N,H,W,C -> M, kernel", "fwd ms", "fwd GF/s", "bwd ms", "bwd GF/s"]
    if peer_device:
        header += ["torch fwd ms", "torch bwd ms", "fwd ratio", "bwd ratio"]
    lines = [header]
    for r in rows:
        s = r["shape"]
        line = [s.name, s.describe(), _fmt_ms(r["fwd"]), _fmt_gflops(s.forward_flops, r["fwd"]),
                _fmt_ms(r["bwd"]), _fmt_gflops(s.backward_flops, r["bwd"])]
        if peer_device:
            line += [_fmt_ms(r["torch_fwd"]), _fmt_ms(r["torch_bwd"]),
                     _fmt_ratio(r["fwd"], r["torch_fwd"]), _fmt_ratio(r["bwd"], r["torch_bwd"])]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip(), file=out)
    notes = "backward = dX + dW + db; GF/s: 2 FLOPs per multiplication (conv2d_info), backward 2x forward"
    if peer_device:
        notes += "; ratio = gpuconv time / torch time (above 1: gpuconv is slower)"
    print(notes, file=out)
