"""Kernel-specific tests of the CUDA backend, run on the CPU emulator (or on a GPU with GPUCONV_KERNEL_BACKEND=cupy).

Every kernel is compared with gpuconv's NumPy backend (float64, and float32 / float16 with per-dtype tolerances)
on small random inputs, across stride, asymmetric padding, dilation, groups, depthwise and every activation,
on both kernel paths (tiled implicit GEMM and the direct / small-channel path). dw and db must be bitwise equal
over repeated runs and under both emulator thread schedules. Problems past the int32 indices are refused.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import ACTIVATIONS, LOW_PRECISION_DTYPES

from gpuconv import _api, _registry
from gpuconv._config import make_config
from gpuconv._dispatch import BackendUnavailable, load_backend, to_module
from gpuconv.backends import _plans
from gpuconv.backends.numpy import NumpyBackend

BACKEND = os.environ.get("GPUCONV_KERNEL_BACKEND", "emulator")
REF = NumpyBackend()

# (id, x shape NHWC, w shape HWIO, options, activation). Mg >= 16 takes the tiled GEMM forward and dw kernels
# (forward tiles 128 x 32 up to Mg = 32, 64 x 64 above), Mg < 16 the direct / small ones; Cg >= 16 the tiled
# dx kernel, Cg < 16 the direct one.
CASES = [
    ("gemm-relu-pad1", (2, 7, 9, 16), (3, 3, 16, 20), {"padding": 1}, "relu"),
    ("gemm-stride-asym-dil", (2, 9, 8, 20), (3, 2, 20, 18), {"stride": (2, 3), "padding": ((2, 1), (0, 1)),
                                                                   "dilation": (2, 1)}, "sigmoid"),
    ("gemm-groups", (1, 8, 8, 32), (3, 3, 16, 32), {"groups": 2, "padding": 1}, "identity"),
    ("gemm-multitile", (1, 9, 10, 70), (1, 2, 70, 66), {"padding": ((0, 1), (1, 0))}, "relu"),
    ("gemm-64wide", (2, 6, 7, 24), (2, 3, 24, 48), {"padding": 1, "stride": (1, 2)}, "sigmoid"),
    ("gemm-split", (4, 12, 12, 16), (3, 3, 16, 16), {"padding": 1}, "identity"),
    # stride 2 with dilation 2: the odd stride phases of dx get no tap at all (exactly 0 there)
    ("gemm-dx-empty-phases", (1, 9, 10, 16), (3, 3, 16, 16),
     {"stride": 2, "dilation": 2, "padding": ((1, 2), (2, 0))}, "relu"),
    ("gemm-dx-stride3", (2, 11, 8, 32), (4, 2, 16, 32),
     {"groups": 2, "stride": (3, 2), "padding": ((0, 2), (1, 1))}, "sigmoid"),
    ("direct-stride-asym", (2, 7, 9, 4), (3, 3, 4, 6), {"stride": 2, "padding": ((1, 0), (2, 1)), "dilation": (1, 2)},
     "relu"),
    # direct dx: lanes over Mg = 40 (two passes of 32), and Cg = 10 of 2 groups (the 15-channel instantiation)
    ("direct-stem", (2, 13, 11, 3), (7, 7, 3, 40), {"stride": 2, "padding": 3}, "relu"),
    ("direct-groups-cg10", (1, 7, 8, 20), (3, 2, 10, 36), {"groups": 2, "padding": 1, "stride": (1, 2)}, "sigmoid"),
    ("depthwise", (2, 8, 8, 6), (3, 3, 1, 6), {"groups": 6, "padding": 1, "stride": 2}, "sigmoid"),
    ("depthwise-mult2-dil", (2, 8, 8, 6), (3, 3, 1, 12), {"groups": 6, "padding": "same", "dilation": 2}, "relu"),
    ("one-channel-5x5", (3, 9, 9, 1), (5, 5, 1, 8), {"padding": 2}, "relu"),
    ("stride-skips-pixels", (1, 7, 7, 3), (1, 1, 3, 17), {"stride": 3}, "identity"),
    ("small-split", (2, 32, 32, 2), (3, 3, 1, 2), {"groups": 2, "padding": 1}, "identity"),
]
DTYPE_CASES = ["gemm-relu-pad1", "gemm-stride-asym-dil", "gemm-groups", "gemm-64wide", "direct-stride-asym",
               "direct-stem", "direct-groups-cg10", "depthwise"]


@pytest.fixture(scope="module")
def be():
    try:
        return load_backend(BACKEND)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def _data(case, dtype, seed=0):
    _, xs, ws, opts, act = case
    cfg = make_config("test", xs, ws, **opts)
    rng = np.random.default_rng(seed)
    u = lambda shape: rng.uniform(-1.0, 1.0, shape).astype(dtype)
    return cfg, act, {"x": u(xs), "w": u(ws), "b": u(ws[3]), "dy": u(cfg.y_shape)}


def _ref_act_backward(dy, y, act):
    """dz = dy * act'(z) from the saved output: the registry's NumPy gradient (the NumPy backend's)."""
    return _registry.activation(act).backward(dy, y)


def _close(name, got, want, dtype):
    """Largest |error| at most the registry's tolerance, relative to the largest |reference| of the array."""
    got = np.asarray(to_module(got, np), np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.all(np.isfinite(got)), name
    err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)
    rtol = _registry.tolerance(dtype)
    assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol}"


def _dev(be, a):
    return to_module(a, be.xp)


def _check_case(be, case, dtype):
    cfg, act, d = _data(case, dtype)
    x, w, b, dy = (_dev(be, d[k]) for k in ("x", "w", "b", "dy"))
    y_ref = REF.forward(d["x"], d["w"], d["b"], cfg, act)
    _close("forward", be.forward(x, w, b, cfg, act), y_ref, dtype)
    _close("forward without bias", be.forward(x, w, None, cfg, act), REF.forward(d["x"], d["w"], None, cfg, act),
           dtype)
    dz_ref = _ref_act_backward(d["dy"], y_ref, act)
    y_dev = _dev(be, y_ref)
    if act != "identity":
        _close("activation_backward", be.activation_backward(dy, y_dev, act), dz_ref, dtype)
    dz = _dev(be, dz_ref)
    dx_ref = REF.backward_input(dz_ref, d["w"], cfg)
    dw_ref = REF.backward_weight(dz_ref, d["x"], cfg)
    db_ref = REF.backward_bias(dz_ref)
    _close("backward_input", be.backward_input(dz, w, cfg), dx_ref, dtype)
    _close("backward_weight", be.backward_weight(dz, x, cfg), dw_ref, dtype)
    _close("backward_bias", be.backward_bias(dz), db_ref, dtype)
    # The fused path: the activation gradient applied as each gradient kernel loads dy.
    dx, dw, db = be.backward(dy, y_dev, x, w, cfg, act)
    _close("fused dx", dx, dx_ref, dtype)
    _close("fused dw", dw, dw_ref, dtype)
    _close("fused db", db, db_ref, dtype)
    return cfg, dx


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernels_match_numpy_float64(be, case):
    cfg, dx = _check_case(be, case, np.float64)
    if case[0] == "stride-skips-pixels":
        # Pixels no output reads (off the stride grid of a 1x1 kernel) get exactly zero gradient.
        dx = to_module(dx, np)
        mask = np.ones((cfg.h, cfg.w), bool)
        mask[:: cfg.s1, :: cfg.s2] = False
        assert np.all(dx[:, mask] == 0)
        assert np.all(dx[:, ~mask] != 0)


@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES)
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in DTYPE_CASES], ids=DTYPE_CASES)
def test_kernels_match_numpy_low_precision(be, case, dtype):
    _check_case(be, case, dtype)


# One case per kernel path (tiled: both tile widths; direct / small-channel), run with every activation.
ACTIVATION_CASES = ["gemm-64wide", "gemm-relu-pad1", "direct-groups-cg10"]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_every_activation_on_every_path(be, name, act):
    case = next(c for c in CASES if c[0] == name)
    _check_case(be, (*case[:4], act), np.float64)



def test_both_paths_are_exercised():
    paths = set()
    for _, xs, ws, opts, _ in CASES:
        cfg = make_config("test", xs, ws, **opts)
        paths.add(("fwd/dw", cfg.mg < _plans.SMALL_CHANNELS))
        paths.add(("dx", cfg.cg < _plans.SMALL_CHANNELS))
    assert len(paths) == 4


def test_reductions_use_several_splits():
    # gemm-split and small-split are sized so that dw and db add more than one partial sum.
    for name in ("gemm-split", "small-split"):
        _, xs, ws, opts, _ = next(c for c in CASES if c[0] == name)
        cfg = make_config("test", xs, ws, **opts)
        dw_splits, _ = _plans.partials_shape(_plans.backward_weight(cfg, np.float32, "identity")[1])
        assert dw_splits > 1, name
        db_splits, _ = _plans.partials_shape(_plans.backward_bias(cfg.n * cfg.oh * cfg.ow, cfg.m, "identity")[1])
        assert db_splits > 1, name


def test_relu_backward_is_a_select(be):
    dy = np.array([[np.inf, -np.inf, np.nan, 2.0, np.inf]], np.float32)
    y = np.array([[0.0, -0.0, 0.0, 0.5, 1.0]], np.float32)
    dz = to_module(be.activation_backward(_dev(be, dy), _dev(be, y), "relu"), np)
    np.testing.assert_array_equal(dz, [[0, 0, 0, 2.0, np.inf]])


def test_dz_passes_round_to_tf32_bit_for_bit(be):
    """For the DZ_TF32 tensor-core kernels the two dz passes (gpuconv_act_bwd, and db's gpuconv_bias_grad with
    store_dz) store dz rounded as the TF32 oracle rounds (gpuconv.backends.numpy.tf32_round), on the values
    where rounding is subtle: ties (away from zero), a carry into the exponent, the float32 maximum (to inf),
    subnormals, NaN and inf; db sums the unrounded values."""
    from gpuconv.backends.numpy import tf32_round

    bits = np.array([0x3F801000, 0xBF801000, 0x3F800FFF, 0x3FFFF000, 0x7F7FFFFF, 0x00001000, 0x80000FFF,
                     0x7FC00001, 0x7F800001, 0x7F800000, 0xFF800000, 0x00000000, 0x80000000, 0x3EAAAAAB],
                    np.uint32)
    dy = np.resize(bits, 2 * 3 * 40).view(np.float32).reshape(2, 3, 40)
    dy[1] = np.random.default_rng(5).uniform(-1, 1, (3, 40))  # finite rows for db
    y = np.ones_like(dy)  # relu passes dy where the output is positive
    want = tf32_round(dy).view(np.uint32)
    dz = to_module(be.activation_backward(_dev(be, dy), _dev(be, y), "relu", tf32=True), np)
    assert dz.view(np.uint32).tolist() == want.tolist()
    dz_out = be.xp.empty(dy.shape, dy.dtype)
    db = to_module(be.backward_bias_fused(_dev(be, dy), _dev(be, y), "relu", dz_out=dz_out, dz_tf32=True), np)
    assert to_module(dz_out, np).view(np.uint32).tolist() == want.tolist()
    db_plain = to_module(be.backward_bias_fused(_dev(be, dy), _dev(be, y), "relu"), np)
    assert db.tobytes() == db_plain.tobytes()


def test_sigmoid_saturates_without_nan(be):
    x = np.full((1, 1, 1, 1), 1.0, np.float32)
    w = np.full((1, 1, 1, 2), 1.0, np.float32)
    b = np.array([-200.0, 200.0], np.float32)
    cfg = make_config("test", x.shape, w.shape)
    y = to_module(be.forward(_dev(be, x), _dev(be, w), _dev(be, b), cfg, "sigmoid"), np)
    np.testing.assert_array_equal(y.ravel(), [0.0, 1.0])


def test_non_contiguous_inputs(be):
    cfg, act, d = _data(CASES[0], np.float64)
    x2 = np.repeat(d["x"], 2, axis=3)[..., ::2]  # same values, channel stride 2
    assert not x2.flags.c_contiguous
    _close("forward (strided x)", be.forward(_dev(be, x2), _dev(be, d["w"]), _dev(be, d["b"]), cfg, act),
           REF.forward(d["x"], d["w"], d["b"], cfg, act), np.float64)


@pytest.mark.parametrize("name", ["gemm-split", "small-split", "depthwise"])
def test_dw_db_bitwise_deterministic(be, name):
    case = next(c for c in CASES if c[0] == name)
    cfg, _act, d = _data(case, np.float32, seed=3)
    dz, x = _dev(be, d["dy"]), _dev(be, d["x"])
    first = [to_module(a, np) for a in (be.backward_weight(dz, x, cfg), be.backward_bias(dz))]
    for _ in range(2):
        again = [to_module(a, np) for a in (be.backward_weight(dz, x, cfg), be.backward_bias(dz))]
        for a, b in zip(first, again):
            assert a.tobytes() == b.tobytes()


def _schedules():
    """The emulator's thread schedules, as (name, context manager factory); empty when it has none."""
    try:
        from gpuconv.cuda import emulator
    except ImportError:
        return []
    sched = getattr(emulator, "schedule", None)
    names = getattr(emulator, "SCHEDULES", None)
    if sched is None or not names:
        return []
    return [(n, lambda n=n: sched(n)) for n in names]


@pytest.mark.parametrize("name", ["gemm-split", "small-split"])
def test_dw_db_equal_under_both_schedules(be, name):
    if be.kind != "emulator":
        pytest.skip("thread schedules are an emulator feature")
    schedules = _schedules()
    if len(schedules) < 2:
        pytest.skip("the emulator exposes no choice of thread schedule")
    case = next(c for c in CASES if c[0] == name)
    cfg, _act, d = _data(case, np.float32, seed=4)
    dy, x, w = (_dev(be, d[k]) for k in ("dy", "x", "w"))
    y = _dev(be, REF.forward(d["x"], d["w"], d["b"], cfg, "sigmoid"))
    results = []
    for _, ctx in schedules:
        with ctx():
            dw, db = be.backward_weight(dy, x, cfg), be.backward_bias(dy)
            _, dw_fused, db_fused = be.backward(dy, y, x, w, cfg, "sigmoid")
        results.append([to_module(a, np).tobytes() for a in (dw, db, dw_fused, db_fused)])
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("x_shape, w_shape", [
    ((2**14, 256, 256, 1), (1, 1, 1, 1)),  # 2**30 pixels
    ((1, 8, 8, 2**15), (4, 4, 2**15, 2**11)),  # 2**30 weights
])
def test_refuses_past_int32_indices(be, x_shape, w_shape):
    cfg = make_config("test", x_shape, w_shape)
    tiny = be.xp.ones((1, 1, 1, 1), np.float32)  # never read: the wrapper refuses before allocating
    for call in (
        lambda: be.forward(tiny, tiny, None, cfg, "identity"),
        lambda: be.backward_input(tiny, tiny, cfg),
        lambda: be.backward_weight(tiny, tiny, cfg),
    ):
        with pytest.raises(ValueError, match="2\\*\\*30"):
            call()


def test_refuses_direct_dx_grid_past_cuda_limit(be):
    # 2**29 pixels x 2**8 groups of 5 channels (one pixel per row), 8 lanes a row: the direct dx kernel's
    # (pixel, group) rows need 2**37 / 32 = 2**32 blocks along x, over CUDA's 2**31 - 1, while every int32 count
    # stays below 2**30. The refusal comes from the same launch plan the wrapper would run.
    cfg = make_config("test", (1, 2**14, 2**15, 5 * 2**8), (1, 1, 5, 8 * 2**8), groups=2**8)
    (launch, *_) = _plans.backward_input(cfg, "identity")
    assert launch.kernel == "gpuconv_conv_bwd_input_direct" and launch.grid[0] == 2**32
    tiny = be.xp.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="gpuconv_conv_bwd_input_direct.* along x exceed CUDA.s grid limit"):
        be.backward_input(tiny, tiny, cfg)


def test_refuses_bias_gradient_past_int32_rows(be):
    class Huge:  # only its shape and size are looked at before the refusal
        shape, size, dtype = (2**30, 1), 2**30, np.dtype(np.float32)

    with pytest.raises(ValueError, match="2\\*\\*30"):
        be.backward_bias(Huge())


def test_public_api_on_the_backend(be):
    cfg, act, d = _data(CASES[1], np.float64)
    opts = CASES[1][3]
    y = _api.conv2d(d["x"], d["w"], d["b"], activation=act, backend=BACKEND, **opts)
    _close("conv2d", y, REF.forward(d["x"], d["w"], d["b"], cfg, act), np.float64)
    g = _api.conv2d_backward(d["dy"], d["x"], d["w"], y, activation=act, backend=BACKEND, **opts)
    dz = _ref_act_backward(d["dy"], np.asarray(y), act)
    _close("dx", g.dx, REF.backward_input(dz, d["w"], cfg), np.float64)
    _close("dw", g.dw, REF.backward_weight(dz, d["x"], cfg), np.float64)
    _close("db", g.db, REF.backward_bias(dz), np.float64)


def test_dw_respects_workspace_limit(be):
    from gpuconv._config import get_workspace_limit, set_workspace_limit

    case = next(c for c in CASES if c[0] == "gemm-split")
    cfg, _, d = _data(case, np.float64)
    want = REF.backward_weight(d["dy"], d["x"], cfg)
    old = get_workspace_limit()
    try:
        set_workspace_limit(1)  # one split: the partial sums of one pass only
        _close("dw, one split", be.backward_weight(_dev(be, d["dy"]), _dev(be, d["x"]), cfg), want, np.float64)
    finally:
        set_workspace_limit(old)


@pytest.mark.parametrize("opts", [
    {"stride": 1},
    {"stride": 2, "padding": 1},
    {"stride": (3, 2), "dilation": (2, 3), "padding": ((4, 0), (1, 5))},
    {"stride": 2, "dilation": 2, "padding": ((1, 2), (2, 0))},
    {"stride": 4, "padding": 0},
])
def test_stride_phases_cover_every_pixel_and_tap_once(opts):
    """The dx launch plan (host side, no kernel): every input pixel is in exactly one phase, and the taps listed
    for it are exactly the taps through which some output position reads it."""
    cfg = make_config("test", (1, 11, 13, 1), (4, 3, 1, 1), **opts)
    seen = {}
    for h0, hp_n, qh0, w0, wp_n, qw0, k1f, k1s, t1, k1b, k1i, k2f, k2s, t2, k2b, k2i in _plans.stride_phases(cfg):
        for hp in range(hp_n):
            for wp in range(wp_n):
                h, w = h0 + hp * cfg.s1, w0 + wp * cfg.s2
                assert (h, w) not in seen
                listed = set()
                for i1 in range(t1):
                    for i2 in range(t2):
                        k1, k2 = k1f + i1 * k1s, k2f + i2 * k2s
                        oi, oj = qh0 + hp - (k1b + i1 * k1i), qw0 + wp - (k2b + i2 * k2i)
                        assert oi * cfg.s1 + k1 * cfg.d1 - cfg.pt == h and oj * cfg.s2 + k2 * cfg.d2 - cfg.pl == w
                        if 0 <= oi < cfg.oh and 0 <= oj < cfg.ow:
                            listed.add((k1, k2, oi, oj))
                seen[(h, w)] = listed
    assert set(seen) == {(h, w) for h in range(cfg.h) for w in range(cfg.w)}
    for (h, w), listed in seen.items():  # brute force: every (tap, output) that reads pixel (h, w)
        want = {(k1, k2, oi, oj) for k1 in range(cfg.kh) for k2 in range(cfg.kw) for oi in range(cfg.oh)
                for oj in range(cfg.ow) if oi * cfg.s1 + k1 * cfg.d1 - cfg.pt == h
                and oj * cfg.s2 + k2 * cfg.d2 - cfg.pl == w}
        assert listed == want, (h, w)
