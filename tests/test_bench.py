"""The benchmark harness: `gpuconv bench`, the asv suite in asv_bench/, and the shape set they share."""
import importlib
import inspect
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import gpuconv
from gpuconv import _benchdata as bd
from gpuconv import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASV_DIR = os.path.join(ROOT, "asv_bench")
ASV_MODULES = ("conv2d", "backward", "layer", "peers", "wgmma")
TINY = "2x9x9x3:4:3x3"


def _has_torch():
    return bd.torch_reason("cpu") is None


def _relu_backward_broken():
    """True while the NumPy backend's relu derivative raises (a known bug outside the harness)."""
    try:
        gpuconv.activation_backward(np.ones(2, np.float32), np.ones(2, np.float32), "relu", backend="numpy")
    except TypeError:
        return True
    return False


@pytest.fixture
def asv_benchmarks(monkeypatch):
    """The asv benchmark package, imported the way asv imports it (asv_bench/ on sys.path)."""
    monkeypatch.syspath_prepend(ASV_DIR)
    return {name: importlib.import_module(f"benchmarks.{name}") for name in ("common",) + ASV_MODULES}


def _bench(argv, capsys):
    rc = cli.main(["bench", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- the shared shape set -------------------------------------------------------------------------------

def test_benchmark_set_is_the_documented_one():
    got = {name: (s.x_shape, s.m, (s.kh, s.kw), s.stride, s.padding) for name, s in bd.SHAPES.items()}
    assert list(got.values()) == [
        ((1, 48, 64, 10), 20, (3, 3), 1, 0),
        ((32, 32, 32, 16), 32, (3, 3), 1, 0),
        ((16, 56, 56, 64), 64, (3, 3), 1, 0),
        ((8, 112, 112, 3), 64, (7, 7), 2, 3),
        ((64, 28, 28, 1), 8, (5, 5), 1, 0),
        # ResNet-50 at batch 64 (the training-size layers, appended)
        ((64, 224, 224, 3), 64, (7, 7), 2, 3),
        ((64, 56, 56, 64), 64, (3, 3), 1, 1),
        ((64, 28, 28, 128), 128, (3, 3), 1, 1),
        ((64, 14, 14, 256), 256, (3, 3), 1, 1),
        ((64, 7, 7, 512), 512, (3, 3), 1, 1),
        ((64, 56, 56, 64), 256, (1, 1), 1, 0),
        ((64, 56, 56, 256), 64, (1, 1), 1, 0),
        ((64, 56, 56, 128), 128, (3, 3), 2, 1),
        ((64, 56, 56, 256), 512, (1, 1), 2, 0),
    ]
    assert list(got)[:5] == ["tiny", "small", "resnet", "stem", "mnist"]  # names only appended
    training = [s for s in bd.SHAPES.values() if s.name.startswith("rn50-")]
    assert len(training) == 9
    assert all(6.5e9 < s.forward_flops < 1.6e10 for s in training)  # 6.6-15 GFLOP a forward pass


def test_every_backend_is_benchmarked():
    from gpuconv import _dispatch

    assert set(bd.BACKENDS) == set(_dispatch.BACKENDS)


def test_flops_come_from_conv2d_info():
    for s in bd.SHAPES.values():
        info = gpuconv.conv2d_info(s.x_shape, s.w_shape, stride=s.stride, padding=s.padding)
        assert s.forward_flops == 2 * info.multiplications
        assert s.backward_flops == 2 * s.forward_flops
        assert s.y_shape == tuple(info.output_shape)


@pytest.mark.parametrize("text", [*bd.SHAPE_NAMES, "8x112x112x3:64:7x7:s2:p3", TINY])
def test_parse_shape_round_trips(text):
    s = bd.parse_shape(text)
    assert bd.parse_shape(s.spec) == bd.BenchShape(s.spec, *[getattr(s, f) for f in
                                                              ("n", "h", "w", "c", "m", "kh", "kw", "stride",
                                                               "padding")])


@pytest.mark.parametrize("text", ["huge", "1x2x3:4:3x3", "1x4x4x1:1:9x9", "1x4x4x1:1:3x3:q2",
                                  "1x4x4x1:0:3x3"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError):
        bd.parse_shape(text)


@pytest.mark.parametrize("dtype", bd.DTYPES)
def test_inputs_are_seeded_random_and_never_zero(dtype):
    s = bd.parse_shape(TINY)
    a, b = bd.make_inputs(s, dtype), bd.make_inputs(s, dtype)
    assert set(a) == {"x", "w", "b", "dy"}
    for k in a:
        assert a[k].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a[k], b[k])
        assert np.count_nonzero(a[k]) == a[k].size
        assert np.all(np.isfinite(a[k]))
    assert a["w"].shape == s.w_shape and a["dy"].shape == s.y_shape
    assert not np.array_equal(bd.make_inputs(s, dtype, seed=1)["x"], a["x"])


def test_asv_and_cli_share_one_shape_set(asv_benchmarks):
    common = asv_benchmarks["common"]
    # asv loads this checkout's gpuconv/_benchdata.py: the same file the CLI imports
    assert os.path.samefile(common.bd.__file__, bd.__file__)
    assert {k: s.spec for k, s in common.bd.SHAPES.items()} == {k: s.spec for k, s in bd.SHAPES.items()}
    assert common.SHAPES == list(bd.SHAPE_NAMES)
    for module in ASV_MODULES:
        for cls in _benchmark_classes(asv_benchmarks[module]):
            assert "shape" in cls.param_names
            assert cls.params[cls.param_names.index("shape")] == list(bd.SHAPE_NAMES)
    parser = cli.build_parser()
    args = parser.parse_args(["bench"])
    assert args.shapes is None  # the CLI then takes bd.SHAPE_NAMES


# --- gpuconv bench ----------------------------------------------------------------------------------------

def test_bench_prints_a_table(capsys):
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "tiny", "--repeat", "2", "--no-progress"],
                          capsys)
    assert rc == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("gpuconv ") and "backend numpy, float32, precision highest, activation identity" \
        in lines[0]
    assert lines[2] == "products: CPU, float32 BLAS GEMMs"
    header = next(line for line in lines if line.startswith("shape"))
    for col in ("fwd ms", "fwd GF/s", "bwd ms", "bwd GF/s"):
        assert col in header
    rows = [line.split() for line in lines if line.startswith((TINY, "tiny "))]
    assert [r[0] for r in rows] == [TINY, "tiny"]
    for r in rows:
        numbers = [float(v) for v in r[-4:]]
        assert all(v > 0 for v in numbers), r
    assert "torch" not in header
    assert err == ""


def test_bench_progress_goes_to_stderr(capsys):
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "--repeat", "1", "--progress"], capsys)
    assert rc == 0
    assert "[" in err and "1/2" in err and f"{TINY} backward" in err
    assert "#" not in out


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
def test_bench_compare_torch(capsys):
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "--repeat", "2", "--compare", "torch",
                           "--dtype", "float64"], capsys)
    assert rc == 0, out + err
    header = next(line for line in out.splitlines() if line.startswith("shape"))
    for col in ("torch fwd ms", "torch bwd ms", "fwd ratio", "bwd ratio"):
        assert col in header
    row = next(line for line in out.splitlines() if line.startswith(TINY)).split()
    assert all(float(v) > 0 for v in row[-8:]), row
    assert "torch" in out.splitlines()[1]


def test_bench_without_torch_says_so(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "--compare", "torch"], capsys)
    assert rc == 1
    assert "PyTorch" in err and "not installed" in err
    assert out == ""


def test_bench_unavailable_backend_gives_the_reason(capsys, monkeypatch):
    real = bd._dispatch.backend_status
    monkeypatch.setattr(bd._dispatch, "backend_status",
                        lambda name: "no CUDA device here (test)" if name == "cupy" else real(name))
    rc, _, err = _bench(["--backend", "cupy", "--shape", TINY], capsys)
    assert rc == 1
    assert "cupy" in err and "no CUDA device here (test)" in err


@pytest.mark.parametrize("backend", [b for b in bd.BACKENDS if bd.backend_reason(b) is not None])
def test_bench_really_unavailable_backend(backend, capsys):
    rc, _, err = _bench(["--backend", backend, "--shape", TINY], capsys)
    assert rc == 1 and bd.backend_reason(backend) in err


def test_bench_rejects_a_bad_shape(capsys):
    rc, _, err = _bench(["--shape", "12x12"], capsys)
    assert rc == 2 and "unknown shape" in err


def test_bench_auto_prefers_the_gpu(monkeypatch):
    monkeypatch.delenv("GPUCONV_BACKEND", raising=False)
    expected = "cupy" if bd.backend_reason("cupy") is None else "numpy"
    assert bd.default_backend() == expected
    monkeypatch.setenv("GPUCONV_BACKEND", "emulator")
    assert bd.default_backend() == "emulator"


# --- the asv suite ----------------------------------------------------------------------------------------

def _benchmark_classes(module):
    return [c for name, c in vars(module).items()
            if inspect.isclass(c) and not name.startswith("_") and c.__module__ == module.__name__]


def _benchmark_methods(cls):
    return [n for n in dir(cls) if n.startswith(("time_", "peakmem_", "track_"))]


def test_asv_modules_import_without_cupy_or_torch():
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        f"sys.path.insert(0, {ASV_DIR!r})\n"
        f"for m in {ASV_MODULES!r}: __import__('benchmarks.' + m)\n"
        "assert 'torch' not in sys.modules, 'torch imported at module level'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_asv_classes_are_well_formed(asv_benchmarks):
    for module in ASV_MODULES:
        classes = _benchmark_classes(asv_benchmarks[module])
        assert classes, module
        for cls in classes:
            assert len(cls.params) == len(cls.param_names)
            assert list(inspect.signature(cls.setup).parameters)[1:] == cls.param_names
            methods = _benchmark_methods(cls)
            assert any(m.startswith("time_") for m in methods)
            for m in methods:
                assert list(inspect.signature(getattr(cls, m)).parameters)[1:] == cls.param_names
                if m.startswith("track_"):
                    assert getattr(cls, m).unit == "GFLOP/s"


def _gpuconv_classes(asv_benchmarks):
    return [c for m in ("conv2d", "backward", "layer") for c in _benchmark_classes(asv_benchmarks[m])]


def _args(cls, backend, dtype="float32", shape="tiny"):
    values = {"backend": backend, "device": backend, "dtype": dtype, "shape": shape, "data_format": "NCHW"}
    if "activation" in cls.param_names:  # the last one (relu goes through the layer benchmark)
        values["activation"] = cls.params[cls.param_names.index("activation")][-1]
    return [values[n] for n in cls.param_names]


def test_asv_setup_skips_an_unavailable_backend(asv_benchmarks, monkeypatch):
    real = bd._dispatch.backend_status
    monkeypatch.setattr(bd._dispatch, "backend_status",
                        lambda name: "no CUDA device here (test)" if name == "cupy" else real(name))
    for cls in _gpuconv_classes(asv_benchmarks):
        with pytest.raises(NotImplementedError, match=r"no CUDA device here \(test\)"):
            cls().setup(*_args(cls, "cupy"))


@pytest.mark.parametrize("backend", [b for b in bd.BACKENDS if bd.backend_reason(b) is not None])
def test_asv_setup_skips_what_cannot_run_here(asv_benchmarks, backend):
    for cls in _gpuconv_classes(asv_benchmarks):
        with pytest.raises(NotImplementedError):
            cls().setup(*_args(cls, backend))


def test_asv_setup_keeps_the_emulator_to_small_shapes(asv_benchmarks, monkeypatch):
    monkeypatch.setattr(bd._dispatch, "backend_status", lambda name: None)
    for cls in _gpuconv_classes(asv_benchmarks):
        with pytest.raises(NotImplementedError, match="emulator"):
            cls().setup(*_args(cls, "emulator", shape="resnet"))


def test_asv_peers_skip_without_torch(asv_benchmarks, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    for cls in _benchmark_classes(asv_benchmarks["peers"]):
        with pytest.raises(NotImplementedError, match="PyTorch"):
            cls().setup(*_args(cls, "cpu"))


def test_asv_wgmma_skips_but_on_an_sm90_gpu(asv_benchmarks, monkeypatch):
    """The wgmma kernels' benchmark runs only with cupy on sm_90; it sets GPUCONV_WGMMA only for itself."""
    cls = asv_benchmarks["wgmma"].WgmmaKernels
    monkeypatch.setattr(bd._dispatch, "backend_status", lambda name: "no CUDA device here (test)")
    with pytest.raises(NotImplementedError, match=r"no CUDA device here \(test\)"):
        cls().setup("float16", "tiny")
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda: types.SimpleNamespace(
        compute_capability="80")))
    monkeypatch.setattr(bd._dispatch, "backend_status", lambda name: None)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delenv("GPUCONV_WGMMA", raising=False)
    with pytest.raises(NotImplementedError, match="wgmma is sm_90's; this GPU is sm_80"):
        cls().setup("float16", "tiny")
    assert "GPUCONV_WGMMA" not in os.environ


RELU_XFAIL = pytest.mark.xfail(_relu_backward_broken(), raises=TypeError, strict=True,
                               reason="the NumPy backend's relu derivative raises TypeError (ct(0), a dtype)")


@pytest.mark.parametrize("module", ["conv2d", "backward", pytest.param("layer", marks=RELU_XFAIL)])
def test_asv_bodies_run_on_numpy(asv_benchmarks, module):
    for cls in _benchmark_classes(asv_benchmarks[module]):
        args = _args(cls, "numpy")
        bench = cls()
        bench.setup(*args)
        for m in _benchmark_methods(cls):
            value = getattr(bench, m)(*args)
            if m.startswith("track_"):
                assert value > 0


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
def test_asv_peer_bodies_run_on_cpu(asv_benchmarks):
    for cls in _benchmark_classes(asv_benchmarks["peers"]):
        args = _args(cls, "cpu")
        bench = cls()
        bench.setup(*args)
        for m in _benchmark_methods(cls):
            getattr(bench, m)(*args)


# --- precisions, bfloat16 and the training-size layers -----------------------------------------------------

def test_modes_are_dtypes_and_precisions():
    assert bd.MODES[:3] == ("float32", "float16", "float64")  # asv matches parameters by position
    assert bd.PRECISIONS == tuple(gpuconv.PRECISIONS)
    assert [bd.split_mode(m) for m in bd.MODES] == [("float32", "highest"), ("float16", "highest"),
                                                     ("float64", "highest"), ("bfloat16", "highest"),
                                                     ("float32", "tf32")]


@pytest.mark.parametrize("precision", bd.PRECISIONS)
def test_bench_precision_is_passed_and_shown(capsys, monkeypatch, precision):
    seen = []
    real = gpuconv.conv2d
    monkeypatch.setattr(gpuconv, "conv2d", lambda *a, **k: seen.append(k.get("precision", "highest")) or real(*a, **k))
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "--repeat", "1", "--precision", precision,
                           "--no-progress"], capsys)
    assert rc == 0, out + err
    assert f"precision {precision}," in out.splitlines()[0]
    assert seen and set(seen) == {precision}
    assert ("TF32" in out.splitlines()[2]) == (precision == "tf32")


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
@pytest.mark.parametrize("precision", bd.PRECISIONS)
def test_bench_torch_peer_runs_in_the_same_mode(capsys, torch_flags, precision):
    torch = torch_flags
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "--repeat", "1", "--compare", "torch",
                           "--precision", precision, "--no-progress"], capsys)
    assert rc == 0, out + err
    on = precision == "tf32"
    assert f"cudnn.allow_tf32={on}, cuda.matmul.allow_tf32={on}" in out.splitlines()[1]
    assert torch.backends.cudnn.allow_tf32 is on and torch.backends.cuda.matmul.allow_tf32 is on


@pytest.fixture
def torch_flags():
    """PyTorch's two TF32 flags, put back as they were after the test."""
    torch = pytest.importorskip("torch")
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield torch
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_torch_layer_sets_tf32_on_every_call(torch_flags):
    torch = torch_flags
    shape = bd.parse_shape(TINY)
    host = bd.make_inputs(shape)
    layers = {p: bd.TorchLayer(shape, host, "relu", "cpu", p) for p in bd.PRECISIONS}
    for p, layer in layers.items():
        layer.forward()
        assert torch.backends.cudnn.allow_tf32 is (p == "tf32")
        layer.backward()
        assert torch.backends.cuda.matmul.allow_tf32 is (p == "tf32")


def test_bench_bfloat16(capsys):
    pytest.importorskip("ml_dtypes")
    argv = ["--backend", "numpy", "--shape", TINY, "--repeat", "1", "--dtype", "bfloat16", "--no-progress"]
    if _has_torch():
        argv += ["--compare", "torch"]
    rc, out, err = _bench(argv, capsys)
    assert rc == 0, out + err
    assert "bfloat16" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if line.startswith(TINY)).split()
    assert all(float(v) > 0 for v in row[-4:])


def test_bench_bfloat16_without_ml_dtypes(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "--dtype", "bfloat16"], capsys)
    assert rc == 2 and "ml_dtypes" in err and out == ""


def test_bench_says_when_a_backend_lacks_the_dtype(capsys, monkeypatch):
    pytest.importorskip("ml_dtypes")
    be = bd._dispatch.load_backend("numpy")
    monkeypatch.setattr(type(be), "dtype_reason", lambda self, dt: "no bfloat16 kernels (test)", raising=False)
    rc, _, err = _bench(["--backend", "numpy", "--shape", TINY, "--dtype", "bfloat16"], capsys)
    assert rc == 1 and "no bfloat16 kernels (test)" in err


def test_training_layers_are_left_out_on_the_cpu_by_default(capsys, monkeypatch):
    monkeypatch.delenv(bd.ENV_LARGE, raising=False)
    big = [s for s in bd.SHAPES.values() if s.name.startswith("rn50-")]
    for s in big:
        for where in ("numpy", "emulator", "cpu"):
            assert bd.large_reason(where, s) is not None
        assert bd.large_reason("cupy", s) is None and bd.large_reason("cuda", s) is None
        assert "skipped on numpy by default" in bd.backend_reason("numpy", s)
    assert all(bd.large_reason("numpy", s) is None for s in bd.SHAPES.values() if s not in big)
    monkeypatch.setenv(bd.ENV_LARGE, "1")
    assert all(bd.large_reason("numpy", s) is None for s in big)
    monkeypatch.delenv(bd.ENV_LARGE)
    timed = []
    monkeypatch.setattr(bd, "measure", lambda fn, sync, **k: timed.append(fn) or [1e-3])
    rc, out, err = _bench(["--backend", "numpy", "--repeat", "1", "--no-progress"], capsys)
    assert rc == 0, out + err
    assert "rn50-" not in out and "training-size layers (rn50-stem" in err
    assert [line.split()[0] for line in out.splitlines() if line.split()[:1] and line.split()[0] in bd.SHAPES] \
        == [s for s in bd.SHAPE_NAMES if not s.startswith("rn50-")]


def test_asv_skips_training_layers_on_the_cpu(asv_benchmarks, monkeypatch):
    monkeypatch.delenv(bd.ENV_LARGE, raising=False)
    for cls in _gpuconv_classes(asv_benchmarks):
        with pytest.raises(NotImplementedError, match="by default"):
            cls().setup(*_args(cls, "numpy", shape="rn50-3x3-7"))
    for cls in _benchmark_classes(asv_benchmarks["peers"]):
        with pytest.raises(NotImplementedError, match="by default|PyTorch"):
            cls().setup(*_args(cls, "cpu", shape="rn50-3x3-7"))


def test_asv_modes(asv_benchmarks, monkeypatch):
    """The dtype parameter's modes: float32-tf32 passes precision="tf32"; bfloat16 runs where the backend has it
    and is skipped with the backend's reason where it has not."""
    common = asv_benchmarks["common"]
    assert common.DTYPES == list(bd.MODES)
    case = common.Case("numpy", "float32-tf32", "tiny")
    assert case.options["precision"] == "tf32" and case.a["x"].dtype == np.float32
    assert "precision" not in common.Case("numpy", "float32", "tiny").options
    if bd.mode_reason("emulator", "bfloat16") is not None and bd.backend_reason("emulator") is None:
        with pytest.raises(NotImplementedError, match="bfloat16"):
            common.Case("emulator", "bfloat16", "tiny")
    pytest.importorskip("ml_dtypes")
    for cls in _gpuconv_classes(asv_benchmarks):
        for mode in ("bfloat16", "float32-tf32"):
            args = _args(cls, "numpy", dtype=mode)
            bench = cls()
            bench.setup(*args)
            for m in _benchmark_methods(cls):
                if m.startswith("time_"):
                    getattr(bench, m)(*args)


# --- GPU timing, checked without a GPU: a stand-in "cupy" backend that counts synchronizations ------------

class _FakeStream:
    def __init__(self):
        self.syncs = 0

    def synchronize(self):
        self.syncs += 1


class _FakeCupy:
    """Just what the harness touches of cupy: asarray and cuda.get_current_stream().synchronize()."""

    def __init__(self):
        self.stream = _FakeStream()
        self.cuda = type("cuda", (), {"get_current_stream": staticmethod(lambda: self.stream)})
        self.uploads = 0

    def asarray(self, a):
        self.uploads += 1
        return np.asarray(a)


@pytest.fixture
def fake_gpu(monkeypatch):
    """backend 'cupy' = the NumPy backend's arithmetic behind a fake cupy module and stream."""
    from gpuconv import _dispatch
    from gpuconv.backends import numpy as numpy_backend

    fake = _FakeCupy()
    backend = numpy_backend.load()
    backend.name, backend.xp = "cupy", fake
    backend.synchronize = fake.stream.synchronize  # the seam a GPU backend offers (CudaBackend.synchronize)
    real_load, real_status = _dispatch.load_backend, _dispatch.backend_status
    monkeypatch.setattr(_dispatch, "load_backend", lambda name: backend if name == "cupy" else real_load(name))
    monkeypatch.setattr(_dispatch, "backend_status", lambda name: None if name == "cupy" else real_status(name))
    return fake


def test_gpu_timing_synchronizes_every_run(fake_gpu):
    calls = []
    samples = bd.measure(lambda: calls.append(fake_gpu.stream.syncs), bd.synchronizer("cupy"), repeat=3,
                         warmup=2, min_sample=0)
    assert len(samples) == 3
    # one synchronization before timing starts, then one after each of the 2 + 3 calls
    assert calls == [1, 2, 3, 4, 5] and fake_gpu.stream.syncs == 6


def test_bench_cli_on_a_gpu_backend_synchronizes(fake_gpu, capsys, monkeypatch):
    monkeypatch.delenv("GPUCONV_BACKEND", raising=False)
    assert bd.default_backend() == "cupy"
    rc, out, err = _bench(["--shape", TINY, "--repeat", "2", "--no-progress"], capsys)  # --backend auto
    assert rc == 0, out + err
    assert "backend cupy" in out.splitlines()[0]
    assert fake_gpu.uploads >= 4  # x, w, b, dy moved to the device once, before timing
    assert fake_gpu.stream.syncs >= 2 * (2 + 2)  # forward and backward: every warm-up and timed call


def test_asv_gpu_bodies_synchronize(asv_benchmarks, fake_gpu):
    for cls in _gpuconv_classes(asv_benchmarks):
        args = _args(cls, "cupy")
        bench = cls()
        try:
            bench.setup(*args)
        except TypeError:
            assert cls.__name__ == "Conv2DLayer" and _relu_backward_broken()
            continue
        before = fake_gpu.stream.syncs
        for m in _benchmark_methods(cls):
            if m.startswith("time_"):
                getattr(bench, m)(*args)
        assert fake_gpu.stream.syncs > before, cls.__name__


def test_bench_data_format_nchw(capsys):
    rc, out, err = _bench(["--backend", "numpy", "--shape", TINY, "--repeat", "1", "--data-format", "NCHW"],
                          capsys)
    assert rc == 0, out + err
    assert "NCHW inputs, OIHW filters" in out.splitlines()[0]
    assert next(line for line in out.splitlines() if line.startswith(TINY))


def test_in_layout_gives_the_same_layer():
    shape = bd.parse_shape(TINY)
    host = bd.make_inputs(shape, "float64")
    nchw = bd.in_layout(host, "NCHW")
    assert nchw["x"].flags.c_contiguous and nchw["w"].shape == (shape.m, shape.c, shape.kh, shape.kw)
    y = gpuconv.conv2d(nchw["x"], nchw["w"], nchw["b"], **shape.options, **bd.layout_options("NCHW"))
    want = gpuconv.conv2d(host["x"], host["w"], host["b"], **shape.options)
    np.testing.assert_array_equal(y, want.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="data format must be one of"):
        bd.in_layout(host, "CHWN")


def test_bench_bad_data_format(capsys):
    with pytest.raises(SystemExit) as exc:
        _bench(["--data-format", "NWHC"], capsys)
    assert exc.value.code == 2


# --- the one benchmark definition the tools share ---------------------------------------------------------

def test_named_variants_are_the_padded_layers():
    for name in bd.GPU_SHAPE_NAMES:
        shape = bd.parse_shape(name)
        assert shape.name == name and shape.padding == (shape.kh - 1) // 2
        base = bd.SHAPES[name.removesuffix("-same")]
        assert (shape.x_shape, shape.w_shape, shape.stride) == (base.x_shape, base.w_shape, base.stride)
    assert set(bd.VARIANTS).isdisjoint(bd.SHAPES)  # asv's parameters stay the benchmark set
    assert bd.parse_shape("tiny-same").padding == 1 and bd.parse_shape("tiny").padding == 0


def test_measure_by_another_clock_and_by_events():
    ticks = iter(range(0, 1000, 2))  # a clock advancing 2 per reading
    samples = bd.measure(lambda: None, repeat=3, warmup=1, min_sample=0, clock=lambda: next(ticks))
    assert samples == [2, 2, 2]

    class Event:
        clock = 0

        def record(self):
            Event.clock += 5
            self.t = Event.clock

        def synchronize(self):
            pass

    calls = []
    got = bd.measure_events(lambda: calls.append(1), Event, lambda a, b: b.t - a.t, repeat=4, warmup=2)
    assert got == [5e-3] * 4 and len(calls) == 6
    assert bd.event_timer(np) is None


@pytest.mark.parametrize("backend", ["numpy", "emulator"])
def test_backend_seam_synchronize_and_to_host(backend):
    from gpuconv import _dispatch

    if _dispatch.backend_status(backend) is not None:
        pytest.skip(_dispatch.backend_status(backend))
    be = _dispatch.load_backend(backend)
    a = be.xp.arange(6.0)
    assert be.synchronize() is None
    host = be.to_host(a)
    assert isinstance(host, np.ndarray) and host.tolist() == list(range(6))
    assert bd.synchronizer(backend) == be.synchronize


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
def test_torch_peer_in_both_memory_formats():
    shape = bd.SHAPES["tiny"]
    a = bd.make_inputs(shape, "float64")
    want = gpuconv.conv2d(a["x"], a["w"], a["b"], activation="tanh", **shape.options)
    grads = gpuconv.conv2d_backward(a["dy"], a["x"], a["w"], want, activation="tanh", **shape.options)
    for fmt in ("channels_last", "nchw"):
        layer = bd.TorchLayer(shape, a, "tanh", memory_format=fmt)
        np.testing.assert_allclose(layer.to_nhwc(layer.forward()), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.to_nhwc(layer.backward_input()), grads.dx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.to_hwio(layer.backward_weight()), grads.dw, rtol=1e-10, atol=1e-10)
