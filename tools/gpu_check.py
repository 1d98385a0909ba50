"""GPU checks for gpuconv's CUDA kernels (called by tools/gpu_check.sh), and the NVRTC resource table.

  python tools/gpu_check.py resources   registers / shared memory / spills per kernel and arch (no GPU needed)
  python tools/gpu_check.py accuracy    each kernel vs the NumPy float64 reference on the cupy backend, in every
                                        mode (MODES: dtype and precision), against the bounds of gpuconv._accuracy
  python tools/gpu_check.py determinism dw / db bitwise-equal over repeated runs on the cupy backend, every mode
  python tools/gpu_check.py sanitize    one pass of every kernel, small shapes, every mode (under compute-sanitizer)
  python tools/gpu_check.py bench       forward / backward timings of the benchmark shapes (the training-size
                                        layers included) next to cuDNN in the same mode: highest, tf32, fp16, bf16
  python tools/gpu_check.py breakdown [i...]  GPU time (events) of each kernel launch group per benchmark shape
  python tools/gpu_check.py once i      one fused forward + backward of benchmark shape i (for ncu / nsys)
  python tools/gpu_check.py work        FLOPs, bytes and peak-bound times of every benchmark layer (no GPU needed)
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

def nvrtc_resources():
    """[(file, kernel, arch, registers, shared bytes, spill stores, spill loads)] from ptxas -v through NVRTC
    (gpuconv.cuda.nvrtc; no GPU needed)."""
    from gpuconv.cuda.nvrtc import resource_table

    return [(f, r.kernel, r.arch, r.registers, r.shared_mem_bytes, r.spill_stores, r.spill_loads)
            for f, r in resource_table()]


def print_resources(markdown: bool = False):
    """Print the NVRTC resource table; exit status 1 if any kernel spills."""
    from gpuconv.cuda.nvrtc import ARCHES

    rows = nvrtc_resources()
    spills = [r for r in rows if r[5] or r[6]]
    if markdown or "--markdown" in sys.argv:
        table = {}
        for f, k, arch, regs, smem, ss, sl in rows:
            table.setdefault((f, k), {})[arch] = (regs, smem, ss + sl)
        print("| kernel | " + " | ".join(f"{a} regs" for a in ARCHES) + " | static smem (B) | spill bytes |")
        print("|---|" + "---:|" * (len(ARCHES) + 2))
        for (f, k), by_arch in table.items():
            regs = " | ".join(str(by_arch[a][0]) for a in ARCHES)
            smem = max(v[1] for v in by_arch.values())
            spill = sum(v[2] for v in by_arch.values())
            print(f"| `{k}` | {regs} | {smem} | {spill} |")
    else:
        print(f"{'kernel':44s} {'arch':6s} {'regs':>5s} {'smem':>6s} {'spill st/ld':>12s}")
        for f, k, arch, regs, smem, ss, sl in rows:
            print(f"{k:44s} {arch:6s} {regs:5d} {smem:6d} {ss:5d}/{sl:<6d}")
    print("spills:", "none" if not spills else spills)
    return 1 if spills else 0


# ------------------------------------------------------------------------------------------------ GPU parts
# (N, H, W, C, M, KH, KW, stride, padding): the benchmark shapes of docs/performance.md.
BENCH_SHAPES = [
    (1, 48, 64, 10, 20, 3, 3, 1, 1),
    (32, 32, 32, 16, 32, 3, 3, 1, 1),
    (16, 56, 56, 64, 64, 3, 3, 1, 1),
    (8, 112, 112, 3, 64, 7, 7, 2, 3),
    (64, 28, 28, 1, 8, 5, 5, 1, 2),
]
# Accuracy cases: (x shape, w shape, options, activation); together they take every kernel path.
ACCURACY_CASES = [
    ((2, 17, 19, 32), (3, 3, 32, 48), {"padding": 1}, "relu"),
    ((3, 20, 18, 24), (3, 2, 24, 40), {"stride": (2, 3), "padding": ((2, 1), (0, 1)), "dilation": (2, 1)}, "sigmoid"),
    ((2, 16, 16, 64), (3, 3, 16, 64), {"groups": 4, "padding": "same"}, "identity"),
    ((4, 15, 15, 8), (3, 3, 1, 8), {"groups": 8, "padding": 1, "stride": 2}, "relu"),
    ((8, 28, 28, 1), (5, 5, 1, 8), {"padding": 2}, "relu"),
    ((2, 30, 30, 3), (7, 7, 3, 64), {"stride": 2, "padding": 3}, "relu"),
    ((2, 13, 11, 20), (3, 3, 10, 24), {"groups": 2, "padding": 1}, "tanh"),
]


def _modes():
    """(dtype, precision): every mode the kernels are checked in, from gpuconv._registry (every dtype, and
    float32 in every other precision). A mode the backend cannot run (a dtype without kernels, bfloat16 without
    ml_dtypes or with a CuPy before 14) is reported as skipped, with the reason."""
    from gpuconv import _registry

    return ([(d, "highest") for d in _registry.DTYPES]
            + [("float32", p) for p in _registry.PRECISIONS if p != "highest"])


MODES = _modes()
# The modes timed next to cuDNN (cuDNN in the same mode: TF32 off for "highest", on for "tf32").
BENCH_MODES = [("float32", "highest"), ("float32", "tf32"), ("float16", "highest"), ("bfloat16", "highest")]


def _mode_name(dtype, precision):
    return {("float32", "highest"): "fp32", ("float32", "tf32"): "tf32", ("float16", "highest"): "fp16",
            ("bfloat16", "highest"): "bf16"}.get((dtype, precision), dtype)


def _mode_reason(be, dtype, precision):
    """None if ``be`` runs this mode, else why not."""
    import numpy as np

    from gpuconv._config import dtype_from_name

    try:
        dt = dtype_from_name(dtype)
    except ImportError as exc:
        return str(exc)
    reason = be.dtype_reason(dt) if hasattr(be, "dtype_reason") else None
    if reason is None and be.xp.__name__ == "cupy" and dtype == "bfloat16":
        try:
            be.xp.asarray(np.zeros(1, dt))
        except Exception as exc:  # noqa: BLE001 - CuPy before 14 has no bfloat16 arrays
            reason = f"CuPy {be.xp.__version__} cannot hold bfloat16 arrays: {type(exc).__name__}: {exc}"
    return reason


def _host(rng, shape, dtype, low=-1.0, high=1.0):
    from gpuconv._config import dtype_from_name

    return rng.uniform(low, high, shape).astype(dtype_from_name(dtype))


class _HostXp:
    """cupy's asarray / asnumpy / synchronize spelled for a numpy-array backend (the emulator dry run)."""

    def __init__(self, np):
        self.np = np

    def __getattr__(self, name):
        return getattr(self.np, name)

    def asnumpy(self, a):
        return self.np.asarray(a)

    class cuda:
        class runtime:
            @staticmethod
            def deviceSynchronize():
                pass

        class Event:  # host clock: the emulator runs kernels synchronously
            def record(self):
                import time

                self.t = time.perf_counter()

            def synchronize(self):
                pass

        @staticmethod
        def get_elapsed_time(start, end):
            return 1e3 * (end.t - start.t)


def _bench_shapes(be):
    """BENCH_SHAPES, or on the emulator (a dry run) the same layers with batch 1 and a quarter of the image."""
    if be.kind == "cupy":
        return BENCH_SHAPES
    return [(1, max(h // 4, kh), max(w // 4, kw), c, m, kh, kw, s, p) for n, h, w, c, m, kh, kw, s, p in BENCH_SHAPES]


def _cupy_backend():
    """The cupy backend (GPU_CHECK_BACKEND=emulator runs the same checks on the CPU emulator, as a dry run)."""
    from gpuconv._dispatch import load_backend

    be = load_backend(os.environ.get("GPU_CHECK_BACKEND", "cupy"))
    if be.xp.__name__ == "numpy":
        be = type(be)(be.kind, be.xp)
        be.xp_tools = _HostXp(be.xp)
    else:
        be.xp_tools = be.xp
    return be


def _rel_err(got, want):
    import numpy as np

    got = np.asarray(got, np.float64)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def _all_grads(be, cfg, act, x, w, b, dy, precision="highest"):
    """Every kernel once: forward, activation backward, dx / dw / db (plain and fused), in ``precision``."""
    p = {"precision": precision}
    y = be.forward(x, w, b, cfg, act, **p)
    dz = be.activation_backward(dy, y, act)
    out = {"forward": y, "act_backward": dz, "dx": be.backward_input(dz, w, cfg, **p),
           "dw": be.backward_weight(dz, x, cfg, **p), "db": be.backward_bias(dz)}
    fdx, fdw, fdb = be.backward(dy, y, x, w, cfg, act, **p)
    out.update({"fused dx": fdx, "fused dw": fdw, "fused db": fdb})
    return out


def _reference(cfg, act, x, w, b, dy, y_saved, dz_saved):
    """NumPy float64 reference from the same (already rounded) inputs and the kernel's saved output, as
    (exact value, sum |a||b|, number of terms) per result (the backward of a relu or a sigmoid from the saved y,
    the unfused dx / dw from the kernel's own dz)."""
    import numpy as np

    from gpuconv import _registry
    from gpuconv.backends.numpy import NumpyBackend

    ref = NumpyBackend()
    x, w, b, dy, y, dzs = (np.asarray(a, np.float64) for a in (x, w, b, dy, y_saved, dz_saved))
    dz = _registry.activation(act).backward(dy, y)
    k_fwd = cfg.kh * cfg.kw * cfg.cg + 1
    k_dx, k_dw = cfg.kh * cfg.kw * cfg.mg, cfg.n * cfg.oh * cfg.ow

    def grads(d):
        ad = np.abs(d)
        return {"dx": (ref.backward_input(d, w, cfg), ref.backward_input(ad, np.abs(w), cfg), k_dx),
                "dw": (ref.backward_weight(d, x, cfg), ref.backward_weight(ad, np.abs(x), cfg), k_dw),
                "db": (ref.backward_bias(d), ref.backward_bias(ad), k_dw)}

    fused, plain = grads(dz), grads(dzs)
    out = {"forward": (ref.forward(x, w, b, cfg, "identity"), ref.forward(np.abs(x), np.abs(w), np.abs(b), cfg,
                                                                          "identity"), k_fwd),
           "act_backward": (dz, np.abs(dy), 1)}  # dz_error bounds |dz^ - dz| relative to |dy|
    out.update(plain)
    out.update({f"fused {k}": v for k, v in fused.items()})
    return out


def _bound_ratio(name, got, want, dtype, precision, act):
    """max |got - exact| / bound over the elements (<= 1 passes), the bound from gpuconv._accuracy."""
    import numpy as np

    from gpuconv import _accuracy as acc
    from gpuconv import _registry

    exact, abs_sum, terms = want
    got = np.asarray(got, np.float64)
    if name == "forward":
        err = acc.activation_error(dtype, act, acc.sum_error(dtype, precision, terms, abs_sum))
        exact = _registry.activation(act).forward(exact.copy())
    elif name == "act_backward":
        # a float64 reference computes dz by the same formula in the same precision: it carries as much error
        err = acc.dz_error(dtype, act) * abs_sum * (2 if np.dtype(dtype) == np.float64 else 1)
    elif name.endswith("db"):
        err = acc.sum_error(dtype, "highest", terms, abs_sum, acc.dz_error(dtype, act))
    else:
        err = acc.sum_error(dtype, precision, terms, abs_sum, acc.dz_error(dtype, act))
    bound = acc.store_error(dtype, exact, err) + 1e-300
    return float(np.max(np.abs(got - exact) / bound))


def accuracy():
    import numpy as np

    from gpuconv._config import dtype_from_name, make_config

    be = _cupy_backend()
    cp = be.xp_tools
    failures = 0
    print(f"{'case':48s} {'mode':8s} {'kernel':13s} {'err/bound':>9s}  (bounds: gpuconv/_accuracy.py)")
    for dtype, precision in MODES:
        reason = _mode_reason(be, dtype, precision)
        if reason is not None:
            print(f"{'(every case)':48s} {_mode_name(dtype, precision):8s} skipped: {reason}")
            continue
        dt = dtype_from_name(dtype)
        for i, (xs, ws, opts, act) in enumerate(ACCURACY_CASES):
            cfg = make_config("gpu_check", xs, ws, **opts)
            rng = np.random.default_rng(i)
            x, w, b, dy = (_host(rng, s, dtype) for s in (xs, ws, ws[3], cfg.y_shape))
            results = _all_grads(be, cfg, act, *(cp.asarray(a) for a in (x, w, b, dy)), precision=precision)
            got = {k: cp.asnumpy(v) for k, v in results.items()}
            want = _reference(cfg, act, x, w, b, dy, got["forward"], got["act_backward"])
            for k, value in got.items():
                ratio = _bound_ratio(k, value, want[k], dt, precision, act)
                ok = ratio <= 1 and np.asarray(value).dtype == dt
                failures += not ok
                print(f"{str(xs) + '*' + str(ws) + ' ' + act:48s} {_mode_name(dtype, precision):8s} {k:13s} "
                      f"{ratio:9.2e}{'' if ok else '  FAIL'}")
    print("accuracy:", "all within the bounds" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


def determinism(repeats: int = 5):
    import numpy as np

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    failures = 0
    for dtype, precision in MODES:
        reason = _mode_reason(be, dtype, precision)
        if reason is not None:
            print(f"determinism {_mode_name(dtype, precision)}: skipped: {reason}")
            continue
        for n, h, w_, c, m, kh, kw, s, p in _bench_shapes(be):
            cfg = make_config("gpu_check", (n, h, w_, c), (kh, kw, c, m), stride=s, padding=p)
            rng = np.random.default_rng(0)
            x, dy, w = (cp.asarray(_host(rng, sh, dtype)) for sh in (cfg.x_shape, cfg.y_shape, cfg.w_shape))
            y = cp.asarray(_host(rng, cfg.y_shape, dtype, 0.0, 1.0))
            runs = []
            for _ in range(repeats):
                dw, db = be.backward_weight(dy, x, cfg, precision=precision), be.backward_bias(dy)
                _, fdw, fdb = be.backward(dy, y, x, w, cfg, "sigmoid", precision=precision)
                runs.append([cp.asnumpy(a).tobytes() for a in (dw, db, fdw, fdb)])
            same = all(r == runs[0] for r in runs[1:])
            failures += not same
            print(f"determinism {_mode_name(dtype, precision)} {cfg.x_shape}->{cfg.m} {kh}x{kw}: dw/db over "
                  f"{repeats} runs {'bitwise equal' if same else 'DIFFER'}")
    return 1 if failures else 0


def sanitize():
    """One pass of every kernel (both paths, every dtype) on small shapes; meant to run under compute-sanitizer."""
    import numpy as np

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    if hasattr(cp, "cuda") and hasattr(cp.cuda, "set_allocator"):
        cp.cuda.set_allocator(None)  # one cudaMalloc per array, so memcheck sees each array's true bounds
    modes = [m for m in MODES if _mode_reason(be, *m) is None]
    for xs, ws, opts, act in ACCURACY_CASES[:5]:
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype, precision in modes:
            rng = np.random.default_rng(0)
            arrays = [cp.asarray(_host(rng, s, dtype)) for s in (xs, ws, (ws[3],), cfg.y_shape)]
            _all_grads(be, cfg, act, *arrays, precision=precision)
    cp.cuda.runtime.deviceSynchronize()
    print(f"sanitize pass: every kernel ran once in {', '.join(_mode_name(*m) for m in modes)}")
    return 0


def _time_ms(fn, sync, repeats=20):
    import time

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def _torch():
    """torch if it sees a GPU, else None."""
    try:
        import torch
    except Exception:  # noqa: BLE001 - any import failure just drops the comparison
        return None
    return torch if torch.cuda.is_available() else None


def _bench_gpuconv(be, cp, cfg, dtype="float32", precision="highest"):
    """Median ms of the fused forward (bias + relu) and of the fused backward (dx, dw, db from dy and y)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x, w, b, dy = (cp.asarray(_host(rng, s, dtype)) for s in (cfg.x_shape, cfg.w_shape, (cfg.m,), cfg.y_shape))
    y = be.forward(x, w, b, cfg, "relu", precision=precision)
    sync = cp.cuda.runtime.deviceSynchronize
    return (_time_ms(lambda: be.forward(x, w, b, cfg, "relu", precision=precision), sync),
            _time_ms(lambda: be.backward(dy, y, x, w, cfg, "relu", precision=precision), sync))


def _bench_cudnn(torch, cfg, tf32: bool, dtype="float32"):
    """Median ms of cuDNN's conv + bias + relu forward and its backward (channels last), in ``dtype``, with
    TF32 set explicitly on or off (cuDNN and cuBLAS alike)."""
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    cl = torch.channels_last
    tdtype = getattr(torch, dtype)

    def rand(*shape):
        return (torch.rand(*shape, device="cuda", generator=gen) * 2 - 1).to(tdtype)

    x = rand(cfg.n, cfg.c, cfg.h, cfg.w).contiguous(memory_format=cl).requires_grad_(True)
    w = rand(cfg.m, cfg.cg, cfg.kh, cfg.kw).contiguous(memory_format=cl).requires_grad_(True)
    b = rand(cfg.m).requires_grad_(True)
    dy = rand(cfg.n, cfg.m, cfg.oh, cfg.ow).contiguous(memory_format=cl)
    # make_config padding is symmetric for the benchmark shapes
    opts = {"stride": (cfg.s1, cfg.s2), "padding": (cfg.pt, cfg.pl), "dilation": (cfg.d1, cfg.d2),
            "groups": cfg.groups}

    def fwd():
        return torch.relu(torch.nn.functional.conv2d(x, w, b, **opts))

    with torch.no_grad():
        t_fwd = _time_ms(fwd, torch.cuda.synchronize)
    out = fwd()
    t_bwd = _time_ms(lambda: torch.autograd.grad(out, (x, w, b), dy, retain_graph=True), torch.cuda.synchronize)
    return t_fwd, t_bwd


def _bench_set(be):
    """The shape set of gpuconv bench and asv (gpuconv/_benchdata.py: the benchmark shapes and the ResNet-50
    training-size layers) as BENCH_SHAPES-style tuples; on the emulator (a dry run) the small versions of
    BENCH_SHAPES only."""
    if be.kind != "cupy":
        return _bench_shapes(be)
    from gpuconv import _benchdata as bd

    return [(s.n, s.h, s.w, s.c, s.m, s.kh, s.kw, s.stride, s.padding) for s in bd.SHAPES.values()]


def bench():
    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    torch = _torch()
    shapes = _bench_set(be)
    for dtype, precision in BENCH_MODES:
        mode = _mode_name(dtype, precision)
        print()
        reason = _mode_reason(be, dtype, precision)
        if reason is not None:
            print(f"mode {mode}: skipped: {reason}")
            continue
        from gpuconv._config import dtype_from_name

        print(f"mode {mode} ({dtype}, precision={precision!r}): gpuconv {be.math_path(dtype_from_name(dtype), precision)}; "
              f"cuDNN {dtype} with allow_tf32={precision == 'tf32'} (cudnn and cuda.matmul)")
        print(f"{'shape':36s} {'pass':8s} {'gpuconv ms':>10s} {'TFLOP/s':>8s} {'cuDNN ms':>10s} {'TFLOP/s':>8s} "
              f"{'ratio':>6s}")
        for n, h, w, c, m, kh, kw, s, p in shapes:
            cfg = make_config("bench", (n, h, w, c), (kh, kw, c, m), stride=s, padding=p)
            ours = _bench_gpuconv(be, cp, cfg, dtype, precision)
            peer = (None, None)
            if torch is not None:
                try:
                    peer = _bench_cudnn(torch, cfg, precision == "tf32", dtype)
                except Exception as exc:  # noqa: BLE001 - e.g. a dtype this cuDNN has no kernel for
                    print(f"  (cuDNN {mode} failed: {type(exc).__name__}: {exc})")
            fwd_flops = 2 * cfg.n * cfg.oh * cfg.ow * cfg.m * cfg.kh * cfg.kw * cfg.cg
            for i, kind in enumerate(("forward", "backward")):
                flops = fwd_flops * (i + 1)  # backward: dX and dW, each a forward's work
                cells = []
                for v in (ours[i], peer[i]):
                    cells += [f"{v:10.3f}", f"{flops / (v * 1e-3) / 1e12:8.2f}"] if v else [f"{'-':>10s}", f"{'-':>8s}"]
                ratio = f"{ours[i] / peer[i]:6.2f}" if peer[i] else f"{'-':>6s}"
                label = f"{cfg.x_shape}->{m} {kh}x{kw}/s{s}"
                print(f"{label:36s} {kind:8s} {' '.join(cells)} {ratio}")
    print()
    print("ratio = gpuconv / cuDNN in the same mode; median of 20 runs after a warm-up, synchronized; "
          "wall time per call, Python overhead included")
    return 0


def _event_ms(fn, timer, repeats=50):
    """Median GPU time in ms of ``fn`` (``timer`` = (new_event, elapsed_ms(start, end))), after a warm-up."""
    new_event, elapsed = timer
    fn()
    times = []
    for _ in range(repeats):
        start, end = new_event(), new_event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(elapsed(start, end))
    times.sort()
    return times[len(times) // 2]


def _cupy_timer(cp):
    return cp.cuda.Event, cp.cuda.get_elapsed_time


def _torch_timer(torch):
    return (lambda: torch.cuda.Event(enable_timing=True)), (lambda a, b: a.elapsed_time(b))


def _shape_args(cfg_shape):
    n, h, w, c, m, kh, kw, s, p = cfg_shape
    return (n, h, w, c), (kh, kw, c, m), {"stride": s, "padding": p}


def breakdown():
    """Per benchmark shape: GPU time of each operation (unfused and fused), and cuDNN's dx / dw alone."""
    be = _cupy_backend()
    torch = _torch()
    picks = [int(a) for a in sys.argv[2:]] or range(len(BENCH_SHAPES))
    print(f"{'shape':30s} {'operation':18s} {'GPU ms':>8s} {'TFLOP/s':>8s}")
    for i in picks:
        _breakdown_shape(be, torch, BENCH_SHAPES[i])
    print("GPU ms: median of 50 CUDA-event-timed calls after a warm-up (no Python overhead); TFLOP/s = GFLOP / ms")
    return 0


def _breakdown_shape(be, torch, shape):
    import numpy as np

    from gpuconv._config import make_config

    cp = be.xp_tools
    xs, ws, opts = _shape_args(shape)
    cfg = make_config("breakdown", xs, ws, **opts)
    rng = np.random.default_rng(0)
    x, w, b, dy = (cp.asarray(rng.uniform(-1, 1, s).astype(np.float32))
                   for s in (cfg.x_shape, cfg.w_shape, (cfg.m,), cfg.y_shape))
    y = be.forward(x, w, b, cfg, "relu")
    dz = be.activation_backward(dy, y, "relu")
    gflop = 2e-9 * cfg.n * cfg.oh * cfg.ow * cfg.m * cfg.kh * cfg.kw * cfg.cg
    ops = [("forward", lambda: be.forward(x, w, b, cfg, "relu"), gflop),
           ("act_backward", lambda: be.activation_backward(dy, y, "relu"), 0),
           ("dx", lambda: be.backward_input(dz, w, cfg), gflop),
           ("dw (+ sum)", lambda: be.backward_weight(dz, x, cfg), gflop),
           ("db (+ sum)", lambda: be.backward_bias(dz), 0),
           ("fused dx", lambda: be.backward_input_fused(dy, y, w, cfg, "relu"), gflop),
           ("fused dw", lambda: be.backward_weight_fused(dy, y, x, cfg, "relu"), gflop),
           ("fused backward", lambda: be.backward(dy, y, x, w, cfg, "relu"), 2 * gflop)]
    if torch is not None:
        ops += _cudnn_parts(torch, cfg, gflop)
    label = f"{cfg.x_shape}->{cfg.m} {cfg.kh}x{cfg.kw}/s{cfg.s1}"
    for name, fn, gf in ops:
        ms = _event_ms(fn, _torch_timer(torch) if name.startswith("cuDNN") else _cupy_timer(cp))
        rate = f"{gf / ms:8.3f}" if gf else f"{'-':>8s}"
        print(f"{label:30s} {name:18s} {ms:8.4f} {rate}")


def _cudnn_parts(torch, cfg, gflop):
    """cuDNN (fp32, TF32 off) forward, dx alone and dw alone, as (name, fn, GFLOP) rows for breakdown."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    cl = torch.channels_last
    x = torch.rand(cfg.n, cfg.c, cfg.h, cfg.w, device="cuda").contiguous(memory_format=cl).requires_grad_(True)
    w = torch.rand(cfg.m, cfg.cg, cfg.kh, cfg.kw, device="cuda").contiguous(memory_format=cl).requires_grad_(True)
    dy = torch.rand(cfg.n, cfg.m, cfg.oh, cfg.ow, device="cuda").contiguous(memory_format=cl)
    opts = {"stride": (cfg.s1, cfg.s2), "padding": (cfg.pt, cfg.pl), "groups": cfg.groups}
    out = torch.nn.functional.conv2d(x, w, None, **opts)

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, None, **opts)

    return [("cuDNN forward", fwd, gflop),
            ("cuDNN dx", lambda: torch.autograd.grad(out, x, dy, retain_graph=True), gflop),
            ("cuDNN dw", lambda: torch.autograd.grad(out, w, dy, retain_graph=True), gflop)]


def once():
    """One fused forward and backward of benchmark shape argv[2], after a warm-up (a target for ncu)."""
    import numpy as np

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    xs, ws, opts = _shape_args(BENCH_SHAPES[int(sys.argv[2]) if len(sys.argv) > 2 else 3])
    cfg = make_config("once", xs, ws, **opts)
    rng = np.random.default_rng(0)
    x, w, b, dy = (cp.asarray(rng.uniform(-1, 1, s).astype(np.float32))
                   for s in (cfg.x_shape, cfg.w_shape, (cfg.m,), cfg.y_shape))
    for _ in range(2):
        y = be.forward(x, w, b, cfg, "relu")
        be.backward(dy, y, x, w, cfg, "relu")
    cp.cuda.runtime.deviceSynchronize()
    return 0


# Dense peaks of an H100 / H200 SXM (TFLOP/s) and their memory bandwidth (TB/s), for the bounds of ``work``.
PEAKS = {"fp32": 67.0, "tf32": 495.0, "fp16": 989.0, "bf16": 989.0}
BANDWIDTH = {"H100": 3.35, "H200": 4.8}


def work():
    """Markdown table of the work in each benchmark layer, from its ConvConfig (no GPU needed): FLOPs
    (2 per multiplication), minimum bytes per pass in 4- and 2-byte storage, arithmetic intensity, and the time
    bound max(FLOPs / peak, bytes / bandwidth) per mode on an H200 (an H100 has the same peaks, 3.35 TB/s)."""
    from gpuconv import _benchdata as bd
    from gpuconv._config import make_config

    modes = ("fp32", "tf32", "fp16", "bf16")
    print("| shape | (N,H,W,C) -> M, kernel | out | fwd GFLOP | fwd MB fp32 / 16-bit | bwd GFLOP | "
          "bwd MB fp32 / 16-bit | FLOP/B fwd fp32 / 16-bit | H200 bound fwd us: " + " / ".join(modes)
          + " | bwd us: " + " / ".join(modes) + " |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in bd.SHAPES.values():
        cfg = make_config("work", s.x_shape, s.w_shape, stride=s.stride, padding=s.padding)
        fwd = 2 * cfg.multiplications
        x, w, y = cfg.n * cfg.h * cfg.w * cfg.c, cfg.kh * cfg.kw * cfg.cg * cfg.m, cfg.n * cfg.oh * cfg.ow * cfg.m
        fwd_elems = x + w + cfg.m + y  # read x, w, b; write y
        bwd_elems = 2 * y + 2 * x + 2 * w + cfg.m  # read dy, y, x, w; write dx, dw, db
        mb = {size: (fwd_elems * size / 1e6, bwd_elems * size / 1e6) for size in (4, 2)}

        def bound(flops, elems, mode):
            size = 4 if mode in ("fp32", "tf32") else 2
            return 1e6 * max(flops / (PEAKS[mode] * 1e12), elems * size / (BANDWIDTH["H200"] * 1e12))

        pad = f" s{s.stride}" if s.stride != 1 else ""
        pad += f" p{s.padding}" if s.padding else ""
        print(f"| {s.name} | ({s.n},{s.h},{s.w},{s.c}) -> {s.m}, {s.kh}x{s.kw}{pad} | {cfg.oh}x{cfg.ow} | "
              f"{fwd / 1e9:.3f} | {mb[4][0]:.1f} / {mb[2][0]:.1f} | {2 * fwd / 1e9:.3f} | "
              f"{mb[4][1]:.1f} / {mb[2][1]:.1f} | {fwd / (fwd_elems * 4):.0f} / {fwd / (fwd_elems * 2):.0f} | "
              + " / ".join(f"{bound(fwd, fwd_elems, m):.0f}" for m in modes) + " | "
              + " / ".join(f"{bound(2 * fwd, bwd_elems, m):.0f}" for m in modes) + " |")
    return 0


COMMANDS = {"resources": print_resources, "accuracy": accuracy, "determinism": determinism, "sanitize": sanitize,
            "bench": bench, "breakdown": breakdown, "once": once, "work": work}

if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "resources"
    if cmd not in COMMANDS:
        sys.exit(f"usage: python tools/gpu_check.py {{{'|'.join(COMMANDS)}}}")
    sys.exit(COMMANDS[cmd]())
