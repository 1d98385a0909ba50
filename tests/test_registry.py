"""The registries (gpuconv._registry), the CUDA backend's launch plans (gpuconv.backends._plans) and its
per-device kernel cache, checked without compiling anything: fake module factories stand in for NVRTC."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ACTIVATIONS, DTYPES

from gpuconv import _registry
from gpuconv._config import make_config
from gpuconv.backends import _plans
from gpuconv.backends.cuda import CudaBackend
from gpuconv.backends.numpy import NumpyBackend
from gpuconv.cuda.modules import build_inputs, kernel_path, package_build


class FakeModule:
    """Stands in for a compiled module: get_function hands out a fresh recorder per call."""

    def __init__(self, device):
        self.device = device

    def get_function(self, name):
        calls = []

        def fn(grid, block, args, shared_mem=0):  # cupy.RawKernel.__call__'s signature
            calls.append((grid, block, args))

        fn.name, fn.device, fn.calls = name, self.device, calls
        return fn


def fake_backend(devices):
    """A CudaBackend over numpy arrays whose module factory records what it is asked for, on devices[0]."""
    asked = []

    def get_module(kind, filename):
        asked.append((devices[0], filename))
        return FakeModule(devices[0])

    return CudaBackend("emulator", np, get_module=get_module, device_id=lambda kind: devices[0]), asked


CFG = make_config("test", (2, 9, 8, 20), (3, 2, 20, 18), stride=(2, 3), padding=((2, 1), (0, 1)), dilation=(2, 1))


# ---------------------------------------------------------------------------------------------- registries
def test_unknown_activation_raises_in_every_layer():
    x, w = np.ones(CFG.x_shape), np.ones(CFG.w_shape)
    dy = np.ones(CFG.y_shape)
    numpy_be = NumpyBackend()
    cuda_be, _ = fake_backend(["dev0"])
    for be, where in ((numpy_be, "numpy backend"), (cuda_be, "emulator backend|CUDA backend")):
        for call in (lambda: be.forward(x, w, None, CFG, "gelu"),
                     lambda: be.activation_backward(dy, dy, "gelu"),
                     lambda: be.backward(dy, dy, x, w, CFG, "gelu")):
            with pytest.raises(ValueError, match=f"({where}): activation must be one of .*'gelu'"):
                call()
    for plan in (lambda: _plans.forward(CFG, "gelu", True), lambda: _plans.backward_input(CFG, "gelu"),
                 lambda: _plans.backward_weight(CFG, np.float32, "gelu"), lambda: _plans.activation_backward(4, "gelu"),
                 lambda: _plans.backward_bias(4, 2, "gelu")):
        with pytest.raises(ValueError, match="CUDA backend: activation"):
            plan()
    with pytest.raises(ValueError, match="'RELU'"):  # exact names below the public API (which lower-cases)
        _registry.activation("RELU")


def test_unknown_dtype_raises_in_every_layer():
    with pytest.raises(TypeError, match="numpy backend: dtype must be one of"):
        NumpyBackend().forward(np.ones(CFG.x_shape, np.int32), np.ones(CFG.w_shape, np.int32), None, CFG, "relu")
    be, _ = fake_backend(["dev0"])
    with pytest.raises(TypeError, match="(emulator|CUDA) backend: dtype must be one of"):
        be.forward(np.ones(CFG.x_shape, np.int32), np.ones(CFG.w_shape, np.int32), None, CFG, "relu")
    with pytest.raises(TypeError, match="dtype must be one of"):
        _registry.dtype("complex64")


def test_activation_codes_are_distinct_and_reach_the_kernels_as_defines():
    codes = [a.code for a in _registry.ACTIVATIONS.values()]
    assert len(set(codes)) == len(codes)
    _, defines = package_build(kernel_path("conv_forward.cu"))
    for a in _registry.ACTIVATIONS.values():
        assert f"-DGPUCONV_ACT_{a.name.upper()}={a.code}" in defines
    # one case per activation in each of the kernels' activation helpers
    header = kernel_path("gpuconv_common.cuh").read_text()
    for helper in ("gpuconv_act_forward", "gpuconv_act_backward"):
        body = header[header.index(f"{helper}("):]
        body = body[: body.index("\n}\n")]
        cases = set(re.findall(r"case (GPUCONV_ACT_\w+):", body))
        assert cases == {a.macro for a in _registry.ACTIVATIONS.values() if a.name != "identity"}, helper


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_gradients_from_the_saved_output(act, dtype):
    """Each registered gradient, from u = act(z), against central differences of its forward in float64."""
    rng = np.random.default_rng(7)
    z = rng.uniform(-3, 3, (4, 6))
    z[np.abs(z) < 1e-3] = 0.5  # away from relu's kink
    entry = _registry.activation(act)
    h = 1e-6
    slope = (entry.forward(z + h) - entry.forward(z - h)) / (2 * h)
    dy = rng.uniform(-1, 1, z.shape)
    u = entry.forward(z.copy())
    np.testing.assert_allclose(entry.backward(dy, u), dy * slope, rtol=1e-8, atol=1e-10)
    # in a storage dtype: computed in its accumulator dtype, rounded once, written into `out` alike
    d = _registry.dtype(dtype)
    dy_s, u_s = dy.astype(d.numpy), u.astype(d.numpy)
    got = entry.backward(dy_s, u_s)
    assert got.dtype == d.numpy
    out = np.empty_like(dy_s)
    assert entry.backward(dy_s, u_s, out=out) is out or act == "relu"
    np.testing.assert_array_equal(out, got)


def test_tolerance_table():
    for d in _registry.DTYPES.values():
        assert _registry.tolerance(d.name) == d.rtol == _registry.tolerance(d.numpy)
        grown = _registry.tolerance(d.numpy, 10 * _registry.REDUCTION_UNIT)
        assert grown == (10 * d.rtol if d.rtol_grows else d.rtol)


# ---------------------------------------------------------------------------------------------- kernels
def _kernel_templates(source: str) -> set:
    return set(re.findall(r"__global__ void (?:__launch_bounds__\([^)]*\) )?(gpuconv_\w+)\(", source))


@pytest.mark.parametrize("filename", sorted(_plans.INSTANTIATIONS))
def test_name_expressions_generated_from_the_dtype_registry(filename):
    exprs = _plans.name_expressions(filename)
    kernels = {k for k, _ in _plans.INSTANTIATIONS[filename]}
    assert kernels == _kernel_templates(kernel_path(filename).read_text())
    kernel_dtypes = _registry.kernel_dtypes()
    assert len(exprs) == len(set(exprs)) == len(_plans.INSTANTIATIONS[filename]) * len(kernel_dtypes)
    for d in kernel_dtypes:
        assert f"gpuconv_sum_partials<{d.ctype}>" in exprs or filename != _plans.BACKWARD_FILE
        assert f"gpuconv_conv_fwd<{d.ctype}, 32>" in exprs or filename != _plans.FORWARD_FILE
    assert "gpuconv-name-expressions" not in kernel_path(filename).read_text()
    assert build_inputs(kernel_path(filename))[1] == exprs  # what get_module and the NVRTC checks compile


def test_launch_constants_are_named_once_and_required_by_the_kernels():
    defines = _plans.kernel_defines()
    names = [re.match(r"-D(\w+)=", d).group(1) for d in defines]
    header = kernel_path("gpuconv_common.cuh").read_text()
    guard = header[header.index("#if !defined(GPUCONV_ACT_IDENTITY)"):header.index("#error")]
    for name in names:
        assert f"defined({name})" in guard, name
        for f in ("gpuconv_common.cuh", *_plans.INSTANTIATIONS):
            assert not re.search(rf"#define\s+{name}\b", kernel_path(f).read_text()), (f, name)
    assert f"-DGPUCONV_THREADS={_plans.THREADS}" in defines and f"-DGPUCONV_RED_Y={_plans.RED_Y}" in defines


# ---------------------------------------------------------------------------------------------- plans
def _covers(launch, pixels_per_block, pixels):
    return launch.grid[0] * pixels_per_block >= pixels > (launch.grid[0] - 1) * pixels_per_block


def test_forward_plans():
    p = CFG.n * CFG.oh * CFG.ow
    (tiled,) = _plans.forward(CFG, "tanh", True)  # Mg = 18: the 128 x 32 tiles
    assert (tiled.file, tiled.kernel, tiled.template, tiled.block) == (_plans.FORWARD_FILE, "gpuconv_conv_fwd", (32,),
                                                                       (_plans.THREADS, 1, 1))
    assert _covers(tiled, 128, p) and tiled.grid[1:] == (1, 1)
    assert tiled.scalars == (*_plans.dims(CFG), 1, _registry.ACTIVATIONS["tanh"].code)
    assert all(isinstance(s, np.int32) for s in tiled.scalars)
    wide = make_config("test", (1, 8, 8, 4), (3, 3, 2, 140), groups=2)  # Mg = 70: 64 x 64 tiles, 2 column tiles
    (launch,) = _plans.forward(wide, "identity", False)
    assert launch.template == (64,) and launch.grid[1:] == (2, 2) and launch.scalars[-2:] == (0, 0)
    depthwise = make_config("test", (2, 8, 8, 6), (3, 3, 1, 6), groups=6)
    (direct,) = _plans.forward(depthwise, "relu", True)
    assert direct.kernel == "gpuconv_conv_fwd_direct" and direct.block == (8, 32, 1)
    assert _covers(direct, 32, depthwise.n * depthwise.oh * depthwise.ow)


def test_backward_plans():
    flag, *launches, exact = _plans.backward_input(CFG, "sigmoid")
    assert flag.kernel == "gpuconv_nonfinite_flag" and flag.scalars == (CFG.kh * CFG.kw * CFG.cg * CFG.m,)
    assert exact.kernel == "gpuconv_conv_bwd_input_exact" and exact.scalars[:-3] == _plans.dims(CFG)
    assert len(launches) == len(_plans.stride_phases(CFG)) <= CFG.s1 * CFG.s2
    assert all(launch.kernel == "gpuconv_conv_bwd_input" and launch.template == (32,) for launch in launches)
    small = make_config("test", (2, 13, 11, 3), (7, 7, 3, 40), stride=2, padding=3)
    (first, *_) = _plans.backward_input(small, "relu")
    assert first.kernel == "gpuconv_conv_bwd_input_direct" and first.template == (4, 4)
    assert first.block == (_plans.DIRECT_DX_LANES, _plans.THREADS // _plans.DIRECT_DX_LANES, 1)
    partial, total = _plans.backward_weight(CFG, np.float64, "identity")
    splits, e = _plans.partials_shape(total)
    assert partial.kernel == "gpuconv_conv_bwd_weight" and partial.grid[2] == splits and e == CFG.kh * CFG.kw * CFG.cg * CFG.m
    assert total.kernel == "gpuconv_sum_partials" and total.scalars == (e, splits)
    partial, total = _plans.backward_bias(1000, 40, "tanh")
    assert partial.block == (_plans.RED_X, _plans.RED_Y, 1) and partial.grid[:2] == (2, _plans.partials_shape(total)[0])
    (act,) = _plans.activation_backward(10**9, "relu")
    assert act.grid == (_plans.ACT_BWD_MAX_BLOCKS, 1, 1) and act.scalars == (10**9, 1, 0)
    assert _plans.activation_backward(8, "relu", tf32=True)[0].scalars[-1] == 1  # dz stored rounded to TF32
    assert _plans.backward_bias(8, 4, "relu", True, tf32=True)[0].scalars[-2:] == (1, 1)
    assert _plans.activation_backward(0, "relu") == []


def test_wrappers_run_the_plans():
    be, _ = fake_backend(["dev0"])
    x, w, b = np.ones(CFG.x_shape, np.float32), np.ones(CFG.w_shape, np.float32), np.ones(CFG.m, np.float32)
    be.forward(x, w, b, CFG, "tanh")
    (fn,) = be._kernels.values()
    (plan,) = _plans.forward(CFG, "tanh", True)
    assert fn.name == "gpuconv_conv_fwd<float, 32>"
    ((grid, block, args),) = fn.calls
    assert (grid, block, args[4:]) == (plan.grid, plan.block, plan.scalars)


def test_check_limits_uses_the_plans(monkeypatch):
    _plans.check_limits("test", CFG)
    big = _plans.Launch(_plans.FORWARD_FILE, "gpuconv_conv_fwd", (64,), (1, _plans.MAX_GRID_YZ + 1, 1), (256, 1, 1), ())
    monkeypatch.setattr(_plans, "forward", lambda cfg, act, has_bias: [big])
    with pytest.raises(ValueError, match=r"test backend: gpuconv_conv_fwd<T, 64> would need a grid of .*65535"):
        _plans.check_limits("test", CFG)


# ---------------------------------------------------------------------------------------------- devices
def test_compiled_kernels_are_kept_per_device():
    devices = ["dev0"]
    be, asked = fake_backend(devices)
    dz = np.ones((5, 7), np.float32)
    be.activation_backward(dz, dz, "relu")
    be.activation_backward(dz, dz, "relu")
    devices[0] = "dev1"
    be.activation_backward(dz, dz, "relu")
    assert asked == [("dev0", _plans.BACKWARD_FILE), ("dev1", _plans.BACKWARD_FILE)]
    fns = sorted(be._kernels.values(), key=lambda f: f.device)
    assert [f.device for f in fns] == ["dev0", "dev1"] and fns[0] is not fns[1]
    assert [len(f.calls) for f in fns] == [2, 1]
