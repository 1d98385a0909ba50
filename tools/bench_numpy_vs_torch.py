"""NumPy backend against PyTorch's CPU conv2d on the benchmark shape set of gpuconv._benchdata (float32, the
machine's threads; its seeded inputs, its timer and its PyTorch peer).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python tools/bench_numpy_vs_torch.py
        [--rounds 3] [--repeat 9] [--shapes tiny,small,resnet,stem,mnist] [--threads 1 --cpu-time] [--json out.json]

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpuconv import _benchdata as bd  # noqa: E402 - after the path of a source checkout

CONTENDERS = ("gpuconv", "torch-nchw", "torch-cl")
FORMATS = {"torch-nchw": "nchw", "torch-cl": "channels_last"}


def _gpuconv_fns(name):
    import gpuconv

    shape = bd.parse_shape(name)
    a, opts = bd.make_inputs(shape), shape.options

    def fwd():
        return gpuconv.conv2d(a["x"], a["w"], a["b"], activation="relu", backend="numpy", **opts)

    def fwdbwd():
        y = fwd()
        return gpuconv.conv2d_backward(a["dy"], a["x"], a["w"], y, has_bias=True, activation="relu",
                                       backend="numpy", **opts)

    return fwd, fwdbwd


def _torch_layer(name, contender):
    shape = bd.parse_shape(name)
    return bd.TorchLayer(shape, bd.make_inputs(shape), "relu", "cpu", memory_format=FORMATS[contender])


def _check(name, layer):
    """The peer and gpuconv compute the same layer and the same gradients."""
    gfwd, gfwdbwd = _gpuconv_fns(name)
    assert np.allclose(gfwd(), layer.to_nhwc(layer.forward()), rtol=1e-3, atol=1e-3), f"{name}: y differs"
    g = gfwdbwd()
    layer.forward_backward()
    assert np.allclose(g.dx, layer.to_nhwc(layer.x.grad), rtol=1e-3, atol=1e-3), f"{name}: dx differs"
    assert np.allclose(g.dw, layer.to_hwio(layer.w.grad), rtol=1e-3, atol=2e-3 * np.abs(g.dw).max())
    assert np.allclose(g.db, layer.b.grad.numpy(), rtol=1e-3, atol=1e-3 * np.abs(g.db).max()), f"{name}: db differs"


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
        layer = _torch_layer(args.shapes, args.contender)
        fwd, fwdbwd = layer.forward, layer.forward_backward
        if args.check:
            _check(args.shapes, layer)
            time.sleep(0.3)  # let the check's BLAS threads go idle
    out = {}
    for key, fn in (("fwd", fwd), ("fb", fwdbwd)):
        samples = bd.measure(fn, repeat=args.repeat, warmup=3, min_sample=0, max_time=float("inf"), clock=clock)
        out[key] = [1e3 * t for t in samples]
    print(json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--shapes", default=",".join(bd.SHAPE_NAMES),
                    help=f"comma-separated names of gpuconv._benchdata (default: {','.join(bd.SHAPE_NAMES)})")
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, help="threads for both sides (default: the machine's default)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time CPU seconds instead of wall time (steadier on a shared machine, with --threads 1)")
    ap.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.contender:
        return _child(args)

    from gpuconv.backends._threads import blas_description

    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP", "MKL"))}
    print(f"numpy {np.__version__} blas {blas_description()}; env {env}; threads {args.threads or 'default'}; "
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
