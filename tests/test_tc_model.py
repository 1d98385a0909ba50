"""tools/tc_model.py, the predicted tensor-core times of docs/performance.md: it runs on this machine's SASS and
its numbers follow from the model's terms (a layer's time is at least its tensor-core and DRAM floors)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpuconv.cuda import sass

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
REASON = sass.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"SASS unavailable: {REASON}")


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
