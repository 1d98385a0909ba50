"""GPU checks for gpuconv's CUDA kernels (called by tools/gpu_check.sh), and the NVRTC resource table.

  python tools/gpu_check.py resources   registers / shared memory / spills per kernel and arch (no GPU needed)
  python tools/gpu_check.py accuracy    each kernel vs the NumPy float64 reference on the cupy backend
  python tools/gpu_check.py determinism dw / db bitwise-equal over repeated runs on the cupy backend
  python tools/gpu_check.py sanitize    one pass of every kernel, small shapes (run under compute-sanitizer)
  python tools/gpu_check.py bench       forward / backward timings of the benchmark shapes, next to cuDNN
  python tools/gpu_check.py breakdown [i...]  GPU time (events) of each kernel launch group per benchmark shape
  python tools/gpu_check.py once i      one fused forward + backward of benchmark shape i (for ncu / nsys)
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
# Limits: gpuconv._registry's test tolerances (DType.rtol), the same the test suite uses.


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


def _all_grads(be, cfg, act, x, w, b, dy):
    """Every kernel once: forward, activation backward, dx / dw / db (plain and fused)."""
    y = be.forward(x, w, b, cfg, act)
    dz = be.activation_backward(dy, y, act)
    out = {"forward": y, "act_backward": dz, "dx": be.backward_input(dz, w, cfg),
           "dw": be.backward_weight(dz, x, cfg), "db": be.backward_bias(dz)}
    fdx, fdw, fdb = be.backward(dy, y, x, w, cfg, act)
    out.update({"fused dx": fdx, "fused dw": fdw, "fused db": fdb})
    return out


def _reference(cfg, act, x, w, b, dy, y_saved):
    """NumPy float64 reference from the same (already rounded) inputs and the kernel's saved output."""
    import numpy as np

    from gpuconv import _registry
    from gpuconv.backends.numpy import NumpyBackend

    ref = NumpyBackend()
    x, w, b, dy, y = (a.astype(np.float64) for a in (x, w, b, dy, y_saved))
    dz = _registry.activation(act).backward(dy, y)
    dx, dw, db = ref.backward_input(dz, w, cfg), ref.backward_weight(dz, x, cfg), ref.backward_bias(dz)
    return {"forward": ref.forward(x, w, b, cfg, act), "act_backward": dz, "dx": dx, "dw": dw, "db": db,
            "fused dx": dx, "fused dw": dw, "fused db": db}


def accuracy():
    import numpy as np

    from gpuconv import _registry
    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    failures = 0
    print(f"{'case':48s} {'dtype':8s} {'kernel':13s} {'rel err':>9s}  limit")
    for i, (xs, ws, opts, act) in enumerate(ACCURACY_CASES):
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype in _registry.DTYPES:
            rng = np.random.default_rng(i)
            x, w = rng.uniform(-1, 1, xs).astype(dtype), rng.uniform(-1, 1, ws).astype(dtype)
            b, dy = rng.uniform(-1, 1, ws[3]).astype(dtype), rng.uniform(-1, 1, cfg.y_shape).astype(dtype)
            results = _all_grads(be, cfg, act, *(cp.asarray(a) for a in (x, w, b, dy)))
            got = {k: cp.asnumpy(v) for k, v in results.items()}
            want = _reference(cfg, act, x, w, b, dy, got["forward"])
            for k, value in got.items():
                err = _rel_err(value, want[k])
                limit = _registry.tolerance(dtype)
                ok = err < limit
                failures += not ok
                print(f"{str(xs) + '*' + str(ws) + ' ' + act:48s} {dtype:8s} {k:13s} {err:9.2e}  "
                      f"{limit:.0e}{'' if ok else '  FAIL'}")
    print("accuracy:", "all within limits" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


def determinism(repeats: int = 5):
    import numpy as np

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    failures = 0
    for n, h, w_, c, m, kh, kw, s, p in _bench_shapes(be):
        cfg = make_config("gpu_check", (n, h, w_, c), (kh, kw, c, m), stride=s, padding=p)
        rng = np.random.default_rng(0)
        x = cp.asarray(rng.uniform(-1, 1, cfg.x_shape).astype(np.float32))
        dy = cp.asarray(rng.uniform(-1, 1, cfg.y_shape).astype(np.float32))
        y = cp.asarray(rng.uniform(0, 1, cfg.y_shape).astype(np.float32))
        runs = []
        for _ in range(repeats):
            dw, db = be.backward_weight(dy, x, cfg), be.backward_bias(dy)
            _, fdw, fdb = be.backward(dy, y, x, cp.zeros(cfg.w_shape, cp.float32), cfg, "sigmoid")
            runs.append([cp.asnumpy(a).tobytes() for a in (dw, db, fdw, fdb)])
        same = all(r == runs[0] for r in runs[1:])
        failures += not same
        print(f"determinism {cfg.x_shape}->{cfg.m} {kh}x{kw}: dw/db over {repeats} runs "
              f"{'bitwise equal' if same else 'DIFFER'}")
    return 1 if failures else 0


def sanitize():
    """One pass of every kernel (both paths, every dtype) on small shapes; meant to run under compute-sanitizer."""
    import numpy as np

    from gpuconv import _registry
    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    if hasattr(cp, "cuda") and hasattr(cp.cuda, "set_allocator"):
        cp.cuda.set_allocator(None)  # one cudaMalloc per array, so memcheck sees each array's true bounds
    for xs, ws, opts, act in ACCURACY_CASES[:5]:
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype in _registry.DTYPES:
            rng = np.random.default_rng(0)
            arrays = [cp.asarray(rng.uniform(-1, 1, s).astype(dtype)) for s in (xs, ws, (ws[3],), cfg.y_shape)]
            _all_grads(be, cfg, act, *arrays)
    cp.cuda.runtime.deviceSynchronize()
    print("sanitize pass: every kernel ran once")
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


def _bench_gpuconv(be, cp, cfg):
    """Median ms of the fused forward (bias + relu) and of the fused backward (dx, dw, db from dy and y)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x, w, b, dy = (cp.asarray(rng.uniform(-1, 1, s).astype(np.float32))
                   for s in (cfg.x_shape, cfg.w_shape, (cfg.m,), cfg.y_shape))
    y = be.forward(x, w, b, cfg, "relu")
    sync = cp.cuda.runtime.deviceSynchronize
    return (_time_ms(lambda: be.forward(x, w, b, cfg, "relu"), sync),
            _time_ms(lambda: be.backward(dy, y, x, w, cfg, "relu"), sync))


def _bench_cudnn(torch, cfg, tf32: bool):
    """Median ms of cuDNN's conv + bias + relu forward and its backward (channels-last float32)."""
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    cl = torch.channels_last

    def rand(*shape):
        return torch.rand(*shape, device="cuda", generator=gen) * 2 - 1

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


def bench():
    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    torch = _torch()
    print(f"{'shape':36s} {'pass':8s} {'gpuconv ms':>10s} {'TFLOP/s':>8s} {'cuDNN fp32':>10s} {'cuDNN tf32':>10s} "
          f"{'ratio':>6s}")
    for n, h, w, c, m, kh, kw, s, p in _bench_shapes(be):
        cfg = make_config("bench", (n, h, w, c), (kh, kw, c, m), stride=s, padding=p)
        ours = _bench_gpuconv(be, cp, cfg)
        fp32 = _bench_cudnn(torch, cfg, False) if torch else (None, None)
        tf32 = _bench_cudnn(torch, cfg, True) if torch else (None, None)
        fwd_flops = 2 * cfg.n * cfg.oh * cfg.ow * cfg.m * cfg.kh * cfg.kw * cfg.cg
        for i, kind in enumerate(("forward", "backward")):
            cells = [f"{v:10.3f}" if v is not None else f"{'-':>10s}" for v in (ours[i], fp32[i], tf32[i])]
            tflops = fwd_flops * (i + 1) / (ours[i] * 1e-3) / 1e12  # backward: dX and dW, each a forward's work
            ratio = f"{ours[i] / fp32[i]:6.2f}" if fp32[i] else f"{'-':>6s}"
            label = f"{cfg.x_shape}->{m} {kh}x{kw}/s{s}"
            print(f"{label:36s} {kind:8s} {cells[0]} {tflops:8.3f} {cells[1]} {cells[2]} {ratio}")
    print("ratio = gpuconv / cuDNN fp32 (TF32 off); median of 20 runs after a warm-up, synchronized; "
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


COMMANDS = {"resources": print_resources, "accuracy": accuracy, "determinism": determinism, "sanitize": sanitize,
            "bench": bench, "breakdown": breakdown, "once": once}

if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "resources"
    if cmd not in COMMANDS:
        sys.exit(f"usage: python tools/gpu_check.py {{{'|'.join(COMMANDS)}}}")
    sys.exit(COMMANDS[cmd]())
