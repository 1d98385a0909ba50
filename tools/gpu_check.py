"""GPU checks for gpuconv's CUDA kernels (called by tools/gpu_check.sh), and the NVRTC resource table.

  python tools/gpu_check.py resources   registers / shared memory / spills per kernel and arch (no GPU needed)
  python tools/gpu_check.py accuracy    each kernel vs the NumPy float64 reference on the cupy backend, in every
                                        mode (MODES: dtype and precision), against the bounds of gpuconv._accuracy
  python tools/gpu_check.py determinism dw / db bitwise-equal over repeated runs on the cupy backend, every mode
  python tools/gpu_check.py sanitize    one pass of every kernel, small shapes, every mode (under compute-sanitizer)
  python tools/gpu_check.py bench       forward / backward timings of the benchmark shapes (the training-size
                                        layers included) next to cuDNN in the same mode: highest, tf32, fp16, bf16
  python tools/gpu_check.py breakdown [name...]  GPU time (events) of each kernel launch group per benchmark shape
  python tools/gpu_check.py once [name] one fused forward + backward of one benchmark shape (for ncu / nsys)
  python tools/gpu_check.py bigoffsets  element offsets past 2**31 on the tiled paths (~13 GiB of GPU memory)
  python tools/gpu_check.py wgmma_dx    the TF32 wgmma dx from a user's dz and from a rounded one, timed side by
                                        side on sm_90 (GPUCONV_WGMMA=1), results bitwise equal
  python tools/gpu_check.py work        FLOPs, bytes and peak-bound times of every benchmark layer (no GPU needed)

Shapes are gpuconv._benchdata's, by name (GPU_SHAPE_NAMES: tiny-same, small-same, resnet-same, stem, mnist-same
and the rn50-* training layers; a number picks one by position); inputs, timers and the PyTorch peer are
_benchdata's too.
"""
from __future__ import annotations

import itertools
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

def print_resources(markdown: bool = False):
    """Print the NVRTC resource table (gpuconv.cuda.nvrtc, no GPU needed: the table of `gpuconv info --kernels`,
    or with --markdown one row per kernel); exit status 1 if any kernel spills."""
    from gpuconv.cuda.nvrtc import ARCHES, format_resource_table, resource_table

    rows = resource_table()
    spills = [(f, r) for f, r in rows if r.spill_stores or r.spill_loads]
    if markdown or "--markdown" in sys.argv:
        table = {}
        for f, r in rows:
            table.setdefault((f, r.kernel), {})[r.arch] = r
        # the default architectures, then those some files are built for instead (sm_90a: the wgmma files);
        # "-": a kernel not built for that column's architecture
        arches = [*ARCHES, *sorted({r.arch for _, r in rows} - set(ARCHES))]
        print("| kernel | " + " | ".join(f"{a} regs" for a in arches) + " | static smem (B) | spill bytes |")
        print("|---|" + "---:|" * (len(arches) + 2))
        for (f, k), by_arch in table.items():
            regs = " | ".join(str(by_arch[a].registers) if a in by_arch else "-" for a in arches)
            smem = max(r.shared_mem_bytes for r in by_arch.values())
            spill = sum(r.spill_stores + r.spill_loads for r in by_arch.values())
            print(f"| `{k}` | {regs} | {smem} | {spill} |")
    else:
        print(format_resource_table(rows=rows))
    print("spills:", "none" if not spills else spills)
    return 1 if spills else 0


# ------------------------------------------------------------------------------------------------ GPU parts
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


def _gpu_shapes(be):
    """The GPU checks' layers, by gpuconv._benchdata's names (GPU_SHAPE_NAMES: the benchmark set with "same"
    padding); on the emulator (a dry run) the same layers with batch 1 and a quarter of the image."""
    from dataclasses import replace

    from gpuconv import _benchdata as bd

    shapes = [bd.parse_shape(name) for name in bd.GPU_SHAPE_NAMES]
    if be.kind == "cupy":
        return shapes
    small = [s for s in shapes if s.info.multiplications < bd.LARGE_MULTIPLICATIONS]  # not the training sizes
    return [replace(s, name=f"{s.name}-dry", n=1, h=max(s.h // 4, s.kh), w=max(s.w // 4, s.kw)) for s in small]


def _pick_shapes(be, args, default):
    """Shapes named (a benchmark name, e.g. "tiny" or "tiny-same") or numbered (in GPU_SHAPE_NAMES order) on the
    command line, else ``default``."""
    from gpuconv import _benchdata as bd

    shapes = _gpu_shapes(be)
    by_name = {**dict(zip(bd.SHAPE_NAMES, shapes)), **dict(zip(bd.GPU_SHAPE_NAMES, shapes))}
    picks = args or default
    return [shapes[int(a)] if a.isdigit() else by_name[a] for a in picks]


def _cupy_backend():
    """The cupy backend (GPU_CHECK_BACKEND=emulator runs the same checks on the CPU emulator, as a dry run)."""
    from gpuconv._dispatch import load_backend

    return load_backend(os.environ.get("GPU_CHECK_BACKEND", "cupy"))


def _layer(be, shape, dtype="float32"):
    """(cfg, x, w, b, dy) of a benchmark shape on the backend: gpuconv._benchdata's seeded inputs in ``dtype``."""
    from gpuconv import _benchdata as bd
    from gpuconv._config import make_config

    cfg = make_config("gpu_check", shape.x_shape, shape.w_shape, **shape.options)
    a = bd.make_inputs(shape, dtype)
    return (cfg, *(be.xp.asarray(a[k]) for k in ("x", "w", "b", "dy")))


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

    def grads(d, carried=None):
        """(exact, sum |d||b|, terms, sum |carried||b|) per gradient of d; the last sum is 0 without ``carried``
        (the |dy| of a dz the backend computes: |dz^ - dz| <= dz_error * |dy|, see gpuconv/_accuracy.py)."""
        ad, ac = np.abs(d), (np.zeros_like(d) if carried is None else np.abs(carried))
        return {"dx": (ref.backward_input(d, w, cfg), ref.backward_input(ad, np.abs(w), cfg), k_dx,
                       ref.backward_input(ac, np.abs(w), cfg)),
                "dw": (ref.backward_weight(d, x, cfg), ref.backward_weight(ad, np.abs(x), cfg), k_dw,
                       ref.backward_weight(ac, np.abs(x), cfg)),
                "db": (ref.backward_bias(d), ref.backward_bias(ad), k_dw, ref.backward_bias(ac))}

    fused, plain = grads(dz, carried=dy), grads(dzs)
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

    exact, abs_sum, terms = want[:3]
    # the fused gradients' dz carries dz_error * |dy| into their sums (sum |dy||b| from _reference)
    carried = acc.dz_error(dtype, act) * want[3] if len(want) > 3 else 0.0
    got = np.asarray(got, np.float64)
    if name == "forward":
        err = acc.activation_error(dtype, act, acc.sum_error(dtype, precision, terms, abs_sum))
        exact = _registry.activation(act).forward(exact.copy())
    elif name == "act_backward":
        # a float64 reference computes dz by the same formula in the same precision: it carries as much error
        err = acc.dz_error(dtype, act) * abs_sum * (2 if np.dtype(dtype) == np.float64 else 1)
    elif name.endswith("db"):
        err = acc.sum_error(dtype, "highest", terms, abs_sum, carried)
    else:
        err = acc.sum_error(dtype, precision, terms, abs_sum, carried)
    bound = acc.store_error(dtype, exact, err) + 1e-300
    return float(np.max(np.abs(got - exact) / bound))


def accuracy():
    import numpy as np

    from gpuconv._config import dtype_from_name, make_config

    be = _cupy_backend()
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
            results = _all_grads(be, cfg, act, *(be.xp.asarray(a) for a in (x, w, b, dy)), precision=precision)
            got = {k: be.to_host(v) for k, v in results.items()}
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

    be = _cupy_backend()
    failures = 0
    for dtype, precision in MODES:
        reason = _mode_reason(be, dtype, precision)
        if reason is not None:
            print(f"determinism {_mode_name(dtype, precision)}: skipped: {reason}")
            continue
        for shape in _gpu_shapes(be):
            cfg, x, w, _, dy = _layer(be, shape, dtype)
            y = be.xp.asarray(_host(np.random.default_rng(0), cfg.y_shape, dtype, 0.0, 1.0))
            runs = []
            for _ in range(repeats):
                dw, db = be.backward_weight(dy, x, cfg, precision=precision), be.backward_bias(dy)
                _, fdw, fdb = be.backward(dy, y, x, w, cfg, "sigmoid", precision=precision)
                runs.append([be.to_host(a).tobytes() for a in (dw, db, fdw, fdb)])
            same = all(r == runs[0] for r in runs[1:])
            failures += not same
            print(f"determinism {_mode_name(dtype, precision)} {shape.name} ({shape.describe()}): dw/db over "
                  f"{repeats} runs {'bitwise equal' if same else 'DIFFER'}")
    return 1 if failures else 0


def _compile_file(name):
    """(file, seconds, kernels) of compiling kernels/<name> as the backend does (modules.get_module), forced by
    asking for its first registered kernel: CuPy compiles a RawModule on first use."""
    import time

    from gpuconv.cuda.modules import build_inputs, get_module, kernel_path

    t0 = time.perf_counter()
    module = get_module(_cupy_backend().kind, name)
    _, exprs, _ = build_inputs(kernel_path(name), (), ())  # the file's kernels, registered or generated
    if exprs:
        module.get_function(exprs[0])
    return name, time.perf_counter() - t0, len(exprs)


def compile_all():
    """Every kernel file compiled for this GPU first, in parallel processes: CuPy's kernel cache on disk keeps
    each for the steps after, whose time limits then measure the checks, not NVRTC (a fresh machine has no
    cache; the largest files take about a minute each)."""
    from concurrent.futures import ProcessPoolExecutor

    from gpuconv.cuda.modules import kernel_files

    names = [p.name for p in kernel_files()]
    with ProcessPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
        for name, seconds, kernels in sorted(pool.map(_compile_file, names), key=lambda r: -r[1]):
            print(f"compile: {name:28s} {seconds:6.1f} s  ({kernels} kernels)")
    return 0


def _sanitize_pass(be, cases, modes):
    """Every gradient and the forward of each case in each mode, on small shapes (one launch of each kernel that
    their plans take), with one cudaMalloc per array so that memcheck sees each array's true bounds."""
    import numpy as np

    from gpuconv._config import make_config

    if be.kind == "cupy":
        be.xp.cuda.set_allocator(None)
    for xs, ws, opts, act in cases:
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype, precision in modes:
            rng = np.random.default_rng(0)
            arrays = [be.xp.asarray(_host(rng, s, dtype)) for s in (xs, ws, (ws[3],), cfg.y_shape)]
            _all_grads(be, cfg, act, *arrays, precision=precision)
    be.synchronize()


def sanitize():
    """One pass of every kernel (both paths, every dtype) on small shapes; meant to run under compute-sanitizer."""
    be = _cupy_backend()
    modes = [m for m in MODES if _mode_reason(be, *m) is None]
    _sanitize_pass(be, ACCURACY_CASES[:5], modes)
    print(f"sanitize pass: every kernel ran once in {', '.join(_mode_name(*m) for m in modes)}")
    return 0


# Layers whose forward (Mg > 64) and dx (Cg > 64) take the wgmma kernels: groups, partial tiles, stride phases.
WGMMA_CASES = [
    ((2, 9, 8, 32), (3, 3, 16, 272), {"groups": 2, "padding": 1}, "relu"),
    ((1, 9, 10, 144), (3, 3, 144, 64), {"stride": 2, "padding": 1}, "relu"),
]


def sanitize_wgmma():
    """One pass of the wgmma kernels (GPUCONV_WGMMA=1: the FP16 / BF16 / TF32 forward and dx) on an sm_90 GPU,
    meant to run under compute-sanitizer; on the emulator (a dry run) the same pass on sm_90's plans."""
    from gpuconv._config import dtype_from_name, make_config
    from gpuconv.backends import cuda_tc

    be = _sm90_backend("sanitize_wgmma")
    if be is None:
        return 0
    modes = [m for m in MODES if _mode_reason(be, *m) is None
             and cuda_tc.mode(dtype_from_name(m[0]), m[1]) in cuda_tc.TENSOR_CORE_MODES]
    _sanitize_pass(be, WGMMA_CASES, modes)
    ran = set()
    for xs, ws, opts, act in WGMMA_CASES:
        cfg = make_config("gpu_check", xs, ws, **opts)
        for (dtype, precision), a in itertools.product(modes, {act, "identity"}):
            # the fused backward's routes (with act: a TF32 dz stored rounded), and the plain dx's from a dz
            routes = cuda_tc.routes(cfg, dtype_from_name(dtype), precision, cuda_tc.WGMMA_ARCH, activation=a,
                                    wgmma=True)
            ran |= {name for name in routes.values() if name and name.startswith("gpuconv_wgmma_")}
    print(f"sanitize_wgmma pass, the plans' wgmma kernels: {', '.join(sorted(ran))} "
          f"({', '.join(_mode_name(*m) for m in modes)})")
    return 0


def _torch():
    """torch if it sees a GPU, else None."""
    from gpuconv import _benchdata as bd

    if bd.torch_reason("cuda") is not None:
        return None
    import torch

    return torch


def _wall_ms(fn, sync):
    """Median wall-clock ms per call (gpuconv._benchdata.measure: synchronized, Python overhead included)."""
    from gpuconv import _benchdata as bd

    return 1e3 * bd.median(bd.measure(fn, sync, repeat=20, warmup=1))


def _device_ms(fn, xp, sync):
    """Median device ms per call by CUDA events (gpuconv._benchdata.measure_events); wall time on the emulator."""
    from gpuconv import _benchdata as bd

    timer = bd.event_timer(xp)
    if timer is None:
        return _wall_ms(fn, sync)
    return 1e3 * bd.median(bd.measure_events(fn, *timer, repeat=50))


def _cudnn(torch, shape, activation, dtype="float32", precision="highest"):
    """The PyTorch peer (gpuconv._benchdata.TorchLayer) on the GPU, in the same mode as gpuconv: cuDNN with TF32
    on for "tf32", off otherwise (TorchLayer sets both flags on every call)."""
    from gpuconv import _benchdata as bd

    torch.backends.cudnn.benchmark = True
    return bd.TorchLayer(shape, bd.make_inputs(shape, dtype), activation, "cuda", precision=precision)


def bench():
    """Timings next to cuDNN in every BENCH_MODES mode, or in those named after the command (fp32 tf32 fp16 bf16)."""
    from gpuconv._config import dtype_from_name

    be = _cupy_backend()
    torch = _torch()
    shapes = _gpu_shapes(be)
    wanted = set(sys.argv[2:])
    known = {_mode_name(*m) for m in BENCH_MODES}
    if wanted - known:
        sys.exit(f"gpu_check.py bench: unknown mode(s) {', '.join(sorted(wanted - known))}; "
                 f"choose from {', '.join(sorted(known))}")
    for dtype, precision in BENCH_MODES:
        mode = _mode_name(dtype, precision)
        if wanted and mode not in wanted:
            continue
        print()
        reason = _mode_reason(be, dtype, precision)
        if reason is not None:
            print(f"mode {mode}: skipped: {reason}")
            continue
        print(f"mode {mode} ({dtype}, precision={precision!r}): gpuconv {be.math_path(dtype_from_name(dtype), precision)}; "
              f"cuDNN {dtype} with allow_tf32={precision == 'tf32'} (cudnn and cuda.matmul)")
        print(f"{'shape':44s} {'pass':8s} {'gpuconv ms':>10s} {'TFLOP/s':>8s} {'cuDNN ms':>10s} {'TFLOP/s':>8s} "
              f"{'ratio':>6s}")
        for shape in shapes:
            cfg, x, w, b, dy = _layer(be, shape, dtype)
            p = {"precision": precision}
            y = be.forward(x, w, b, cfg, "relu", **p)
            ours = (_wall_ms(lambda: be.forward(x, w, b, cfg, "relu", **p), be.synchronize),
                    _wall_ms(lambda: be.backward(dy, y, x, w, cfg, "relu", **p), be.synchronize))
            peer = (None, None)
            if torch is not None:
                try:
                    layer = _cudnn(torch, shape, "relu", dtype, precision)
                    peer = (_wall_ms(layer.forward, layer.sync), _wall_ms(layer.backward, layer.sync))
                except Exception as exc:  # noqa: BLE001 - e.g. a dtype this cuDNN has no kernel for
                    print(f"  (cuDNN {mode} failed: {type(exc).__name__}: {exc})")
            for i, (kind, flops) in enumerate((("forward", shape.forward_flops), ("backward", shape.backward_flops))):
                cells = []
                for v in (ours[i], peer[i]):
                    cells += [f"{v:10.3f}", f"{flops / (v * 1e-3) / 1e12:8.2f}"] if v else [f"{'-':>10s}", f"{'-':>8s}"]
                ratio = f"{ours[i] / peer[i]:6.2f}" if peer[i] else f"{'-':>6s}"
                label = f"{shape.name} ({shape.describe()})"
                print(f"{label:44s} {kind:8s} {' '.join(cells)} {ratio}")
    print()
    print("ratio = gpuconv / cuDNN in the same mode; median wall time per call (gpuconv._benchdata.measure), "
          "synchronized, after a warm-up, Python overhead included")
    return 0


def wgmma_rate():
    """The wgmma rate probe (kernels/probe_wgmma_rate.cu) on an sm_90 GPU: TFLOP/s of the wgmma kernels' main loop
    on stages filled once and with every stage copied anew, against the FP16 dense peak, and its result checked
    (layout-independent: every operand 1/8). What tools/tc_model.py assumes: WGMMA_EFFICIENCY, and the copies'
    share of shared memory next to the HGMMA operands."""
    import numpy as np

    from gpuconv.backends import cuda_tc
    from gpuconv.cuda.modules import get_module

    be = _sm90_backend("wgmma_rate")
    if be is None:
        return 0
    gpu = be.kind == "cupy"
    kernel = get_module(be.kind, "probe_wgmma_rate.cu").get_function("gpuconv_wgmma_rate<__half>")
    smem = cuda_tc.wgmma_smem_bytes()
    kernel.max_dynamic_shared_size_bytes = smem
    blocks, steps = (8 * be._sms(), 2048) if gpu else (2, 6)  # 4 rounds of 2 blocks an SM
    src = be.xp.asarray(np.full(cuda_tc.WGMMA_STAGES * cuda_tc.WGMMA_STAGE_BYTES // 2, 0.125, np.float16))
    out = be.xp.zeros(blocks * 128, np.float32)
    peak = 989.0
    failed = False
    for copies in (0, 1):
        def launch():
            kernel((blocks,), (128,), (src, out, np.int32(steps), np.int32(copies)), shared_mem=smem)

        ms = _device_ms(launch, be.xp, be.synchronize)
        ok = bool((be.to_host(out) == np.float32(64 * steps)).all())
        failed |= not ok
        tflops = 2.0 * blocks * steps * 128 * 128 * 32 / (ms * 1e-3) / 1e12
        print(f"wgmma_rate copies={copies}: {blocks} blocks x {steps} steps in {ms:.3f} ms: {tflops:.1f} TFLOP/s "
              f"({100 * tflops / peak:.0f}% of the {peak:.0f} FP16 dense peak); result {'ok' if ok else 'WRONG'}")
    return 1 if failed else 0


def _sm90_backend(what):
    """The backend for a wgmma check with GPUCONV_WGMMA=1: the cupy one on an sm_90 GPU; on the emulator (a dry
    run) one whose plans are sm_90's; None (and a line saying why) on another GPU."""
    from gpuconv.backends import cuda_tc
    from gpuconv.backends.cuda import CudaBackend

    os.environ[cuda_tc.WGMMA_ENV] = "1"
    be = _cupy_backend()
    if be.kind == "cupy":
        if be._arch() != cuda_tc.WGMMA_ARCH:
            print(f"{what}: skipped: sm_{be._arch()} has no wgmma (sm_90 only)")
            return None
        return be

    class Sm90Emulator(CudaBackend):  # the emulator runs whatever the plans of compute capability 9.0 take
        def _arch(self):
            return cuda_tc.WGMMA_ARCH

    return Sm90Emulator("emulator", be.xp)


def wgmma_dx():
    """The TF32 wgmma dx's two variants side by side (docs/performance.md, 2026-12-03 (4), predicts ~3%): from a
    user's dz (A loaded to registers and rounded there) and from a dz already rounded, as backward's pass stores
    it (DZ_TF32: both operands from shared memory). Their results must be bitwise equal. On an sm_90 GPU the
    ResNet-50 28 x 28 and stride-2 layers; on the emulator (a dry run) the 28 x 28 layer's channels on a 6 x 6
    image."""
    import dataclasses

    import numpy as np

    from gpuconv import _benchdata as bd
    from gpuconv.backends import cuda_tc

    be = _sm90_backend("wgmma_dx")
    if be is None:
        return 0
    gpu = be.kind == "cupy"
    shapes = [bd.SHAPES[n] for n in ("rn50-3x3-28", "rn50-3x3s2")]
    if not gpu:
        shapes = [dataclasses.replace(shapes[0], name="rn50-3x3-28-dry", n=1, h=6, w=6)]
    failed = False
    for shape in shapes:
        cfg, x, w, b, dy = _layer(be, shape)
        y = be.forward(x, w, b, cfg, "relu", precision="tf32")
        dz = be.activation_backward(dy, y, "relu", tf32=True)
        variants = []
        for dz_tf32 in (False, True):
            plan = cuda_tc.backward_input_plan(cfg, np.float32, "tf32", cuda_tc.WGMMA_ARCH, w.size, dz_tf32=dz_tf32,
                                               wgmma=True)
            name = cuda_tc.name_expression(plan[-1].kernel, np.float32, plan[-1].template)
            run = (lambda d=dz_tf32: be.backward_input_fused(dz, None, w, cfg, "identity", precision="tf32", dz=dz,
                                                             dz_tf32=d))
            variants.append((name, run, be.to_host(run())))
        same = variants[0][2].tobytes() == variants[1][2].tobytes()
        failed |= not same
        times = [_device_ms(run, be.xp, be.synchronize) for _, run, _ in variants]
        for (name, _, _), ms in zip(variants, times):
            print(f"wgmma_dx {shape.name}: {name}: {ms:.4f} ms, {1e-9 * shape.forward_flops / ms:.1f} TFLOP/s")
        print(f"wgmma_dx {shape.name}: shared-memory A / register A = {times[1] / times[0]:.3f}; results "
              f"{'bitwise equal' if same else 'DIFFER'}")
    return 1 if failed else 0


def breakdown():
    """Per benchmark shape: GPU time of each operation (unfused and fused), and cuDNN's dx / dw alone."""
    be = _cupy_backend()
    torch = _torch()
    print(f"{'shape':20s} {'operation':18s} {'GPU ms':>8s} {'TFLOP/s':>8s}")
    for shape in _pick_shapes(be, sys.argv[2:], [str(i) for i in range(len(_gpu_shapes(be)))]):
        _breakdown_shape(be, torch, shape)
    print("GPU ms: median of 50 CUDA-event-timed calls after a warm-up (gpuconv._benchdata.measure_events; no "
          "Python overhead); TFLOP/s = GFLOP / ms")
    return 0


def _breakdown_shape(be, torch, shape):
    cfg, x, w, b, dy = _layer(be, shape)
    y = be.forward(x, w, b, cfg, "relu")
    dz = be.activation_backward(dy, y, "relu")
    gflop = 1e-9 * shape.forward_flops
    ops = [("forward", lambda: be.forward(x, w, b, cfg, "relu"), gflop),
           ("act_backward", lambda: be.activation_backward(dy, y, "relu"), 0),
           ("dx", lambda: be.backward_input(dz, w, cfg), gflop),
           ("dw (+ sum)", lambda: be.backward_weight(dz, x, cfg), gflop),
           ("db (+ sum)", lambda: be.backward_bias(dz), 0),
           ("fused dx", lambda: be.backward_input_fused(dy, y, w, cfg, "relu"), gflop),
           ("fused dw", lambda: be.backward_weight_fused(dy, y, x, cfg, "relu"), gflop),
           ("fused backward", lambda: be.backward(dy, y, x, w, cfg, "relu"), 2 * gflop)]
    rows = [(name, _device_ms(fn, be.xp, be.synchronize), gf) for name, fn, gf in ops]
    if torch is not None:  # cuDNN fp32 (TF32 off): conv + bias forward, dx alone, dw alone
        layer = _cudnn(torch, shape, "identity", False)
        rows += [(name, _device_ms(fn, torch, layer.sync), gflop) for name, fn in
                 (("cuDNN forward", layer.forward), ("cuDNN dx", layer.backward_input),
                  ("cuDNN dw", layer.backward_weight))]
    for name, ms, gf in rows:
        rate = f"{gf / ms:8.3f}" if gf else f"{'-':>8s}"
        print(f"{shape.name:20s} {name:18s} {ms:8.4f} {rate}")


def once():
    """One fused forward and backward of a benchmark shape (argv[2]: a name or an index; default the stem),
    after a warm-up (a target for ncu / nsys)."""
    be = _cupy_backend()
    (shape,) = _pick_shapes(be, sys.argv[2:3], ["stem"])
    cfg, x, w, b, dy = _layer(be, shape)
    for _ in range(2):
        y = be.forward(x, w, b, cfg, "relu")
        be.backward(dy, y, x, w, cfg, "relu")
    be.synchronize()
    return 0



# ------------------------------------------------------------------------------- offsets past 2**31 elements
# float16 x of 1025 x 1024 pixels x 2048 channels: 2**31 + 2**21 elements (4 GiB), so the last pixels' element
# offsets need more than 31 bits while every pixel index fits int32. C = 2048 and M = 16 take the tiled
# forward (128 x 32 tile), dx and dw kernels. A 32-bit offset anywhere in their loaders reads or writes the
# wrong place (or faults) for the pixels checked here.
BIG_X = (1, 1025, 1024, 2048)
BIG_M = 16


def bigoffsets():
    """The last pixels of a 2**31-element x: forward, dx and dw compared with float64 dot products. Needs a GPU;
    skipped (exit 0, with the reason) elsewhere. ``bigoffsets --small`` runs the same check on a small x (the
    emulator dry run: GPU_CHECK_BACKEND=emulator)."""
    from gpuconv._dispatch import backend_status

    if "--small" in sys.argv:
        return _check_big_offsets(_cupy_backend(), (1, 5, 4, 32))
    if os.environ.get("GPU_CHECK_BACKEND", "cupy") != "cupy" or backend_status("cupy") is not None:
        print(f"bigoffsets: skipped, needs a GPU ({backend_status('cupy') or 'GPU_CHECK_BACKEND is not cupy'})")
        return 0
    assert math.prod(BIG_X) > 2**31
    return _check_big_offsets(_cupy_backend(), BIG_X)


def _max_rel_err(got, want):
    import numpy as np

    got = np.asarray(got, np.float64)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def _check_big_offsets(be, x_shape):
    import numpy as np

    from gpuconv._config import make_config

    xp = be.xp
    n, h, w_, c = x_shape
    cfg = make_config("gpu_check", x_shape, (1, 1, c, BIG_M))
    rng = np.random.default_rng(31)
    x = xp.full(x_shape, 0.5, np.float16)
    x[0, h - 2:] = xp.asarray(rng.uniform(-1, 1, (2, w_, c)).astype(np.float16))  # the last two rows random
    w = rng.uniform(-1, 1, cfg.w_shape).astype(np.float16)
    wd = xp.asarray(w)
    # dz is zero but on the last two pixels: dw is then exactly their two outer products, read past 2**31
    dz_last = rng.uniform(-1, 1, (2, BIG_M)).astype(np.float16)
    dz = xp.zeros(cfg.y_shape, np.float16)
    dz[0, h - 1, w_ - 2:] = xp.asarray(dz_last)
    last = be.to_host(x[0, h - 1, w_ - 2:]).astype(np.float64)  # (2, C): offsets above 2**31 in BIG_X
    w64 = w[0, 0].astype(np.float64)  # (C, M)
    want = {"forward": last @ w64, "dx": dz_last.astype(np.float64) @ w64.T,
            "dw": last.T @ dz_last.astype(np.float64)}
    y = be.forward(x, wd, None, cfg, "identity")
    got = {"forward": be.to_host(y[0, h - 1, w_ - 2:])}
    del y
    dx = be.backward_input(dz, wd, cfg)
    got["dx"] = be.to_host(dx[0, h - 1, w_ - 2:])
    del dx
    got["dw"] = be.to_host(be.backward_weight(dz, x, cfg))[0, 0]
    failures = 0
    for k in ("forward", "dx", "dw"):
        err = _max_rel_err(got[k], want[k])
        ok = err < 1e-2
        failures += not ok
        print(f"bigoffsets {k:8s} x {x_shape} float16, last pixels: rel err {err:.2e} (limit 1e-02)"
              f"{'' if ok else '  FAIL'}")
    return 1 if failures else 0


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


COMMANDS = {"compile": compile_all, "resources": print_resources, "accuracy": accuracy, "determinism": determinism, "sanitize": sanitize,
            "sanitize_wgmma": sanitize_wgmma, "bench": bench, "breakdown": breakdown, "once": once, "work": work,
            "bigoffsets": bigoffsets, "wgmma_rate": wgmma_rate, "wgmma_dx": wgmma_dx}

if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "resources"
    if cmd not in COMMANDS:
        sys.exit(f"usage: python tools/gpu_check.py {{{'|'.join(COMMANDS)}}}")
    sys.exit(COMMANDS[cmd]())
