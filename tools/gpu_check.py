"""GPU checks for gpuconv's CUDA kernels (called by tools/gpu_check.sh), and the NVRTC resource table.

  python tools/gpu_check.py resources   registers / shared memory / spills per kernel and arch (no GPU needed)
  python tools/gpu_check.py accuracy    each kernel vs the NumPy float64 reference on the cupy backend
  python tools/gpu_check.py determinism dw / db bitwise-equal over repeated runs on the cupy backend
  python tools/gpu_check.py sanitize    one pass of every kernel, small shapes (run under compute-sanitizer)
  python tools/gpu_check.py bench       forward / backward timings of the benchmark shapes, next to cuDNN
"""
from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCHES = ("sm_70", "sm_80", "sm_90")


def _fp16_include_dirs():
    """Folders holding cuda_fp16.h for NVRTC (it has no built-in copy)."""
    dirs = []
    for base in (os.environ.get("CUDA_PATH", ""), "/usr/local/cuda", "/usr/local/cuda-13.0", "/usr/local/cuda-12"):
        inc = os.path.join(base, "include")
        if base and os.path.exists(os.path.join(inc, "cuda_fp16.h")):
            dirs.append(inc)
    return dirs[:1]


def nvrtc_resources(arches=ARCHES):
    """[(file, kernel, arch, registers, shared bytes, spill stores, spill loads)] from ptxas -v through NVRTC."""
    from cuda.bindings import nvrtc

    from gpuconv.cuda.modules import registered_name_expressions

    kdir = os.path.join(ROOT, "kernels")
    rows = []
    for fname in sorted(f for f in os.listdir(kdir) if f.endswith(".cu")):
        text = open(os.path.join(kdir, fname)).read()
        src = text.encode()
        exprs = list(registered_name_expressions(text))
        for arch in arches:
            err, prog = nvrtc.nvrtcCreateProgram(src, fname.encode(), 0, [], [])
            for e in exprs:
                nvrtc.nvrtcAddNameExpression(prog, e.encode())
            opts = [f"-arch={arch}".encode(), b"-std=c++17", f"-I{kdir}".encode(), b"--ptxas-options=-v"]
            opts += [f"-I{d}".encode() for d in _fp16_include_dirs()]
            (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
            _, n = nvrtc.nvrtcGetProgramLogSize(prog)
            log = b" " * n
            nvrtc.nvrtcGetProgramLog(prog, log)
            log = log.decode(errors="replace")
            if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                raise RuntimeError(f"NVRTC failed on {fname} for {arch}:\n{log}")
            lowered = {}
            for e in exprs:
                _, low = nvrtc.nvrtcGetLoweredName(prog, e.encode())
                lowered[low.decode()] = e
            for block in re.split(r"ptxas info\s*: Compiling entry function ", log)[1:]:
                mangled = block.split("'")[1]
                regs = re.search(r"Used (\d+) registers", block)
                smem = re.search(r"(\d+) bytes smem", block)
                spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
                rows.append((fname, lowered.get(mangled, mangled), arch, int(regs.group(1)) if regs else -1,
                             int(smem.group(1)) if smem else 0, int(spill.group(1)), int(spill.group(2))))
    return rows


def print_resources(markdown: bool = False):
    """Print the NVRTC resource table; exit status 1 if any kernel spills."""
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
    ((2, 17, 19, 32), (3, 3, 32, 48), dict(padding=1), "relu"),
    ((3, 20, 18, 24), (3, 2, 24, 40), dict(stride=(2, 3), padding=((2, 1), (0, 1)), dilation=(2, 1)), "sigmoid"),
    ((2, 16, 16, 64), (3, 3, 16, 64), dict(groups=4, padding="same"), "identity"),
    ((4, 15, 15, 8), (3, 3, 1, 8), dict(groups=8, padding=1, stride=2), "relu"),
    ((8, 28, 28, 1), (5, 5, 1, 8), dict(padding=2), "relu"),
    ((2, 30, 30, 3), (7, 7, 3, 64), dict(stride=2, padding=3), "relu"),
]
LIMITS = {"float32": 1e-5, "float16": 1e-2, "float64": 1e-12}


class _HostXp:
    """cupy's asarray / asnumpy / synchronize spelled for a numpy-array backend (the emulator dry run)."""

    def __init__(self, np):
        self.np = np

    def __getattr__(self, name):
        return getattr(self.np, name)

    def asnumpy(self, a):
        return self.np.asarray(a)

    class cuda:  # noqa: N801 - mirrors cupy.cuda.runtime.deviceSynchronize
        class runtime:  # noqa: N801
            @staticmethod
            def deviceSynchronize():  # noqa: N802
                pass


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

    from gpuconv.backends.numpy import NumpyBackend

    ref = NumpyBackend()
    x, w, b, dy, y = (a.astype(np.float64) for a in (x, w, b, dy, y_saved))
    dz = {"identity": dy, "relu": np.where(y > 0, dy, 0.0), "sigmoid": dy * y * (1 - y)}[act]
    dx, dw, db = ref.backward_input(dz, w, cfg), ref.backward_weight(dz, x, cfg), ref.backward_bias(dz)
    return {"forward": ref.forward(x, w, b, cfg, act), "act_backward": dz, "dx": dx, "dw": dw, "db": db,
            "fused dx": dx, "fused dw": dw, "fused db": db}


def accuracy():
    import numpy as np

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    failures = 0
    print(f"{'case':48s} {'dtype':8s} {'kernel':13s} {'rel err':>9s}  limit")
    for i, (xs, ws, opts, act) in enumerate(ACCURACY_CASES):
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype in ("float64", "float32", "float16"):
            rng = np.random.default_rng(i)
            x, w = rng.uniform(-1, 1, xs).astype(dtype), rng.uniform(-1, 1, ws).astype(dtype)
            b, dy = rng.uniform(-1, 1, ws[3]).astype(dtype), rng.uniform(-1, 1, cfg.y_shape).astype(dtype)
            got = {k: cp.asnumpy(v) for k, v in _all_grads(be, cfg, act, *(cp.asarray(a) for a in (x, w, b, dy))).items()}
            want = _reference(cfg, act, x, w, b, dy, got["forward"])
            for k in got:
                err = _rel_err(got[k], want[k])
                ok = err < LIMITS[dtype]
                failures += not ok
                print(f"{str(xs) + '*' + str(ws) + ' ' + act:48s} {dtype:8s} {k:13s} {err:9.2e}  "
                      f"{LIMITS[dtype]:.0e}{'' if ok else '  FAIL'}")
    print("accuracy:", "all within limits" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


def determinism(repeats: int = 5):
    import numpy as np

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    failures = 0
    for n, h, w_, c, m, kh, kw, s, p in BENCH_SHAPES:
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

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    if hasattr(cp, "cuda") and hasattr(cp.cuda, "set_allocator"):
        cp.cuda.set_allocator(None)  # one cudaMalloc per array, so memcheck sees each array's true bounds
    for xs, ws, opts, act in ACCURACY_CASES[:5]:
        cfg = make_config("gpu_check", xs, ws, **opts)
        for dtype in ("float32", "float16", "float64"):
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


def bench():
    import numpy as np

    from gpuconv._config import make_config

    be = _cupy_backend()
    cp = be.xp_tools
    sync = cp.cuda.runtime.deviceSynchronize
    try:
        import torch

        have_torch = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any import failure just drops the comparison
        have_torch = False
    print(f"{'shape':36s} {'pass':8s} {'gpuconv ms':>10s} {'cuDNN fp32':>10s} {'cuDNN tf32':>10s} {'ratio':>6s}")
    for n, h, w_, c, m, kh, kw, s, p in BENCH_SHAPES:
        cfg = make_config("bench", (n, h, w_, c), (kh, kw, c, m), stride=s, padding=p)
        rng = np.random.default_rng(0)
        x = cp.asarray(rng.uniform(-1, 1, cfg.x_shape).astype(np.float32))
        w = cp.asarray(rng.uniform(-1, 1, cfg.w_shape).astype(np.float32))
        b = cp.asarray(rng.uniform(-1, 1, (m,)).astype(np.float32))
        dy = cp.asarray(rng.uniform(-1, 1, cfg.y_shape).astype(np.float32))
        y = be.forward(x, w, b, cfg, "relu")
        ours = {
            "forward": _time_ms(lambda: be.forward(x, w, b, cfg, "relu"), sync),
            "backward": _time_ms(lambda: be.backward(dy, y, x, w, cfg, "relu"), sync),
        }
        theirs = {"forward": [None, None], "backward": [None, None]}
        if have_torch:
            tx = torch.as_tensor(cp.asnumpy(x), device="cuda").permute(0, 3, 1, 2).contiguous(
                memory_format=torch.channels_last).requires_grad_(True)
            tw = torch.as_tensor(cp.asnumpy(w), device="cuda").permute(3, 2, 0, 1).contiguous(
                memory_format=torch.channels_last).requires_grad_(True)
            tb = torch.as_tensor(cp.asnumpy(b), device="cuda").requires_grad_(True)
            tdy = torch.as_tensor(cp.asnumpy(dy), device="cuda").permute(0, 3, 1, 2).contiguous(
                memory_format=torch.channels_last)
            tsync = torch.cuda.synchronize
            for k, tf32 in enumerate((False, True)):
                torch.backends.cudnn.allow_tf32 = tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.benchmark = True

                def fwd():
                    return torch.relu(torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p))

                with torch.no_grad():
                    theirs["forward"][k] = _time_ms(fwd, tsync)
                out = fwd()
                theirs["backward"][k] = _time_ms(
                    lambda: torch.autograd.grad(out, (tx, tw, tb), tdy, retain_graph=True), tsync)
        for kind in ("forward", "backward"):
            t32, ttf = theirs[kind]
            fmt = lambda v: f"{v:10.3f}" if v is not None else f"{'-':>10s}"  # noqa: E731
            ratio = f"{ours[kind] / t32:6.2f}" if t32 else f"{'-':>6s}"
            print(f"{str(cfg.x_shape) + '->' + str(m) + f' {kh}x{kw}/s{s}':36s} {kind:8s} {ours[kind]:10.3f} "
                  f"{fmt(t32)} {fmt(ttf)} {ratio}")
    print("ratio = gpuconv / cuDNN fp32 (TF32 off); median of 20 runs after a warm-up, synchronized")
    return 0


COMMANDS = {"resources": print_resources, "accuracy": accuracy, "determinism": determinism, "sanitize": sanitize,
            "bench": bench}

if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "resources"
    if cmd not in COMMANDS:
        sys.exit(f"usage: python tools/gpu_check.py {{{'|'.join(COMMANDS)}}}")
    sys.exit(COMMANDS[cmd]())
