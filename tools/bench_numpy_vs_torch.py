"""NumPy backend against PyTorch's CPU conv2d on the benchmark shape set (float32, the machine's threads).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python tools/bench_numpy_vs_torch.py [--repeat 21]
        [--shapes a,b,c] [--threads 1 --cpu-time] [--json out.json]

Both sides compute the same layer: y = relu(conv2d(x, w) + b), then (fwd+bwd) dx, dw, db from dy through the relu.
gpuconv is called through its public API (gpuconv.conv2d / gpuconv.conv2d_backward, backend="numpy"), so its
argument checks are timed too. PyTorch runs torch.nn.functional.conv2d + relu in two memory formats:
contiguous (NCHW) and channels_last; the ratio is against the faster one. Forward is timed under no_grad.
Each row: median (and min, in brackets) over `--repeat` runs after warm-up, the contenders' calls interleaved
one by one (this machine is shared: the min shows the uncontended speed, the median is what is quoted).
PyTorch is only a benchmark peer: gpuconv itself never imports it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import gpuconv

CLOCK = time.perf_counter  # --cpu-time: time.process_time (CPU seconds of this process, all its threads)

# name: (N, H, W, C, M, KH, KW, stride, padding)
SHAPES = {
    "a": (1, 48, 64, 10, 20, 3, 3, 1, 0),
    "b": (32, 32, 32, 16, 32, 3, 3, 1, 0),
    "c": (16, 56, 56, 64, 64, 3, 3, 1, 0),
    "d": (8, 112, 112, 3, 64, 7, 7, 2, 3),
    "e": (64, 28, 28, 1, 8, 5, 5, 1, 0),
}


def _median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_shape(name, repeat):
    n, h, w, c, m, kh, kw, s, p = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    wt = (rng.standard_normal((kh, kw, c, m), dtype=np.float32) / np.sqrt(kh * kw * c)).astype(np.float32)
    b = rng.standard_normal(m, dtype=np.float32)
    opts = dict(stride=s, padding=p)
    y0 = gpuconv.conv2d(x, wt, b, activation="relu", backend="numpy", **opts)
    dy = rng.standard_normal(y0.shape, dtype=np.float32)

    def g_fwd():
        return gpuconv.conv2d(x, wt, b, activation="relu", backend="numpy", **opts)

    def g_fwdbwd():
        y = gpuconv.conv2d(x, wt, b, activation="relu", backend="numpy", **opts)
        return gpuconv.conv2d_backward(dy, x, wt, y, has_bias=True, activation="relu", backend="numpy", **opts)

    tw = torch.from_numpy(wt.transpose(3, 2, 0, 1).copy())  # OIHW
    tb = torch.from_numpy(b)
    tdy = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())  # NCHW
    peers = {}
    for fmt in ("contiguous", "channels_last"):
        mf = torch.contiguous_format if fmt == "contiguous" else torch.channels_last
        tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=mf)
        twf = tw.contiguous(memory_format=mf)
        tdyf = tdy.contiguous(memory_format=mf)

        def t_fwd(tx=tx, twf=twf):
            with torch.no_grad():
                return F.relu(F.conv2d(tx, twf, tb, stride=s, padding=p))

        xg = tx.clone().requires_grad_(True)
        wg = twf.clone().requires_grad_(True)
        bg = tb.clone().requires_grad_(True)

        def t_fwdbwd(xg=xg, wg=wg, bg=bg, tdyf=tdyf):
            xg.grad = wg.grad = bg.grad = None
            y = F.relu(F.conv2d(xg, wg, bg, stride=s, padding=p))
            y.backward(tdyf)
            return xg.grad, wg.grad, bg.grad

        # correctness cross-check of the peer against gpuconv (same layer, same gradients)
        gy = g_fwd()
        ty = t_fwd().permute(0, 2, 3, 1).numpy()
        assert np.allclose(gy, ty, rtol=1e-3, atol=1e-3), f"{name}: forward differs from torch"
        gd = g_fwdbwd()
        tdx, tdw, tdb = t_fwdbwd()
        assert np.allclose(gd.dx, tdx.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-3), f"{name}: dx differs"
        assert np.allclose(gd.dw, tdw.permute(2, 3, 1, 0).numpy(), rtol=1e-3, atol=2e-3 * np.abs(gd.dw).max())
        assert np.allclose(gd.db, tdb.numpy(), rtol=1e-3, atol=1e-3 * np.abs(gd.db).max()), f"{name}: db differs"
        peers[fmt] = (t_fwd, t_fwdbwd)

    for f in (g_fwd, g_fwdbwd, *peers["contiguous"], *peers["channels_last"]):  # warm-up
        for _ in range(3):
            f()
    res = {k: [] for k in ("g_fwd", "g_fb", "tc_fwd", "tc_fb", "tl_fwd", "tl_fb")}
    # interleaved one call at a time, so that a burst of load from elsewhere hits every contender alike
    contenders = [("g_fwd", g_fwd), ("tc_fwd", peers["contiguous"][0]), ("tl_fwd", peers["channels_last"][0]),
                  ("g_fb", g_fwdbwd), ("tc_fb", peers["contiguous"][1]), ("tl_fb", peers["channels_last"][1])]
    for _ in range(repeat):
        for key, fn in contenders:
            t0 = CLOCK()
            fn()
            res[key].append(1e3 * (CLOCK() - t0))
    return {k: (statistics.median(v), min(v)) for k, v in res.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, help="threads for both sides (default: the machine's default)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time CPU seconds instead of wall time (steadier on a shared machine, with --threads 1)")
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    try:
        from threadpoolctl import threadpool_info

        blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
                if i["user_api"] == "blas"]
    except ImportError:
        blas = "threadpoolctl not installed"
    print(f"numpy {np.__version__} blas {blas}; torch {torch.__version__} threads {torch.get_num_threads()}; "
          f"clock {CLOCK.__name__}")
    print("shape | torch fwd ms (NCHW / CL) | gpuconv fwd ms | ratio | torch fwd+bwd ms (NCHW / CL) | "
          "gpuconv fwd+bwd ms | ratio   [medians; mins in brackets]")
    out = {}
    for name in args.shapes.split(","):
        r = bench_shape(name, args.repeat)
        out[name] = r

        def cell(k, i):
            return f"{r[k][i]:.3f}"

        row = [name]
        for part in ("fwd", "fb"):
            for i in (0, 1):
                t = min(r[f"tc_{part}"][i], r[f"tl_{part}"][i])
                g = r[f"g_{part}"][i]
                if i == 0:
                    torch_s, g_s, ratio = f"{cell('tc_' + part, 0)} / {cell('tl_' + part, 0)}", cell('g_' + part, 0), g / t
                else:
                    torch_s += f" [{cell('tc_' + part, 1)} / {cell('tl_' + part, 1)}]"
                    g_s += f" [{cell('g_' + part, 1)}]"
                    ratio_s = f"{ratio:.2f} [{g / t:.2f}]"
            row += [torch_s, g_s, ratio_s]
        print(" | ".join(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
