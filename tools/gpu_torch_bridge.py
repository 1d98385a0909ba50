"""The torch bridge on CUDA tensors (a step of tools/gpu_check.sh): gpuconv.torch and the plain API on torch
CUDA tensors give torch's results, run on torch's current stream, and copy nothing to the host.

    python tools/gpu_torch_bridge.py              # CUDA (skips, exit 0, when torch or cupy has no GPU)
    python tools/gpu_torch_bridge.py --device cpu # dry run of the comparisons on CPU tensors (numpy backend)

Checks, each printed with its numbers; exit 1 if any fails:
  1. gpuconv.torch.Conv2d vs torch.nn.Conv2d (load_state_dict from it), float64 and float32, forward and every
     gradient, over strides / paddings / dilations / groups / padding modes / activations, NCHW and
     channels_last inputs; the plain gpuconv.conv2d on CUDA tensors returns a CUDA tensor on the same device
  2. the kernels run on torch's current stream: under ``torch.cuda.stream(s)`` for a new stream s, cupy's current
     stream inside the backend is s (spied at the backend's forward / backward); and the result, read after
     s.synchronize() only, is right when s was busy with the producer of the input (no missing ordering)
  3. no host copies: cupy.asnumpy and gpuconv's one device-to-host path (_dispatch.to_module to numpy) raise
     during the calls (numpy.asarray refuses cupy arrays anyway);
     the cupy view of the input and the returned tensor share memory with the caller's tensor / the result
  4. with two or more GPUs, tensors on cuda:1 run there and come back there (skipped on one GPU)
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAILED: list = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(name)


def _cases():
    # (in, out, kernel, stride, padding, dilation, groups, padding_mode, activation)
    return [
        (8, 16, 3, 1, 1, 1, 1, "zeros", None),
        (16, 32, 3, 2, 1, 1, 1, "zeros", "relu"),
        (6, 12, (3, 2), (2, 1), (1, 2), (1, 2), 3, "reflect", "sigmoid"),
        (4, 8, 3, 1, "same", 1, 1, "replicate", None),
        (3, 64, 7, 2, 3, 1, 1, "circular", "relu"),
        (32, 32, 3, 1, 1, 1, 32, "zeros", None),
        (64, 64, 1, 1, 0, 1, 1, "zeros", None),
    ]


def compare_with_torch(torch, gt, device: str) -> None:
    print("1. gpuconv.torch.Conv2d against torch.nn.Conv2d", flush=True)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator().manual_seed(20261202)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for i, (cin, cout, k, s, p, d, g, mode, act) in enumerate(_cases()):
            for channels_last in (False, True):
                ref = torch.nn.Conv2d(cin, cout, k, s, p, d, g, True, mode, device=device, dtype=dtype)
                mine = gt.Conv2d(cin, cout, k, s, p, d, g, True, mode, device=device, dtype=dtype, activation=act)
                mine.load_state_dict(ref.state_dict())
                x = torch.randn((2, cin, 13, 11), generator=gen, dtype=dtype).to(device)
                if channels_last:
                    x = x.to(memory_format=torch.channels_last)
                x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
                y_ref = ref(x1)
                if act is not None:
                    y_ref = getattr(torch, act)(y_ref)
                y = mine(x2)
                dy = torch.randn(y_ref.shape, generator=gen, dtype=dtype).to(device)
                y_ref.backward(dy)
                y.backward(dy)
                errs = {}
                for name, a, b in (("y", y, y_ref), ("dx", x2.grad, x1.grad),
                                   ("dw", mine.weight.grad, ref.weight.grad), ("db", mine.bias.grad, ref.bias.grad)):
                    a, b = a.detach(), b.detach()
                    scale = float(b.abs().max()) or 1.0
                    errs[name] = float((a - b).abs().max()) / scale
                same_place = y.device == x.device and y.is_contiguous(
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                check(f"{str(dtype)[6:]} case {i} ({mode}, {act}, {'channels_last' if channels_last else 'NCHW'})",
                      max(errs.values()) <= tol and same_place,
                      ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + f" (tolerance {tol:g})"
                      + ("" if same_place else f"; result on {y.device}, layout not the input's"))
    import gpuconv

    x = torch.randn((2, 5, 6, 3), generator=gen, dtype=torch.float32).to(device)
    w = torch.randn((3, 3, 3, 4), generator=gen, dtype=torch.float32).to(device)
    y = gpuconv.conv2d(x, w, padding=1)
    want = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), padding=1).permute(0, 2, 3, 1)
    check("plain gpuconv.conv2d on torch tensors", isinstance(y, torch.Tensor) and y.device == x.device
          and float((y - want).abs().max()) < 1e-4, f"type {type(y).__name__} on {getattr(y, 'device', None)}")


def stream_and_copies(torch, gt) -> None:
    import cupy
    import numpy

    import gpuconv
    from gpuconv import _dispatch, _interop

    print("2. torch's current stream", flush=True)
    be = _dispatch.load_backend("cupy")
    seen = []
    real = {name: getattr(be, name) for name in ("forward", "backward")}

    def spy(name):
        def call(*args, **kwargs):
            seen.append((name, cupy.cuda.get_current_stream().ptr, cupy.cuda.Device().id))
            return real[name](*args, **kwargs)
        return call

    for name in real:
        setattr(be, name, spy(name))
    s = torch.cuda.Stream()
    m = gt.Conv2d(64, 64, 3, padding=1, device="cuda", dtype=torch.float32)
    s.wait_stream(torch.cuda.current_stream())  # the weights were initialised on the default stream
    try:
        with torch.cuda.stream(s):
            # the producer: a long queue of work on s that writes x; gpuconv must run after it, on s
            x = torch.zeros((32, 64, 112, 112), device="cuda").to(memory_format=torch.channels_last)
            for _ in range(20):
                x.add_(1.0)
            x.requires_grad_()
            y = m(x)
            y.sum().backward()
        s.synchronize()
    finally:
        for name in real:
            setattr(be, name, real[name])
    streams = {ptr for _, ptr, _ in seen}
    check("the kernels ran on torch's current stream", streams == {s.cuda_stream} and len(seen) == 2,
          f"cupy streams seen {sorted(streams)}, torch's {s.cuda_stream}; calls {[n for n, _, _ in seen]}")
    with torch.no_grad():
        want = torch.nn.functional.conv2d(torch.full_like(x, 20.0), m.weight, m.bias, padding=1)
    err = float((y.detach() - want).abs().max() / want.abs().max())
    check("the input's producer on the same stream was waited for", err < 1e-4, f"relative error {err:.1e}")

    print("3. no host copies", flush=True)
    from gpuconv import _api

    def refuse(*a, **k):
        raise AssertionError("a device-to-host copy")

    def to_module_checked(a, xp, _real=_dispatch.to_module):
        if a is not None and _dispatch.is_cupy_array(a) and xp is numpy:
            refuse()
        return _real(a, xp)

    made = []
    real_export = _interop.export_array

    def export_spy(result, origin):
        out = real_export(result, origin)
        made.append((int(result.data.ptr), out.data_ptr()))
        return out

    saved = cupy.asnumpy, _dispatch.to_module, getattr(_api, "to_module", None)
    cupy.asnumpy = refuse
    _dispatch.to_module = _api.to_module = to_module_checked
    _interop.export_array = export_spy
    try:
        x = torch.randn((4, 16, 32, 32), device="cuda").to(memory_format=torch.channels_last).requires_grad_()
        m2 = gt.Conv2d(16, 8, 3, padding=1, device="cuda", activation="relu")
        m2(x).sum().backward()
        view = _interop.import_array(x.detach(), _interop.origin_of("check", "x", x))
        ok = True
        detail = f"{len(made)} results handed back"
    except AssertionError as exc:
        ok, detail = False, f"{exc}: {traceback.format_exc(limit=3)}"
    finally:
        cupy.asnumpy, _dispatch.to_module = saved[:2]
        if saved[2] is not None:
            _api.to_module = saved[2]
        _interop.export_array = real_export
    check("no device-to-host copy", ok, detail)
    if ok:
        check("the input's cupy view is the tensor's memory", int(view.data.ptr) == x.data_ptr())
        check("results are handed back without copies", all(a == b for a, b in made) and made)
    try:
        numpy.asarray(cupy.zeros(3))
        check("numpy.asarray refuses a cupy array (so no silent host copy can happen)", False)
    except TypeError:
        pass

    print("4. devices", flush=True)
    if torch.cuda.device_count() < 2:
        print("  skip: one GPU here")
        return
    x = torch.randn((2, 8, 9, 9), device="cuda:1")
    w = torch.randn((4, 8, 3, 3), device="cuda:1")
    y = gt.conv2d(x, w)
    check("cuda:1 tensors run and come back on cuda:1", y.device == x.device
          and float((y - torch.nn.functional.conv2d(x, w)).abs().max()) < 1e-3)
    check("arrays on two devices are a ValueError", _raises(lambda: gpuconv.conv2d(x.cpu().cuda(0), w), ValueError))


def _raises(fn, exc) -> bool:
    try:
        fn()
    except exc:
        return True
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError as exc:
        print(f"torch bridge: skipped, torch is not installed ({exc})")
        return 0
    import gpuconv.torch as gt
    from gpuconv import _dispatch

    if args.device == "cuda":
        reason = _dispatch.backend_status("cupy")
        if not torch.cuda.is_available() or reason is not None:
            print(f"torch bridge: skipped, no CUDA for torch ({torch.cuda.is_available()}) or cupy ({reason})")
            return 0
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    compare_with_torch(torch, gt, args.device)
    if args.device == "cuda":
        stream_and_copies(torch, gt)
    print(f"torch bridge: {'all checks passed' if not FAILED else f'{len(FAILED)} failed: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
