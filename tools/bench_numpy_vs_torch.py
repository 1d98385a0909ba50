"""NumPy backend against PyTorch's CPU conv2d on the benchmark shape set (float32, the machine's threads).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python tools/bench_numpy_vs_torch.py
        [--rounds 3] [--repeat 9] [--shapes a,b,c,d,e] [--threads 1 --cpu-time] [--json out.json]

Both sides compute the same layer: y = relu(conv2d(x, w) + b), then (fwd+bwd) dx, dw, db from dy through the relu.
gpuconv is called through its public API (gpuconv.conv2d / gpuconv.conv2d_backward, backend="numpy"), so its
argument checks are timed too. PyTorch runs torch.nn.functional.conv2d + relu in two memory formats:
contiguous (NCHW) and channels_last; the ratio is against the faster one. Forward is timed under no_grad.

Each contender runs in a process of its own (gpuconv's never imports torch), so that one side's idle spinning
threads (libgomp, OpenBLAS) do not steal the other's cores. The processes alternate over ``--rounds`` rounds;
each times ``--repeat`` calls after warm-up. Reported: the median of all calls (the min in brackets: this machine
is shared, the min shows the uncontended speed). The torch process first checks that both give the same results.
PyTorch is only a benchmark peer: gpuconv itself never imports it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# name: (N, H, W, C, M, KH, KW, stride, padding)
SHAPES = {
    "a": (1, 48, 64, 10, 20, 3, 3, 1, 0),
    "b": (32, 32, 32, 16, 32, 3, 3, 1, 0),
    "c": (16, 56, 56, 64, 64, 3, 3, 1, 0),
    "d": (8, 112, 112, 3, 64, 7, 7, 2, 3),
    "e": (64, 28, 28, 1, 8, 5, 5, 1, 0),
}
CONTENDERS = ("gpuconv", "torch-nchw", "torch-cl")


def _inputs(name):
    n, h, w, c, m, kh, kw, s, p = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    wt = (rng.standard_normal((kh, kw, c, m), dtype=np.float32) / np.sqrt(kh * kw * c)).astype(np.float32)
    b = rng.standard_normal(m, dtype=np.float32)
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    dy = rng.standard_normal((n, oh, ow, m), dtype=np.float32)
    return x, wt, b, dy, {"stride": s, "padding": p}


def _gpuconv_fns(name):
    import gpuconv

    x, wt, b, dy, opts = _inputs(name)

    def fwd():
        return gpuconv.conv2d(x, wt, b, activation="relu", backend="numpy", **opts)

    def fwdbwd():
        y = fwd()
        return gpuconv.conv2d_backward(dy, x, wt, y, has_bias=True, activation="relu", backend="numpy", **opts)

    return fwd, fwdbwd


def _torch_fns(name, fmt):
    import torch
    import torch.nn.functional as F

    x, wt, b, dy, opts = _inputs(name)
    mf = torch.contiguous_format if fmt == "torch-nchw" else torch.channels_last
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=mf)
    tw = torch.from_numpy(wt.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=mf)  # OIHW
    tb = torch.from_numpy(b)
    tdy = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=mf)
    s, p = opts["stride"], opts["padding"]

    def fwd():
        with torch.no_grad():
            return F.relu(F.conv2d(tx, tw, tb, stride=s, padding=p))

    xg, wg, bg = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True), tb.clone().requires_grad_(True)

    def fwdbwd():
        xg.grad = wg.grad = bg.grad = None
        y = F.relu(F.conv2d(xg, wg, bg, stride=s, padding=p))
        y.backward(tdy)
        return xg.grad, wg.grad, bg.grad

    return fwd, fwdbwd


def _check(name, tfwd, tfwdbwd):
    """The peer and gpuconv compute the same layer and the same gradients."""
    gfwd, gfwdbwd = _gpuconv_fns(name)
    assert np.allclose(gfwd(), tfwd().permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-3), f"{name}: y differs"
    g = gfwdbwd()
    tdx, tdw, tdb = tfwdbwd()
    assert np.allclose(g.dx, tdx.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-3), f"{name}: dx differs"
    assert np.allclose(g.dw, tdw.permute(2, 3, 1, 0).numpy(), rtol=1e-3, atol=2e-3 * np.abs(g.dw).max())
    assert np.allclose(g.db, tdb.numpy(), rtol=1e-3, atol=1e-3 * np.abs(g.db).max()), f"{name}: db differs"


def _child(args):
    """Time one contender on one shape; print {"fwd": [ms...], "fb": [ms...]} as JSON."""
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    if args.contender == "gpuconv":
        fwd, fwdbwd = _gpuconv_fns(args.shapes)
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        fwd, fwdbwd = _torch_fns(args.shapes, args.contender)
        if args.check:
            _check(args.shapes, fwd, fwdbwd)
            time.sleep(0.3)  # let the check's BLAS threads go idle
    out = {}
    for key, fn in (("fwd", fwd), ("fb", fwdbwd)):
        for _ in range(3):
            fn()
        times = []
        for _ in range(args.repeat):
            t0 = clock()
            fn()
            times.append(1e3 * (clock() - t0))
        out[key] = times
    print(json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, help="threads for both sides (default: the machine's default)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time CPU seconds instead of wall time (steadier on a shared machine, with --threads 1)")
    ap.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.contender:
        return _child(args)

    from threadpoolctl import threadpool_info

    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"]
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP", "MKL"))}
    print(f"numpy {np.__version__} blas {blas}; env {env}; threads {args.threads or 'default'}; "
          f"clock {'process_time' if args.cpu_time else 'perf_counter'}; {args.rounds} rounds x {args.repeat} calls")
    print("shape | torch fwd ms NCHW / CL | gpuconv fwd ms | ratio | torch fwd+bwd ms NCHW / CL | "
          "gpuconv fwd+bwd ms | ratio    (medians; [mins])")
    base = [sys.executable, os.path.abspath(__file__), "--repeat", str(args.repeat)]
    if args.threads:
        base += ["--threads", str(args.threads)]
    if args.cpu_time:
        base += ["--cpu-time"]
    results = {}
    for name in args.shapes.split(","):
        samples = {c: {"fwd": [], "fb": []} for c in CONTENDERS}
        for r in range(args.rounds):
            for c in CONTENDERS:
                cmd = base + ["--shapes", name, "--contender", c] + (["--check"] if r == 0 and c != "gpuconv" else [])
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                for k in ("fwd", "fb"):
                    samples[c][k] += res[k]
        med = {c: {k: (statistics.median(v), min(v)) for k, v in d.items()} for c, d in samples.items()}
        results[name] = med
        row = [name]
        for k in ("fwd", "fb"):
            g, tn, tl = med["gpuconv"][k], med["torch-nchw"][k], med["torch-cl"][k]
            row += [f"{tn[0]:.3f} / {tl[0]:.3f} [{tn[1]:.3f} / {tl[1]:.3f}]", f"{g[0]:.3f} [{g[1]:.3f}]",
                    f"{g[0] / min(tn[0], tl[0]):.2f} [{g[1] / min(tn[1], tl[1]):.2f}]"]
        print(" | ".join(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
