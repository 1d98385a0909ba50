"""Mutation testing of kernels/ (with the tensor-core launch plans), the NumPy backend and the Python layer
around them (options, layouts, transposed convolution, dask, torch, interop): plant one small bug at a time, run
the CI jobs that should catch it, and report which bugs got through.

    python tools/mutate.py                      every mutant, every job (plain, reverse, asan), no time limit
    python tools/mutate.py --budget 1200        stop starting mutants after 20 minutes (the rest: "not run")
    python tools/mutate.py --only k-fwd-03,n-relu-fmax --jobs plain
    python tools/mutate.py --kind numpy         only the NumPy-backend mutants (kinds: kernels, tc, numpy, api)
    python tools/mutate.py --list               the mutants, and whether each still applies to the tree

Each mutant is one exact text replacement in one file (MUTANTS below, a fixed list, versioned by
MUTANTS_VERSION: change the version when the list changes, so that reported kill rates name their list). The
tree is copied once to a scratch folder (tracked and untracked files, without .git, .venv, caches); each mutant
is applied to the scratch copy only, the jobs run there (PYTHONPATH and the working directory point at the
copy, its own emulator cache), and the file is restored before the next mutant, whatever happens. The real
tree is never written.

Jobs, as CI (.ci/run) runs them, each with -x so that a killed mutant costs one failing test:
  plain    the emulator suite (tests/test_kernels.py + the shared backend suite, -k "emulator or test_kernels")
  reverse  the same with GPUCONV_EMULATOR_SCHEDULE=reverse (a missing barrier shows as a wrong result)
  asan     the same under tools/asan_emulator.sh (an out-of-bounds access is a report)
  numpy    the NumPy backend's tests (the shared suite -k numpy, tests/test_numpy_backend.py, the TF32 oracle's)
  api      the tests of the Python layer (API_SUITE: argument checks, layouts, conv2d_transpose, gpuconv.dask,
           gpuconv.torch, interop, and the shared suite) without the emulator, for the mutants of API_PATHS
The tensor-core mutants (kind tc: kernels/gpuconv_tc*.cuh, conv_tc_*.cu, gpuconv/backends/cuda_tc.py and the
emulator's gpuconv_ptx.h) run plain, reverse and asan over TC_SUITE instead (tests/test_tc_kernels.py first, then
the tensor-core cases of the shared suites, the launch plans' tests and tests/test_emulator_ptx.py, with
-k "emulator or kernels or routing": .ci/run's selection plus tests/test_tc_routing.py, which the plain pytest
run of CI holds).
A kernel mutant runs plain, then reverse, then asan, until one fails; a NumPy-backend mutant runs numpy, a
Python-layer mutant api. A
mutant is killed when a job fails or exceeds --timeout (a hang is a detected bug, as in mutmut and Stryker).

Mutants that only an input of GPU size can reach (32-bit element offsets: wrong past 2**31 elements) are marked
gpu_only; they are not run unless --with-gpu-only, and are counted apart: tools/gpu_check.py bigoffsets covers
them on a GPU. Equivalent mutants are not in the list.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
MUTANTS_VERSION = 18

EMULATOR_SUITE = ["tests/test_kernels.py", "tests/test_forward.py", "tests/test_backward.py",
                  "tests/test_gradcheck.py", "tests/test_layer.py"]
# The tensor-core kernels and their plans: their own tests first (with -x the first failure ends the job), then
# the shared suites' tensor-core cases (precision="tf32", bfloat16, float16, the NaN rule, conv2d_transpose).
# The emulator's wgmma tests (7 s) lead: they alone see its mutants' layouts bit for bit.
TC_SUITE = ["tests/test_emulator_wgmma.py", "tests/test_tc_kernels.py", "tests/test_tc_routing.py",
            "tests/test_precision.py", "tests/test_nan_rule.py", "tests/test_transpose.py",
            "tests/test_emulator_ptx.py"]
NUMPY_SUITE = ["tests/test_numpy_backend.py", "tests/test_forward.py", "tests/test_backward.py",
               "tests/test_gradcheck.py", "tests/test_layer.py", "tests/test_precision.py"]
# The Python layer around the backends, and the tests that hold it (on the NumPy backend: -k "not emulator").
API_PATHS = ("gpuconv/_config.py", "gpuconv/_layout.py", "gpuconv/_transpose.py", "gpuconv/dask.py",
             "gpuconv/torch.py", "gpuconv/_interop.py", "gpuconv/_validate.py", "gpuconv/_api.py")
API_SUITE = ["tests/test_errors.py", "tests/test_fuzz_arguments.py", "tests/test_layout.py", "tests/test_transpose.py",
             "tests/test_dask.py", "tests/test_torch.py", "tests/test_interop.py", "tests/test_forward.py",
             "tests/test_backward.py", "tests/test_layer.py", "tests/test_gradcheck.py", "tests/test_precision.py"]
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--tb=line", "-rf"]


# Not under ASan (as in .ci/run): NVRTC's static_asserts run no kernel, and NVRTC cannot load its builtins
# with libasan preloaded.
NOT_UNDER_ASAN = ("tests/test_tc_routing.py",)


def _emulator_jobs(suite: list, keyword: str) -> dict:
    asan_suite = [f for f in suite if f not in NOT_UNDER_ASAN]
    return {
        "plain": ({}, [*PYTEST, "-k", keyword, *suite]),
        "reverse": ({"GPUCONV_EMULATOR_SCHEDULE": "reverse"}, [*PYTEST, "-k", keyword, *suite]),
        # tools/asan_emulator.sh runs $PYTHON (else python3): this interpreter, as CI runs it inside its venv
        "asan": ({"PYTHON": sys.executable},
                 ["bash", "tools/asan_emulator.sh", *asan_suite, "-k", keyword, "-x"]),
    }


# {mutant kind: {job: (environment, command)}}; the tensor-core filter is .ci/run's ("kernels" selects all of
# tests/test_tc_kernels.py and the static_asserts of tests/test_tc_routing.py).
JOBS = {
    "kernels": _emulator_jobs(EMULATOR_SUITE, "emulator or test_kernels"),
    "tc": _emulator_jobs(TC_SUITE, "emulator or kernels or routing"),
    # (tf32_round: the TF32 oracle's own tests in tests/test_precision.py, which take no backend)
    "numpy": {"numpy": ({}, [*PYTEST, "-k", "numpy or test_numpy_backend or tf32_round", *NUMPY_SUITE])},
    "api": {"api": ({}, [*PYTEST, "-k", "not emulator", *API_SUITE])},
}
KERNEL_JOBS = ("plain", "reverse", "asan")
# The files whose mutants run the tensor-core jobs (kind "tc"). kernels/gpuconv_ptx.cuh has none: the emulator
# compiles its own gpuconv_ptx.h (the ISA's layouts, which tests/test_emulator_ptx.py checks) in place of that
# file's inline PTX, so no CPU job can see a change there; that header's mutants stand in for it.
TC_PATHS = ("kernels/gpuconv_tc.cuh", "kernels/gpuconv_tc_mma.cuh", "kernels/gpuconv_tc_wmma.cuh",
            "kernels/conv_tc_forward.cu", "kernels/conv_tc_backward.cu", "gpuconv/backends/cuda_tc.py",
            "gpuconv/cuda/emulator/include/gpuconv_ptx.h", "gpuconv/cuda/emulator/gpuconv_emu.h",
            "gpuconv/backends/cuda.py", "gpuconv/cuda/emulator/include/gpuconv_wgmma.h",
            "kernels/conv_wgmma_forward.cu", "kernels/gpuconv_tc_fwd_copies.cuh",
            "kernels/conv_wgmma_backward.cu", "kernels/gpuconv_wg.cuh", "kernels/gpuconv_tc_dx.cuh")


class Mutant(NamedTuple):
    id: str
    path: str       # relative to the repository root
    old: str        # exact text, found exactly once in the file (or give nth)
    new: str
    what: str       # the bug, in words
    gpu_only: bool = False
    nth: Optional[int] = None  # which occurrence of old, when it is not unique

    @property
    def kind(self) -> str:
        if self.path in TC_PATHS:
            return "tc"
        if self.path in API_PATHS:
            return "api"
        return "kernels" if self.path.startswith("kernels/") else "numpy"


FWD, BWD, COMMON = "kernels/conv_forward.cu", "kernels/conv_backward.cu", "kernels/gpuconv_common.cuh"
TC, MMA, WMMA = "kernels/gpuconv_tc.cuh", "kernels/gpuconv_tc_mma.cuh", "kernels/gpuconv_tc_wmma.cuh"
TCF, TCB, PLAN = "kernels/conv_tc_forward.cu", "kernels/conv_tc_backward.cu", "gpuconv/backends/cuda_tc.py"
PTXH = "gpuconv/cuda/emulator/include/gpuconv_ptx.h"
WGH = "gpuconv/cuda/emulator/include/gpuconv_wgmma.h"
WGF, WGB, WGC = "kernels/conv_wgmma_forward.cu", "kernels/conv_wgmma_backward.cu", "kernels/gpuconv_wg.cuh"
FWC, DXC = "kernels/gpuconv_tc_fwd_copies.cuh", "kernels/gpuconv_tc_dx.cuh"
NP, REG = "gpuconv/backends/numpy.py", "gpuconv/_registry.py"
CFG, LAY, TRP, DSK = "gpuconv/_config.py", "gpuconv/_layout.py", "gpuconv/_transpose.py", "gpuconv/dask.py"
TOR, IOP, VAL, API = "gpuconv/torch.py", "gpuconv/_interop.py", "gpuconv/_validate.py", "gpuconv/_api.py"
M = Mutant
MUTANTS = [
    # ---------------------------------------------------------------- forward: tiled implicit GEMM
    M("k-fwd-01", FWD, "        if (row < P) {\n            const int b = row / (OH * OW)",
      "        if (row <= P) {\n            const int b = row / (OH * OW)", "bound: loader row < P made <="),
    M("k-fwd-02", FWD, "if (r_ok && a_b[i] >= 0 && (unsigned)ih < (unsigned)H",
      "if (r_ok && a_b[i] >= 0 && (unsigned)ih <= (unsigned)H", "bound: input row < H made <="),
    M("k-fwd-03", FWD, "const int ih = a_ih[i] + k1 * d1, iw = a_iw[i] + k2 * d2;",
      "const int ih = a_ih[i] + k1 * d1, iw = a_iw[i] + k2 * d2 + 1;", "index off by one: input column"),
    M("k-fwd-04", FWD, "const int ih = a_ih[i] + k1 * d1, iw = a_iw[i] + k2 * d2;",
      "const int ih = a_ih[i] + k1 * d2, iw = a_iw[i] + k2 * d1;", "swapped: row and column dilations"),
    M("k-fwd-05", FWD, "rb[j] = (bcol_ok && kr < K)", "rb[j] = (bcol_ok && kr <= K)",
      "bound: weight row < K made <="),
    M("k-fwd-06", FWD, "wcol[(gpuconv_i64)kr * M]", "wcol[(gpuconv_i64)kr * Mg]",
      "index: weight row stride M made Mg (groups)"),
    M("k-fwd-07", FWD, "            if (col >= Mg) continue;", "            if (col > Mg) continue;",
      "bound: epilogue column >= Mg made >"),
    M("k-fwd-08", FWD, "if (has_bias) z += gpuconv_to_acc(bias[m]);",
      "if (has_bias) z += gpuconv_to_acc(bias[col]);", "index: bias of the group-local column", nth=0),
    M("k-fwd-09", FWD, "gpuconv_store(y + (gpuconv_i64)row * M + m,", "gpuconv_store(y + (gpuconv_i64)row * Mg + m,",
      "index: output row stride M made Mg"),
    M("k-fwd-10", FWD, "ra[i] = gpuconv_to_acc(xg[(gpuconv_i64)((a_b[i] * H + ih) * W + iw) * C + cn]);",
      "ra[i] = gpuconv_to_acc(xg[((a_b[i] * H + ih) * W + iw) * C + cn]);",
      "32-bit element offset in the forward loader", gpu_only=True),
    M("k-fwd-11", FWD, "const int bcol = t % BN;", "const int bcol = t % (BN / 2);",
      "index: weight loader column"),
    # ---------------------------------------------------------------- forward: direct kernel
    M("k-fwd-12", FWD, "if ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) {\n                const T* xp",
      "if ((unsigned)ih <= (unsigned)H && (unsigned)iw < (unsigned)W) {\n                const T* xp",
      "bound: direct input row < H made <="),
    M("k-fwd-13", FWD, "    const int g = m / Mg;\n    const int b = p / (OH * OW)",
      "    const int g = m / Cg;\n    const int b = p / (OH * OW)", "index: group of an output channel (Cg for Mg)"),
    M("k-fwd-14", FWD, "const T* wp = w + (k1 * KW + k2) * Cg * M + m;", "const T* wp = w + (k2 * KW + k1) * Cg * M + m;",
      "swapped: tap row and column in the direct weight index"),
    M("k-fwd-15", FWD, "for (int n = 0; n < Cg; ++n) z += gpuconv_to_acc(xp[n])",
      "for (int n = 0; n < Cg - 1; ++n) z += gpuconv_to_acc(xp[n])",
      "bound: the last input channel skipped"),
    M("k-fwd-16", FWD, "const T* xp = x + (gpuconv_i64)((b * H + ih) * W + iw) * C + g * Cg;",
      "const T* xp = x + ((b * H + ih) * W + iw) * C + g * Cg;", "32-bit element offset in the direct forward",
      gpu_only=True),
    M("k-fwd-17", FWD, "    const int oi = rem / OW, oj = rem - oi * OW;\n    Acc z",
      "    const int oi = rem / OH, oj = rem - oi * OW;\n    Acc z", "index: output row from OH (for OW)"),
    # ---------------------------------------------------------------- shared helpers (every kernel)
    M("k-com-01", COMMON, "case GPUCONV_ACT_RELU: return z < Acc(0) ? Acc(0) : z;",
      "case GPUCONV_ACT_RELU: return z > Acc(0) ? z : Acc(0);", "relu that turns NaN into 0"),
    M("k-com-02", COMMON, "case GPUCONV_ACT_RELU: return u <= Acc(0) ? Acc(0) : dy;",
      "case GPUCONV_ACT_RELU: return u < Acc(0) ? Acc(0) : dy;", "derivative: relu' at the kink"),
    M("k-com-03", COMMON, "case GPUCONV_ACT_SIGMOID: return dy * u * (Acc(1) - u);",
      "case GPUCONV_ACT_SIGMOID: return dy * u * (Acc(1) + u);", "derivative: sigmoid' sign"),
    M("k-com-04", COMMON, "case GPUCONV_ACT_TANH: return dy * (Acc(1) - u * u);",
      "case GPUCONV_ACT_TANH: return dy * (Acc(1) - u);", "derivative: tanh' as 1 - u"),
    M("k-com-05", COMMON, "Acc(1) / (Acc(1) + gpuconv_exp(-z))", "Acc(1) / (Acc(1) + gpuconv_exp(z))",
      "sigmoid forward sign"),
    M("k-com-06", COMMON, "if (act == GPUCONV_ACT_IDENTITY) return d;", "if (act != GPUCONV_ACT_RELU) return d;",
      "derivative skipped in the fused loads (sigmoid, tanh)"),
    M("k-com-07", COMMON, "if (i2 >= n2) { i2 -= n2; ++i1; }", "if (i2 > n2) { i2 -= n2; ++i1; }",
      "bound: index walk carry >= made >"),
    M("k-com-08", COMMON, "if (i1 >= n1) { i1 -= n1; ++i0; }", "if (i1 >= n1) { i1 -= n1; }",
      "index walk: carry into the top digit dropped"),
    M("k-com-09", COMMON, "            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];",
      "            for (int j = 0; j < 4; ++j) acc[i][j] += a[j] * b[i];", "swapped: micro-tile indices"),
    M("k-com-10", COMMON, "    for (int k = 0; k < GPUCONV_BK; ++k) {\n        Acc a[4], b[4];",
      "    for (int k = 0; k < GPUCONV_BK - 1; ++k) {\n        Acc a[4], b[4];", "bound: one k of each tile step skipped"),
    M("k-com-11", COMMON, "        if (more) stage(buf ^ 1);\n        __syncthreads();",
      "        if (more) stage(buf ^ 1);\n", "barrier dropped: GEMM main loop"),
    M("k-com-12", COMMON, "    stage(0);\n    __syncthreads();", "    stage(0);\n", "barrier dropped: before the first step"),
    M("k-com-13", COMMON, "        if (more) stage(buf ^ 1);", "        if (more) stage(buf);",
      "double buffer: the next tile staged over the one in use"),
    M("k-com-14", COMMON, "    for (int k0 = begin; k0 < end; k0 += GPUCONV_BK) {",
      "    for (int k0 = begin; k0 + GPUCONV_BK < end; k0 += GPUCONV_BK) {", "the last reduction step skipped"),
    M("k-com-15", COMMON, "v[0] = q0.x; v[1] = q0.y; v[2] = q1.x; v[3] = q1.y;",
      "v[0] = q0.x; v[1] = q0.y; v[2] = q1.y; v[3] = q1.x;", "swapped: double lanes of the 128-bit load"),
    M("k-com-16", COMMON, "        i2 = rem - i1 * n2;", "        i2 = rem - i1 * n1;", "index walk: low digit radix"),
    # ---------------------------------------------------------------- activation gradient (alone)
    M("k-bwd-01", BWD, "const gpuconv_i64 stride = (gpuconv_i64)gridDim.x * blockDim.x;",
      "const gpuconv_i64 stride = (gpuconv_i64)gridDim.x * blockDim.x * 2;", "grid-stride loop: wrong stride",
      nth=1),
    M("k-bwd-02", BWD, "threadIdx.x; i < size; i += stride)", "threadIdx.x; i <= size; i += stride)",
      "bound: activation gradient i < size made <= (writes past the end)", nth=1),
    # ---------------------------------------------------------------- dx: tiled
    M("k-bwd-03", BWD, "        if (row < P) {\n            const int b = row / (Hp * Wp)",
      "        if (row <= P) {\n            const int b = row / (Hp * Wp)", "bound: dx loader row < P made <="),
    M("k-bwd-04", BWD, "const int di = k1b + i1 * k1i, dj = k2b + i2 * k2i;",
      "const int di = k1b + i1 * k2i, dj = k2b + i2 * k1i;", "swapped: tap-row and tap-column increments"),
    M("k-bwd-05", BWD, "const int k1 = k1f + i1 * k1s, k2 = k2f + i2 * k2s;",
      "const int k1 = k1f + i1 * k1s, k2 = k2f + i2 * k1s;", "swapped: tap-column step from the row's"),
    M("k-bwd-06", BWD, "(unsigned)oi < (unsigned)OH && (unsigned)oj < (unsigned)OW)",
      "(unsigned)oi <= (unsigned)OH && (unsigned)oj < (unsigned)OW)", "bound: dx output row < OH made <="),
    M("k-bwd-07", BWD, "rb[j] = (r_ok && col < Cg)", "rb[j] = (r_ok && col <= Cg)", "bound: dx weight column"),
    M("k-bwd-08", BWD, "            if (col >= Cg) continue;\n            Acc z = acc[i][j];  // epilogue of a transposed",
      "            if (col > Cg) continue;\n            Acc z = acc[i][j];  // epilogue of a transposed",
      "bound: dx epilogue column (writes a neighbour's channel)"),
    M("k-bwd-09", BWD, "const int q = (b * H + h0 + hp * s1) * W + w0 + (rem - hp * Wp) * s2;",
      "const int q = (b * H + h0 + hp * s1) * W + w0 + (rem - hp * Wp) * s1;", "swapped: dx column stride s2 -> s1"),
    M("k-bwd-10", BWD, "kr.init(ak, GPUCONV_BK, T2, Mg);", "kr.init(ak, GPUCONV_BK, T1, Mg);",
      "index: tap-column count T2 -> T1"),
    M("k-bwd-11", BWD, "ra[i] = gpuconv_load_dz(dy, y, (gpuconv_i64)((a_b[i] * OH + oi) * OW + oj) * M + mg, act);",
      "ra[i] = gpuconv_load_dz(dy, y, ((a_b[i] * OH + oi) * OW + oj) * M + mg, act);",
      "32-bit element offset in the dx loader", gpu_only=True),
    M("k-bwd-12", BWD, "gpuconv_store(dx + (gpuconv_i64)q * C + g * Cg + col", "gpuconv_store(dx + q * C + g * Cg + col",
      "32-bit element offset in the dx store", gpu_only=True),
    # ---------------------------------------------------------------- dx: direct
    M("k-bwd-13", BWD, "oi >= 0 && oi < OH && oj >= 0 && oj < OW;", "oi >= 0 && oi < OH && oj >= 0 && oj <= OW;",
      "bound: direct dx output column < OW made <="),
    M("k-bwd-14", BWD, "for (int mm = lane; mm < Mg; mm += L) {", "for (int mm = lane; mm < Mg - 1; mm += L) {",
      "bound: the last output channel skipped in direct dx"),
    M("k-bwd-15", BWD, "for (int off = L / 2; off > 0; off /= 2) {", "for (int off = L / 2; off > 1; off /= 2) {",
      "reduction: the last shuffle step skipped"),
    M("k-bwd-16", BWD, "wv[n] = n < Cg ? gpuconv_to_acc(wk[n * M + mm]) : Acc(0);",
      "wv[n] = n < Cg ? gpuconv_to_acc(wk[n * Mg + mm]) : Acc(0);", "index: direct dx weight stride M -> Mg"),
    M("k-bwd-17", BWD, "const int pixel = (img[j] * H + h0 + hp * s1) * W + w0 + wp * s2;",
      "const int pixel = (img[j] * H + h0 + hp * s1) * W + w0 + wp * s1;", "swapped: direct dx column stride"),
    # ---------------------------------------------------------------- dw: tiled
    M("k-bwd-18", BWD, "const int p_end = min(P, p_begin + chunk);", "const int p_end = min(P - 1, p_begin + chunk);",
      "bound: the last pixel of dw's reduction skipped", nth=0),
    M("k-bwd-19", BWD, "k2d2 = (kk - k1 * KW) * d2 - pl;", "k2d2 = (kk - k1 * KW) * d1 - pl;",
      "swapped: dw column dilation"),
    M("k-bwd-20", BWD, "k1d1 = k1 * d1 - pt;", "k1d1 = k1 * d1 - pl;", "swapped: dw top padding for the left"),
    M("k-bwd-21", BWD, "const int ih = px[i].i1 * s1 + k1d1, iw = px[i].i2 * s2 + k2d2;",
      "const int ih = px[i].i1 * s2 + k1d1, iw = px[i].i2 * s1 + k2d2;", "swapped: dw strides"),
    M("k-bwd-22", BWD, "            px[i].advance();\n", "", "dw pixel walk not advanced"),
    M("k-bwd-23", BWD, "if (col < Mg) out[(gpuconv_i64)row * M + g * Mg + col]",
      "if (col <= Mg) out[(gpuconv_i64)row * M + g * Mg + col]", "bound: dw epilogue column"),
    M("k-bwd-24", BWD, "Acc* out = ws + (gpuconv_i64)blockIdx.z * K * M;", "Acc* out = ws + (gpuconv_i64)blockIdx.z * K * Mg;",
      "index: dw split stride (groups)"),
    M("k-bwd-25", BWD, "ra[i] = gpuconv_to_acc(xg[(gpuconv_i64)((px[i].i0 * H + ih) * W + iw) * C]);",
      "ra[i] = gpuconv_to_acc(xg[((px[i].i0 * H + ih) * W + iw) * C]);", "32-bit element offset in the dw loader",
      gpu_only=True),
    # ---------------------------------------------------------------- dw: small, db, sums
    M("k-bwd-26", BWD, "const int dh = k1 * d1 - pt, dw = k2 * d2 - pl;", "const int dh = k1 * d1 - pt, dw = k2 * d1 - pl;",
      "swapped: small dw column dilation"),
    M("k-bwd-27", BWD, "        for (int k = 1; k < GPUCONV_RED_Y; ++k) s += red[k][threadIdx.x];\n        ws[(gpuconv_i64)blockIdx.y * E + e] = s;",
      "        for (int k = 1; k < GPUCONV_RED_Y - 1; ++k) s += red[k][threadIdx.x];\n        ws[(gpuconv_i64)blockIdx.y * E + e] = s;",
      "reduction: the last pixel phase of small dw skipped"),
    M("k-bwd-28", BWD, "    red[threadIdx.y][threadIdx.x] = v;\n    __syncthreads();\n    if (threadIdx.y == 0 && e < E) {",
      "    red[threadIdx.y][threadIdx.x] = v;\n    if (threadIdx.y == 0 && e < E) {", "barrier dropped: small dw"),
    M("k-bwd-29", BWD, "    red[threadIdx.y][threadIdx.x] = v;\n    __syncthreads();\n    if (threadIdx.y == 0 && m < M) {",
      "    red[threadIdx.y][threadIdx.x] = v;\n    if (threadIdx.y == 0 && m < M) {", "barrier dropped: db"),
    M("k-bwd-30", BWD, "p < p_end; p += GPUCONV_RED_Y) {\n            const gpuconv_i64 i = (gpuconv_i64)p * M + m;",
      "p <= p_end; p += GPUCONV_RED_Y) {\n            const gpuconv_i64 i = (gpuconv_i64)p * M + m;",
      "bound: db row < p_end made <= (the next split's row counted twice)"),
    M("k-bwd-31", BWD, "for (int k = 1; k < splits; ++k) s += ws[(gpuconv_i64)k * E + e];",
      "for (int k = 1; k < splits - 1; ++k) s += ws[(gpuconv_i64)k * E + e];", "a split skipped in the sum"),
    M("k-bwd-32", BWD, "    if (e >= E) return;\n    Acc s = ws[e];", "    if (e > E) return;\n    Acc s = ws[e];",
      "bound: sum_partials writes one past the end"),
    M("k-bwd-33", BWD, "        const int g = m / Mg;\n        const T* xg = x + g * Cg + n;",
      "        const int g = m / Cg;\n        const T* xg = x + g * Cg + n;", "index: small dw group (Cg for Mg)"),
    M("k-bwd-34", BWD, "? gpuconv_to_acc(xg[(gpuconv_i64)((px.i0 * H + ih) * W + iw) * C]) : Acc(0);",
      "? gpuconv_to_acc(xg[((px.i0 * H + ih) * W + iw) * C]) : Acc(0);", "32-bit element offset in the small dw loader",
      gpu_only=True),
    M("k-bwd-35", BWD, "const Acc xv = ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)",
      "const Acc xv = ((unsigned)ih < (unsigned)H && (unsigned)iw <= (unsigned)W)",
      "bound: small dw input column < W made <="),
    # ---------------------------------------------------------------- tensor cores: tiles and main loop
    M("k-bwd-36", BWD, "if (store_dz) gpuconv_store_dz(dz + i, d, tf32);",
      "if (store_dz) gpuconv_store_dz(dz + i, gpuconv_to_acc(dy[i]), tf32);",
      "db's pass stores dy for dz (the activation gradient dropped from the tensor-core kernels' input)"),
    M("t-loop-01", TC, "__pipeline_wait_prior(Tile::STAGES - 2);", "__pipeline_wait_prior(Tile::STAGES - 1);",
      "wait count: a step read before its copies landed"),
    M("t-loop-02", TC, "        __pipeline_wait_prior(Tile::STAGES - 2);\n        __syncthreads();",
      "        __pipeline_wait_prior(Tile::STAGES - 2);",
      "barrier dropped: before a step reads the other threads' copies"),
    M("t-loop-03", MMA, "        gpuconv_tc_round_bits<Tile::ROUND_A>(a);\n", "",
      "TF32 rounding dropped: the A operands ldmatrix loads"),
    M("t-loop-04", MMA, "return ROUND ? __float_as_uint(nvcuda::wmma::__float_to_tf32(*p)) : __float_as_uint(*p);",
      "return __float_as_uint(*p);",
      "TF32 rounding dropped: the operands of the 32-bit shared loads"),
    M("t-loop-05", TC, "if (next < KT) issue(next, next % Tile::STAGES);",
      "if (next < KT) issue(next, kt % Tile::STAGES);",
      "stage index: the next step loaded over the one in use"),
    M("t-tile-01", TC, "static constexpr bool WORDS_B = GPUCONV_TC_PTX && sizeof(T) == 4 && B_ROW;",
      "static constexpr bool WORDS_B = GPUCONV_TC_PTX && sizeof(T) == 4 && !B_ROW;",
      "skew: the 32-byte TF32 row padding on the wrong B layout"),
    M("t-tile-02", MMA, "return Tile::b_off(lane % 8 + 8 * ((lane / 8) % 2), 8 * (lane / 16));",
      "return Tile::b_off(lane % 8 + 8 * (lane / 16), 8 * ((lane / 8) % 2));",
      "ldmatrix lane address: B .trans matrices in the wrong order (b0[1] and b1[0] swapped)"),
    # ---------------------------------------------------------------- tensor cores: ldmatrix / mma.sync warp step
    M("t-mma-01", MMA, "return Tile::a_off(8 * ((lane / 8) % 2), lane % 8 + 8 * (lane / 16));",
      "return Tile::a_off(8 * (lane / 16), lane % 8 + 8 * (lane / 16));",
      "ldmatrix lane address: A .trans rows (a[1] and a[2] swapped)"),
    M("t-mma-02", MMA, "return Tile::b_off(Tile::VEC * ((lane / 8) % 2), lane % 8 + 8 * (lane / 16));",
      "return Tile::b_off(Tile::VEC * (lane / 16), lane % 8 + 8 * (lane / 16));",
      "ldmatrix lane address: B (column-major) reduction half"),
    M("t-mma-03", MMA, "a[1] = gpuconv_tc_bits<Tile::ROUND_A>(sa + Tile::a_off(m + 8, k));",
      "a[1] = gpuconv_tc_bits<Tile::ROUND_A>(sa + Tile::a_off(m, k + 4));", "TF32 scalar load: a[1] as (g, q + 4)"),
    M("t-mma-04", MMA, "emit(base, wn0 + 8 * j + 2 * q, acc.d[i][j][2 * h]);",
      "emit(base, wn0 + 8 * j + 2 * q, acc.d[i][j][h]);", "epilogue: row g + 8 of column 2q read as d[1]"),
    M("t-mma-05", MMA, "emit(base, wn0 + 8 * j + 2 * q + 1, acc.d[i][j][2 * h + 1]);",
      "emit(base, wn0 + 8 * j + 2 * q + 1, acc.d[i][j][2 * h]);", "epilogue: column 2q + 1 given column 2q's sum"),
    M("t-mma-06", MMA, "            if (base < 0) continue;", "            if (base <= 0) continue;",
      "bound: the row at output offset 0 taken for 'no row'"),
    M("t-wmma-01", WMMA, "            gpuconv_tc_round(b[j], (const T*)nullptr);\n", "",
      "wmma: the B fragments' TF32 rounding dropped"),
    # ---------------------------------------------------------------- tensor cores: loaders and epilogues
    M("t-fwd-01", FWC, "if (rows.b[i] >= 0 && k1 < KH && (unsigned)ih < (unsigned)H",
      "if (rows.b[i] >= 0 && k1 < KH && (unsigned)ih <= (unsigned)H",
      "bound: padding check of the cp.async forward loader, row < H made <="),
    M("t-fwd-02", FWC, "ka.init(akc * V, BK, KW, Cg);", "ka.init(akc, BK, KW, Cg);",
      "index: cp.async forward tap walk started at the chunk number (for its first element)"),
    M("t-fwd-05", FWC, "if (b_ok && kk < K)", "if (b_ok)",
      "bound: cp.async forward w rows past K (a step that runs past the reduction) copied"),
    M("t-fwd-06", FWC, "const int k0 = (k1 * KW + k2) * Cg + n - akc * V;", "const int k0 = (k1 * KW + k2) * Cg + n;",
      "index: cp.async forward w rows offset by the thread's own chunk"),
    M("t-fwd-07", FWC, "const int n = taps_inner ? ka.i0 * BK + akc * V : ka.i2;",
      "const int n = taps_inner ? akc * V : ka.i2;",
      "index: taps-inner forward order, x chunks of the first channel block for every block"),
    M("t-fwd-08", FWC, "const bool taps_inner = Cg % BK == 0;", "const bool taps_inner = Cg % V == 0;",
      "bound: taps-inner forward order taken where a step spans several taps"),
    M("t-fwd-09", FWC, "ka.init(0, 1, KH, KW);", "ka.init(0, 1, KW, KH);",
      "swapped: taps-inner forward walk with the radices KH, KW exchanged"),
    M("t-fwd-03", TCF, "kr.init(ak, BK, KW, Cg);", "kr.init(ak, BK, KH, Cg);",
      "index: generic forward tap walk by KH (for KW)"),
    M("t-fwd-04", TCF, "gpuconv_tc_store(y + base, bias, g * Mg, col0 + c,", "gpuconv_tc_store(y + base, bias, 0, col0 + c,",
      "index: bias of the group-local column"),
    M("t-bwd-01", DXC, "const int di = k1b + i1 * k1i, dj = k2b + i2 * k2i;  // output row",
      "const int di = k1b + i1 * k1i, dj = k2b + i2 * k2s;  // output row",
      "dx phase: tap column's output shift by the tap step k2s (for k2i)"),
    M("t-bwd-06", DXC, "if (++i1 == T1) { i1 = 0; mm0 += BK; }", "if (++i1 == T1) { i1 = 0; }",
      "index: dx taps-inner order never moves to the next block of output channels"),
    M("t-bwd-02", DXC, "if (rows.b[i] >= 0 && (unsigned)oi < (unsigned)OH && (unsigned)oj < (unsigned)OW)",
      "if (rows.b[i] >= 0 && (unsigned)oi < (unsigned)OH && (unsigned)oj <= (unsigned)OW)",
      "bound: padding check of the cp.async dx loader, column < OW made <="),
    M("t-bwd-03", DXC, "if ((unsigned)oj >= (unsigned)OW) continue;", "if ((unsigned)oj > (unsigned)OW) continue;",
      "bound: NaN-rule exact dx path, column >= OW made >"),
    M("t-bwd-04", TCB, "const int KT = (p_end - p_begin + BK - 1) / BK;", "const int KT = (p_end - p_begin) / BK;",
      "dw split end: the last split's partial step dropped"),
    M("t-bwd-07", TCB, "decode_row(row0 + (t % 8 + 8 * j) * V, k1d1[j], k2d2[j], n[j], r_ok[j]);",
      "decode_row(row0 + (t % 8 + 8 * j) * V, k1d1[0], k2d2[0], n[j], r_ok[j]);",
      "dw loader: every chunk of a thread given its first chunk's tap"),
    M("t-bwd-08", TCB, "const int pk = t / 8 + (TH / 8) * i, p = p0 + pk;", "const int pk = t / 8 + 8 * i, p = p0 + pk;",
      "index: dw loader's second pixel of a thread 8 on (for 16): pixels copied twice, others never"),
    M("t-bwd-05", TCB, "k2d2 = (kk - k1 * KW) * d2 - pl;", "k2d2 = (kk - k1 * KW) * d1 - pl;",
      "swapped: dw tap column dilation d2 made d1"),
    # ---------------------------------------------------------------- dz stored TF32-rounded (DZ_TF32)
    M("k-bwd-37", COMMON, "u = (u + 0x1000u) & 0xFFFFE000u;", "u = (u + 0x0FFFu) & 0xFFFFE000u;",
      "TF32 rounding of the dz passes: ties rounded down, not away from zero"),
    M("k-bwd-38", BWD, "gpuconv_store_dz(dz + i, gpuconv_load_dz(dy, y, i, act), tf32);",
      "gpuconv_store_dz(dz + i, gpuconv_load_dz(dy, y, i, act), 0);",
      "gpuconv_act_bwd ignores tf32: dz stored unrounded for the DZ_TF32 kernels"),
    M("k-bwd-39", BWD, "if (store_dz) gpuconv_store_dz(dz + i, d, tf32);", "if (store_dz) gpuconv_store_dz(dz + i, d, 0);",
      "db's pass ignores tf32: dz stored unrounded for the DZ_TF32 kernels"),
    M("t-dz-01", TC, "ROUND_A = sizeof(T) == 4 && !A_TF32,", "ROUND_A = sizeof(T) == 4 && !B_TF32,",
      "DZ_TF32: A's rounding skipped on B's flag (dw's x taken unrounded)"),
    M("t-dz-02", TCB, "gpuconv_tc_tile<T, BM, BN, STAGES, true, false, DZ_TF32, false>",
      "gpuconv_tc_tile<T, BM, BN, STAGES, true, false, false, DZ_TF32>",
      "DZ_TF32: dx skips the rounding of w (B) instead of dz (A)"),
    M("t-dz-03", "gpuconv/backends/cuda.py", "dz = self.activation_backward(dy, y, activation, tf32)",
      "dz = self.activation_backward(dy, y, activation)",
      "backend: dz without a bias computed unrounded, yet handed to the DZ_TF32 kernels"),
    M("t-dz-04", PLAN, "template = (*tile, fast, True) if dz_tf32 and fast", "template = (*tile, fast, True) if fast",
      "plans: the DZ_TF32 variant for a user's unrounded dz (conv2d_backward_input, identity)"),
    # ---------------------------------------------------------------- tensor cores: launch plans
    M("t-plan-01", PLAN, "skew_b = 2 * vec if size == 4 and b_row else vec",
      "skew_b = 2 * vec if size == 4 and not b_row else vec",
      "smem_bytes: the TF32 B skew on the wrong layout"),
    M("t-plan-02", PLAN, "        splits = cdiv(pixels, chunk)", "        splits = pixels // chunk",
      "dw splits: a short last split dropped"),
    M("t-plan-03", PLAN, "_, vec = _steps(dtype)\n    fast = aligned and cfg.cg % vec == 0 and cfg.mg % vec == 0",
      "_, vec = _steps(dtype)\n    fast = aligned and cfg.mg % vec == 0",
      "VEC condition: forward cp.async path for any Cg (an odd-Cg grouped layer's copies misaligned)"),
    M("t-plan-04", PLAN, "ns = (cdiv(tiles * splits, ROUND_BLOCKS) * (chunk // bk)",
      "ns = ((tiles * splits / ROUND_BLOCKS) * (chunk // bk)",
      "dw splits: a partial round of blocks charged as a fraction of one"),
    M("t-plan-05", PLAN, "return step * sum(cdiv(cdiv(r, bm) * cdiv(columns, bn) * groups, sms) for r in rows)",
      "return step * sum(cdiv(r, bm) * cdiv(columns, bn) * groups / sms for r in rows)",
      "tile choice: a partial round of blocks charged as a fraction of one"),
    M("t-plan-06", PLAN, "cdiv(cdiv(r, bm) * cdiv(columns, bn) * groups, sms)", "cdiv(cdiv(r, bm) * groups, sms)",
      "tile choice: the column tiles left out of the blocks of a round"),
    M("t-pad-01", "gpuconv/backends/cuda.py", "self.xp.ascontiguousarray(dw[:, :, :cfg.c])",
      "self.xp.ascontiguousarray(dw[:, :, -cfg.c:])", "channel padding: dw of the padded channels kept"),
    M("t-pad-02", PLAN, "    if cfg.groups != 1 or _simt(dtype, precision, arch, cfg.mg):\n        return None\n    _, vec",
      "    if _simt(dtype, precision, arch, cfg.mg):\n        return None\n    _, vec",
      "channel padding of a grouped layer (its groups' channels interleave)"),
    # ---------------------------------------------------------------- the emulator's ldmatrix / mma.sync
    M("e-ptx-01", PTXH, "return {c.row + 8 * (reg >> 1), c.col};", "return {c.row + 8 * (reg & 1), c.col};",
      "emulator C / D layout: d[1] at row g + 8 (for d[2])"),
    M("e-ptx-02", PTXH, "return {c.row + 8 * (reg & 1), c.col + 8 * (reg >> 1)};",
      "return {c.row + 8 * (reg >> 1), c.col + 8 * (reg & 1)};", "emulator m16n8k16 A layout: a[1] and a[2] swapped"),
    M("e-ptx-03", "gpuconv/cuda/emulator/gpuconv_emu.h", "return (bits & 0x1FFFu) == 0 || nan;",
      "return (bits & 0x0FFFu) == 0 || nan;",
      "emulator TF32 operand check: the 13th low mantissa bit not checked"),
    # ---------------------------------------------------------------- the emulator's wgmma (tests/test_emulator_wgmma.py)
    M("e-wg-01", WGH, "return lane / 4 + 8 * ((i / 2) % 2);", "return lane / 4 + 8 * (i % 2);",
      "emulator wgmma D fragment: odd registers on row g + 8"),
    M("e-wg-02", WGH, "a ^= ((a >> 7) & ((1u << d.bits) - 1)) << 4;", "a ^= ((a >> 6) & ((1u << d.bits) - 1)) << 4;",
      "emulator swizzle: XOR from address bits 6.. (not 7..)"),
    M("e-wg-03", WGH, "r / (T * W) * L + (k % 8) * W + (k / 8) * S;", "r / (T * W) * S + (k % 8) * W + (k / 8) * L;",
      "emulator MN-major swizzled layout: LBO and SBO swapped"),
    M("e-wg-04", WGH, "(k / T) * (d.layout == 0 ? L : 1)", "(k / T) * (d.layout == 0 ? S : 1)",
      "emulator K-major interleaved layout: SBO for the k chunks"),
    M("e-wg-05", WGH, "    if (!ws.fenced)\n", "    if (false)\n", "emulator: the missing wgmma.fence not caught"),
    M("e-wg-06", WGH, "if ((long long)ws.ops[i].group < limit) execute", "if (true) execute",
      "emulator wait_group: every mma_async in flight completes, committed or not"),
    M("e-wg-07", WGH, "if (memcmp(A[r], p.A[r], sizeof(float) * size_t(p.k)))",
      "if (false && memcmp(A[r], p.A[r], sizeof(float) * size_t(p.k)))",
      "emulator: A's shared memory changed in flight not caught"),
    M("e-wg-08", WGH, "float acc = p.accumulate ? ch.vals[r][n] : 0.0f;", "float acc = ch.vals[r][n];",
      "emulator: scale-d (accumulate = 0) ignored"),
    M("e-wg-09", WGH, "gather(p, int(linear_tid() / 32 % 4), p.A, p.B);", "gather(p, int(linear_tid() / 32 % 2), p.A, p.B);",
      "emulator: warps 2 and 3 of a warpgroup take the rows of warps 0 and 1"),
    M("e-wg-10", WGH, "a.waits == b.waits && a.hash == b.hash", "a.waits == b.waits",
      "emulator: warps of a warpgroup with other descriptors not caught"),
    M("e-wg-11", WGH, "            memcpy(&ch.d[l][i], &kPoison, 4);\n", "",
      "emulator: accumulators in flight not poisoned"),
    # ---------------------------------------------------------------- the wgmma forward and dx (sm_90a)
    M("t-wgf-01", WGC, "(((k / VEC) ^ ((r / 2) % 4)) << 4)", "(((k / VEC) ^ ((r / 4) % 4)) << 4)",
      "wgmma: the 64-byte swizzle (A, and dx's B) from the wrong row bits"),
    M("t-wgf-02", WGC, "((((n % 64) / VEC) ^ (k % 8)) << 4)", "((((n % 64) / VEC) ^ (k % 4)) << 4)",
      "wgmma forward: B's 128-byte swizzle from too few row bits"),
    M("t-wgf-03", WGC, "constexpr int S = Tile::STAGES, D = S - 2;", "constexpr int S = Tile::STAGES, D = S - 1;",
      "wgmma: copies run one step further ahead, into the stage of the wgmma in flight"),
    M("t-wgf-04", WGC, "gpuconv_wgmma_wait_group<1>();", "gpuconv_wgmma_wait_group<2>();",
      "wgmma: two steps' wgmma left in flight (the copies overwrite one's operands)"),
    M("t-wgf-05", WGC, "__pipeline_wait_prior(D - 1);", "__pipeline_wait_prior(D);",
      "wgmma: the wgmma reads a stage whose copies may not have landed"),
    M("t-wgf-06", WGC, "st + 4096 * h + 32 * j", "st + 4096 * h + 16 * j",
      "wgmma: A's descriptor advances 16 bytes a k16 step (not 32)"),
    M("t-wgf-07", WGC, "st + Tile::A_BYTES + 4096 * j, 1024, 2048,", "st + Tile::A_BYTES + 4096 * j, 2048, 1024,",
      "wgmma forward: B's LBO and SBO swapped"),
    M("t-wgf-08", WGC, "acc[h][4 * j + 2 * r8 + c]", "acc[h][4 * j + r8 + 2 * c]",
      "wgmma: the epilogue reads D's fragment with rows and columns swapped"),
    M("t-wgf-09", WGF, "return row0 + r < P ? (gpuconv_i64)(row0 + r) * M + g * Mg : -1;",
      "return row0 + r <= P ? (gpuconv_i64)(row0 + r) * M + g * Mg : -1;",
      "wgmma forward: the epilogue stores one row past the output"),
    M("t-wgf-10", WGC, "run(acc[h], a, b, kt > 0 || j > 0);", "run(acc[h], a, b, kt > 0);",
      "wgmma: the first step's second k16 overwrites the first"),
    M("t-wgf-11", WGC, "return smem_bytes + ((Tile::ALIGN - (gpuconv_smem_addr(smem_bytes) % Tile::ALIGN)) % Tile::ALIGN);",
      "return smem_bytes;", "wgmma: shared memory not aligned to the swizzle atoms"),
    M("t-wgf-12", PLAN, "(wgmma and fast and arch == WGMMA_ARCH and", "(wgmma and fast and arch >= WGMMA_ARCH and",
      "plan: the sm_90a kernel routed on later architectures"),
    M("t-wgd-01", WGC, "? gpuconv_wgmma_desc(st + Tile::A_BYTES + 32 * j, 16, 512, GPUCONV_WGMMA_SW64)",
      "? gpuconv_wgmma_desc(st + Tile::A_BYTES + 16 * j, 16, 512, GPUCONV_WGMMA_SW64)",
      "wgmma dx: B's descriptor advances 16 bytes a k16 step (not 32)"),
    M("t-wgd-02", WGC, "if (B_KMAJOR) return kmajor_byte(n, k);", "if (B_KMAJOR) return kmajor_byte(k, n);",
      "wgmma dx: B stored with its row and reduction indices swapped"),
    M("t-wgd-03", WGC, "gpuconv_wgmma_f16<128, 0, B_KMAJOR ? 0 : 1>", "gpuconv_wgmma_f16<128, 0, 1>",
      "wgmma dx: a K-major B read as N-major (FP16)"),
    M("t-wgd-04", WGB, "for (int i = 0; i < 64; ++i) acc[h][i] = 0.0f;", "for (int i = 0; i < 64; ++i) acc[h][i] = 1.0f;",
      "wgmma dx: a phase no tap reaches stores act(1 + b)"),
    M("t-wgd-05", WGB, "gpuconv_tc_store(dx + base, bias, g * Cg,", "gpuconv_tc_store(dx + base, bias, 0,",
      "wgmma dx: the transposed convolution's bias of group 0"),
    M("t-wgd-06", PLAN, "cdiv(columns, WGMMA_TILE[1]), groups)", "cdiv(columns, 2 * WGMMA_TILE[1]), groups)",
      "plan: wgmma grid with half the column tiles"),
    M("t-wgt-01", WGC, "a[j][h][v] = __float_as_uint(gpuconv_tc_operand<float>(x));", "a[j][h][v] = __float_as_uint(x);",
      "wgmma TF32: A's registers never rounded"),
    M("t-wgt-02", WGC, "8 * (v % 2), k = 8 * j + q + 4 * (v / 2);", "8 * (v / 2), k = 8 * j + q + 4 * (v % 2);",
      "wgmma TF32: A's register fragment with registers 1 and 2 swapped"),
    M("t-wgt-03", WGC, "Pipe::step(smem, kt + 1, KT, issue, mma(kt + 1, a_odd));",
      "Pipe::step(smem, kt + 1, KT, issue, mma(kt + 1, a_even));",
      "wgmma TF32: one set of A registers, rewritten while its wgmma is in flight"),
    M("t-wgt-04", WGC, "if (kt < KT) Pipe::step(smem, kt, KT, issue, mma(kt, a_even));",
      "if (kt + 1 < KT) Pipe::step(smem, kt, KT, issue, mma(kt, a_even));",
      "wgmma TF32: an odd last reduction step skipped"),
    M("t-wgt-05", WGC, "gpuconv_wgmma_desc(st + Tile::A_BYTES + 32 * j, 16, 512, GPUCONV_WGMMA_SW64);",
      "gpuconv_wgmma_desc(st + Tile::A_BYTES + 16 * j, 16, 512, GPUCONV_WGMMA_SW64);",
      "wgmma TF32: B's descriptor advances 16 bytes a k8 step (not 32)"),
    M("t-wgt-06", WGF, "wt[i] = gpuconv_tc_operand<T>(w[(gpuconv_i64)k * M + gm]);", "wt[i] = w[(gpuconv_i64)k * M + gm];",
      "TF32 filter pass: w transposed but not rounded"),
    M("t-wgt-07", WGF, "const int gm = i / K, k = i - gm * K;", "const int gm = i % M, k = i / M;",
      "TF32 filter pass: wt written in w's own order (not transposed)"),
    M("t-wgt-08", FWC, "wg + (gpuconv_i64)col * K + kk, 16);", "wg + (gpuconv_i64)col * K + kk + 4, 16);",
      "wgmma TF32 forward: B's copies one 16-byte run along the reduction off"),
    M("t-wgt-09", "gpuconv/backends/cuda.py", "                w = w_kmajor\n", "",
      "TF32 wgmma forward: the GEMM reads the HWIO filter as the transposed one"),
    M("t-wgx-01", WGB, "wr[i] = gpuconv_tc_operand<T>(v);", "wr[i] = v;",
      "TF32 wgmma dx: the pass copies w without rounding it"),
    M("t-wgx-02", WGB, "if (bad) *flag = 1;", "if (false) *flag = 1;",
      "TF32 wgmma dx: the pass never sets the NaN rule's flag"),
    M("t-wgx-03", WGB, "i < size; i += stride) {\n        const T v", "i < size - 1; i += stride) {\n        const T v",
      "TF32 wgmma dx: the pass leaves w's last element unwritten"),
    M("t-wgx-04", "gpuconv/backends/cuda.py", "                w = w_rounded\n", "",
      "TF32 wgmma dx: the phases read w unrounded"),
    M("t-wgx-05", PLAN, "if on_wgmma and np.dtype(dtype) == np.float32:", "if on_wgmma and np.dtype(dtype) == np.float16:",
      "plan: the TF32 wgmma dx starts with the plain flag pass (w unrounded)"),
    M("t-wgz-01", WGC, "A_REGISTERS = sizeof(T) == 4 && !A_TF32;", "A_REGISTERS = sizeof(T) == 4 && A_TF32;",
      "TF32 wgmma: the user's dz read from shared memory unrounded, the rounded one through registers"),
    M("t-wgz-02", WGC, "KSTEPS = GPUCONV_TC_BYTES_K / 32;", "KSTEPS = GPUCONV_TC_BYTES_K / 64;",
      "wgmma, both operands from shared memory: one k step of a stage's two"),
    M("t-wgz-03", WGC, "gpuconv_wgmma_tf32<128>(d, a, b, accumulate);", "gpuconv_wgmma_tf32<128>(d, a, b, 0);",
      "TF32 wgmma from shared memory: every k step overwrites the accumulators"),
    M("t-wgz-04", WGB, "typedef gpuconv_wg_tile<T, STAGES, true, DZ_TF32> Tile;",
      "typedef gpuconv_wg_tile<T, STAGES, true, sizeof(T) == 4> Tile;",
      "TF32 wgmma dx: every dz read from shared memory as TF32 values, the user's too"),
    M("t-wgz-05", PLAN, "scalars, dz_tf32 and np.dtype(dtype) == np.float32))", "scalars, np.dtype(dtype) == np.float32))",
      "plan: the TF32 wgmma dx takes the DZ_TF32 variant for a dz no pass rounded"),
    M("t-wgz-06", PLAN, "scalars, dz_tf32 and np.dtype(dtype) == np.float32))", "scalars, False))",
      "plan: the TF32 wgmma dx rounds a dz that backward's pass stored rounded again"),
    # ---------------------------------------------------------------- NumPy backend
    M("n-pad-view-right", NP, "r1 <= cfg.h and c1 <= cfg.w and (not channel_major",
      "r1 <= cfg.h and (not channel_major", "padding copy skipped when only the right is padded"),
    M("n-pad-view-bottom", NP, "r1 <= cfg.h and c1 <= cfg.w and (not channel_major",
      "c1 <= cfg.w and (not channel_major", "padding copy skipped when only the bottom is padded"),
    M("n-pad-copy", NP, "max(r0, 0), min(r1, cfg.h), max(c0, 0), min(c1, cfg.w)",
      "max(r0, 0), min(r1, cfg.h), max(c0, 0), min(c1, cfg.w - 1)", "bound: the last input column not copied"),
    M("n-span", NP, "return i0 * s - p, (i1 - 1) * s + (k - 1) * d + 1 - p",
      "return i0 * s - p, (i1 - 1) * s + (k - 1) * d - p", "index off by one: input span"),
    M("n-dilation-swap", NP, "(sn, cfg.s1 * sh, cfg.s2 * sw, cfg.d1 * sh, cfg.d2 * sw, sc)",
      "(sn, cfg.s1 * sh, cfg.s2 * sw, cfg.d2 * sh, cfg.d1 * sw, sc)", "swapped: im2col dilations"),
    M("n-db-row", NP, "d = np.ascontiguousarray(dz.reshape(-1, dz.shape[-1]), dtype=ct)",
      "d = np.ascontiguousarray(dz.reshape(-1, dz.shape[-1])[1:], dtype=ct)", "db: the first row skipped"),
    M("n-dw-chunks", NP, "dw = part if dw is None else np.add(dw, part, out=dw)", "dw = part",
      "dw: only the last chunk kept (a split skipped)"),
    M("n-dx-path", NP, "if cfg.s1 == 1 and cfg.s2 == 1 and not _tapmajor(cfg)",
      "if cfg.s1 == 1 and not _tapmajor(cfg)", "dx: the stride-1 path taken with a column stride"),
    M("n-transposed-pad", NP, "pt=ph - cfg.pt, pb=ph - cfg.pb, pl=pw - cfg.pl, pr=pw - cfg.pr",
      "pt=ph - cfg.pt, pb=ph - cfg.pb, pl=pw - cfg.pr, pr=pw - cfg.pl", "swapped: dx's left and right padding"),
    M("n-bias-sign", NP, "np.add(rows, bias_row, out=rows)", "np.subtract(rows, bias_row, out=rows)",
      "forward bias subtracted"),
    M("n-relu-fmax", REG, "np.maximum(rows, np.zeros(rows.shape[1], z.dtype), out=rows)",
      "np.fmax(rows, np.zeros(rows.shape[1], z.dtype), out=rows)", "relu by fmax (NaN dropped)"),
    M("n-relu-kink", REG, "np.less_equal(u, 0, out=keep)", "np.less(u, 0, out=keep)",
      "derivative: relu' at the kink"),
    M("n-sigmoid-f16", REG, "dz = np.subtract(1, u, dtype=accumulator(dy.dtype))",
      "dz = np.subtract(1, u, dtype=dy.dtype)", "float16 sigmoid gradient computed in float16"),
    M("n-tanh-f16", REG, "dz = np.multiply(u, u, dtype=accumulator(dy.dtype))",
      "dz = np.multiply(u, u, dtype=dy.dtype)", "float16 tanh gradient computed in float16"),
    M("n-sigmoid-sign", REG, "        np.negative(z, out=z)\n        np.exp(z, out=z)", "        np.exp(z, out=z)",
      "sigmoid forward sign"),
    M("n-tf32-tie", NP, "r = u + _TF32_HALF", "r = u + (_TF32_HALF - np.uint32(1))",
      "TF32 oracle: ties rounded toward zero (cvt.rna rounds them away)"),
    M("n-tf32-nan", NP, "        np.copyto(r, u, where=~finite)", "        pass",
      "TF32 oracle: NaN bit patterns rounded like numbers (0x7FFFFFFF, CUDA's NaN, becomes -0.0)"),
    # ---------------------------------------------------------------- the Python layer (kind api)
    M("a-cfg-same", CFG, "out += [total // 2, total - total // 2]", "out += [total - total // 2, total // 2]",
      "'same' padding: the odd pixel at the top / left (TensorFlow puts it at the bottom / right)"),
    M("a-cfg-full", CFG, "ph, pw = d[0] * (kh - 1), d[1] * (kw - 1)", "ph, pw = d[0] * (kh - 1), d[0] * (kw - 1)",
      "'full' padding: the columns padded by the row dilation"),
    M("a-cfg-oh", CFG, "oh = (h + pt + pb - d[0] * (kh - 1) - 1) // s[0] + 1",
      "oh = (h + pt + pb - d[0] * (kh - 1) - 1) // s[1] + 1", "output height by the column stride"),
    M("a-cfg-pair", CFG, "values = (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))",
      "values = (int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1]))",
      "padding (ph, pw) read as top ph, bottom pw, left ph, right pw"),
    M("a-lay-reflect", LAY, "return -p if p < 0 else 2 * (size - 1) - p", "return -p if p < 0 else 2 * size - 1 - p",
      "reflect padding's gradient folded as 'symmetric' (the edge repeated) at the bottom / right"),
    M("a-lay-circular", LAY, "return p % size", "return (p + 1) % size",
      "circular padding's gradient folded one pixel off"),
    M("a-lay-replicate", LAY, "return min(max(p, 0), size - 1)", "return min(max(p, 1), size - 1)",
      "replicate padding's gradient folded onto the second pixel at the top / left"),
    M("a-lay-fold-after", LAY, "for i in (*range(before), *range(before + size, before + size + after)):",
      "for i in (*range(before),):", "padding modes: the bottom / right padding's gradient dropped"),
    M("a-lay-reflect-check", LAY, 'if mode == "reflect" and max(before, after) >= size:',
      'if mode == "reflect" and max(before, after) > size:',
      "bound: reflect padding as wide as the input accepted (PyTorch refuses it)"),
    M("a-tr-oh", TRP, "oh = (h - 1) * s[0] - (pt + pb) + d[0] * (kh - 1) + op[0] + 1",
      "oh = (h - 1) * s[0] - (pt + pb) + d[0] * (kh - 1) + 1", "conv2d_transpose: output_padding left out of the height"),
    M("a-tr-same", TRP, "oh, ow = h * s[0], w * s[1]", "oh, ow = h * s[0], w * s[0]",
      "conv2d_transpose, padding='same': the output width by the row stride"),
    M("a-tr-check", TRP, "if op[i] >= max(s[i], d[i]):", "if op[i] > max(s[i], d[i]):",
      "bound: output_padding equal to the stride accepted"),
    M("a-dask-align", DSK, "a += (-a) % s", "a += a % s", "dask: chunk bounds moved off the stride's multiples"),
    M("a-dask-span", DSK, "return o0 * s - pad, (o1 - 1) * s - pad + d * (k - 1) + 1",
      "return o0 * s - pad, (o1 - 1) * s - pad + d * (k - 1)", "dask: the forward's halo one row short"),
    M("a-dask-reach", DSK, "i1 = min(out_size, (a1 - 1 + pad) // s + 1)", "i1 = min(out_size, (a1 - 1 + pad) // s)",
      "dask: dx / dw miss the last output row that reaches a chunk"),
    M("a-dask-piece", DSK, "lo == bounds[k] and hi == bounds[k + 1]", "lo == bounds[k]",
      "dask: a halo piece at the top of a block taken as the whole block"),
    M("a-torch-dw", TOR, "dw = None if g.dw is None else g.dw.permute(3, 2, 0, 1).contiguous()",
      "dw = None if g.dw is None else g.dw.permute(3, 2, 1, 0).contiguous()",
      "gpuconv.torch: the weight gradient's KH and KW exchanged"),
    M("a-torch-w", TOR, "return w.permute(2, 3, 1, 0)", "return w.permute(3, 2, 1, 0)",
      "gpuconv.torch: the weight's KH and KW exchanged"),
    M("a-torch-format", TOR, "return t  # already channels_last: the kernels' own layout", "return t.contiguous()",
      "gpuconv.torch: a channels_last input's output returned NCHW-contiguous"),
    M("a-iop-bf16-out", IOP, "return t.view(torch.bfloat16) if bf16 else t", "return t",
      "interop: a bfloat16 result handed to torch as int16"),
    M("a-iop-bf16-in", IOP, "        a = a.view(ml_dtypes.bfloat16)\n", "",
      "interop: a bfloat16 tensor imported as int16"),
    M("a-val-bool", VAL, "return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))",
      "return isinstance(v, numbers.Integral)", "argument checks: True accepted as a size"),
    M("a-cfg-precision", CFG, "return _float32_precision if precision is None else check_precision(fname, precision)",
      'return "highest" if precision is None else check_precision(fname, precision)',
      "set_float32_precision's default ignored by the calls"),
    M("a-api-empty-db", API, "db = be.xp.zeros((cfg.m,), dtype) if has_bias else None",
      "db = be.xp.ones((cfg.m,), dtype) if has_bias else None", "conv2d_backward of an empty batch: db not zero"),
    M("a-api-grads-db", API, 'has_bias = has_bias and "db" in want', "has_bias = has_bias",
      "conv2d_backward: db computed and returned though grads leaves it out"),
    M("a-api-grads-fused", API, "precision=prec,\n                           grads=want)", "precision=prec)",
      "conv2d_backward: the fused backward computes dx and dw whatever grads asks for"),
    M("t-grads-01", "gpuconv/backends/cuda.py", "        if want_dx:\n", "        if True:\n",
      "backend: dx computed for a first layer's (dw, db) too"),
]
del M


def _occurrences(text: str, old: str) -> list:
    return [m.start() for m in re.finditer(re.escape(old), text)]


def _place(text: str, mutant: Mutant):
    """Where the mutant's text is in ``text``, or None."""
    found = _occurrences(text, mutant.old)
    if mutant.nth is None:
        return found[0] if len(found) == 1 else None
    return found[mutant.nth] if mutant.nth < len(found) else None


def applies(mutant: Mutant, root: Path) -> bool:
    """Whether the mutant's text is still in the tree (exactly once, or at its nth place)."""
    path = root / mutant.path
    return path.is_file() and _place(path.read_text(), mutant) is not None


def mutate_text(text: str, mutant: Mutant) -> str:
    at = _place(text, mutant)
    if at is None:
        n = len(_occurrences(text, mutant.old))
        raise ValueError(f"{mutant.id}: its text occurs {n} times in {mutant.path}, not once "
                         "(update tools/mutate.py)")
    return text[:at] + mutant.new + text[at + len(mutant.old):]


def scratch_copy(dest: Path) -> Path:
    """The tree (tracked and untracked files, as git lists them) copied into dest/repo."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    repo = dest / "repo"
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    return repo


def run_job(repo: Path, kind: str, job: str, timeout: float) -> tuple:
    """(failed, seconds, the first failing test or the reason) of a job of a kind of mutant."""
    env_extra, cmd = JOBS[kind][job]
    env = dict(os.environ, PYTHONPATH=str(repo), GPUCONV_CACHE_DIR=str(repo.parent / "cache"), **env_extra)
    env.pop("GPUCONV_BACKEND", None)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return True, time.monotonic() - t0, f"timeout after {timeout:.0f} s"
    out = proc.stdout + proc.stderr
    seconds = time.monotonic() - t0
    if proc.returncode == 0:
        return False, seconds, ""
    m = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", out, re.MULTILINE)
    if m:
        return True, seconds, m.group(1)
    if "AddressSanitizer" in out:
        return True, seconds, "AddressSanitizer report"
    return True, seconds, f"exit status {proc.returncode}: " + (out.strip().splitlines() or ["no output"])[-1][:120]


def check_baseline(repo: Path, jobs, timeout: float) -> None:
    """jobs: (kind, job) pairs."""
    """The unmutated copy must pass every job used (else every mutant would look killed)."""
    probe = subprocess.run([sys.executable, "-c", "import gpuconv; print(gpuconv.__file__)"], cwd=repo,
                           env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True, check=True)
    if not probe.stdout.strip().startswith(str(repo)):
        sys.exit(f"mutate: the scratch copy's gpuconv is not the one imported ({probe.stdout.strip()})")
    for kind, job in jobs:
        failed, seconds, why = run_job(repo, kind, job, timeout)
        print(f"baseline {kind} {job}: {'FAILED ' + why if failed else 'passed'} ({seconds:.0f} s)", flush=True)
        if failed:
            sys.exit("mutate: the unmutated tree fails; fix that first")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated mutant ids")
    p.add_argument("--kind", choices=("all", *JOBS), default="all")
    p.add_argument("--jobs", default=",".join(KERNEL_JOBS), help="kernel jobs to run, in order (plain,reverse,asan)")
    p.add_argument("--budget", type=float, default=0, help="seconds after which no new mutant starts (0: none)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per job before it counts as a kill")
    p.add_argument("--with-gpu-only", action="store_true", help="also run the mutants only a GPU-sized input reaches")
    p.add_argument("--shared-suite-only", action="store_true",
                   help="kernel jobs without tests/test_kernels.py: does the shared backend suite alone kill them?")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each job")
    p.add_argument("--list", action="store_true", help="list the mutants and whether each applies, then exit")
    args = p.parse_args(argv)

    chosen = [m for m in MUTANTS if args.kind in ("all", m.kind)]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.id for m in MUTANTS}
        if unknown:
            p.error(f"unknown mutant ids: {sorted(unknown)}")
        chosen = [m for m in chosen if m.id in wanted]
    if args.list:
        for m in chosen:
            flag = "" if applies(m, ROOT) else "  STALE (text not found: update the list)"
            print(f"{m.id:18s} {m.path:28s} {'gpu-only ' if m.gpu_only else ''}{m.what}{flag}")
        print(f"{len(chosen)} mutants (list version {MUTANTS_VERSION})")
        return 0
    if args.shared_suite_only:
        for job in KERNEL_JOBS:
            JOBS["kernels"][job][1].remove("tests/test_kernels.py")
    kernel_jobs = [j for j in args.jobs.split(",") if j]
    bad = set(kernel_jobs) - set(KERNEL_JOBS)
    if bad:
        p.error(f"unknown jobs {sorted(bad)}; kernel jobs are {KERNEL_JOBS}")

    jobs_of = lambda kind: kernel_jobs if kind in ("kernels", "tc") else [kind]
    start = time.monotonic()
    results = {}  # id -> ("killed" | "survived" | "stale" | "not run" | "gpu-only", detail)
    with tempfile.TemporaryDirectory(prefix="gpuconv-mutate-") as tmp:
        repo = scratch_copy(Path(tmp))
        used = [(kind, job) for kind in JOBS if any(m.kind == kind for m in chosen) for job in jobs_of(kind)]
        if not args.no_baseline:
            check_baseline(repo, used, args.timeout)
        for m in chosen:
            if m.gpu_only and not args.with_gpu_only:
                results[m.id] = ("gpu-only", "tools/gpu_check.py bigoffsets")
                continue
            if args.budget and time.monotonic() - start > args.budget:
                results[m.id] = ("not run", "time budget spent")
                continue
            target = repo / m.path
            original = target.read_text()
            try:
                mutated = mutate_text(original, m)
            except ValueError as exc:
                results[m.id] = ("stale", str(exc))
                print(f"[{m.id}] STALE: {exc}", flush=True)
                continue
            try:
                target.write_text(mutated)
                verdict = ("survived", "")
                for job in jobs_of(m.kind):
                    failed, seconds, why = run_job(repo, m.kind, job, args.timeout)
                    if failed:
                        verdict = ("killed", f"{job} ({seconds:.0f} s): {why}")
                        break
                else:
                    verdict = ("survived", ", ".join(jobs_of(m.kind)))
            finally:
                target.write_text(original)
            assert target.read_text() == original
            results[m.id] = verdict
            print(f"[{m.id}] {verdict[0].upper()} {verdict[1]}  -- {m.what}", flush=True)

    counted = [m for m in chosen if results[m.id][0] in ("killed", "survived")]
    killed = [m for m in counted if results[m.id][0] == "killed"]
    survivors = [m for m in counted if results[m.id][0] == "survived"]
    print()
    print(f"mutants list version {MUTANTS_VERSION}; jobs: kernels and tc {','.join(kernel_jobs)}"
          f"{' (shared suite only)' if args.shared_suite_only else ''}, NumPy backend numpy; "
          f"{time.monotonic() - start:.0f} s")
    for kind in JOBS:
        ran = [m for m in counted if m.kind == kind]
        if ran:
            k = sum(results[m.id][0] == "killed" for m in ran)
            print(f"  {kind:8s} killed {k} of {len(ran)} ({100 * k / len(ran):.0f}%)")
    if counted:
        print(f"  total    killed {len(killed)} of {len(counted)} ({100 * len(killed) / len(counted):.0f}%)")
    for label in ("gpu-only", "stale", "not run"):
        ids = [m.id for m in chosen if results[m.id][0] == label]
        if ids:
            print(f"  {label}: {len(ids)} ({', '.join(ids)})")
    for m in survivors:
        print(f"  SURVIVOR {m.id}: {m.what} ({m.path})")
    return 1 if survivors or any(results[m.id][0] == "stale" for m in chosen) else 0


if __name__ == "__main__":
    sys.exit(main())
