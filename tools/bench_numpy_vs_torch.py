"""NumPy backend against PyTorch's CPU conv2d on the benchmark shape set (float32, the machine's threads).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python tools/bench_numpy_vs_torch.py [--repeat 15]
        [--shapes a,b,c] [--json out.json]

Both sides compute the same layer: y = relu(conv2d(x, w) + b), then (fwd+bwd) dx, dw, db from dy through the relu.
gpuconv is called through its public API (gpuconv.conv2d / gpuconv.conv2d_backward, backend="numpy"), so its
argument checks are timed too. PyTorch runs torch.nn.functional.conv2d + relu in two memory formats:
contiguous (NCHW) and channels_last; the ratio is against the faster one. Forward is timed under no_grad.
Each row: median over `--repeat` runs after warm-up, the runs of the three contenders interleaved.
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
    # interleave: several short rounds, each timing every contender; the median of all runs is reported
    rounds = 5
    per = max(1, repeat // rounds)
    for _ in range(rounds):
        res["g_fwd"].append(_median_ms(g_fwd, per))
        res["tc_fwd"].append(_median_ms(peers["contiguous"][0], per))
        res["tl_fwd"].append(_median_ms(peers["channels_last"][0], per))
        res["g_fb"].append(_median_ms(g_fwdbwd, per))
        res["tc_fb"].append(_median_ms(peers["contiguous"][1], per))
        res["tl_fb"].append(_median_ms(peers["channels_last"][1], per))
    return {k: statistics.median(v) for k, v in res.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_info

        blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
                if i["user_api"] == "blas"]
    except ImportError:
        blas = "threadpoolctl not installed"
    print(f"numpy {np.__version__} blas {blas}; torch {torch.__version__} threads {torch.get_num_threads()}")
    print("shape | torch fwd ms (NCHW / CL) | gpuconv fwd ms | ratio | torch fwd+bwd ms (NCHW / CL) | "
          "gpuconv fwd+bwd ms | ratio")
    out = {}
    for name in args.shapes.split(","):
        r = bench_shape(name, args.repeat)
        out[name] = r
        tf, tb = min(r["tc_fwd"], r["tl_fwd"]), min(r["tc_fb"], r["tl_fb"])
        print(f"{name} | {r['tc_fwd']:.3f} / {r['tl_fwd']:.3f} | {r['g_fwd']:.3f} | {r['g_fwd'] / tf:.2f} | "
              f"{r['tc_fb']:.3f} / {r['tl_fb']:.3f} | {r['g_fb']:.3f} | {r['g_fb'] / tb:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
