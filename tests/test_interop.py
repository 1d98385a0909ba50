"""Any array in, the same kind out (gpuconv._interop): torch tensors, objects known only by __array__ or
__dlpack__, dask refused; the device and stream logic with injected fakes (no GPU here)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

import gpuconv
from gpuconv import _dispatch, _interop

torch = pytest.importorskip("torch")

X_SHAPE, W_SHAPE = (2, 6, 5, 3), (3, 2, 3, 4)


class ArrayOnly:
    """An object known only through __array__ (as a NumPy-compatible library without DLPack)."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class DLPackOnly:
    """An object known only through __dlpack__ / __dlpack_device__ (CPU)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def _inputs(rand):
    return rand(X_SHAPE), rand(W_SHAPE), rand((W_SHAPE[3],))


def test_torch_cpu_in_torch_out_every_operation(backend, rand):
    x, w, b = _inputs(rand)
    y = gpuconv.conv2d(x, w, b, padding=1, activation="sigmoid", backend=backend)
    dy = rand(y.shape)
    t = torch.from_numpy
    yt = gpuconv.conv2d(t(x), t(w), t(b), padding=1, activation="sigmoid", backend=backend)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float64 and yt.device.type == "cpu"
    np.testing.assert_array_equal(yt.numpy(), y)
    pairs = [
        (gpuconv.activation_backward(dy, y, "sigmoid", backend=backend),
         gpuconv.activation_backward(t(dy), t(y), "sigmoid", backend=backend)),
        (gpuconv.conv2d_backward_input(dy, w, X_SHAPE, padding=1, backend=backend),
         gpuconv.conv2d_backward_input(t(dy), t(w), X_SHAPE, padding=1, backend=backend)),
        (gpuconv.conv2d_backward_weight(dy, x, W_SHAPE, padding=1, backend=backend),
         gpuconv.conv2d_backward_weight(t(dy), t(x), W_SHAPE, padding=1, backend=backend)),
        (gpuconv.conv2d_backward_bias(dy, backend=backend), gpuconv.conv2d_backward_bias(t(dy), backend=backend)),
    ]
    g = gpuconv.conv2d_backward(dy, x, w, y, padding=1, activation="sigmoid", backend=backend)
    gt = gpuconv.conv2d_backward(t(dy), t(x), t(w), t(y), padding=1, activation="sigmoid", backend=backend)
    assert isinstance(gt, gpuconv.Conv2DGrads)
    pairs += list(zip(g, gt))
    for want, got in pairs:
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)


def test_requires_grad_tensor_is_detached(rand):
    x, w, b = (torch.from_numpy(a).requires_grad_() for a in _inputs(rand))
    y = gpuconv.conv2d(x, w, b)
    assert isinstance(y, torch.Tensor) and not y.requires_grad
    assert_close(y.numpy(), gpuconv.conv2d(x.detach().numpy(), w.detach().numpy(), b.detach().numpy()),
                 np.float64)


def test_torch_cpu_import_is_zero_copy(rand):
    t = torch.from_numpy(rand(X_SHAPE))
    a = _interop.import_array(t, _interop.origin_of("f", "x", t))
    assert type(a) is np.ndarray and a.__array_interface__["data"][0] == t.data_ptr()
    # a channels-last NCHW tensor is an NHWC array already: the NCHW view the kernels get is C-contiguous
    cl = torch.from_numpy(rand((2, 3, 6, 5))).to(memory_format=torch.channels_last)
    v = _interop.import_array(cl, _interop.origin_of("f", "x", cl)).transpose(0, 2, 3, 1)
    assert v.flags.c_contiguous and v.__array_interface__["data"][0] == cl.data_ptr()


def test_torch_result_shares_the_computed_memory(rand, monkeypatch):
    """The result goes back with torch.from_numpy (no copy of the result)."""
    x, w, _ = _inputs(rand)
    made = []
    real = _interop.export_array

    def spy(result, origin):
        out = real(result, origin)
        made.append((result, out))
        return out

    monkeypatch.setattr(_interop, "export_array", spy)
    gpuconv.conv2d(torch.from_numpy(x), torch.from_numpy(w))
    (result, out), = made
    assert out.data_ptr() == result.__array_interface__["data"][0]


def test_torch_float16_and_mixed_with_numpy(rand):
    x, w, _ = _inputs(rand)
    x16, w16 = x.astype(np.float16), w.astype(np.float16)
    y = gpuconv.conv2d(torch.from_numpy(x16), w16)  # the first array decides the result's kind
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float16
    np.testing.assert_array_equal(y.numpy(), gpuconv.conv2d(x16, w16))
    assert type(gpuconv.conv2d(x16, torch.from_numpy(w16))) is np.ndarray


@pytest.mark.parametrize("wrap", [ArrayOnly, DLPackOnly], ids=["__array__", "__dlpack__"])
def test_protocol_only_objects(backend, rand, wrap):
    x, w, b = _inputs(rand)
    y = gpuconv.conv2d(wrap(x), wrap(w), wrap(b), stride=2, backend=backend)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, gpuconv.conv2d(x, w, b, stride=2, backend=backend))
    dx = gpuconv.conv2d_backward_input(wrap(y), wrap(w), X_SHAPE, stride=2, backend=backend)
    np.testing.assert_array_equal(dx, gpuconv.conv2d_backward_input(y, w, X_SHAPE, stride=2, backend=backend))


def test_dlpack_import_is_zero_copy(rand):
    x = rand(X_SHAPE)
    obj = DLPackOnly(x)
    a = _interop.import_array(obj, _interop.origin_of("f", "x", obj))
    assert np.shares_memory(a, x)


class FakeDask:
    __module__ = "dask.array.core"
    shape, dtype, ndim = X_SHAPE, np.dtype(np.float64), 4

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("a dask array must never be computed")


@pytest.mark.parametrize("fn, args", [  # conv2d and its backward dispatch to gpuconv.dask (tests/test_dask.py)
    (gpuconv.conv2d_backward_weight, lambda d, w: (d, d, W_SHAPE)),
    (gpuconv.conv2d_backward_bias, lambda d, w: (d,)),
], ids=["conv2d_backward_weight", "conv2d_backward_bias"])
def test_dask_array_is_a_type_error(rand, fn, args):
    with pytest.raises(TypeError, match=rf"{fn.__name__}: argument '\w+' is a dask array.*gpuconv\.dask"):
        fn(*args(FakeDask(), rand(W_SHAPE)))


def test_signature_and_plain_fast_path_are_unchanged(rand):
    import inspect

    params = inspect.signature(gpuconv.conv2d).parameters
    assert list(params)[:3] == ["x", "w", "b"] and params["data_format"].default == "NHWC"
    x, w, _ = _inputs(rand)
    assert type(gpuconv.conv2d(x.tolist(), w)) is np.ndarray  # lists still go through np.asarray


# ------------------------------------------------------------------------------- devices and streams (fakes)
class Recorder:
    def __init__(self):
        self.events = []


class FakeCupy:
    """The bits of cupy the device / stream logic uses, recording what is entered."""

    def __init__(self, rec):
        outer = self
        self.rec = rec

        current = [0]  # the device stack: Device() is the current one, as in cupy

        class Device:
            def __init__(self, dev=None):
                self.id = current[-1] if dev is None else dev

            def __enter__(self):
                rec.events.append(("device", self.id))
                current.append(self.id)

            def __exit__(self, *exc):
                current.pop()
                rec.events.append(("device-exit", self.id))

        class ExternalStream:
            def __init__(self, ptr, device_id=-1):
                self.ptr, self.device_id = ptr, device_id

            def __enter__(self):
                rec.events.append(("stream", self.ptr, self.device_id))

            def __exit__(self, *exc):
                rec.events.append(("stream-exit", self.ptr))

        class _Cuda:
            class runtime:
                @staticmethod
                def getDevice():
                    return current[-1]

        self.cuda = _Cuda()
        self.cuda.Device, self.cuda.ExternalStream = Device, ExternalStream
        self.from_dlpack = lambda t: FakeCupyArray(t.device.index, source=t)
        self._outer = outer


class FakeCupyArray:
    __module__ = "cupy._core.core"

    def __init__(self, dev, source=None):
        self.device = type("D", (), {"id": dev})()
        self.source = source
        self.shape, self.dtype = X_SHAPE, np.dtype(np.float32)


class FakeCudaTensor:
    __module__ = "torch"

    def __init__(self, index):
        self.device = torch.device("cuda", index)
        self.dtype = torch.float32

    def detach(self):
        return self


@pytest.fixture
def fake_cupy(monkeypatch):
    rec = Recorder()
    cp = FakeCupy(rec)
    monkeypatch.setattr(_dispatch, "import_cupy", lambda: cp)
    return cp


def test_origin_and_common_device(fake_cupy):
    o = {"x": _interop.origin_of("f", "x", FakeCupyArray(1)),
         "w": _interop.origin_of("f", "w", FakeCudaTensor(1)),
         "b": _interop.origin_of("f", "b", np.zeros(3))}
    assert o["x"] == ("cupy", 1, None) and o["w"].kind == "torch" and o["w"].device == 1
    assert _interop.common_device("f", o) == 1
    o["w"] = _interop.origin_of("f", "w", FakeCudaTensor(2))
    with pytest.raises(ValueError, match=r"f: arguments are on different CUDA devices \('x' on device 1, "
                                         r"'w' on device 2\)"):
        _interop.common_device("f", o)
    assert _interop.common_device("f", {"x": _interop.NUMPY}) is None


def test_context_sets_device_and_torch_stream(fake_cupy, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev: type("S", (), {"cuda_stream": 4242 + dev})())
    with _interop.context(3, torch_stream=True):
        fake_cupy.rec.events.append(("work",))
    assert fake_cupy.rec.events == [("device", 3), ("stream", 4245, 3), ("work",), ("stream-exit", 4245),
                                    ("device-exit", 3)]
    fake_cupy.rec.events.clear()
    with _interop.context(1, torch_stream=False):  # cupy arrays: cupy's own current stream, nothing set
        fake_cupy.rec.events.append(("work",))
    assert fake_cupy.rec.events == [("device", 1), ("work",), ("device-exit", 1)]
    with _interop.context(None, torch_stream=False):  # host arrays: cupy is not even asked for
        pass


def test_public_runs_under_the_arrays_device_and_stream(fake_cupy, monkeypatch):
    """A decorated operation runs inside Device(d) and torch's stream, imports the CUDA tensor there, and the
    result goes back through torch.from_dlpack while the stream is still current."""
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev: type("S", (), {"cuda_stream": 77})())
    events = fake_cupy.rec.events
    monkeypatch.setattr(torch, "from_dlpack", lambda a: events.append(("from_dlpack", a.device.id)) or "tensor")

    @_interop.public(arrays=("a", "b"), like="a")
    def op(a, b=None):
        events.append(("op", type(a).__name__, a.device.id, None if b is None else b.device.id))
        return FakeCupyArray(a.device.id)

    assert op(FakeCudaTensor(2), FakeCupyArray(2)) == "tensor"
    assert events == [("device", 2), ("stream", 77, 2), ("op", "FakeCupyArray", 2, 2), ("from_dlpack", 2),
                      ("stream-exit", 77), ("device-exit", 2)]
    events.clear()
    out = op(FakeCupyArray(1))  # cupy in, cupy out, under its device, on cupy's stream
    assert isinstance(out, FakeCupyArray) and events == [("device", 1), ("op", "FakeCupyArray", 1, None),
                                                         ("device-exit", 1)]
    with pytest.raises(ValueError, match="op: arguments are on different CUDA devices"):
        op(FakeCudaTensor(0), FakeCupyArray(1))


def test_unsupported_torch_device():
    t = torch.zeros(3, device="meta")
    with pytest.raises(TypeError, match="conv2d: argument 'x': torch tensors on device meta"):
        gpuconv.conv2d(t, np.zeros((1, 1, 1, 1)))


def test_importing_gpuconv_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, numpy as np, gpuconv; gpuconv.conv2d(np.ones((1,3,3,1)), np.ones((2,2,1,1)), "
            "data_format='NHWC'); assert 'torch' not in sys.modules; "
            "assert 'cupy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_bfloat16_round_trip(rand):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x, w, _ = _inputs(rand)
    xb, wb = torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(w).to(torch.bfloat16)
    y = gpuconv.conv2d(xb, wb)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16
    want = gpuconv.conv2d(x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(y.float().numpy(), want.astype(np.float32))


def test_kernel_caches_see_the_arrays_device(fake_cupy):
    """Every kernel cache is keyed by gpuconv.cuda.modules.device_id, the current device: inside a call it is
    the device of the arrays, whatever the caller's current device was."""
    from gpuconv.cuda import modules

    seen = []

    @_interop.public(arrays=("a",), like="a")
    def op(a):
        seen.append(modules.device_id("cupy"))
        return a

    assert modules.device_id("cupy") == 0
    op(FakeCupyArray(3))
    op(FakeCupyArray(1))
    assert seen == [3, 1] and modules.device_id("cupy") == 0


def test_cupy_arrays_on_the_current_device_take_the_direct_path(fake_cupy):
    events = fake_cupy.rec.events

    @_interop.public(arrays=("a", "b"), like="a")
    def op(a, b=None, *, k=1):
        events.append(("op", k))
        return a

    a0 = FakeCupyArray(0)
    assert op(a0, FakeCupyArray(0), k=2) is a0
    assert events == [("op", 2)]  # no device set, no binding: the call goes straight through
    events.clear()
    with pytest.raises(ValueError, match="different CUDA devices"):  # two devices: the full path refuses them
        op(a0, FakeCupyArray(1))
    assert events == []


class FakeJaxArray:
    __module__ = "jax._src.array"

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_jax_in_jax_out(rand, monkeypatch):
    import sys
    import types

    made = []
    jnp = types.SimpleNamespace(from_dlpack=lambda a: made.append(a) or FakeJaxArray(np.from_dlpack(a)))
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(numpy=jnp))
    x, w, _ = _inputs(rand)
    y = gpuconv.conv2d(FakeJaxArray(x), FakeJaxArray(w))
    assert isinstance(y, FakeJaxArray) and len(made) == 1
    np.testing.assert_array_equal(y._a, gpuconv.conv2d(x, w))
