"""Hypothesis property tests: random shapes, strides, paddings, dilations and groups against the reference.

Examples are drawn inside each test (not through @given on the test itself) so that max_examples can follow
the backend: fewer on slow backends such as the CPU emulator.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import ACTIVATIONS, DTYPES, assert_close, random_array, to_numpy, tolerance
from hypothesis import given, note, settings
from hypothesis import strategies as st

import gpuconv

small = st.integers(1, 3)


def pair_or_int(lo, hi):
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


paddings = st.one_of(
    st.sampled_from(["valid", "same", "full"]),
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(
        st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3))
    ),
)


@st.composite
def conv_problems(draw, ndim=None, batch=None):
    """A random (possibly invalid: output below 1) convolution problem."""
    nd = draw(st.sampled_from([2, 3, 4]) if ndim is None else ndim)
    kh, kw = draw(small), draw(small)
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    if nd == 2:
        groups, cg, mg = 1, 1, 1
    else:
        groups, cg, mg = draw(small), draw(small), draw(small)
    n = draw(st.integers(1, 3) if batch is None else batch)
    x_shape = {2: (h, w), 3: (h, w, cg * groups), 4: (n, h, w, cg * groups)}[nd]
    w_shape = (kh, kw) if nd == 2 else (kh, kw, cg, mg * groups)
    opts = {
        "stride": draw(pair_or_int(1, 3)),
        "padding": draw(paddings),
        "dilation": draw(pair_or_int(1, 3)),
        "groups": groups,
    }
    bias = nd > 2 and draw(st.booleans())
    activation = draw(st.sampled_from([None, *ACTIVATIONS]))
    seed = draw(st.integers(0, 2**32 - 1))
    return {"x_shape": x_shape, "w_shape": w_shape, "opts": opts, "bias": bias, "activation": activation, "seed": seed}


def _geometry_only(opts):
    return {k: v for k, v in opts.items() if k != "groups"}


def _valid(p) -> bool:
    """Whether the output is at least 1x1, by the specification's size formula."""
    hw = p["x_shape"][1:3] if len(p["x_shape"]) == 4 else p["x_shape"][:2]
    oh, ow = ref.output_hw(*hw, *p["w_shape"][:2], **_geometry_only(p["opts"]))
    return oh >= 1 and ow >= 1


def _arrays(p, dtype):
    rng = np.random.default_rng(p["seed"])
    x = random_array(rng, p["x_shape"], dtype)
    w = random_array(rng, p["w_shape"], dtype)
    m = p["w_shape"][3] if len(p["w_shape"]) == 4 else 1
    b = random_array(rng, (m,), dtype) if p["bias"] else None
    return rng, x, w, b


def _reduction(p):
    kh, kw = p["w_shape"][:2]
    cg = p["w_shape"][2] if len(p["w_shape"]) == 4 else 1
    return kh * kw * cg + 1


def test_forward_property(backend, to_xp, n_examples):
    @settings(max_examples=n_examples(80, 15))
    @given(p=conv_problems(), dtype=st.sampled_from(DTYPES))
    def run(p, dtype):
        note(repr(p))
        _rng, x, w, b = _arrays(p, dtype)
        if not _valid(p):
            with pytest.raises(ValueError, match="conv2d"):
                gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), backend=backend, **p["opts"])
            return
        y = gpuconv.conv2d(
            to_xp(x), to_xp(w), to_xp(b), activation=p["activation"], backend=backend, **p["opts"]
        )
        expected = ref.conv2d(x, w, b, activation=p["activation"], **p["opts"])
        assert_close(y, expected, dtype, reduction=_reduction(p))
        info = gpuconv.conv2d_info(x.shape, w.shape, bias=p["bias"], **p["opts"])
        assert tuple(info.output_shape) == tuple(y.shape)

    run()


def test_backward_property(backend, to_xp, n_examples):
    @settings(max_examples=n_examples(60, 10))
    @given(p=conv_problems())
    def run(p):
        note(repr(p))
        if not _valid(p):
            return
        rng, x, w, b = _arrays(p, np.float64)
        act = p["activation"]
        y = ref.conv2d(x, w, b, activation=act, **p["opts"])
        dy = random_array(rng, y.shape)
        g = gpuconv.conv2d_backward(
            to_xp(dy),
            to_xp(x),
            to_xp(w),
            to_xp(y),
            has_bias=p["bias"],
            activation=act,
            backend=backend,
            **p["opts"],
        )
        dz = ref.activation_backward(dy, y, act)
        n_out = int(np.prod(y.shape[:-1])) if y.ndim > 2 else y.size
        assert_close(
            g.dx, ref.backward_input(dz, w, x.shape, **p["opts"]), np.float64, reduction=_reduction(p)
        )
        assert_close(g.dw, ref.backward_weight(dz, x, w.shape, **p["opts"]), np.float64, reduction=n_out)
        if p["bias"]:
            assert_close(g.db, ref.backward_bias(dz), np.float64, reduction=n_out)
        else:
            assert g.db is None

    run()


def test_adjoint_property(backend, to_xp, n_examples):
    """<conv(x), dz> = <x, dX(dz)> = <w, dW(dz)> for the linear map, with every geometry."""

    @settings(max_examples=n_examples(60, 10))
    @given(p=conv_problems(ndim=st.just(4)))
    def run(p):
        note(repr(p))
        if not _valid(p):
            return
        rng, x, w, _ = _arrays(p, np.float64)
        y = to_numpy(gpuconv.conv2d(to_xp(x), to_xp(w), backend=backend, **p["opts"]))
        dz = random_array(rng, y.shape)
        dx = to_numpy(
            gpuconv.conv2d_backward_input(to_xp(dz), to_xp(w), x.shape, backend=backend, **p["opts"])
        )
        dw = to_numpy(
            gpuconv.conv2d_backward_weight(to_xp(dz), to_xp(x), w.shape, backend=backend, **p["opts"])
        )
        lhs = np.vdot(y, dz)
        scale = np.vdot(np.abs(y), np.abs(dz)) + 1e-300
        assert abs(np.vdot(x, dx) - lhs) <= tolerance(np.float64) * scale
        assert abs(np.vdot(w, dw) - lhs) <= tolerance(np.float64) * scale

    run()


def test_batch_is_independent_property(backend, to_xp, n_examples):
    """Each batch item's output depends only on that item: conv of a batch = stack of convs of its items."""

    @settings(max_examples=n_examples(30, 5))
    @given(p=conv_problems(ndim=st.just(4), batch=st.integers(2, 3)))
    def run(p):
        if not _valid(p):
            return
        _, x, w, b = _arrays(p, np.float64)
        kw = dict(activation=p["activation"], backend=backend, **p["opts"])
        whole = to_numpy(gpuconv.conv2d(to_xp(x), to_xp(w), to_xp(b), **kw))
        for i in range(x.shape[0]):
            one = gpuconv.conv2d(to_xp(x[i]), to_xp(w), to_xp(b), **kw)  # 3-D x
            assert_close(one, whole[i], np.float64, reduction=_reduction(p))

    run()
