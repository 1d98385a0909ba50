"""GPU checks for gpuconv's CUDA kernels (called by tools/gpu_check.sh), and the NVRTC resource table.

  python tools/gpu_check.py resources   registers / shared memory / spills per kernel and arch (no GPU needed)
  python tools/gpu_check.py accuracy    each kernel vs the NumPy float64 reference on the cupy backend
  python tools/gpu_check.py determinism dw / db bitwise-equal over repeated runs on the cupy backend
  python tools/gpu_check.py sanitize    one pass of every kernel, small shapes (run under compute-sanitizer)
  python tools/gpu_check.py bench       forward / backward timings of the benchmark shapes, next to cuDNN
  python tools/gpu_check.py breakdown [name...]  GPU time (events) of each kernel launch group per benchmark shape
  python tools/gpu_check.py once [name] one fused forward + backward of one benchmark shape (for ncu / nsys)

Shapes are gpuconv._benchdata's, by name (GPU_SHAPE_NAMES: tiny-same, small-same, resnet-same, stem, mnist-same;
a number picks one by position); inputs, timers and the PyTorch peer are _benchdata's too.
"""
from __future__ import annotations

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
        print("| kernel | " + " | ".join(f"{a} regs" for a in ARCHES) + " | static smem (B) | spill bytes |")
        print("|---|" + "---:|" * (len(ARCHES) + 2))
        for (f, k), by_arch in table.items():
            regs = " | ".join(str(by_arch[a].registers) for a in ARCHES)
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
# Limits: gpuconv._registry's test tolerances (DType.rtol), the same the test suite uses.


def _gpu_shapes(be):
    """The GPU checks' layers, by gpuconv._benchdata's names (GPU_SHAPE_NAMES: the benchmark set with "same"
    padding); on the emulator (a dry run) the same layers with batch 1 and a quarter of the image."""
    from dataclasses import replace

    from gpuconv import _benchdata as bd

    shapes = [bd.parse_shape(name) for name in bd.GPU_SHAPE_NAMES]
    if be.kind == "cupy":
        return shapes
    return [replace(s, name=f"{s.name}-dry", n=1, h=max(s.h // 4, s.kh), w=max(s.w // 4, s.kw)) for s in shapes]


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
    """(cfg, x, w, b, dy) of a benchmark shape on the backend: gpuconv._benchdata's seeded inputs."""
    from gpuconv import _benchdata as bd
    from gpuconv._config import make_config

    cfg = make_config("gpu_check", shape.x_shape, shape.w_shape, **shape.options)
    a = bd.make_inputs(shape, dtype)
    return (cfg, *(be.xp.asarray(a[k]) for k in ("x", "w", "b", "dy")))


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
    failures = 0
    print(f"{'case':48s} {'dtype':8s} {'kernel':13s} {'rel err':>9s}  limit")
    for i, (xs, ws, opts, act) in enumerate(ACCURACY_CASES):
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype in _registry.DTYPES:
            rng = np.random.default_rng(i)
            x, w = rng.uniform(-1, 1, xs).astype(dtype), rng.uniform(-1, 1, ws).astype(dtype)
            b, dy = rng.uniform(-1, 1, ws[3]).astype(dtype), rng.uniform(-1, 1, cfg.y_shape).astype(dtype)
            results = _all_grads(be, cfg, act, *(be.xp.asarray(a) for a in (x, w, b, dy)))
            got = {k: be.to_host(v) for k, v in results.items()}
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

    be = _cupy_backend()
    failures = 0
    for shape in _gpu_shapes(be):
        cfg, x, w, _, dy = _layer(be, shape)
        y = be.xp.asarray(np.random.default_rng(0).uniform(0, 1, cfg.y_shape).astype(np.float32))
        runs = []
        for _ in range(repeats):
            dw, db = be.backward_weight(dy, x, cfg), be.backward_bias(dy)
            _, fdw, fdb = be.backward(dy, y, x, w, cfg, "sigmoid")
            runs.append([be.to_host(a).tobytes() for a in (dw, db, fdw, fdb)])
        same = all(r == runs[0] for r in runs[1:])
        failures += not same
        print(f"determinism {shape.name} {shape.describe()}: dw/db over {repeats} runs "
              f"{'bitwise equal' if same else 'DIFFER'}")
    return 1 if failures else 0


def sanitize():
    """One pass of every kernel (both paths, every dtype) on small shapes; meant to run under compute-sanitizer."""
    import numpy as np

    from gpuconv import _registry
    from gpuconv._config import make_config

    be = _cupy_backend()
    if be.kind == "cupy":
        be.xp.cuda.set_allocator(None)  # one cudaMalloc per array, so memcheck sees each array's true bounds
    for xs, ws, opts, act in ACCURACY_CASES[:5]:
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype in _registry.DTYPES:
            rng = np.random.default_rng(0)
            arrays = [be.xp.asarray(rng.uniform(-1, 1, s).astype(dtype)) for s in (xs, ws, (ws[3],), cfg.y_shape)]
            _all_grads(be, cfg, act, *arrays)
    be.synchronize()
    print("sanitize pass: every kernel ran once")
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


def _cudnn(torch, shape, activation, tf32: bool):
    """The PyTorch peer (gpuconv._benchdata.TorchLayer) on the GPU: cuDNN with TF32 off or on."""
    from gpuconv import _benchdata as bd

    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    return bd.TorchLayer(shape, bd.make_inputs(shape), activation, "cuda")


def bench():
    be = _cupy_backend()
    torch = _torch()
    print(f"{'shape':44s} {'pass':8s} {'gpuconv ms':>10s} {'TFLOP/s':>8s} {'cuDNN fp32':>10s} {'cuDNN tf32':>10s} "
          f"{'ratio':>6s}")
    for shape in _gpu_shapes(be):
        cfg, x, w, b, dy = _layer(be, shape)
        y = be.forward(x, w, b, cfg, "relu")
        ours = (_wall_ms(lambda: be.forward(x, w, b, cfg, "relu"), be.synchronize),
                _wall_ms(lambda: be.backward(dy, y, x, w, cfg, "relu"), be.synchronize))
        peers = []
        for tf32 in (False, True):
            if torch is None:
                peers.append((None, None))
                continue
            layer = _cudnn(torch, shape, "relu", tf32)
            peers.append((_wall_ms(layer.forward, layer.sync), _wall_ms(layer.backward, layer.sync)))
        (fp32, tf32) = peers
        for i, (kind, flops) in enumerate((("forward", shape.forward_flops), ("backward", shape.backward_flops))):
            cells = [f"{v:10.3f}" if v is not None else f"{'-':>10s}" for v in (ours[i], fp32[i], tf32[i])]
            tflops = flops / (ours[i] * 1e-3) / 1e12  # backward: dX and dW, each a forward's work
            ratio = f"{ours[i] / fp32[i]:6.2f}" if fp32[i] else f"{'-':>6s}"
            label = f"{shape.name} ({shape.describe()})"
            print(f"{label:44s} {kind:8s} {cells[0]} {tflops:8.3f} {cells[1]} {cells[2]} {ratio}")
    print("ratio = gpuconv / cuDNN fp32 (TF32 off); median wall time per call (gpuconv._benchdata.measure), "
          "synchronized, after a warm-up, Python overhead included")
    return 0


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


COMMANDS = {"resources": print_resources, "accuracy": accuracy, "determinism": determinism, "sanitize": sanitize,
            "bench": bench, "breakdown": breakdown, "once": once}

if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "resources"
    if cmd not in COMMANDS:
        sys.exit(f"usage: python tools/gpu_check.py {{{'|'.join(COMMANDS)}}}")
    sys.exit(COMMANDS[cmd]())
