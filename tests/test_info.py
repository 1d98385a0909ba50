"""conv2d_info: output shape, channels, forward multiplications (bias excluded), parameters: from shapes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import reference as ref
from reference import OPTION_CASES, OPTION_IDS

import gpuconv


def test_spec_example():
    info = gpuconv.conv2d_info((48, 64, 10), (3, 3, 10, 20))
    assert tuple(info.output_shape) == (46, 62, 20)
    assert info.in_channels == 10
    assert info.out_channels == 20
    assert info.multiplications == 5_133_600 == 46 * 62 * 20 * (3 * 3 * 10)
    assert info.parameters == 1_820 == 3 * 3 * 10 * 20 + 20


def test_is_frozen_dataclass():
    info = gpuconv.conv2d_info((48, 64, 10), (3, 3, 10, 20))
    assert dataclasses.is_dataclass(info)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.parameters = 0
    assert info == gpuconv.conv2d_info((48, 64, 10), (3, 3, 10, 20))
    hash(info)


@pytest.mark.parametrize(
    "x_shape,w_shape,opts,out,mults,params",
    [
        ((48, 64, 10), (3, 3, 10, 20), {"bias": False}, (46, 62, 20), 5_133_600, 1_800),
        ((48, 64, 10), (3, 3, 10, 20), {"stride": 2}, (23, 31, 20), 23 * 31 * 20 * 90, 1_820),
        ((48, 64, 10), (3, 3, 10, 20), {"stride": (1, 2)}, (46, 31, 20), 46 * 31 * 20 * 90, 1_820),
        ((48, 64, 10), (3, 3, 5, 20), {"groups": 2}, (46, 62, 20), 46 * 62 * 20 * 45, 920),
        ((10, 10, 8), (3, 3, 1, 8), {"groups": 8}, (8, 8, 8), 8 * 8 * 8 * 9, 80),
        ((10, 10, 8), (3, 3, 1, 16), {"groups": 8, "bias": False}, (8, 8, 16), 8 * 8 * 16 * 9, 144),
        ((20, 20, 3), (3, 3, 3, 4), {"dilation": 2}, (16, 16, 4), 16 * 16 * 4 * 27, 112),
        ((4, 48, 64, 10), (3, 3, 10, 20), {}, (4, 46, 62, 20), 4 * 5_133_600, 1_820),
        ((7, 6), (3, 2), {}, (5, 5), 5 * 5 * 6, 7),
        ((7, 6), (3, 2), {"bias": False}, (5, 5), 5 * 5 * 6, 6),
        ((1, 1, 1), (1, 1, 1, 1), {}, (1, 1, 1), 1, 2),
        ((0, 5, 5, 2), (3, 3, 2, 4), {}, (0, 3, 3, 4), 0, 76),
    ],
)
def test_numbers(x_shape, w_shape, opts, out, mults, params):
    info = gpuconv.conv2d_info(x_shape, w_shape, **opts)
    assert tuple(info.output_shape) == out
    assert info.in_channels == (x_shape[-1] if len(x_shape) > 2 else 1)
    assert info.out_channels == (w_shape[3] if len(w_shape) == 4 else 1)
    assert info.multiplications == mults
    assert info.parameters == params


@pytest.mark.parametrize("c", OPTION_CASES, ids=OPTION_IDS)
def test_output_shape_every_option(c):
    info = gpuconv.conv2d_info(c["x_shape"], c["w_shape"], bias=c["bias"], **c["options"])
    geo = {k: v for k, v in c["options"].items() if k != "groups"}
    assert tuple(info.output_shape) == ref.y_shape(c["x_shape"], c["w_shape"], **geo)


@pytest.mark.parametrize("h,s", [(10, 1), (10, 2), (10, 3), (11, 2), (7, 4), (5, 5), (4, 6)])
@pytest.mark.parametrize("k,d", [(1, 1), (2, 1), (3, 1), (4, 1), (3, 2), (2, 3)])
def test_same_padding_output_is_ceil(h, s, k, d):
    """'same' gives ceil(H / s) in each direction, whatever the kernel and dilation."""
    info = gpuconv.conv2d_info((h, h + 1, 2), (k, k, 2, 3), padding="same", stride=s, dilation=d)
    assert tuple(info.output_shape) == (-(-h // s), -(-(h + 1) // s), 3)


@pytest.mark.parametrize("k,d", [(1, 1), (2, 1), (3, 1), (3, 2), (2, 3)])
def test_full_padding_output(k, d):
    info = gpuconv.conv2d_info((6, 7, 1), (k, k + 1, 1, 1), padding="full", dilation=d)
    assert tuple(info.output_shape) == (6 + d * (k - 1), 7 + d * k, 1)


def test_info_does_not_need_arrays():
    """Shapes only: huge shapes are fine (nothing is allocated)."""
    info = gpuconv.conv2d_info((1024, 4096, 4096, 64), (3, 3, 64, 128))
    assert tuple(info.output_shape) == (1024, 4094, 4094, 128)
    assert info.parameters == 3 * 3 * 64 * 128 + 128
    assert info.multiplications == 1024 * 4094 * 4094 * 128 * 3 * 3 * 64  # exact (Python ints, no overflow)


def test_info_matches_actual_forward_shape(backend, to_xp, rand):
    x, w = rand((2, 9, 7, 4)), rand((3, 2, 2, 6))
    opts = {"stride": (2, 3), "padding": ((1, 2), (0, 3)), "dilation": (2, 1), "groups": 2}
    y = gpuconv.conv2d(to_xp(x), to_xp(w), backend=backend, **opts)
    assert tuple(gpuconv.conv2d_info(x.shape, w.shape, **opts).output_shape) == tuple(y.shape)
    assert np.prod(y.shape) > 0
