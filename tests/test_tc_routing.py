"""Tensor-core launch plans (gpuconv/backends/cuda_tc.py): pure functions, checked without compiling.

float32 with precision="highest" (and float64) must never reach a tensor-core kernel; the launches the CUDA
backend makes are recorded through an injected module, so the kernel names it asks for are checked exactly.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpuconv import _benchdata as bd
from gpuconv._config import PRECISIONS, make_config
from gpuconv.backends import _plans, cuda_tc
from gpuconv.backends.cuda import CudaBackend
from gpuconv.cuda.nvrtc import unavailable_reason as nvrtc_reason

ARCHES = [70, 75, 80, 86, 90, 100, None]  # None: the emulator
SHAPES = [  # (x shape, w shape, options)
    ((2, 8, 8, 64), (3, 3, 64, 64), {"padding": 1}),
    ((1, 16, 16, 3), (7, 7, 3, 64), {"stride": 2, "padding": 3}),
    ((1, 8, 8, 32), (1, 1, 32, 256), {}),
    ((1, 8, 8, 256), (1, 1, 256, 64), {"stride": 2}),
    ((1, 8, 8, 64), (3, 3, 16, 64), {"groups": 4, "padding": 1}),
    ((1, 8, 8, 8), (3, 3, 1, 8), {"groups": 8, "padding": 1}),
    ((1, 7, 9, 20), (3, 2, 20, 18), {"stride": (2, 3), "dilation": (2, 1), "padding": ((2, 1), (0, 1))}),
]
DTYPES = [np.float16, np.float32, np.float64] + ([cuda_tc.BFLOAT16] if cuda_tc.BFLOAT16 is not None else [])


def _cfg(xs, ws, opts):
    return make_config("test", xs, ws, **opts)


def fwd(cfg, dtype, precision, arch, aligned=True, sms=None):
    plan = cuda_tc.forward_plan(cfg, dtype, precision, arch, "relu", True, aligned, sms)
    return None if plan is None else plan[0]


def dx(cfg, dtype, precision, arch, aligned=True):
    plan = cuda_tc.backward_input_plan(cfg, dtype, precision, arch, 9, aligned)
    if plan is None:
        return None
    assert plan[0].kernel == "gpuconv_nonfinite_flag" and {p.kernel for p in plan[1:]} == {"gpuconv_tc_bwd_input"}
    return plan[-1]


def dw(cfg, dtype, precision, arch, aligned=True, **kw):
    plan = cuda_tc.backward_weight_plan(cfg, dtype, precision, arch, aligned, **kw)
    if plan is None:
        return None
    assert plan[1].kernel == "gpuconv_sum_partials"
    return plan[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", ARCHES)
def test_float32_highest_and_float64_never_use_tensor_cores(shape, arch):
    cfg = _cfg(*shape)
    for aligned in (True, False):
        assert fwd(cfg, np.float32, "highest", arch, aligned) is None
        for precision in PRECISIONS:
            assert fwd(cfg, np.float64, precision, arch, aligned) is None
    assert not cuda_tc.uses_tensor_cores(np.float32, "highest", arch)


@pytest.mark.parametrize("arch", ARCHES)
def test_which_dtypes_use_tensor_cores(arch):
    at_least = lambda v: arch is None or arch >= v
    assert cuda_tc.uses_tensor_cores(np.float16, "highest", arch) == at_least(70)
    assert cuda_tc.uses_tensor_cores(np.float16, "tf32", arch) == at_least(70)
    assert cuda_tc.uses_tensor_cores(np.float32, "tf32", arch) == at_least(80)
    if cuda_tc.BFLOAT16 is not None:
        assert cuda_tc.uses_tensor_cores(cuda_tc.BFLOAT16, "highest", arch) == at_least(80)
    assert not cuda_tc.uses_tensor_cores(np.float32, "tf32", 75)


def test_kernel_files_without_ml_dtypes(monkeypatch):
    """Without ml_dtypes there is no bfloat16; float64 (np.dtype(None) is float64) keeps conv_backward.cu."""
    monkeypatch.setattr(cuda_tc, "BFLOAT16", None)
    for dtype in (np.float64, np.float32, np.float16):
        assert cuda_tc.kernel_file("conv_backward.cu", dtype) == "conv_backward.cu"


def test_tall_tiles_for_tall_forward_and_dx():
    """256 x 64 tiles where a GEMM has at most 64 columns and fills whole rounds of blocks with them
    (cuda_tc.NARROW_TILES)."""
    big = _cfg((64, 56, 56, 64), (3, 3, 64, 64), {"padding": 1})  # ResNet-50's 3x3 of stage 1: 200704 rows
    for dtype, precision in ((np.float16, "highest"), (np.float32, "tf32")):
        assert fwd(big, dtype, precision, 90).template == (256, 64, 3, True)
        assert dx(big, dtype, precision, 80).template == (256, 64, 3, True)
        assert dw(big, dtype, precision, 90).template == (128, 64, 4, True)  # its rows are 9 x 64 taps
    assert fwd(big, np.float16, "highest", 75).template == (128, 64, 2, True)  # the wmma path keeps 128 rows
    small = _cfg((1, 56, 56, 64), (3, 3, 64, 64), {"padding": 1})  # 3136 rows: one round either way
    assert fwd(small, np.float16, "highest", 90).template == (128, 64, 4, True)


def test_info_names_the_tensor_core_instructions():
    from gpuconv.backends.cuda import math_path

    assert "(wmma), FP16" in math_path(np.float16, "highest", 70)
    assert "(ldmatrix + mma.sync), FP16" in math_path(np.float16, "highest", 80)
    assert "(ldmatrix + mma.sync), TF32" in math_path(np.float32, "tf32", 90)
    assert "(ldmatrix + mma.sync), FP16" in math_path(np.float16, "highest", 90)  # unless asked for wgmma:
    assert "(wgmma for the forward and dx, ldmatrix + mma.sync for dw), FP16" in math_path(
        np.float16, "highest", 90, wgmma=True)
    assert "(ldmatrix + mma.sync), TF32" in math_path(np.float32, "tf32", 90)
    assert "(wgmma for the forward and dx, ldmatrix + mma.sync for dw), TF32" in math_path(
        np.float32, "tf32", 90, wgmma=True)
    assert "(ldmatrix + mma.sync), TF32" in math_path(np.float32, "tf32", None)  # the emulator
    assert "tensor cores" not in math_path(np.float32, "highest", 90)


def test_forward_variants():
    big = _cfg((2, 8, 8, 64), (3, 3, 64, 256), {"padding": 1})
    r = fwd(big, np.float16, "highest", 90)
    # one round of blocks either way (2 of 128 x 128 or 4 of 96 x 128): the smaller blocks finish first
    assert r.kernel == "gpuconv_tc_fwd" and r.template == (96, 128, 4, True)
    assert r.grid == (2, 2, 1) and r.block == (128, 1, 1)  # 4 warps
    assert r.shared_mem == 4 * (96 * (32 + 8) + 32 * (128 + 8)) * 2  # 4 stages of A and B, 16-byte skews
    taller = _cfg((2, 8, 16, 64), (3, 3, 64, 256), {"padding": 1})  # 256 rows: 4 blocks against 6
    r = fwd(taller, np.float16, "highest", 90, sms=2)
    assert r.template == (128, 128, 4, True) and r.grid == (2, 2, 1)
    assert r.shared_mem == 4 * (128 * (32 + 8) + 32 * (128 + 8)) * 2
    # sm_70 / sm_75 (FP16 on wmma): 2 stages, no cp.async hardware there, and an sm_75 block gets at most 64 KB
    for arch in (70, 75):
        r = fwd(big, np.float16, "highest", arch)
        assert r.template == (128, 128, 2, True) and r.shared_mem <= 64 * 1024
    narrow = _cfg((2, 8, 8, 64), (3, 3, 64, 64), {"padding": 1})
    assert fwd(narrow, np.float32, "tf32", 80).template == (128, 64, 4, True)
    # unaligned arrays, channels not whole 16-byte runs (the C = 3 stem as it is), Mg likewise: generic
    assert fwd(narrow, np.float16, "highest", 80, aligned=False).template == (128, 64, 2, False)
    stem = _cfg((1, 32, 32, 3), (7, 7, 3, 64), {"stride": 2, "padding": 3})
    assert fwd(stem, np.float16, "highest", 80).template[-1] is False
    cg8 = _cfg((1, 8, 8, 8), (3, 3, 8, 64), {})  # whole 16-byte runs; a reduction step spans 4 taps (half)
    assert fwd(cg8, np.float32, "tf32", 80).template[-1] is True
    assert fwd(cg8, np.float16, "highest", 80).template[-1] is True
    odd_m = _cfg((1, 8, 8, 32), (3, 3, 32, 34), {})
    assert fwd(odd_m, np.float16, "highest", 80).template[-1] is False


def test_channel_padding():
    """The C = 3 stem is padded to one 16-byte run a pixel (cp.async variants); not where the padding would
    more than triple the reduction, nor grouped layers, nor where the SIMT kernels run."""
    stem = _cfg((1, 32, 32, 3), (7, 7, 3, 64), {"stride": 2, "padding": 3})
    assert cuda_tc.padded_channels(stem, np.float16, "highest", 90) == 8
    assert cuda_tc.padded_channels(stem, np.float32, "tf32", 90) == 4
    assert cuda_tc.padded_channels(stem, np.float32, "highest", 90) is None  # SIMT
    padded = cuda_tc.with_channels(stem, 8)
    assert padded.x_shape == (1, 32, 32, 8) and padded.w_shape == (7, 7, 8, 64) and padded.y_shape == stem.y_shape
    assert fwd(padded, np.float16, "highest", 90).template[-1] is True
    assert cuda_tc.routes(stem, np.float16, "highest", 90)["forward"].endswith("true>")
    gray = _cfg((1, 32, 32, 1), (3, 3, 1, 64), {})
    assert cuda_tc.padded_channels(gray, np.float32, "tf32", 90) is None  # 1 -> 4: four times the work
    assert cuda_tc.padded_channels(_cfg((1, 8, 8, 6), (3, 3, 3, 64), {"groups": 2}), np.float32, "tf32", 90) is None
    assert cuda_tc.padded_channels(_cfg((1, 8, 8, 16), (3, 3, 16, 64), {}), np.float16, "highest", 90) is None
    groups = _cfg((2, 8, 8, 64), (3, 3, 32, 96), {"groups": 2})
    r = fwd(groups, np.float32, "tf32", 90)
    assert r.template == (128, 64, 4, True) and r.grid == (1, 1, 2)
    # few channels per group: SIMT for float16; TF32 and bfloat16 always on tensor cores (generic variant)
    depthwise = _cfg((1, 8, 8, 8), (3, 3, 1, 8), {"groups": 8})
    assert fwd(depthwise, np.float16, "highest", 90) is None
    assert fwd(depthwise, np.float32, "tf32", 90).template == (128, 64, 2, False)
    if cuda_tc.BFLOAT16 is not None:
        assert fwd(depthwise, cuda_tc.BFLOAT16, "highest", 90).template[-1] is False


def test_routes_are_registered_instantiations():
    """Every template a route can produce is one the kernel file instantiates."""
    from gpuconv.cuda.modules import kernel_source, registered_name_expressions

    registered = set()
    for f in (cuda_tc.TC_FORWARD_FILE, cuda_tc.TC_BACKWARD_FILE):
        registered |= set(registered_name_expressions(kernel_source(f)))
    seen = set()
    for (xs, ws, opts), dtype, aligned in itertools.product(SHAPES, DTYPES, (True, False)):
        for precision in PRECISIONS:
            for name in cuda_tc.routes(_cfg(xs, ws, opts), dtype, precision, 90, aligned).values():
                if name is not None:
                    seen.add(name)
    assert {n.split("<")[0] for n in seen} == {"gpuconv_tc_fwd", "gpuconv_tc_bwd_input", "gpuconv_tc_bwd_weight"}
    assert seen <= registered, seen - registered


def _registered_tc_kernels():
    from gpuconv.cuda.modules import kernel_source, registered_name_expressions

    for f in (cuda_tc.TC_FORWARD_FILE, cuda_tc.TC_BACKWARD_FILE):
        for expr in registered_name_expressions(kernel_source(f)):
            if expr.startswith("gpuconv_tc_"):
                name, args = expr[:-1].split("<")
                ctype, bm, bn, stages, *_ = (a.strip() for a in args.split(","))  # then VEC (, DZ_TF32)
                yield name, ctype, int(bm), int(bn), int(stages)


@pytest.mark.skipif(nvrtc_reason() is not None, reason=f"NVRTC unavailable: {nvrtc_reason()}")
def test_shared_memory_of_the_plans_is_the_kernels(tmp_path):
    """The dynamic shared memory a launch asks for (cuda_tc.smem_bytes) is the tile's SMEM_BYTES on the
    ldmatrix path and covers the wmma path's: static_asserts over every instantiation, compiled by NVRTC."""
    from gpuconv.backends import _plans
    from gpuconv.cuda import nvrtc
    from gpuconv.cuda.modules import kernel_path

    dtypes = {"float": np.float32, "__half": np.float16, "__nv_bfloat16": cuda_tc.BFLOAT16}
    lines = [f'#include "{kernel_path("gpuconv_tc.cuh")}"']
    sizes = []
    for name, ctype, bm, bn, stages in _registered_tc_kernels():
        a_row, b_row = (str(v).lower() for v in cuda_tc.TC_LAYOUTS[name])
        n = cuda_tc.smem_bytes(name, dtypes[ctype], bm, bn, stages)
        sizes.append(n)
        tile = f"gpuconv_tc_tile<{ctype}, {bm}, {bn}, {stages}, {a_row}, {b_row}>::SMEM_BYTES"
        lines.append(f"static_assert({tile} OP {n}, \"{name} {ctype} {bm}x{bn}x{stages}\");")
    src = tmp_path / "smem.cu"
    for op, extra in (("==", ()), ("<=", ("-DGPUCONV_TC_WMMA=1",))):
        src.write_text("\n".join(lines).replace(" OP ", f" {op} ") + "\n")
        nvrtc.compile_program(str(src), "sm_90", options=(*_plans.kernel_defines(), *extra))
    # two blocks of the largest fit an SM on sm_80 (164 KB) and sm_90; one block fits sm_70's 96 KB opt-in
    assert 2 * max(sizes) <= 164 * 1024 and max(sizes) <= 96 * 1024


@pytest.mark.parametrize("name, sms, bm", [
    ("rn50-3x3-28", 132, 128),  # 392 blocks: 3 rounds of 128 x 128, 4 of 96 x 128
    ("rn50-3x3-14", 132, 96),   # 196 blocks: 2 rounds, the second a half; 262 of 96 x 128: 2 full rounds
    ("rn50-3x3-7", 132, 96),    # 100 blocks leave 32 SMs idle; 132 of 96 x 128 fill one round
    ("rn50-3x3-14", 108, 128),  # an A100: 2 rounds against 3
    ("rn50-3x3-7", 108, 128),   # 1 round against 2
    ("rn50-1x1-up", 132, 128),  # 3136 blocks: 24 rounds against 32
])
def test_wide_tiles_fill_the_rounds_of_blocks(name, sms, bm):
    """Forward and dx GEMMs of more than 64 columns take 96 x 128 tiles where fewer, fuller rounds of blocks pay
    for their costlier steps (cuda_tc.WIDE_TILES), on the device's SM count; dw keeps 128 rows."""
    s = bd.SHAPES[name]
    cfg = make_config("model", s.x_shape, s.w_shape, stride=s.stride, padding=s.padding)
    for dtype, precision in ((np.float16, "highest"), (np.float32, "tf32")):
        f = cuda_tc.forward_plan(cfg, dtype, precision, 90, "relu", True, sms=sms)[0]
        d = cuda_tc.backward_input_plan(cfg, dtype, precision, 90, 1, sms=sms)[-1]
        assert f.template == (bm, 128, 4, True) and f.grid[0] == -(-cfg.n * cfg.oh * cfg.ow // bm)
        if cfg.cg > 64:
            assert d.template == (bm, 128, 4, True)
        assert dw(cfg, dtype, precision, 90).template[0] == 128


def test_backward_variants():
    cfg = _cfg((2, 8, 8, 256), (3, 3, 256, 256), {"padding": 1})
    for dtype, precision in ((np.float16, "highest"), (np.float32, "tf32")):
        assert dx(cfg, dtype, precision, 90).template == (96, 128, 4, True)  # one round either way
        assert dw(cfg, dtype, precision, 90).template == (128, 128, 4, True)  # dw: always 128 rows
    assert dx(cfg, np.float32, "highest", 90) is None
    assert dw(cfg, np.float32, "highest", 90) is None
    # dx steps through output channels: Mg must be a whole reduction step; dw needs 16-byte runs of both
    odd = _cfg((1, 8, 8, 24), (3, 3, 24, 24), {})
    assert dx(odd, np.float16, "highest", 90).template[-1] is False
    assert dw(odd, np.float16, "highest", 90).template[-1] is True
    stem = _cfg((1, 32, 32, 3), (7, 7, 3, 64), {"stride": 2, "padding": 3})
    # few input channels but whole reduction steps along Mg = 64: tensor cores (the SIMT direct kernel's rate is
    # ~1/14 of the padded tile's); a depthwise layer keeps the direct kernel
    assert dx(stem, np.float16, "highest", 90).template[-1] is True
    depthwise = _cfg((1, 16, 16, 32), (3, 3, 1, 32), {"groups": 32, "padding": 1})
    assert dx(depthwise, np.float16, "highest", 90) is None
    assert dx(stem, np.float32, "tf32", 90).template[-1] is True  # dx steps through Mg = 64
    assert dw(stem, np.float16, "highest", 90).template[-1] is False


def test_dw_split_is_a_function_of_the_shape():
    cfg = _cfg((64, 56, 56, 64), (3, 3, 64, 64), {"padding": 1})
    a = dw(cfg, np.float16, "highest", 90)
    b = dw(cfg, np.float16, "highest", 80)
    chunk = int(a.scalars[-1])
    assert a == b and chunk % 32 == 0 and a.grid[2] * chunk >= 64 * 56 * 56 > (a.grid[2] - 1) * chunk
    assert a.grid[2] * 576 * 64 * 4 <= 64 * 2**20
    small = dw(cfg, np.float16, "highest", 90, workspace_bytes=576 * 64 * 4 * 3)
    assert small.grid[2] == 3


def _rounds_steps(tiles, pixels, n, bk):
    chunk = -(-(-(-pixels // n)) // bk) * bk
    splits = -(-pixels // chunk)
    return -(-tiles * splits // cuda_tc.ROUND_BLOCKS) * (chunk // bk), splits


@pytest.mark.parametrize("name,blocks", [("rn50-3x3-56", 260), ("rn50-3x3-28", 261), ("rn50-3x3-14", 252),
                                         ("rn50-3x3-7", 288), ("rn50-3x3s2", 261)])
def test_dw_splits_fill_whole_rounds(name, blocks):
    # One split more than fits would start a further round of blocks for a few (270 blocks of 53 steps where
    # 261 of 55 take two rounds); where one block per tile is too few (the 7x7 layer's 144 tiles), two splits.
    s = bd.SHAPES[name]
    cfg = make_config(name, s.x_shape, s.w_shape, stride=s.stride, padding=s.padding)
    la = dw(cfg, np.float16, "highest", 90)
    tiles, splits = la.grid[0] * la.grid[1], la.grid[2]
    assert tiles * splits == blocks, la.grid
    pixels = cfg.n * cfg.oh * cfg.ow
    old = _rounds_steps(tiles, pixels, -(-_plans.TARGET_BLOCKS // tiles), 32)  # the rule before: ceil
    new = _rounds_steps(tiles, pixels, splits, 32)
    assert new[0] <= old[0] and (new[0] < old[0] or new[1] <= old[1]), (new, old)


class _Recorder:
    """A module kind that records which kernels the backend asks for and what it launches, running nothing."""

    def __init__(self):
        self.launches = []

    def __call__(self, kind, fname):
        recorder = self

        class Kernel:
            max_dynamic_shared_size_bytes = 48 * 1024  # CUDA's default; the backend raises it as needed

            def __init__(self, name):
                self.name = name

            def __call__(self, grid, block, args, shared_mem=0):
                assert shared_mem <= self.max_dynamic_shared_size_bytes
                recorder.launches.append((fname, self.name, tuple(grid), tuple(block)))

        class Module:
            def get_function(self, name):
                return Kernel(name)

        return Module()


@pytest.mark.parametrize("dtype,precision,expected", [
    (np.float32, "highest", "gpuconv_conv_fwd<float, 64>"),
    (np.float32, "tf32", "gpuconv_tc_fwd<float, 128, 64, 4, true>"),
    (np.float16, "highest", "gpuconv_tc_fwd<__half, 128, 64, 4, true>"),
    (np.float64, "tf32", "gpuconv_conv_fwd<double, 64>"),
])
def test_backend_launches(dtype, precision, expected):
    rec = _Recorder()
    be = CudaBackend("emulator", np, get_module=rec)
    cfg = _cfg((2, 8, 8, 64), (3, 3, 64, 64), {"padding": 1})
    x = np.zeros(cfg.x_shape, dtype)
    w = np.zeros(cfg.w_shape, dtype)
    be.forward(x, w, None, cfg, "relu", precision=precision)
    assert [name for _, name, _, _ in rec.launches] == [expected]
    # an unaligned view of the same shape takes the generic tensor-core variant (or SIMT for highest)
    buf = np.zeros(x.size + 1, dtype)
    xu = buf[1:].reshape(x.shape)
    rec.launches.clear()
    be.forward(xu, w, None, cfg, "relu", precision=precision)
    (name,) = [name for _, name, _, _ in rec.launches]
    assert name == (expected if "tc" not in expected else expected.replace("64, 4, true", "64, 2, false"))


def test_wgmma_forward_route():
    """The FP16 / BF16 forward takes the wgmma kernel on sm_90 only, when asked (cuda_tc.WGMMA_ENV), for more
    than 64 columns whose channels are whole 16-byte runs; its shared memory is the tile's plus the alignment."""
    cfg = _cfg((2, 9, 8, 32), (3, 3, 16, 272), {"groups": 2, "padding": 1})
    for dtype in (np.float16, cuda_tc.BFLOAT16):
        if dtype is None:
            continue
        (f,) = cuda_tc.forward_plan(cfg, dtype, "highest", 90, "relu", True, wgmma=True)
        assert (f.file, f.kernel, f.template) == (cuda_tc.WGMMA_FORWARD_FILE, "gpuconv_wgmma_fwd", (4,))
        assert f.grid == (2, 2, 2) and f.block == (128, 1, 1) and f.shared_mem == 4 * 16384 + 1024
        for arch, wgmma, aligned in ((90, False, True), (80, True, True), (100, True, True), (90, True, False)):
            (g,) = cuda_tc.forward_plan(cfg, dtype, "highest", arch, "relu", True, aligned, wgmma=wgmma)
            assert g.kernel == "gpuconv_tc_fwd", (arch, wgmma, aligned)
    narrow = _cfg((2, 9, 8, 32), (3, 3, 32, 64), {"padding": 1})
    assert fwd(narrow, np.float16, "highest", 90).kernel == "gpuconv_tc_fwd"
    assert cuda_tc.forward_plan(narrow, np.float16, "highest", 90, "relu", True, wgmma=True)[0].kernel == \
        "gpuconv_tc_fwd"


def test_wgmma_tf32_forward_route():
    """The TF32 forward on wgmma (sm_90, asked for) first writes w transposed and rounded (arrays w, wt: K x M
    elements, one thread each, the grid capped as the flag kernel's), then the GEMM reads wt; this layer's dx
    (Cg = 16) stays on mma.sync, and so does a forward of at most 64 columns or of channels that are no 16-byte
    runs."""
    cfg = _cfg((2, 9, 8, 32), (3, 3, 16, 272), {"groups": 2, "padding": 1})
    prep, gemm = cuda_tc.forward_plan(cfg, np.float32, "tf32", 90, "relu", True, wgmma=True)
    assert (prep.file, prep.kernel, prep.template) == (cuda_tc.WGMMA_FORWARD_FILE, cuda_tc.TF32_FILTER_KERNEL, ())
    assert prep.scalars == (3 * 3 * 16, 272) and prep.block == (256, 1, 1) and prep.grid == (153, 1, 1)
    assert (gemm.kernel, gemm.template, gemm.grid) == ("gpuconv_wgmma_fwd", (4,), (2, 2, 2))
    assert cuda_tc.routes(cfg, np.float32, "tf32", 90, wgmma=True) == {
        "forward": "gpuconv_wgmma_fwd<float, 4>", "backward_input": "gpuconv_tc_bwd_input<float, 128, 64, 2, false>",
        "backward_weight": "gpuconv_tc_bwd_weight<float, 128, 128, 4, true>"}
    for arch, wgmma, aligned in ((90, False, True), (80, True, True), (90, True, False)):
        (g,) = cuda_tc.forward_plan(cfg, np.float32, "tf32", arch, "relu", True, aligned, wgmma=wgmma)
        assert g.kernel == "gpuconv_tc_fwd", (arch, wgmma, aligned)
    for odd in (_cfg((2, 9, 8, 32), (3, 3, 32, 64), {"padding": 1}), _cfg((1, 6, 6, 6), (3, 3, 6, 96), {})):
        assert [p.kernel for p in cuda_tc.forward_plan(odd, np.float32, "tf32", 90, "relu", True, wgmma=True)] == \
            ["gpuconv_tc_fwd"]
    assert cuda_tc.forward_plan(cfg, np.float32, "highest", 90, "relu", True, wgmma=True) is None


def test_wgmma_dx_route():
    """dx takes the wgmma kernel in every phase on sm_90 when asked, for Cg above 64 and Mg whole reduction
    steps; its first pass over w sets the NaN rule's flag, and in TF32 also writes w rounded (arrays w, flag, wr:
    the grid capped as the flag kernel's), which the phases read; a dz stored rounded takes the DZ_TF32
    variant."""
    cfg = _cfg((1, 9, 10, 144), (3, 3, 144, 64), {"stride": 2, "padding": 1})
    for dtype, precision in ((np.float16, "highest"), (np.float32, "tf32")):
        first, *phases = cuda_tc.backward_input_plan(cfg, dtype, precision, 90, 3 * 3 * 144 * 64, wgmma=True)
        flag = (cuda_tc.WGMMA_BACKWARD_FILE, cuda_tc.TF32_DX_FILTER_KERNEL) if precision == "tf32" else \
            (cuda_tc.TC_BACKWARD_FILE, "gpuconv_nonfinite_flag")
        assert (first.file, first.kernel, first.template) == (*flag, ())
        assert first.scalars == (3 * 3 * 144 * 64,) and first.grid == (256, 1, 1) and first.block == (256, 1, 1)
        assert len(phases) == 4 and {(p.kernel, p.template, p.grid[1:]) for p in phases} == \
            {("gpuconv_wgmma_bwd_input", (4,), (2, 1))}
        for arch, wgmma, aligned in ((90, False, True), (80, True, True), (90, True, False)):
            first, *phases = cuda_tc.backward_input_plan(cfg, dtype, precision, arch, 10, aligned, wgmma=wgmma)
            assert first.kernel == "gpuconv_nonfinite_flag" and first.grid == (1, 1, 1), (arch, wgmma, aligned)
            assert {p.kernel for p in phases} == {"gpuconv_tc_bwd_input"}, (arch, wgmma, aligned)
    # a dz that backward's pass stored rounded: the DZ_TF32 variant (A from shared memory) in TF32; FP16 has none
    for dtype, precision, template in ((np.float16, "highest", (4,)), (np.float32, "tf32", (4, True))):
        _, *phases = cuda_tc.backward_input_plan(cfg, dtype, precision, 90, 1, dz_tf32=True, wgmma=True)
        assert {(p.kernel, p.template) for p in phases} == {("gpuconv_wgmma_bwd_input", template)}
    narrow = _cfg((1, 9, 10, 64), (3, 3, 64, 64), {"padding": 1})  # Cg = 64: mma.sync's 128 x 64 tile
    assert [p.kernel for p in cuda_tc.backward_input_plan(narrow, np.float32, "tf32", 90, 1, wgmma=True)] == \
        ["gpuconv_nonfinite_flag", "gpuconv_tc_bwd_input"]
    assert cuda_tc.backward_input_plan(cfg, np.float32, "highest", 90, 1, wgmma=True) is None


def test_wgmma_env(monkeypatch):
    from gpuconv.backends.cuda import CudaBackend

    monkeypatch.delenv(cuda_tc.WGMMA_ENV, raising=False)
    assert not cuda_tc.wgmma_enabled() and not CudaBackend("emulator", np)._wgmma()
    monkeypatch.setenv(cuda_tc.WGMMA_ENV, "1")
    assert cuda_tc.wgmma_enabled() and CudaBackend("emulator", np)._wgmma()
    monkeypatch.setenv(cuda_tc.WGMMA_ENV, "0")
    assert not cuda_tc.wgmma_enabled()
    monkeypatch.setenv(cuda_tc.WGMMA_ENV, "yes")
    with pytest.raises(ValueError, match="GPUCONV_WGMMA='yes' is not one of 0, 1"):
        cuda_tc.wgmma_enabled()


@pytest.mark.parametrize("cc, first", [("90", "-arch=sm_90a"), ("80", None), ("100", None)])
def test_cupy_builds_the_wgmma_file_for_sm90a_on_sm90_only(monkeypatch, cc, first):
    """CuPy appends its own -arch after the options, and NVRTC takes the first one: the wgmma file is built for
    sm_90a on an sm_90 GPU (with empty kernels elsewhere); other files get no -arch of ours."""
    import types

    from gpuconv import _dispatch
    from gpuconv.cuda import modules

    built = []

    class RawModule:
        def __init__(self, code, options, name_expressions):
            built.append(options)

    fake = types.SimpleNamespace(RawModule=RawModule, cuda=types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(compute_capability=cc)))
    monkeypatch.setattr(_dispatch, "import_cupy", lambda: fake)
    for name in (cuda_tc.WGMMA_FORWARD_FILE, cuda_tc.TC_FORWARD_FILE):
        path = modules.kernel_path(name)
        modules._cupy_module(path.read_text(), path, (), ())
    wg, tc = built
    assert (wg[0] if wg[0].startswith("-arch") else None) == first
    assert not any(o.startswith("-arch") for o in tc) and sum(o.startswith("-arch") for o in wg) <= 1


@pytest.mark.skipif(nvrtc_reason() is not None, reason=f"NVRTC unavailable: {nvrtc_reason()}")
def test_wgmma_shared_memory_of_the_plan_is_the_kernels(tmp_path):
    from gpuconv.backends import _plans
    from gpuconv.cuda import nvrtc
    from gpuconv.cuda.modules import kernel_path

    src = tmp_path / "wg_smem.cu"
    src.write_text(f'#include "{kernel_path("gpuconv_wg.cuh")}"\n' + "".join(
        f"static_assert(gpuconv_wg_tile<{t}, {cuda_tc.WGMMA_STAGES}, {b}>::SMEM_BYTES == "
        f"{cuda_tc.wgmma_smem_bytes()}, \"{t}\");\n" for t, b in (("__half", "false"), ("__half", "true"), ("__nv_bfloat16", "false"),
                                                        ("__nv_bfloat16", "true"), ("float", "true"))))
    nvrtc.compile_program(str(src), "sm_90", options=_plans.kernel_defines())
    assert 2 * cuda_tc.wgmma_smem_bytes() <= 227 * 1024  # two blocks an SM on sm_90
