"""The tensor-core kernels (kernels/conv_tc_*.cu) from their exact source, on the CPU emulator (or on a GPU with
GPUCONV_KERNEL_BACKEND=cupy), against a float64 reference of the operands exactly as the kernels see them.

Operands: TF32 rounds x, w (forward), dz, w (dx) and x, dz (dw) with the hardware's cvt.rna (tf32_round); dz is
dy * act'(z) computed in float32 and, for float16 / bfloat16, rounded to the storage type (as the kernels' fused
loads store it in the shared tile). Error bound of a result r^ of K products with S = sum |a||b| (the float64
sum of the absolute products): float32 accumulation |r^ - r| <= (K + 1) * 2^-23 * S (the tensor cores'
accumulation is looser than round-to-nearest: u = 2^-23 as in tests/test_precision.py), plus the activation's
Lipschitz factor (sigmoid: 1/4, and 2^-20 for its float32 evaluation), plus one rounding on the store of a 2-byte
dtype (2^-11 half, 2^-8 bfloat16, relative). The cases cover both kernel variants (16-byte cp.async tiles and
element loads), every tile shape, stride, dilation, asymmetric padding, groups, stride phases no tap reaches,
channel counts that do and do not fill a fragment, and every activation. dw and db must be bitwise equal over
runs and under the reverse schedule (which also permutes the emulator's wmma fragment layout).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from gpuconv._config import make_config
from gpuconv._dispatch import BackendUnavailable, load_backend
from gpuconv.backends import cuda_tc

import reference as ref

BACKEND = os.environ.get("GPUCONV_KERNEL_BACKEND", "emulator")
BF16 = cuda_tc.BFLOAT16
# (name, dtype, precision): the three tensor-core modes
MODES = [("tf32", np.dtype(np.float32), "tf32"), ("fp16", np.dtype(np.float16), "highest")]
if BF16 is not None:
    MODES.append(("bf16", BF16, "highest"))
STORE_UNIT = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
STORE_TINY = {"float16": 2.0**-24, "bfloat16": 2.0**-133}

# (id, x shape NHWC, w shape HWIO, options, activation)
CASES = [
    ("vec-pad1", (2, 8, 8, 32), (3, 3, 32, 32), {"padding": 1}, "relu"),
    ("vec-wide-stride-dil-asym", (1, 9, 10, 32), (3, 2, 32, 80),
     {"stride": (2, 1), "dilation": (1, 2), "padding": ((2, 0), (1, 1))}, "sigmoid"),
    ("groups", (1, 7, 8, 64), (3, 3, 32, 64), {"groups": 2, "padding": 1}, "identity"),
    ("stem", (1, 11, 12, 3), (7, 7, 3, 24), {"stride": 2, "padding": 3}, "relu"),
    ("odd-channels", (2, 6, 7, 10), (2, 3, 5, 34), {"groups": 2, "stride": (1, 2), "padding": ((0, 1), (1, 0))},
     "sigmoid"),
    ("dx-empty-phases", (1, 9, 10, 32), (3, 3, 32, 32), {"stride": 2, "dilation": 2, "padding": ((1, 2), (2, 0))},
     "relu"),
    ("rows-3-tiles-1x1", (2, 12, 11, 16), (1, 1, 16, 16), {}, "tanh"),
    ("dx-wide-stride2", (1, 6, 7, 80), (3, 3, 80, 32), {"stride": 2, "padding": 1}, "relu"),
    ("depthwise", (1, 6, 6, 4), (3, 3, 1, 4), {"groups": 4, "padding": 1}, "sigmoid"),
    ("groups-odd-cg", (1, 7, 6, 12), (3, 3, 6, 16), {"groups": 2, "padding": 1}, "relu"),  # not padded
    ("vec-taps-per-step", (2, 9, 8, 8), (3, 3, 8, 24), {"stride": (1, 2), "dilation": (2, 1), "padding": 2},
     "relu"),
]


@pytest.fixture(scope="module")
def be():
    try:
        return load_backend(BACKEND)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def host(a):
    """A backend array as a numpy array (cupy arrays are copied back)."""
    return np.asarray(a.get() if hasattr(a, "get") else a)


def tf32_round(a):
    """cvt.rna.tf32.f32 on float32 bits: (u + 0x1000) & 0xFFFFE000 where finite; NaN and inf unchanged."""
    a = np.ascontiguousarray(a, np.float32)
    u = a.view(np.uint32)
    finite = (u & 0x7F800000) != 0x7F800000
    return np.where(finite, (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000), u).astype(np.uint32).view(np.float32)


def operand(a, mode):
    """The value a kernel multiplies, as float64."""
    return (tf32_round(a) if mode == "tf32" else a).astype(np.float64)


def kernel_dz(dy, y, act, dtype):
    """dz as the kernels' fused loads make it: float32 arithmetic, rounded to the storage type."""
    d = dy.astype(np.float32)
    if act == "relu":
        d = np.where(y.astype(np.float32) > 0, d, np.float32(0))
    elif act == "sigmoid":
        u = y.astype(np.float32)
        d = d * u * (np.float32(1) - u)
    elif act == "tanh":
        u = y.astype(np.float32)
        d = d * (np.float32(1) - u * u)
    return d.astype(dtype)


def bound(dt, terms, abs_sum, value, lipschitz=1.0, extra=0.0):
    err = (terms + 1) * 2.0**-23 * abs_sum * lipschitz + extra
    if dt.name in STORE_UNIT:
        err = err + STORE_UNIT[dt.name] * (np.abs(value) + err) + STORE_TINY[dt.name]
    return err


def assert_within(out, want, err, what):
    out = host(out).astype(np.float64)
    assert out.shape == want.shape, what
    bad = ~(np.abs(out - want) <= err)
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} outside the bound, worst excess "
                           f"{np.max(np.abs(out - want) - err)}")


def _data(case, dtype, seed):
    _, xs, ws, opts, act = case
    cfg = make_config("test", xs, ws, **opts)
    rng = np.random.default_rng(seed)
    u = lambda shape, lo=-1.0: rng.uniform(lo, 1.0, shape).astype(np.float32).astype(dtype)
    y = u(cfg.y_shape, 0.0)  # a saved output of relu / sigmoid lies in [0, 1)
    return cfg, opts, act, u(xs), u(ws), u(ws[3]), u(cfg.y_shape), y


def _routes(cfg, dtype, precision, arch=None, activation="identity"):
    return cuda_tc.routes(cfg, dtype, precision, arch, activation=activation, wgmma=arch == cuda_tc.WGMMA_ARCH)


def _tested_routes(case, cfg, dtype, precision, arch=None):
    """The kernels _check_against_float64 runs for a case: its activation's, and (tf32 with an activation whose
    dz a pass stores rounded) those of the identity too, which round dz in their loads."""
    out = set()
    for act in {case[4], "identity"}:
        out |= {v for v in _routes(cfg, dtype, precision, arch, activation=act).values() if v is not None}
    return out


def test_cases_cover_every_activation():
    from gpuconv import _registry

    assert {c[4] for c in CASES} == set(_registry.ACTIVATIONS)


def test_cases_cover_every_variant():
    """The cases reach every registered tensor-core kernel of the three modes (so each one runs here), the
    sm_70 / sm_75 FP16 plans and the wgmma kernels of sm_90 included."""
    from gpuconv.cuda.modules import kernel_source, registered_name_expressions

    seen = set()
    for case in CASES:
        cfg = make_config("test", case[1], case[2], **case[3])
        for _, dt, precision in MODES:
            seen |= _tested_routes(case, cfg, dt, precision)
        if case in WMMA_CASES:  # test_sm75_fp16_path_against_float64: the 2-stage FP16 plans of sm_70 / sm_75
            seen |= {v for v in _routes(cfg, np.dtype(np.float16), "highest", 75).values() if v is not None}
        for cases, table, bm in ((TALL_CASES, "NARROW_TILES", 256), (WIDE_CASES, "WIDE_TILES", 128)):
            if case in cases:  # test_tall_tiles_against_float64, test_wide_tiles_against_float64
                with pytest.MonkeyPatch.context() as mp:
                    _only_tile(mp, table, bm)
                    for _, dt, precision in MODES:
                        seen |= _tested_routes(case, cfg, dt, precision)
    for case in HOPPER_CASES:  # test_sm90_wgmma_forward_against_float64: the wgmma kernels
        cfg = make_config("test", case[1], case[2], **case[3])
        for _, dt, precision in HOPPER_MODES:
            seen |= _tested_routes(case, cfg, dt, precision, 90)
    registered = set()
    for f in (cuda_tc.TC_FORWARD_FILE, cuda_tc.TC_BACKWARD_FILE, cuda_tc.WGMMA_FORWARD_FILE,
              cuda_tc.WGMMA_BACKWARD_FILE):
        registered |= {e for e in registered_name_expressions(kernel_source(f))
                       if e.startswith(("gpuconv_tc_", "gpuconv_wgmma_"))}
    if BF16 is None:
        registered = {e for e in registered if "bfloat16" not in e}
    assert registered <= seen, sorted(registered - seen)


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_and_backward_against_float64(be, case, mode):
    _check_against_float64(be, case, mode)


def _planned_backend(arch, defines=(), wgmma=False):
    """A backend whose tensor-core plans are those of compute capability ``arch`` (None: the emulator's, every
    mode), its kernels compiled with the extra -D ``defines``: -DGPUCONV_TC_WMMA=1 for the nvcuda::wmma path
    (sm_70 / sm_75's FP16 path), which the emulator otherwise never sees (it runs the ldmatrix / mma.sync path);
    arch 90 and wgmma for the wgmma kernels (kernels/conv_wgmma_*.cu)."""
    from gpuconv.backends import _plans
    from gpuconv.backends.cuda import CudaBackend
    from gpuconv.cuda import modules

    class PlannedEmulator(CudaBackend):
        def _arch(self):
            return arch

        def _wgmma(self):
            return wgmma

    with pytest.MonkeyPatch.context() as mp:
        if defines:
            base = _plans.kernel_defines()
            mp.setattr(_plans, "kernel_defines", lambda: (*base, *defines))
            mp.setattr(modules, "_fast", {})  # its keys leave out the package's -D options
        yield PlannedEmulator("emulator", np)


def _emulator_only():
    if BACKEND != "emulator":
        pytest.skip("the GPU's architecture picks its path; the emulator runs each on request")


@pytest.fixture(scope="module")
def wmma_be():
    _emulator_only()
    yield from _planned_backend(None, ("-DGPUCONV_TC_WMMA=1",))


@pytest.fixture(scope="module")
def sm75_be():
    _emulator_only()
    yield from _planned_backend(75, ("-DGPUCONV_TC_WMMA=1",))


@pytest.fixture(scope="module")
def sm90_be(be):
    """The wgmma forward: on the emulator by request; on a GPU where it is an sm_90 one and GPUCONV_WGMMA=1."""
    if BACKEND != "emulator":
        if be._arch() != cuda_tc.WGMMA_ARCH or not be._wgmma():
            pytest.skip(f"the wgmma forward runs on sm_90 with {cuda_tc.WGMMA_ENV}=1")
        yield be
        return
    yield from _planned_backend(90, wgmma=True)


WMMA_CASES = [CASES[0], CASES[1], CASES[4], CASES[7]]  # both tiles and variants, the wide dx


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("case", WMMA_CASES, ids=[c[0] for c in WMMA_CASES])
def test_wmma_path_against_float64(wmma_be, case, mode):
    """The same checks on the wmma path (its fragment layout permuted under the reverse schedule)."""
    _check_against_float64(wmma_be, case, mode)


@pytest.mark.parametrize("case", WMMA_CASES, ids=[c[0] for c in WMMA_CASES])
def test_sm75_fp16_path_against_float64(sm75_be, case):
    """What an sm_70 / sm_75 GPU runs: FP16 on wmma with the 2-stage plans (no cp.async hardware there)."""
    _check_against_float64(sm75_be, case, MODES[1], arch=75)


# The wgmma kernels' cases (an H100 / H200 runs the forward where Mg > 64, dx where Cg > 64, and the channels are
# whole 16-byte runs; FP16, BF16 and TF32): partial row and column tiles with groups, more reduction steps than stages,
# odd and even step counts, a single step, steps spanning several taps with a partial last step (Cg = 8),
# stride, dilation and asymmetric padding.
HOPPER_CASES = [
    CASES[1],
    ("wg-groups-partial-tiles", (2, 9, 8, 32), (3, 3, 16, 272), {"groups": 2, "padding": 1}, "relu"),
    ("wg-long-reduction", (1, 6, 6, 64), (3, 3, 64, 96), {"padding": ((0, 1), (1, 0))}, "identity"),
    ("wg-taps-per-step", (1, 7, 9, 8), (3, 3, 8, 72), {"stride": 2, "padding": ((1, 0), (0, 2))}, "tanh"),
    ("wg-one-step", (1, 5, 6, 16), (1, 1, 16, 80), {}, "relu"),  # one reduction step (TF32: only the odd tail)
    # dx on wgmma (Cg > 64): stride phases, a partial column tile; groups with phases no tap reaches
    ("wg-dx-stride2", (1, 9, 10, 144), (3, 3, 144, 64), {"stride": 2, "padding": 1}, "relu"),
    ("wg-dx-groups-empty-phases", (1, 9, 10, 160), (3, 3, 80, 64),
     {"groups": 2, "stride": 2, "dilation": 2, "padding": ((1, 2), (2, 0))}, "sigmoid"),
]
HOPPER_MODES = MODES
HOPPER_PAIRS = [(c, m) for c in HOPPER_CASES for m in HOPPER_MODES]  # every mode on every case


@pytest.mark.parametrize("case,mode", HOPPER_PAIRS, ids=[f"{c[0]}-{m[0]}" for c, m in HOPPER_PAIRS])
def test_sm90_wgmma_forward_against_float64(sm90_be, case, mode):
    """What an H100 / H200 runs with GPUCONV_WGMMA=1: the forward and dx on wgmma where they apply (the rest as
    on sm_80)."""
    cfg = make_config("test", case[1], case[2], **case[3])
    routes = _routes(cfg, mode[1], mode[2], 90)
    assert "gpuconv_wgmma_" in (routes["forward"] or "") + (routes["backward_input"] or "")
    _check_against_float64(sm90_be, case, mode, arch=90)


@pytest.mark.parametrize("mode", HOPPER_MODES, ids=[m[0] for m in HOPPER_MODES])
def test_sm90_wgmma_forward_without_bias_and_across_schedules(sm90_be, mode):
    """No bias, and the same bits under both thread schedules (a missing barrier or wait shows as a change)."""
    if BACKEND != "emulator":
        pytest.skip("thread schedules are an emulator feature")
    name, dt, precision = mode
    case = HOPPER_CASES[1]
    cfg, opts, act, x, w, *_ = _data(case, dt, seed=11)
    xr, wr = operand(x, name), operand(w, name)
    want = ref.activate(ref.conv2d_linear(xr, wr, None, **opts), act)
    s = ref.conv2d_linear(np.abs(xr), np.abs(wr), None, **opts)
    runs = []
    for ctx in _schedules():
        with ctx():
            runs.append(host(sm90_be.forward(x, w, None, cfg, act, precision=precision)))
    assert_within(runs[0], want, bound(dt, case[2][0] * case[2][1] * case[2][2], s, want), f"{name} forward")
    assert runs[0].tobytes() == runs[1].tobytes(), f"{name}: the schedules give different bits"


@pytest.mark.parametrize("mode", HOPPER_MODES, ids=[m[0] for m in HOPPER_MODES])
def test_sm90_wgmma_dx_with_the_transposed_convolutions_epilogue(sm90_be, mode):
    """conv2d_transpose's act(dx + b) from the wgmma dx, phases no tap reaches included (they store act(b)),
    and the same bits under both thread schedules."""
    name, dt, precision = mode
    case = HOPPER_CASES[-1]
    cfg, opts, _, _, w, _, dz, _ = _data(case, dt, seed=13)
    assert _routes(cfg, dt, precision, 90)["backward_input"].startswith("gpuconv_wgmma_bwd_input<")
    b = np.random.default_rng(14).uniform(-1, 1, cfg.x_shape[3]).astype(np.float32).astype(dt)
    runs = []
    for ctx in _schedules() or [contextlib.nullcontext]:
        with ctx():
            runs.append(host(sm90_be.backward_input(dz, w, cfg, precision=precision, b=b, activation="tanh")))
    dzr, wr = operand(dz, name), operand(w, name)
    z = ref.backward_input(dzr, wr, cfg.x_shape, **opts) + b.astype(np.float64)
    want = np.tanh(z)
    s = ref.backward_input(np.abs(dzr), np.abs(wr), cfg.x_shape, **opts) + np.abs(b.astype(np.float64))
    assert_within(runs[0], want, bound(dt, cfg.kh * cfg.kw * cfg.mg, s, want, 1.0, 2.0**-20), f"{name} dx")
    assert all(r.tobytes() == runs[0].tobytes() for r in runs), f"{name}: the schedules give different bits"


def _only_tile(mp, table, bm):
    """cuda_tc's tile table (NARROW_TILES or WIDE_TILES) cut to its tile of ``bm`` rows: the emulator's small
    layers are one round of blocks, where the cheapest step wins."""
    mp.setattr(cuda_tc, table, tuple(t for t in getattr(cuda_tc, table) if t[0] == bm))


TALL_CASES = [CASES[0], CASES[2], CASES[5]]  # forward and dx with at most 64 columns: stride, groups, phases


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("case", TALL_CASES, ids=[c[0] for c in TALL_CASES])
def test_tall_tiles_against_float64(be, case, mode, monkeypatch):
    """The 256 x 64 tiles of tall forward and dx GEMMs (cuda_tc.NARROW_TILES; large layers take them)."""
    _only_tile(monkeypatch, "NARROW_TILES", 256)
    cfg = make_config("test", case[1], case[2], **case[3])
    assert any(v is not None and "256, 64" in v for v in _routes(cfg, mode[1], mode[2]).values()) or \
        all(v is None for v in _routes(cfg, mode[1], mode[2]).values())
    _check_against_float64(be, case, mode)


# forward and dx with more than 64 columns on 128-row tiles (their default route takes 96 x 128): stride,
# dilation, phases; and two row blocks of either tile
WIDE_CASES = [CASES[1], CASES[7]]
WIDE_ROWS = ("wide-rows", (2, 9, 8, 80), (3, 3, 80, 96), {"padding": 1}, "tanh")  # Mg whole steps
WIDE_RUNS = [(c, 128) for c in WIDE_CASES] + [(WIDE_ROWS, 96), (WIDE_ROWS, 128)]


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
@pytest.mark.parametrize("case, bm", WIDE_RUNS, ids=[f"{c[0]}-{bm}" for c, bm in WIDE_RUNS])
def test_wide_tiles_against_float64(be, case, bm, mode, monkeypatch):
    """The 96 x 128 and 128 x 128 tiles of forward and dx GEMMs of more than 64 columns. At these sizes every
    launch is one round of blocks, which 96 x 128 tiles finish sooner (cuda_tc.WIDE_TILES); large layers take
    128 x 128 (tests/test_tc_routing.py), as they do here with WIDE_TILES set to one tile."""
    _only_tile(monkeypatch, "WIDE_TILES", bm)
    cfg = make_config("test", case[1], case[2], **case[3])
    assert any(v is not None and f"{bm}, 128, 4" in v for v in _routes(cfg, mode[1], mode[2]).values())
    _check_against_float64(be, case, mode)


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_wide_tiles_give_the_same_bits(be, mode):
    """The tile is the plans' choice by the device's SM count, so it must not change a result: forward and dx
    of 96 x 128 and 128 x 128 tiles are bitwise equal (each output's sum runs through the same steps)."""
    name, dt, precision = mode
    cfg, opts, act, x, w, b, dy, y = _data(WIDE_ROWS, dt, seed=11)
    d = be.xp.asarray
    runs = []
    for bm in (96, 128):
        with pytest.MonkeyPatch.context() as mp:
            _only_tile(mp, "WIDE_TILES", bm)
            routes = _routes(cfg, dt, precision)
            assert f"{bm}, 128, 4" in routes["forward"] and f"{bm}, 128, 4" in routes["backward_input"]
            out = host(be.forward(d(x), d(w), d(b), cfg, act, precision=precision))
            dx = host(be.backward_input(d(kernel_dz(dy, y, act, dt)), d(w), cfg, precision=precision))
            runs.append((out, dx))
    for got, want, what in zip(runs[0], runs[1], ("forward", "dx")):
        assert got.tobytes() == want.tobytes(), f"{name} {what}: 96 x 128 and 128 x 128 tiles differ"


def _check_against_float64(be, case, mode, arch=None):
    name, dt, precision = mode
    cfg, opts, act, x, w, b, dy, y = _data(case, dt, seed=len(case[0]))
    routes = _routes(cfg, dt, precision, arch)
    if all(v is None for v in routes.values()):
        pytest.skip(f"{name}: every operation of this case takes the SIMT kernels")

    d = be.xp.asarray
    out = host(be.forward(d(x), d(w), d(b), cfg, act, precision=precision))
    if routes["forward"] is not None:
        xr, wr, b64 = operand(x, name), operand(w, name), b.astype(np.float64)
        z = ref.conv2d_linear(xr, wr, b64, **opts)
        s = ref.conv2d_linear(np.abs(xr), np.abs(wr), np.abs(b64), **opts)
        want = ref.activate(z, act)
        lip, extra = {"sigmoid": (0.25, 2.0**-20), "tanh": (1.0, 2.0**-20)}.get(act, (1.0, 0.0))
        assert_within(out, want, bound(dt, case[2][0] * case[2][1] * case[2][2], s, want, lip, extra),
                      f"{routes['forward']} forward")

    dx, dw, db = be.backward(d(dy), None if act == "identity" else d(y), d(x), d(w), cfg, act, True,
                             precision=precision)
    dz = operand(kernel_dz(dy, y, act, dt), name)
    if routes["backward_input"] is not None:
        wr = operand(w, name)
        want = ref.backward_input(dz, wr, cfg.x_shape, **opts)
        s = ref.backward_input(np.abs(dz), np.abs(wr), cfg.x_shape, **opts)
        assert_within(dx, want, bound(dt, cfg.kh * cfg.kw * cfg.mg, s, want), f"{routes['backward_input']} dx")
    if routes["backward_weight"] is not None:
        xr = operand(x, name)
        want = ref.backward_weight(dz, xr, cfg.w_shape, **opts)
        s = ref.backward_weight(np.abs(dz), np.abs(xr), cfg.w_shape, **opts)
        assert_within(dw, want, bound(dt, cfg.n * cfg.oh * cfg.ow, s, want), f"{routes['backward_weight']} dw")
    if name == "tf32" and act != "identity":
        # backward's pass stored dz rounded to TF32 for the DZ_TF32 kernels: bitwise what the kernels that round
        # a user's dz in their loads give; so is the dz of the elementwise pass (gpuconv_act_bwd, no bias)
        dz_dev = be.activation_backward(d(dy), d(y), act)
        dx_nb, dw_nb, _ = be.backward(d(dy), d(y), d(x), d(w), cfg, act, False, precision=precision)
        # and a first layer's (dw, db), as gpuconv.torch asks when the input needs no gradient
        none, dw_first, db_first = be.backward(d(dy), d(y), d(x), d(w), cfg, act, True, precision=precision,
                                               grads=("dw",))
        assert none is None
        for got, again, what in ((dx, be.backward_input(dz_dev, d(w), cfg, precision=precision), "dx"),
                                 (dw, be.backward_weight(dz_dev, d(x), cfg, precision=precision), "dw"),
                                 (dx, dx_nb, "dx without a bias"), (dw, dw_nb, "dw without a bias"),
                                 (dw, dw_first, "dw alone"), (db, db_first, "db with dw alone")):
            assert host(got).tobytes() == host(again).tobytes(), f"{what}: DZ_TF32 against rounding in the loads"
    dz_exact = kernel_dz(dy, y, act, np.float32).astype(np.float64)  # db: the SIMT kernel's unrounded dz
    want = ref.backward_bias(dz_exact)
    assert_within(db, want, bound(dt, cfg.n * cfg.oh * cfg.ow, ref.backward_bias(np.abs(dz_exact)), want), "db")


def _schedules():
    try:
        from gpuconv.cuda import emulator
    except ImportError:
        return []
    return [lambda: emulator.schedule("forward"), lambda: emulator.schedule("reverse")]


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_deterministic_across_runs_and_schedules(be, mode):
    """dw and db bitwise equal over runs and thread schedules (the reverse one permutes the wmma layout);
    forward and dx equal too, since no kernel here depends on the order threads run in."""
    if BACKEND != "emulator":
        pytest.skip("thread schedules are an emulator feature")
    name, dt, precision = mode
    case = CASES[1]
    cfg, opts, act, x, w, b, dy, y = _data(case, dt, seed=7)
    runs = []
    for ctx in _schedules() + _schedules()[:1]:
        with ctx():
            yy = be.forward(x, w, b, cfg, act, precision=precision)
            runs.append((yy, *be.backward(dy, y, x, w, cfg, act, True, precision=precision)))
    for other in runs[1:]:
        for a, o, what in zip(runs[0], other, ("y", "dx", "dw", "db")):
            assert host(a).tobytes() == host(o).tobytes(), f"{name} {what}"


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_dx_nan_rule(be, mode):
    """A NaN / inf weight at a tap reaches dx only where that tap reaches an output pixel (the chain rule),
    though the GEMM would multiply a zero-filled dz by it: the non-finite flag sends the blocks to the exact loop."""
    _check_dx_nan_rule(be, mode, make_config("test", (1, 6, 7, 32), (3, 3, 32, 32)))  # valid: border taps miss


@pytest.mark.parametrize("mode", HOPPER_MODES, ids=[m[0] for m in HOPPER_MODES])
def test_sm90_wgmma_dx_nan_rule(sm90_be, mode):
    cfg = make_config("test", (1, 6, 7, 96), (3, 3, 96, 32))
    assert _routes(cfg, mode[1], mode[2], 90)["backward_input"].startswith("gpuconv_wgmma_bwd_input<")
    _check_dx_nan_rule(sm90_be, mode, cfg, arch=90)


def _check_dx_nan_rule(be, mode, cfg, arch=None):
    name, dt, precision = mode
    rng = np.random.default_rng(3)
    w = rng.uniform(-1, 1, cfg.w_shape).astype(np.float32).astype(dt)
    w[2, 2, 1, 5] = np.nan
    w[0, 1, 3, 7] = np.inf
    dz = rng.uniform(-1, 1, cfg.y_shape).astype(np.float32).astype(dt)
    assert _routes(cfg, dt, precision, arch)["backward_input"] is not None
    dx = host(be.backward_input(be.xp.asarray(dz), be.xp.asarray(w), cfg, precision=precision)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        want = ref.backward_input(operand(dz, name), operand(w, name), cfg.x_shape)
    assert np.array_equal(np.isnan(dx), np.isnan(want)) and np.isnan(want).any() and (~np.isnan(want)).any()
    assert np.array_equal(np.isinf(dx), np.isinf(want))
    fin = np.isfinite(want)
    s = ref.backward_input(np.abs(operand(dz, name)), np.where(np.isfinite(w), np.abs(operand(w, name)), 0),
                           cfg.x_shape)
    assert_within(dx[fin], want[fin], bound(dt, 9 * cfg.mg, s, want)[fin], "dx finite part")


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_db_pass_stores_dz(be, mode):
    """With a bias, backward's dz for the tensor-core kernels comes from db's pass over dy and y: the same dz as
    the elementwise gpuconv_act_bwd and the same db as without it, bit for bit (db sums the unrounded values)."""
    name, dt, precision = mode
    rng = np.random.default_rng(8)
    dy, y = (be.xp.asarray(rng.uniform(lo, 1, (2, 5, 6, 40)).astype(np.float32).astype(dt)) for lo in (-1, 0.01))
    for act in ("relu", "sigmoid", "tanh"):
        if act == "relu":  # relu's saved output: zeros (gradient 0) and positives
            y = be.xp.asarray(np.maximum(host(dy), 0).astype(dt)[::-1].copy())
        dz = be.xp.empty(dy.shape, dy.dtype)
        db = be.backward_bias_fused(dy, y, act, dz_out=dz)
        assert host(dz).tobytes() == host(be.activation_backward(dy, y, act)).tobytes(), act
        assert host(db).tobytes() == host(be.backward_bias_fused(dy, y, act)).tobytes(), act
        if name == "tf32":  # dz for the DZ_TF32 kernels: rounded as tf32_round, by either pass; db unchanged
            dz_tf32 = be.xp.empty(dy.shape, dy.dtype)
            db_tf32 = be.backward_bias_fused(dy, y, act, dz_out=dz_tf32, dz_tf32=True)
            want = tf32_round(host(dz)).tobytes()
            assert host(dz_tf32).tobytes() == want and host(db_tf32).tobytes() == host(db).tobytes(), act
            assert host(be.activation_backward(dy, y, act, tf32=True)).tobytes() == want, act


def test_float16_few_channel_dx_on_tensor_cores_and_unaligned_on_simt(be):
    """float16 dx with few input channels (the stem's) runs on the tensor cores' fast variant only; a dz off a
    16-byte boundary takes the SIMT direct kernel instead. Both within the bound of the float64 reference."""
    cfg = make_config("test", (2, 9, 10, 3), (3, 3, 3, 32), stride=2, padding=1)
    assert cuda_tc.backward_input_plan(cfg, np.float16, "highest", None, 1)[-1].template[-1] is True
    assert cuda_tc.backward_input_plan(cfg, np.float16, "highest", None, 1, aligned=False) is None
    rng = np.random.default_rng(11)
    buf = rng.uniform(-1, 1, int(np.prod(cfg.y_shape)) + 1).astype(np.float16)
    w = rng.uniform(-1, 1, cfg.w_shape).astype(np.float16)
    dzr, wr = buf[1:].reshape(cfg.y_shape).astype(np.float64), w.astype(np.float64)
    opts = dict(stride=2, padding=1)
    want = ref.backward_input(dzr, wr, cfg.x_shape, **opts)
    limit = bound(np.dtype(np.float16), 9 * 32, ref.backward_input(np.abs(dzr), np.abs(wr), cfg.x_shape, **opts),
                  want)
    dbuf = be.xp.asarray(buf)
    for dz in (be.xp.ascontiguousarray(dbuf[1:]).reshape(cfg.y_shape), dbuf[1:].reshape(cfg.y_shape)):
        dx = host(be.backward_input(dz, be.xp.asarray(w), cfg)).astype(np.float64)
        assert_within(dx, want, limit, "float16 few-channel dx")


@pytest.mark.parametrize("mode", MODES, ids=[m[0] for m in MODES])
def test_unaligned_arrays_take_the_generic_variant(be, mode):
    """A view that starts off a 16-byte boundary cannot feed 16-byte copies: same results, element loads."""
    name, dt, precision = mode
    cfg = make_config("test", (1, 6, 6, 32), (3, 3, 32, 32), padding=1)
    rng = np.random.default_rng(5)
    buf = be.xp.asarray(rng.uniform(-1, 1, int(np.prod(cfg.x_shape)) + 1).astype(np.float32).astype(dt))
    x = buf[1:].reshape(cfg.x_shape)  # one element off the allocation's (aligned) start
    w = rng.uniform(-1, 1, cfg.w_shape).astype(np.float32).astype(dt)
    assert cuda_tc.forward_plan(cfg, dt, precision, None, "identity", False, aligned=False)[0].template[-1] is False
    out = host(be.forward(x, be.xp.asarray(w), None, cfg, "identity", precision=precision))
    xr, wr = operand(host(x), name), operand(w, name)
    want = ref.conv2d_linear(xr, wr, padding=1)
    assert_within(out, want, bound(dt, 9 * 32, ref.conv2d_linear(np.abs(xr), np.abs(wr), padding=1), want),
                  "unaligned forward")
