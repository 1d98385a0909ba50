"""tools/tc_model.py, the predicted tensor-core times of docs/performance.md: it runs on this machine's SASS and
its numbers follow from the model's terms (a layer's time is at least its tensor-core and DRAM floors)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpuconv.cuda import sass

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
REASON = sass.unavailable_reason()
needs_sass = pytest.mark.skipif(REASON is not None, reason=f"SASS unavailable: {REASON}")


@needs_sass
def test_predictions_respect_the_floors():
    import tc_model

    from gpuconv import _benchdata as bd
    from gpuconv._config import make_config

    s = bd.SHAPES["rn50-3x3-28"]
    cfg = make_config("model", s.x_shape, s.w_shape, stride=s.stride, padding=s.padding)
    flops = 2 * cfg.multiplications
    for mode, peak in (("fp16", 989e12), ("tf32", 495e12)):
        us, bound, path = tc_model.operation_us(cfg, mode, "fwd")
        assert path == "128x128" and bound in ("issue", "smem", "tensor", "L2")
        assert flops / peak * 1e6 < us < 20 * flops / peak * 1e6  # above the dense peak, not absurdly far
    table = tc_model.table(["rn50-3x3-28"])
    assert table.count("\n| rn50-3x3-28 |") == len(tc_model.MODES) + 1  # and strict fp32's measured-rate row
    # the wgmma forward: above the dense peak too, faster than mma.sync (its assumed efficiency is higher)
    us, bound, path = tc_model.operation_us(cfg, "fp16", "fwd", wgmma=True)
    assert path == "wgmma 128x128" and bound in ("issue", "smem", "tensor", "L2")
    assert flops / 989e12 * 1e6 < us < tc_model.operation_us(cfg, "fp16", "fwd")[0]
    # TF32 on wgmma too (A from registers), the forward and dx
    for op in ("fwd", "dx"):
        us, bound, path = tc_model.operation_us(cfg, "tf32", op, wgmma=True)
        assert path == "wgmma 128x128" and bound in ("issue", "smem", "tensor", "L2"), op
        assert flops / 495e12 * 1e6 < us < tc_model.operation_us(cfg, "tf32", op)[0], op
    dx, _, path = tc_model.operation_us(cfg, "fp16", "dx", wgmma=True)
    assert path == "wgmma 128x128" and flops / 989e12 * 1e6 < dx < tc_model.operation_us(cfg, "fp16", "dx")[0]


def test_l1_serves_the_taps_rereads():
    """The LRU model of the activation copies (no SASS needed): a 1x1 layer re-reads nothing; a 3x3 layer's taps
    re-read their neighbours' pixels, which a large enough L1 serves (a 3x3 window: about a ninth of the bytes
    plus the block's halo from L2), and a smaller L1 serves no more than a larger one; dw's taps re-read each
    other's only where a tile holds several."""
    import numpy as np
    import tc_model

    from gpuconv._config import make_config
    from gpuconv.backends import cuda_tc

    def fraction(x_shape, w_shape, l1, **kw):
        cfg = make_config("model", x_shape, w_shape, **kw)
        launch = cuda_tc.forward_plan(cfg, np.float16, "highest", 90, "identity", False)[0]
        return tc_model.activation_l2_fraction(launch, cfg, np.float16, l1)

    assert fraction((8, 28, 28, 64), (1, 1, 64, 64), 1 << 20) == 1.0
    big, small, none = (fraction((8, 28, 28, 128), (3, 3, 128, 128), l1, padding=1) for l1 in (1 << 20, 16 << 10, 128))
    assert 1 / 9 < big < 0.25 and big <= small <= none and none > 0.9
    # dw: the taps that share a 128-row tile (two of 64 channels) copy each other's pixels in the same step;
    # with one tap a tile (128 channels, or a 1x1 layer) nothing is re-read
    def dw_fraction(x_shape, w_shape, **kw):
        cfg = make_config("model", x_shape, w_shape, **kw)
        dw = cuda_tc.backward_weight_plan(cfg, np.float16, "highest", 90)[0]
        return tc_model.activation_l2_fraction(dw, cfg, np.float16, 1 << 20)

    assert 0.4 < dw_fraction((8, 28, 28, 64), (3, 3, 64, 64), padding=1) < 0.8
    assert dw_fraction((8, 28, 28, 128), (3, 3, 128, 128), padding=1) == 1.0
    assert dw_fraction((8, 28, 28, 64), (1, 1, 64, 64)) == 1.0
