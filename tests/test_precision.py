"""precision="highest" | "tf32", set_float32_precision, and the 2-byte dtypes (float16, bfloat16), on every backend.

Accuracy is checked elementwise against the float64 reference with the bounds of the error analysis in
gpuconv/_accuracy.py (its docstring derives them): relative to sum |a||b| of each result element, per dtype and
precision (TF32: 2^-10 per product plus float32 accumulation; float16 / bfloat16: exact inputs and products,
float32 accumulation, one rounding on store).

Parametrizations over dtypes, precisions and activations come from gpuconv._registry (every dtype here, also
those without CUDA kernels: a backend without them must refuse them clearly).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference as ref
from conftest import random_array, to_numpy
from hypothesis import given, note, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import _accuracy, _config, _dispatch, _registry
from gpuconv._accuracy import (
    TF32_UNIT,
    activation_error,
    dz_error,
    store_error,
    sum_error,
)
from gpuconv.backends.numpy import tf32_round

DTYPE_NAMES = _registry.dtype_names()
PRECISIONS = _registry.precision_names()
ACTIVATION_NAMES = _registry.activation_names()
def dtype_of(name: str) -> np.dtype:
    """The numpy dtype named ``name``; bfloat16 is skipped (with the reason) where ml_dtypes is missing."""
    try:
        return _config.dtype_from_name(name)
    except ImportError as exc:
        pytest.skip(str(exc))


def assert_within(actual, expected, bound, dt, what):
    a = to_numpy(actual)
    assert a.dtype == dt, f"{what}: dtype {a.dtype}, expected {dt}"
    assert a.shape == np.shape(expected), f"{what}: shape {a.shape}, expected {np.shape(expected)}"
    err = np.abs(a.astype(np.float64) - expected)
    worst = int(np.argmax(err - bound)) if err.size else 0
    assert np.all(err <= bound), (
        f"{what}: error {err.flat[worst]:.3g} above the bound {np.ravel(bound)[worst]:.3g} at flat index {worst} "
        f"(result {a.astype(np.float64).flat[worst]!r}, reference {np.ravel(expected)[worst]!r})"
    )


def to64(a):
    return None if a is None else np.asarray(a, np.float64)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def restore_precision():
    before = gpuconv.get_float32_precision()
    yield
    gpuconv.set_float32_precision(before)


def backend_object(backend):
    return _dispatch.load_backend(backend)


def dtype_reason(backend, dt):
    be = backend_object(backend)
    return be.dtype_reason(dt) if hasattr(be, "dtype_reason") else None


def need_dtype(backend, dt):
    """Skip when ``backend`` has no kernels for ``dt`` (the refusal itself is tested in
    test_unsupported_dtype_is_a_clear_error)."""
    reason = dtype_reason(backend, dt)
    if reason is not None:
        pytest.skip(reason)


# ---------------------------------------------------------------------------------------------- TF32 rounding
def tf32_scalar(u: int) -> int:
    """The rounding rule on one bit pattern, written out (the oracle of the vectorized ``tf32_round``)."""
    if (u >> 23) & 0xFF == 0xFF:  # inf or NaN: unchanged
        return u
    return ((u + 0x1000) & 0xFFFFE000) & 0xFFFFFFFF


def bits(values):
    return np.array(values, np.uint32).view(np.float32)


@pytest.mark.parametrize("u,expected", [
    (0x3F800000, 0x3F800000),  # 1.0: already TF32
    (0x3F800FFF, 0x3F800000),  # just below half an ulp: down
    (0x3F801000, 0x3F802000),  # a tie: away from zero
    (0xBF801000, 0xBF802000),  # a negative tie: away from zero too
    (0x3F803000, 0x3F804000),  # a tie above an odd kept mantissa: away (not to even)
    (0x3F802FFF, 0x3F802000),
    (0x3FFFF000, 0x40000000),  # carry into the exponent
    (0x7F7FF000, 0x7F800000),  # the largest float32 rounds to inf, as on the GPU
    (0x00001000, 0x00002000),  # a subnormal tie
    (0x00000FFF, 0x00000000),  # a tiny subnormal: to zero
    (0x80000000, 0x80000000),  # -0
    (0x7F800000, 0x7F800000),  # inf
    (0xFF800000, 0xFF800000),  # -inf
    (0x7FC00000, 0x7FC00000),  # a quiet NaN
    (0x7F800001, 0x7F800001),  # a NaN that the formula alone would turn into inf
    (0x7FFFFFFF, 0x7FFFFFFF),  # a NaN that the formula alone would wrap to -0
    (0xFFFFF000, 0xFFFFF000),
])
def test_tf32_round_bit_patterns(u, expected):
    assert tf32_scalar(u) == expected
    assert tf32_round(bits([u])).view(np.uint32)[0] == expected


def test_tf32_round_random_patterns(rng):
    """Every bit pattern class (normals, subnormals, inf, NaN) against the scalar rule; idempotent; for normal
    values the relative error is at most 2^-11."""
    u = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32)
    u[:200] |= np.uint32(0x7F800000)  # inf / NaN patterns
    u[200:400] &= np.uint32(0x807FFFFF)  # subnormals
    r = tf32_round(u.view(np.float32))
    np.testing.assert_array_equal(r.view(np.uint32), [tf32_scalar(int(v)) for v in u])
    np.testing.assert_array_equal(tf32_round(r).view(np.uint32), r.view(np.uint32))
    with np.errstate(invalid="ignore"):
        x = u.view(np.float32).astype(np.float64)
    normal = np.isfinite(x) & (np.abs(x) >= 2.0**-126) & np.isfinite(r)
    assert np.all(np.abs(r[normal] - x[normal]) <= TF32_UNIT * np.abs(x[normal]))
    assert not np.shares_memory(r, u)


def test_tf32_round_takes_strided_input(rng):
    a = rng.standard_normal((6, 8), dtype=np.float32)
    np.testing.assert_array_equal(tf32_round(a[:, ::2]), tf32_round(np.ascontiguousarray(a[:, ::2])))


# ---------------------------------------------------------------------------------------------- default, global
def test_default_is_highest_in_a_fresh_process():
    """gpuconv never uses TF32 unless asked: a fresh interpreter starts at "highest"."""
    code = "import gpuconv; print(gpuconv.get_float32_precision())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "highest"


def test_set_float32_precision_is_the_default_of_every_call(restore_precision, rand):
    x, w = rand((2, 6, 6, 3), np.float32), rand((3, 3, 3, 4), np.float32)
    dy = rand((2, 4, 4, 4), np.float32)
    tf32 = gpuconv.conv2d(x, w, precision="tf32", backend="numpy")
    highest = gpuconv.conv2d(x, w, precision="highest", backend="numpy")
    assert not np.array_equal(tf32, highest)
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, backend="numpy"), highest)
    gpuconv.set_float32_precision("tf32")
    assert gpuconv.get_float32_precision() == "tf32"
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, backend="numpy"), tf32)
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, backend="numpy", precision="highest"), highest)
    g = gpuconv.conv2d_backward(dy, x, w, backend="numpy")
    g_tf32 = gpuconv.conv2d_backward(dy, x, w, backend="numpy", precision="tf32")
    for a, b in zip(g, g_tf32):
        np.testing.assert_array_equal(a, b)
    layer = gpuconv.Conv2D(w, backend="numpy")  # precision None: follows the process default at each call
    np.testing.assert_array_equal(layer(x), tf32)
    gpuconv.set_float32_precision("highest")
    np.testing.assert_array_equal(layer(x), highest)
    fixed = gpuconv.Conv2D(w, backend="numpy", precision="tf32")
    np.testing.assert_array_equal(fixed(x), tf32)
    assert "precision='tf32'" in repr(fixed)


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float64"])
def test_tf32_changes_float32_only(backend, to_xp, rand, name):
    """precision="tf32" leaves every other dtype bit for bit as "highest"."""
    dt = dtype_of(name)
    need_dtype(backend, dt)
    x, w, b = rand((2, 5, 6, 3), dt), rand((3, 2, 3, 4), dt), rand((4,), dt)
    y = [to_numpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend, precision=p)) for p in PRECISIONS]
    dy = rand(y[0].shape, dt)
    g = [gpuconv.conv2d_backward(to_xp(dy), to_xp(x), to_xp(w), backend=backend, precision=p) for p in PRECISIONS]
    for p in range(1, len(PRECISIONS)):
        assert y[p].tobytes() == y[0].tobytes()
        for a, b in zip(g[p], g[0]):
            assert to_numpy(a).tobytes() == to_numpy(b).tobytes()


def test_highest_is_the_default_bit_for_bit(backend, to_xp, rand):
    x, w, b = rand((2, 6, 5, 3), np.float32), rand((3, 3, 3, 4), np.float32), rand((4,), np.float32)
    dy = rand((2, 4, 3, 4), np.float32)
    t = to_xp
    for a, c in [
        (gpuconv.conv2d(t(x), t(w), t(b), backend=backend),
         gpuconv.conv2d(t(x), t(w), t(b), backend=backend, precision="highest")),
        (gpuconv.conv2d_backward_input(t(dy), t(w), x.shape, backend=backend),
         gpuconv.conv2d_backward_input(t(dy), t(w), x.shape, backend=backend, precision="highest")),
        (gpuconv.conv2d_backward_weight(t(dy), t(x), w.shape, backend=backend),
         gpuconv.conv2d_backward_weight(t(dy), t(x), w.shape, backend=backend, precision="highest")),
    ]:
        assert to_numpy(a).tobytes() == to_numpy(c).tobytes()


# ---------------------------------------------------------------------------------------------- TF32 is applied
def tf32_sensitive(rng, shape):
    """Positive float32 values that TF32 rounds up by a large amount: the 13 dropped mantissa bits are a tie
    (0x1000: away from zero, where round-to-even would go down for an even kept mantissa) or above it, so every
    operand grows by up to half a TF32 ulp and the errors of a sum add up instead of cancelling (truncation, or
    rounding one operand only, would be caught as well)."""
    high = rng.integers(0, 2**10, size=shape, dtype=np.uint32) << np.uint32(13)  # the 10 kept mantissa bits
    low = np.where(rng.random(shape) < 0.5, 0x1000, rng.integers(0x1001, 0x2000, size=shape)).astype(np.uint32)
    exponent = rng.integers(126, 128, size=shape, dtype=np.uint32) << np.uint32(23)  # [0.5, 2)
    return (exponent | high | low).view(np.float32)


SENSITIVE = [
    ("gemm", (2, 6, 6, 16), (3, 3, 16, 16), {"padding": 1}),
    ("direct", (2, 7, 6, 3), (3, 3, 3, 5), {"stride": 2, "padding": ((1, 0), (0, 2))}),
    ("groups", (1, 6, 6, 8), (2, 3, 4, 6), {"groups": 2, "dilation": (2, 1)}),
]


@pytest.mark.parametrize("case", SENSITIVE, ids=[c[0] for c in SENSITIVE])
def test_tf32_rounding_is_applied(backend, to_xp, rng, case):
    """On inputs chosen for it, "tf32" results differ from the exact ones by far more than float32 accumulation
    explains, and match the float64 reference of the TF32-rounded inputs (the NumPy oracle's definition) within
    that accumulation bound: this fails if the rounding were skipped (or done on one operand only).

    A backend that does not round to TF32 (no TF32 kernels in the build, or a GPU before sm_80) must say so
    (``rounds_tf32``) and give the "highest" results bit for bit instead: it never claims TF32 silently.
    """
    _, x_shape, w_shape, opts = case
    x, w = tf32_sensitive(rng, x_shape), tf32_sensitive(rng, w_shape)
    y = gpuconv.conv2d(x, w, backend="numpy", **opts)
    dz = tf32_sensitive(rng, y.shape)
    be = backend_object(backend)
    t = to_xp
    results = {
        "forward": lambda p: gpuconv.conv2d(t(x), t(w), backend=backend, precision=p, **opts),
        "dx": lambda p: gpuconv.conv2d_backward_input(t(dz), t(w), x_shape, backend=backend, precision=p, **opts),
        "dw": lambda p: gpuconv.conv2d_backward_weight(t(dz), t(x), w_shape, backend=backend, precision=p, **opts),
        "fused dx": lambda p: gpuconv.conv2d_backward(t(dz), t(x), t(w), has_bias=False, backend=backend,
                                                      precision=p, **opts).dx,
        "fused dw": lambda p: gpuconv.conv2d_backward(t(dz), t(x), t(w), has_bias=False, backend=backend,
                                                      precision=p, **opts).dw,
    }
    xr, wr, dzr = (tf32_round(a).astype(np.float64) for a in (x, w, dz))
    x64, w64, dz64 = (a.astype(np.float64) for a in (x, w, dz))
    g = ref.geometry({"options": opts})
    exact = {
        "forward": (ref.conv2d_linear(xr, wr, **g), ref.conv2d_linear(x64, w64, **g), w_shape[0] * w_shape[1] * w_shape[2]),
        "dx": (ref.backward_input(dzr, wr, x_shape, **g), ref.backward_input(dz64, w64, x_shape, **g),
               w_shape[0] * w_shape[1] * w_shape[3] // g["groups"]),
        "dw": (ref.backward_weight(dzr, xr, w_shape, **g), ref.backward_weight(dz64, x64, w_shape, **g),
               y.shape[0] * y.shape[1] * y.shape[2]),
    }
    exact["fused dx"], exact["fused dw"] = exact["dx"], exact["dw"]
    for what, run in results.items():
        out = to_numpy(run("tf32")).astype(np.float64)
        if not be.rounds_tf32():
            assert out.tobytes() == to_numpy(run("highest")).astype(np.float64).tobytes(), what
            continue
        want_tf32, want_exact, terms = exact[what]
        # every value is positive: sum |a||b| is the sum itself
        acc = sum_error(np.dtype(np.float32), "highest", terms, want_tf32) * 2  # u_acc = 2^-23, tensor cores
        assert np.all(np.abs(out - want_tf32) <= acc), f"{what}: tf32 result not the TF32-rounded products' sum"
        summed = want_exact > 0  # dx pixels that no tap reaches are exactly 0 in every precision
        assert summed.any()
        assert np.all(np.abs(out - want_exact)[summed] > acc[summed]), f"{what}: tf32 as accurate as FP32?"
        highest = to_numpy(run("highest")).astype(np.float64)
        assert np.all(np.abs(highest - want_tf32)[summed] > acc[summed]), f"{what}: inputs do not tell tf32 apart"
    if not be.rounds_tf32():
        assert "'highest'" in be.math_path(np.float32, "tf32")


# ---------------------------------------------------------------------------------------------- accuracy
@st.composite
def problems(draw):
    """A valid 4-D convolution problem with random options, channel counts on both kernel paths."""
    groups = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.sampled_from([1, 2, 3, 5, 8, 16, 17]))
    mg = draw(st.sampled_from([1, 3, 4, 8, 16, 20]))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = draw(st.sampled_from(["valid", "same", 1, ((0, 2), (1, 0))]))
    n = draw(st.integers(1, 2))
    h = draw(st.integers(d[0] * (kh - 1) + 1, 7))
    w = draw(st.integers(d[1] * (kw - 1) + 1, 7))
    return {
        "x_shape": (n, h, w, cg * groups),
        "w_shape": (kh, kw, cg, mg * groups),
        "opts": {"stride": s, "dilation": d, "padding": pad, "groups": groups},
        "bias": draw(st.booleans()),
        "activation": draw(st.sampled_from(ACTIVATION_NAMES)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def forward_bound(dt, precision, p, x, w, b, z, y):
    """Elementwise bound on |y - act(z)| for y = conv2d(x, w, b) (z the exact pre-activation)."""
    opts = p["opts"]
    abs_sum = ref.conv2d_linear(np.abs(to64(x)), np.abs(to64(w)), None if b is None else np.abs(to64(b)), **opts)
    terms = p["w_shape"][0] * p["w_shape"][1] * p["w_shape"][2] + 1
    err = activation_error(dt, p["activation"], sum_error(dt, precision, terms, abs_sum))
    return store_error(dt, y, err)


def test_accuracy_bounds(backend, to_xp, n_examples):
    """Forward, dx, dw, db (through conv2d_backward and the separate functions) within the error analysis's
    bounds, in every dtype and precision, on random options."""
    dtypes = []
    for name in DTYPE_NAMES:
        try:
            dt = _config.dtype_from_name(name)
        except ImportError:
            continue
        if dtype_reason(backend, dt) is None:
            dtypes.append(dt)

    @settings(max_examples=n_examples(60, 12))
    @given(p=problems(), dt=st.sampled_from(dtypes), precision=st.sampled_from(PRECISIONS))
    def run(p, dt, precision):
        note(repr(p))
        rng = np.random.default_rng(p["seed"])
        opts, act = p["opts"], p["activation"]
        x = random_array(rng, p["x_shape"], dt.type)
        w = random_array(rng, p["w_shape"], dt.type)
        b = random_array(rng, (p["w_shape"][3],), dt.type) if p["bias"] else None
        t = to_xp
        y = gpuconv.conv2d(t(x), t(w), t(b), activation=act, backend=backend, precision=precision, **opts)
        z = ref.conv2d_linear(to64(x), to64(w), to64(b), **opts)
        y_np = to_numpy(y)
        assert_within(y, ref.activate(z, act), forward_bound(dt, precision, p, x, w, b, z, y_np), dt, "forward")

        dy = random_array(rng, y_np.shape, dt.type)
        g = gpuconv.conv2d_backward(t(dy), t(x), t(w), y, has_bias=p["bias"], activation=act, backend=backend,
                                    precision=precision, **opts)
        dz = ref.activation_backward(to64(dy), to64(y_np), act)
        c = dz_error(dt, act)  # |dz^ - dz| <= c |dy|: the gradients carry c * sum |dy||b|
        ady = np.abs(to64(dy))
        kh, kw, _, m = p["w_shape"]
        n, oh, ow, _ = y_np.shape
        dx_ref = ref.backward_input(dz, to64(w), x.shape, **opts)
        aw, ax = np.abs(to64(w)), np.abs(to64(x))
        dx_err = sum_error(dt, precision, kh * kw * m // opts["groups"],
                           ref.backward_input(np.abs(dz), aw, x.shape, **opts),
                           c * ref.backward_input(ady, aw, x.shape, **opts))
        dw_ref = ref.backward_weight(dz, to64(x), w.shape, **opts)
        dw_err = sum_error(dt, precision, n * oh * ow, ref.backward_weight(np.abs(dz), ax, w.shape, **opts),
                           c * ref.backward_weight(ady, ax, w.shape, **opts))
        assert_within(g.dx, dx_ref, store_error(dt, dx_ref, dx_err), dt, "conv2d_backward dx")
        assert_within(g.dw, dw_ref, store_error(dt, dw_ref, dw_err), dt, "conv2d_backward dw")
        if p["bias"]:
            db_ref = ref.backward_bias(dz)
            db_err = sum_error(dt, "highest", n * oh * ow, ref.backward_bias(np.abs(dz)), c * ref.backward_bias(ady))
            assert_within(g.db, db_ref, store_error(dt, db_ref, db_err), dt, "conv2d_backward db")
        if act == "identity":  # the separate functions, on the same dz = dy
            dx = gpuconv.conv2d_backward_input(t(dy), t(w), x.shape, backend=backend, precision=precision, **opts)
            dw = gpuconv.conv2d_backward_weight(t(dy), t(x), w.shape, backend=backend, precision=precision,
                                                **opts)
            assert_within(dx, dx_ref, store_error(dt, dx_ref, dx_err), dt, "conv2d_backward_input")
            assert_within(dw, dw_ref, store_error(dt, dw_ref, dw_err), dt, "conv2d_backward_weight")

    run()


# ---------------------------------------------------------------------------------------------- bfloat16
def test_bfloat16_every_public_function(backend, to_xp, rand):
    """Every public operation takes bfloat16 and returns bfloat16 within the bounds above (or, on a backend
    without bfloat16 kernels, refuses it with a TypeError that names the function and the dtype)."""
    bf16 = dtype_of("bfloat16")
    x, w, b = rand((2, 6, 7, 3), bf16.type), rand((3, 2, 3, 4), bf16.type), rand((4,), bf16.type)
    opts = {"stride": (1, 2), "padding": 1}
    y_shape = ref.y_shape(x.shape, w.shape, **opts)
    dy = rand(y_shape, bf16.type)
    t = to_xp

    def calls(prec):
        o = dict(opts, backend=backend, precision=prec)
        return {
            "conv2d": lambda: gpuconv.conv2d(t(x), t(w), t(b), activation="relu", **o),
            "activation_backward": lambda: gpuconv.activation_backward(t(dy), t(dy), "sigmoid", backend=backend,
                                                                       precision=prec),
            "conv2d_backward_input": lambda: gpuconv.conv2d_backward_input(t(dy), t(w), x.shape, **o),
            "conv2d_backward_weight": lambda: gpuconv.conv2d_backward_weight(t(dy), t(x), w.shape, **o),
            "conv2d_backward_bias": lambda: gpuconv.conv2d_backward_bias(t(dy), backend=backend, precision=prec),
            "conv2d_backward": lambda: gpuconv.conv2d_backward(t(dy), t(x), t(w), **o),
            "Conv2D": lambda: gpuconv.Conv2D(t(w), t(b), **o)(t(x)),
        }

    reason = dtype_reason(backend, bf16)
    if reason is not None:
        for fname, call in calls("highest").items():
            with pytest.raises(TypeError) as info:
                call()
            msg = str(info.value)
            assert "bfloat16" in msg and msg.startswith("conv2d" if fname == "Conv2D" else fname), msg
        return
    x64, w64, b64, dy64 = (to64(a) for a in (x, w, b, dy))
    kh, kw, _, m = w.shape
    n, oh, ow, _ = y_shape
    z = ref.conv2d_linear(x64, w64, b64, **opts)
    dz = ref.activation_backward(dy64, dy64, "sigmoid")
    dx_ref, dw_ref, db_ref = (ref.backward_input(dy64, w64, x.shape, **opts),
                              ref.backward_weight(dy64, x64, w.shape, **opts), ref.backward_bias(dy64))
    p = {"opts": opts, "w_shape": w.shape, "activation": "relu"}
    for prec in PRECISIONS:  # bfloat16 products are exact: every precision has the same bound
        c = calls(prec)
        y = to_numpy(c["conv2d"]())
        assert_within(y, ref.activate(z, "relu"), forward_bound(bf16, prec, p, x, w, b, z, y), bf16, "conv2d")
        layer_y = to_numpy(c["Conv2D"]())
        assert_within(layer_y, z, forward_bound(bf16, prec, {**p, "activation": "identity"}, x, w, b, z, layer_y),
                      bf16, "Conv2D")
        assert_within(c["activation_backward"](), dz,
                      store_error(bf16, dz, dz_error(bf16, "sigmoid") * np.abs(dy64)), bf16, "activation_backward")
        dx_err = sum_error(bf16, prec, kh * kw * m,
                           ref.backward_input(np.abs(dy64), np.abs(w64), x.shape, **opts))
        dw_err = sum_error(bf16, prec, n * oh * ow, ref.backward_weight(np.abs(dy64), np.abs(x64), w.shape, **opts))
        db_err = sum_error(bf16, prec, n * oh * ow, ref.backward_bias(np.abs(dy64)))
        g = c["conv2d_backward"]()
        for what, out, want, err in [
            ("conv2d_backward_input", c["conv2d_backward_input"](), dx_ref, dx_err),
            ("conv2d_backward_weight", c["conv2d_backward_weight"](), dw_ref, dw_err),
            ("conv2d_backward_bias", c["conv2d_backward_bias"](), db_ref, db_err),
            ("conv2d_backward dx", g.dx, dx_ref, dx_err),
            ("conv2d_backward dw", g.dw, dw_ref, dw_err),
            ("conv2d_backward db", g.db, db_ref, db_err),
        ]:
            assert_within(out, want, store_error(bf16, want, err), bf16, f"{what} ({prec})")


def bf16_rne_bits(f32: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even, written out (finite values)."""
    u = f32.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_numpy_bfloat16_is_float32_rounded_once(rand):
    """The NumPy oracle: bfloat16 results are the float32 computation of the same values, rounded once to
    nearest even (checked against the rounding rule written out, not against ml_dtypes' cast)."""
    bf16 = dtype_of("bfloat16")
    x, w, b = rand((2, 7, 6, 5), bf16.type), rand((3, 3, 5, 6), bf16.type), rand((6,), bf16.type)
    f32 = {k: v.astype(np.float32) for k, v in {"x": x, "w": w, "b": b}.items()}
    opts = {"padding": "same", "stride": 2}
    for prec in PRECISIONS:  # the products of bfloat16 values are exact: precision cannot matter
        y = gpuconv.conv2d(x, w, b, backend="numpy", precision=prec, **opts)
        y32 = gpuconv.conv2d(f32["x"], f32["w"], f32["b"], backend="numpy", **opts)
        np.testing.assert_array_equal(y.view(np.uint16), bf16_rne_bits(y32))
        dy = rand(y.shape, bf16.type)
        g = gpuconv.conv2d_backward(dy, x, w, backend="numpy", precision=prec, **opts)
        g32 = gpuconv.conv2d_backward(dy.astype(np.float32), f32["x"], f32["w"], backend="numpy", **opts)
        for a, c in zip(g, g32):
            np.testing.assert_array_equal(a.view(np.uint16), bf16_rne_bits(c))


def test_bfloat16_needs_ml_dtypes_clearly(monkeypatch):
    """Without ml_dtypes, asking for bfloat16 is an ImportError that names ml_dtypes (importing gpuconv and
    every other dtype still work)."""
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    monkeypatch.setattr(_registry, "_LOADED", {})  # as in a fresh process
    with pytest.raises(ImportError, match="ml_dtypes"):
        _config.dtype_from_name("bfloat16")
    assert _config.dtype_from_name("float16") == np.float16
    x = np.ones((4, 4), np.float32)
    np.testing.assert_array_equal(gpuconv.conv2d(x, x[:2, :2], backend="numpy"), np.full((3, 3), 4, np.float32))


def test_every_activation_has_an_error_bound():
    assert set(_accuracy.ACTIVATION_ERRORS) == set(ACTIVATION_NAMES)


def test_importing_gpuconv_does_not_import_ml_dtypes():
    code = "import sys, gpuconv, numpy; gpuconv.conv2d(numpy.ones((3, 3)), numpy.ones((2, 2))); " \
           "print('ml_dtypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unsupported_dtype_is_a_clear_error(backend, to_xp):
    """A backend without kernels for a dtype refuses it before computing, naming the function and the dtype."""
    for name in DTYPE_NAMES:
        try:
            dt = _config.dtype_from_name(name)
        except ImportError:
            continue
        reason = dtype_reason(backend, dt)
        if reason is None:
            continue
        a = np.ones((1, 4, 4, 2), dt)
        with pytest.raises(TypeError, match=rf"conv2d: argument 'x' has dtype {name}") as info:
            gpuconv.conv2d(to_xp(a), to_xp(np.ones((2, 2, 2, 2), dt)), backend=backend)
        assert reason in str(info.value)


# ---------------------------------------------------------------------------------------------- determinism
def _schedules():
    try:
        from gpuconv.cuda import emulator
    except ImportError:
        return []
    names = getattr(emulator, "SCHEDULES", ())
    return [lambda n=n: emulator.schedule(n) for n in names] if hasattr(emulator, "schedule") else []


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_gradients_bitwise_deterministic(backend, to_xp, rand, name):
    """dw and db (and dx) are the same bits on every run, in every precision (and, on the emulator, under
    every thread schedule): fixed splits summed in order, no float atomics."""
    dt = dtype_of(name)
    need_dtype(backend, dt)
    x, w, b = rand((3, 9, 8, 16), dt.type), rand((3, 3, 16, 16), dt.type), rand((16,), dt.type)
    opts = {"padding": 1, "stride": (1, 2)}
    t = to_xp
    contexts = [None] + (_schedules()[1:] if backend == "emulator" else [])

    def grads(dy, y, prec):
        g = gpuconv.conv2d_backward(t(dy), t(x), t(w), y, activation="sigmoid", backend=backend, precision=prec,
                                    **opts)
        dw = gpuconv.conv2d_backward_weight(t(dy), t(x), w.shape, backend=backend, precision=prec, **opts)
        db = gpuconv.conv2d_backward_bias(t(dy), backend=backend, precision=prec)
        return [to_numpy(a).tobytes() for a in (*g, dw, db)]

    for prec in PRECISIONS:
        y = gpuconv.conv2d(t(x), t(w), t(b), activation="sigmoid", backend=backend, precision=prec, **opts)
        dy = rand(to_numpy(y).shape, dt.type)
        runs = []
        for ctx in [*contexts, None]:
            if ctx is None:
                runs.append(grads(dy, y, prec))
            else:
                with ctx():
                    runs.append(grads(dy, y, prec))
        assert all(r == runs[0] for r in runs[1:]), f"{name} {prec}: gradients differ between runs"


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def no_compute(backend, monkeypatch):
    be = _dispatch.load_backend(backend)

    def computed(*args, **kwargs):
        raise AssertionError("the backend was called although the input is invalid")

    for op in ("forward", "activation_backward", "backward_input", "backward_weight", "backward_bias",
               "backward"):
        if hasattr(be, op):
            monkeypatch.setattr(be, op, computed)


BAD_PRECISIONS = ["tf16", "float32", "", "TF-32", 32, True, ("tf32",)]


@pytest.mark.parametrize("bad", BAD_PRECISIONS, ids=repr)
def test_bad_precision_is_rejected(backend, to_xp, no_compute, bad, restore_precision):
    x, w = np.ones((1, 5, 5, 2), np.float32), np.ones((3, 3, 2, 3), np.float32)
    dy = np.ones((1, 3, 3, 3), np.float32)
    t = to_xp
    calls = {
        "conv2d": lambda: gpuconv.conv2d(t(x), t(w), backend=backend, precision=bad),
        "activation_backward": lambda: gpuconv.activation_backward(t(dy), t(dy), "relu", backend=backend,
                                                                   precision=bad),
        "conv2d_backward_input": lambda: gpuconv.conv2d_backward_input(t(dy), t(w), x.shape, backend=backend,
                                                                       precision=bad),
        "conv2d_backward_weight": lambda: gpuconv.conv2d_backward_weight(t(dy), t(x), w.shape, backend=backend,
                                                                         precision=bad),
        "conv2d_backward_bias": lambda: gpuconv.conv2d_backward_bias(t(dy), backend=backend, precision=bad),
        "conv2d_backward": lambda: gpuconv.conv2d_backward(t(dy), t(x), t(w), backend=backend, precision=bad),
        "Conv2D": lambda: gpuconv.Conv2D(t(w), backend=backend, precision=bad),
        "set_float32_precision": lambda: gpuconv.set_float32_precision(bad),
    }
    for fname, call in calls.items():
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"{fname}: argument 'precision' must be one of"), msg
        assert repr(bad) in msg and "'tf32'" in msg and "'highest'" in msg, msg
    assert gpuconv.get_float32_precision() == "highest"


def test_precision_names_are_case_insensitive(restore_precision, rand):
    x, w = rand((5, 5), np.float32), rand((2, 2), np.float32)
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, precision="TF32", backend="numpy"),
                                  gpuconv.conv2d(x, w, precision="tf32", backend="numpy"))
    gpuconv.set_float32_precision("Highest")
    assert gpuconv.get_float32_precision() == "highest"


# ---------------------------------------------------------------------------------------------- gpuconv info
def test_info_lists_every_math_path(backend):
    """show_config says, per backend, what computes each dtype and precision; never TF32 where it is not."""
    from gpuconv._show import config_lines, math_paths

    lines = config_lines()
    be = backend_object(backend)
    paths = dict(math_paths(be))
    assert set(paths) >= {"float32 highest", "float32 tf32", "float16", "float64"}
    for mode, text in paths.items():
        assert any(line.split()[:1] == [backend] and text in line for line in lines), (mode, text)
    if be.rounds_tf32():
        assert "TF32" in paths["float32 tf32"]
    else:
        assert "'highest'" in paths["float32 tf32"]
    assert "TF32" not in paths["float32 highest"]
