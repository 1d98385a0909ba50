"""Backend selection: "auto" (GPUCONV_BACKEND overrides it), forcing "numpy" / "cupy", unknown names, mixing
numpy and cupy arrays, get_array_module, show_config, and importing gpuconv without touching cupy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gpuconv
from gpuconv import _dispatch

REPO_ROOT = Path(__file__).resolve().parents[1]
CUPY_REASON = _dispatch.backend_status("cupy")
needs_no_cupy = pytest.mark.skipif(CUPY_REASON is None, reason="the cupy backend can run here")
needs_cupy = pytest.mark.skipif(CUPY_REASON is not None, reason=f"cupy backend unavailable: {CUPY_REASON}")

FAKE_BROKEN_CUPY = 'raise RuntimeError("CUDA driver version is insufficient (fake cupy for gpuconv tests)")\n'
FAKE_CUPY = textwrap.dedent('''
    """A stand-in for cupy with no GPU: its arrays are cupy arrays by type, and it reports no device."""
    import numpy as _np

    __version__ = "0.0.fake"


    class ndarray:
        def __init__(self, a):
            self._a = _np.asarray(a)

        shape = property(lambda self: self._a.shape)
        dtype = property(lambda self: self._a.dtype)
        ndim = property(lambda self: self._a.ndim)
        size = property(lambda self: self._a.size)

        def get(self):
            return self._a

        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed (fake cupy)")


    def asarray(a):
        return a if isinstance(a, ndarray) else ndarray(a)


    def asnumpy(a):
        return a.get()


    class cuda:
        class runtime:
            @staticmethod
            def getDeviceCount():
                return 0
''')


def run_python(code, tmp_path=None, fake_cupy=None, env_extra=None):
    """Run ``code`` in a fresh interpreter with the repository (and optionally a fake cupy) importable."""
    paths = [str(REPO_ROOT)]
    if fake_cupy is not None:
        pkg = tmp_path / "fakecupy" / "cupy"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(fake_cupy)
        paths.insert(0, str(pkg.parent))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    env.pop("GPUCONV_BACKEND", None)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


# ------------------------------------------------------------------------------------------ import
def test_import_does_not_import_cupy():
    out = run_python("""
        import gpuconv, sys
        assert 'cupy' not in sys.modules, 'importing gpuconv imported cupy'
        import numpy as np
        gpuconv.conv2d(np.ones((1, 4, 4, 2)), np.ones((2, 2, 2, 3)))
        gpuconv.conv2d_info((4, 4, 2), (2, 2, 2, 3))
        assert 'cupy' not in sys.modules, 'a numpy call imported cupy'
        print('ok')
    """)
    assert out.strip() == "ok"


def test_import_never_fails_with_a_broken_cupy(tmp_path):
    """A cupy whose import raises (a broken CUDA install): gpuconv still imports and the numpy path works; the
    cupy backend reports the reason."""
    out = run_python(
        """
        import numpy as np
        import gpuconv
        y = gpuconv.conv2d(np.ones((1, 4, 4, 2)), np.ones((2, 2, 2, 3)))
        assert type(y) is np.ndarray and y.shape == (1, 3, 3, 3)
        from gpuconv import _dispatch
        reason = _dispatch.backend_status("cupy")
        assert reason, "the cupy backend claims to run with a broken cupy"
        try:
            gpuconv.conv2d(np.ones((1, 4, 4, 2)), np.ones((2, 2, 2, 3)), backend="cupy")
        except RuntimeError as e:
            assert "conv2d" in str(e) and reason in str(e), (str(e), reason)
        else:
            raise AssertionError("backend='cupy' ran with a broken cupy")
        print("CONFIG")
        gpuconv.show_config()
    """,
        tmp_path,
        fake_cupy=FAKE_BROKEN_CUPY,
    )
    config = out.split("CONFIG", 1)[1]
    assert "CUDA driver version is insufficient" in config  # show_config says why cupy cannot run


def test_mixing_numpy_and_cupy_arrays_is_a_type_error_fake_cupy(tmp_path):
    """With a stand-in cupy (arrays of type cupy.ndarray, no GPU): mixing names the arguments."""
    out = run_python(
        """
        import numpy as np, cupy, gpuconv
        x, w = np.ones((1, 4, 4, 2)), np.ones((2, 2, 2, 3))
        calls = {
            "conv2d x/w": lambda: gpuconv.conv2d(x, cupy.asarray(w)),
            "conv2d b": lambda: gpuconv.conv2d(x, w, cupy.asarray(np.ones(3))),
            "conv2d_backward": lambda: gpuconv.conv2d_backward(cupy.asarray(np.ones((1, 3, 3, 3))), x, w),
            "backward_input": lambda: gpuconv.conv2d_backward_input(cupy.asarray(np.ones((1, 3, 3, 3))), w,
                                                                    x.shape),
            "backward_weight": lambda: gpuconv.conv2d_backward_weight(np.ones((1, 3, 3, 3)), cupy.asarray(x),
                                                                      w.shape),
            "activation_backward": lambda: gpuconv.activation_backward(np.ones(3), cupy.asarray(np.ones(3)),
                                                                       "relu"),
        }
        for name, call in calls.items():
            try:
                call()
            except TypeError as e:
                print(name, "|", e)
            else:
                raise AssertionError(name + " accepted mixed numpy and cupy arrays")
    """,
        tmp_path,
        fake_cupy=FAKE_CUPY,
    )
    lines = dict(line.split(" | ", 1) for line in out.strip().splitlines())
    expected_args = {
        "conv2d x/w": ("x", "w"),
        "conv2d b": ("x", "b"),
        "conv2d_backward": ("dy", "x"),
        "backward_input": ("dz", "w"),
        "backward_weight": ("dz", "x"),
        "activation_backward": ("dy", "y"),
    }
    for name, args in expected_args.items():
        msg = lines[name]
        fname = name.split()[0] if name.startswith("conv2d") else "conv2d_" + name
        fname = "activation_backward" if name == "activation_backward" else fname
        assert fname in msg, msg
        for a in args:
            assert f"'{a}'" in msg or f" {a} " in msg, (a, msg)


@needs_cupy
def test_mixing_numpy_and_cupy_arrays_is_a_type_error(backend):
    cupy = _dispatch.import_cupy()
    with pytest.raises(TypeError) as info:
        gpuconv.conv2d(np.ones((1, 4, 4, 2)), cupy.ones((2, 2, 2, 3)))
    assert "conv2d" in str(info.value) and "x" in str(info.value) and "w" in str(info.value)


# ------------------------------------------------------------------------------------------ forcing backends
@needs_no_cupy
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_cupy_without_gpu_is_runtime_error_with_reason(monkeypatch, rand, how):
    x, w = rand((1, 4, 4, 2)), rand((2, 2, 2, 3))
    if how == "environment":
        monkeypatch.setenv("GPUCONV_BACKEND", "cupy")
        kwargs = {}
    else:
        kwargs = {"backend": "cupy"}
    with pytest.raises(RuntimeError) as info:
        gpuconv.conv2d(x, w, **kwargs)
    msg = str(info.value)
    assert "conv2d" in msg and "cupy" in msg
    assert CUPY_REASON in msg or any(part in msg for part in CUPY_REASON.split(": ")[1:]), (msg, CUPY_REASON)


@needs_no_cupy
def test_every_function_reports_cupy_unavailable(rand):
    x, w, dz = rand((1, 4, 4, 2)), rand((2, 2, 2, 3)), rand((1, 3, 3, 3))
    calls = [
        lambda: gpuconv.conv2d(x, w, backend="cupy"),
        lambda: gpuconv.activation_backward(dz, dz, "relu", backend="cupy"),
        lambda: gpuconv.conv2d_backward_input(dz, w, x.shape, backend="cupy"),
        lambda: gpuconv.conv2d_backward_weight(dz, x, w.shape, backend="cupy"),
        lambda: gpuconv.conv2d_backward_bias(dz, backend="cupy"),
        lambda: gpuconv.conv2d_backward(dz, x, w, backend="cupy"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="cupy"):
            call()


def test_environment_overrides_auto(monkeypatch, rand):
    x, w = rand((1, 5, 5, 2)), rand((2, 2, 2, 3))
    expected = gpuconv.conv2d(x, w, backend="numpy")
    monkeypatch.setenv("GPUCONV_BACKEND", "numpy")
    y = gpuconv.conv2d(x, w)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, expected)


@needs_no_cupy
def test_environment_does_not_override_an_explicit_backend(monkeypatch, rand):
    """GPUCONV_BACKEND replaces "auto" only: an explicit backend="numpy" still runs on numpy."""
    monkeypatch.setenv("GPUCONV_BACKEND", "cupy")
    y = gpuconv.conv2d(rand((1, 5, 5, 2)), rand((2, 2, 2, 3)), backend="numpy")
    assert type(y) is np.ndarray and y.shape == (1, 4, 4, 3)


def test_unknown_backend_environment_is_value_error(monkeypatch, rand):
    monkeypatch.setenv("GPUCONV_BACKEND", "tpu")
    with pytest.raises(ValueError, match="conv2d: environment variable GPUCONV_BACKEND='tpu'"):
        gpuconv.conv2d(rand((1, 5, 5, 2)), rand((2, 2, 2, 3)))


@pytest.mark.parametrize("name", ["tpu", "numpyy", "", "gpu"])
def test_unknown_backend_name_is_value_error(rand, name):
    x, w, dz = rand((1, 4, 4, 2)), rand((2, 2, 2, 3)), rand((1, 3, 3, 3))
    calls = {
        "conv2d": lambda: gpuconv.conv2d(x, w, backend=name),
        "activation_backward": lambda: gpuconv.activation_backward(dz, dz, "relu", backend=name),
        "conv2d_backward_input": lambda: gpuconv.conv2d_backward_input(dz, w, x.shape, backend=name),
        "conv2d_backward_weight": lambda: gpuconv.conv2d_backward_weight(dz, x, w.shape, backend=name),
        "conv2d_backward_bias": lambda: gpuconv.conv2d_backward_bias(dz, backend=name),
        "conv2d_backward": lambda: gpuconv.conv2d_backward(dz, x, w, backend=name),
    }
    for fname, call in calls.items():
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert fname in msg and "backend" in msg and repr(name) in msg, msg


def test_forcing_numpy_and_auto_agree(rand):
    x, w, b = rand((2, 5, 6, 2)), rand((3, 2, 2, 4)), rand((4,))
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, b, backend="numpy"), gpuconv.conv2d(x, w, b))
    np.testing.assert_array_equal(
        gpuconv.conv2d(x, w, b, backend="numpy"), gpuconv.conv2d(x, w, b, backend="auto")
    )


@needs_cupy
def test_auto_sends_cupy_arrays_to_the_gpu_and_back(rand):
    cupy = _dispatch.import_cupy()
    x, w = rand((1, 5, 5, 2)), rand((2, 2, 2, 3))
    y = gpuconv.conv2d(cupy.asarray(x), cupy.asarray(w))
    assert isinstance(y, cupy.ndarray)
    y_forced = gpuconv.conv2d(cupy.asarray(x), cupy.asarray(w), backend="numpy")
    assert isinstance(y_forced, cupy.ndarray)  # same array type as x
    np.testing.assert_allclose(y.get(), gpuconv.conv2d(x, w), rtol=1e-10)


# ------------------------------------------------------------------------------------------ get_array_module
def test_get_array_module_numpy():
    assert gpuconv.get_array_module(np.ones(3)) is np
    assert gpuconv.get_array_module(np.ones(3), np.ones((2, 2), np.float32)) is np
    assert gpuconv.get_array_module() is np


def test_get_array_module_does_not_import_cupy():
    run_python("""
        import sys, numpy as np, gpuconv
        assert gpuconv.get_array_module(np.ones(3)) is np
        assert 'cupy' not in sys.modules
    """)


@needs_cupy
def test_get_array_module_cupy():
    cupy = _dispatch.import_cupy()
    assert gpuconv.get_array_module(cupy.ones(3)) is cupy
    assert gpuconv.get_array_module(np.ones(3), cupy.ones(3)) is cupy


# ------------------------------------------------------------------------------------------ show_config
def test_show_config(capsys):
    gpuconv.show_config()
    out = capsys.readouterr().out
    assert gpuconv.__version__ in out
    assert np.__version__ in out
    for name in ("numpy", "cupy"):
        assert name in out
    if CUPY_REASON is not None:
        assert CUPY_REASON in out or CUPY_REASON.split(": ", 1)[-1] in out, out


def test_backend_status_numpy_is_available():
    assert _dispatch.backend_status("numpy") is None
