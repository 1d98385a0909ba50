"""The kernels' machine code, read without a GPU: NVRTC's cubins disassembled by nvdisasm (gpuconv/cuda/sass.py).

- every tensor-core kernel (kernels/conv_tc*.cu, kernels gpuconv_tc_*; and the wmma kernel of
  tests/sass_kernels/, which proves the parsing) holds HMMA of its precision on sm_80 and sm_90 (`float`
  instantiations TF32, `__half` FP16, `__nv_bfloat16` BF16), in its main loop, whose copies are asynchronous
  (LDGSTS) where the design says so, and whose operands come from shared memory (LDSM, LDS; no generic LD);
- strict FP32 never touches tensor cores: no HMMA in any kernel of the SIMT files, and none in the kernels that
  float32 calls with precision="highest" launch (recorded on the emulator);
- no kernel has local-memory traffic (LDL/STL) on any architecture (sm_70 from ptxas's report: nvdisasm 13
  does not read sm_70);
- the strict-FP32 GEMM main loops keep their 4x4 micro-tile: 16 FFMA per 2 LDS.128.

Compiles are cached per process (nvrtc.compile_program), so this file and test_nvrtc.py compile each file once.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from gpuconv.backends import cuda_tc
from gpuconv.cuda import nvrtc, sass
from gpuconv.cuda.modules import kernel_files

REASON = sass.unavailable_reason()
needs_sass = pytest.mark.skipif(REASON is not None, reason=f"SASS checks unavailable: {REASON}")

SASS_KERNELS = Path(__file__).resolve().parent / "sass_kernels"
WGMMA_KERNEL = Path(__file__).resolve().parent / "emulator_kernels" / "wgmma.cu"
TC_FILES = [p for p in kernel_files() if p.name.startswith("conv_tc")]
WGMMA_FILES = [p for p in kernel_files() if p.name.startswith("conv_wgmma")]
SIMT_FILES = [p for p in kernel_files() if not p.name.startswith(("conv_tc", "conv_wgmma", "probe_"))]
TC_ARCHES = ("sm_80", "sm_90")
# The precision of a tensor-core kernel's HMMA, from its first template argument.
TC_PRECISION = {"float": "tf32", "__half": "fp16", "__nv_bfloat16": "bf16"}
# GEMM kernels of the SIMT files whose main loop is gpuconv_gemm_mainloop (the 4x4 micro-tile).
SIMT_GEMMS = ("gpuconv_conv_fwd<", "gpuconv_conv_bwd_input<", "gpuconv_conv_bwd_weight<")


def _rows(path, arch):
    try:
        return sass.kernel_sass(str(path), arch)
    except nvrtc.NvrtcError as exc:
        if "crt/mma.h" in str(exc) and path.parent == SASS_KERNELS:
            pytest.skip("mma.h needs crt/mma.h (pip install nvidia-cuda-nvcc-cu12, or a CUDA toolkit)")
        raise


def _template_args(kernel: str) -> list:
    inner = kernel[kernel.index("<") + 1:kernel.rindex(">")] if "<" in kernel else ""
    return [a.strip() for a in inner.split(",")] if inner else []


def _is_tc(kernel: str) -> bool:
    return kernel.startswith(("gpuconv_tc_", "tc_test_"))


# ------------------------------------------------------------------------- the parser, on a listing by hand
LISTING = """
//--------------------- .text._Z1kPf --------------------------
.text._Z1kPf:
_Z1kPf:
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R2, [R4.64] ;
        /*0020*/                   STS [R3], R2 ;
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_1:
        /*0040*/                   LDS.128 R8, [R3] ;
        /*0050*/                   FFMA R9, R8, R8, R9 ;
        /*0060*/                   FFMA R10, R8, R8, R10 ;
        /*0070*/              @!PT LDS RZ, [RZ] ;
        /*0080*/                   HMMA.1684.F32.TF32 R12, R8, R10, R12 ;
        /*0090*/               @P0 BRA `(.L_x_1) ;
        /*00a0*/                   LDGSTS.E.BYPASS.128 [R3], [R4.64] ;
        /*00b0*/               @P1 BRA `(.L_x_0) ;
        /*00c0*/                   STG.E [R4.64], R9 ;
        /*00d0*/                   EXIT ;
.L_x_2:
        /*00e0*/                   BRA `(.L_x_2);
//--------------------- .text._Z1gv --------------------------
.text._Z1gv:
        /*0000*/                   HMMA.16816.F32.BF16 R0, R2, R4, R0 ;
        /*0010*/                   HMMA.16816.F32 R0, R2, R4, R0 ;
        /*0020*/                   EXIT ;
"""


def test_parse_sass_counts_loops_and_main_loop():
    functions = sass.parse_sass(LISTING)
    assert set(functions) == {"_Z1kPf", "_Z1gv"}
    instrs, labels = functions["_Z1kPf"]
    assert labels == {".L_x_0": 0x10, ".L_x_1": 0x40, ".L_x_2": 0xE0}
    assert sass.loops(instrs, labels) == [sass.Loop(0x10, 0xB0), sass.Loop(0x40, 0x90), sass.Loop(0xE0, 0xE0)]
    assert sass.main_loop(instrs, labels) == sass.Loop(0x40, 0x90)  # the innermost loop holding math
    r = sass.analyze(instrs, labels, "k", "sm_80")
    # the @!PT LDS (never executed) is not counted
    assert r.counts == {"HMMA": 1, "HGMMA": 0, "FFMA": 2, "DFMA": 0, "LDS": 1, "STS": 1, "LDSM": 0, "LDG": 1, "STG": 1,
                        "LDGSTS": 1, "LDL": 0, "STL": 0, "LD": 0, "ST": 0, "BAR": 1}
    assert r.hmma == {"HMMA.1684.F32.TF32": 1}
    assert (r.loop_math, r.loop_shared_loads, r.loop_ratio) == (3, 1, 3.0)
    assert r.loop_opcodes == {"BRA": 1, "FFMA": 2, "HMMA.1684.F32.TF32": 1, "LDS.128": 1}
    g = sass.analyze(*functions["_Z1gv"], "g", "sm_80")
    assert g.loop is None and g.loop_ratio is None
    assert {sass.hmma_precision(op) for op in g.hmma} == {"bf16", "fp16"}


def test_hmma_precision_names():
    assert sass.hmma_precision("HMMA.1684.F32.TF32") == "tf32"
    assert sass.hmma_precision("HMMA.16816.F32.BF16") == "bf16"
    assert sass.hmma_precision("HMMA.16816.F32") == "fp16"
    assert sass.hmma_precision("HMMA.16816.F16") == "fp16"
    assert sass.instruction_class("LDS.U.128") == "LDS"
    assert sass.instruction_class("LDGSTS.E.BYPASS.128") == "LDGSTS"
    assert sass.hmma_precision("HGMMA.64x128x16.F32.BF16") == "bf16"
    assert sass.hmma_precision("HGMMA.64x64x8.F32.TF32") == "tf32"
    line = "        /*0a70*/                   HGMMA.64x128x16.F32 R24, gdesc[UR4], R24, gsb0 ;"
    ((instr,), _) = sass.parse_sass(".text.k:\n" + line + "\n")["k"]
    assert instr.opcode == "HGMMA.64x128x16.F32" and sass.instruction_class(instr.opcode) == "HGMMA"


def test_missing_nvdisasm_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sass, "nvdisasm_path", lambda: None)
    reason = sass.unavailable_reason()
    if nvrtc.unavailable_reason() is None:
        assert "pip install nvidia-cuda-nvdisasm" in reason
    assert sass.format_sass_table().startswith("kernel SASS: unavailable (")
    with pytest.raises(sass.NvdisasmError, match="pip install nvidia-cuda-nvdisasm"):
        sass.disassemble(b"", "sm_80")


# --------------------------------------------------------------------------------- the kernels' machine code
@needs_sass
@pytest.mark.parametrize("arch", TC_ARCHES)
@pytest.mark.parametrize("path", [*TC_FILES, SASS_KERNELS / "wmma_tc.cu"], ids=lambda p: p.name)
def test_tensor_core_kernels_hold_hmma_of_their_precision(path, arch):
    rows = [r for r in _rows(path, arch) if _is_tc(r.kernel)]
    assert rows, f"{path.name}: no tensor-core kernel (gpuconv_tc_*) compiled for {arch}"
    for r in rows:
        want = TC_PRECISION[_template_args(r.kernel)[0]]
        got = {sass.hmma_precision(op) for op in r.hmma}
        assert got == {want}, f"{r.kernel} on {arch}: HMMA {r.hmma}, expected only {want}"
        assert r.loop is not None and r.loop_counts["HMMA"], f"{r.kernel} on {arch}: no HMMA in a loop"
        assert not r.loop_counts["FFMA"], f"{r.kernel} on {arch}: FFMA in the tensor-core main loop"


def _async_by_design(kernel: str) -> bool:
    """The tensor-core kernels copy with cp.async when their fifth template argument (VEC; a DZ_TF32 may follow)
    is true; the test kernel always does."""
    return kernel.startswith("tc_test_") or _template_args(kernel)[4:5] == ["true"]


@needs_sass
@pytest.mark.parametrize("arch", TC_ARCHES)
@pytest.mark.parametrize("path", [*TC_FILES, SASS_KERNELS / "wmma_tc.cu"], ids=lambda p: p.name)
def test_tensor_core_main_loops_copy_asynchronously(path, arch):
    rows = [r for r in _rows(path, arch) if _is_tc(r.kernel) and _async_by_design(r.kernel)]
    for r in rows:
        assert r.loop_counts.get("LDGSTS"), f"{r.kernel} on {arch}: no LDGSTS (cp.async) in the main loop"
        assert not r.loop_counts["LDG"], f"{r.kernel} on {arch}: register-staged global loads in the main loop"
        if not r.kernel.startswith("gpuconv_tc_"):
            continue
        # activations (x of the forward and dw, dz of dx) by cp.async.ca (L1 keeps the pixels the other taps
        # re-read), the filter and dw's dz by .cg (L2 only): gpuconv_tc_copy16_cached
        copies = {op: n for op, n in r.loop_opcodes.items() if op.startswith("LDGSTS")}
        cached = sum(n for op, n in copies.items() if ".BYPASS" not in op)
        streamed = sum(copies.values()) - cached
        assert cached and streamed, f"{r.kernel} on {arch}: activations cached, the other operand streamed? {copies}"


@needs_sass
@pytest.mark.parametrize("arch", TC_ARCHES)
@pytest.mark.parametrize("path", TC_FILES, ids=lambda p: p.name)
def test_tensor_core_operands_come_from_shared_memory(path, arch):
    """The ldmatrix / mma.sync path: operands reach the tensor cores by LDSM (and, for the TF32 tiles ldmatrix
    cannot transpose, 32-bit LDS), never by generic loads (LD), which is what wmma made of BF16 and TF32."""
    rows = [r for r in _rows(path, arch) if r.kernel.startswith("gpuconv_tc_")]
    assert rows
    for r in rows:
        assert not r.loop_counts["LD"], f"{r.kernel} on {arch}: generic loads in the main loop {r.loop_opcodes}"
        if _template_args(r.kernel)[0] != "float":
            assert r.loop_counts["LDSM"], f"{r.kernel} on {arch}: 16-bit operands without ldmatrix {r.loop_opcodes}"
            if _async_by_design(r.kernel):
                assert not r.loop_counts["LDS"], f"{r.kernel} on {arch}: {r.loop_opcodes}"


@needs_sass
@pytest.mark.parametrize("arch", TC_ARCHES)
@pytest.mark.parametrize("path", SIMT_FILES, ids=lambda p: p.name)
def test_simt_kernels_hold_no_hmma(path, arch):
    rows = _rows(path, arch)
    assert rows
    with_hmma = {r.kernel: r.hmma for r in rows if r.hmma or _is_tc(r.kernel)}
    assert not with_hmma, f"tensor-core instructions in the strict kernels: {with_hmma}"


@needs_sass
@pytest.mark.parametrize("arch", nvrtc.ARCHES)
@pytest.mark.parametrize("path", [*kernel_files(), SASS_KERNELS / "wmma_tc.cu"], ids=lambda p: p.name)
def test_no_local_memory(path, arch):
    if path.parent == SASS_KERNELS and arch not in TC_ARCHES:
        pytest.skip("the wmma test kernel's TF32 and BF16 fragments need sm_80")
    if sass.disassembles(arch):
        local = {r.kernel: (r.counts["LDL"], r.counts["STL"]) for r in _rows(path, arch)
                 if r.counts["LDL"] or r.counts["STL"]}
        assert not local, f"local-memory loads/stores (LDL, STL) on {arch}: {local}"
    else:  # this nvdisasm cannot read the cubin: ptxas's report (a stack frame is where LDL/STL go)
        rows = nvrtc.compile_report(str(path), arch)
        local = [r for r in rows if r.stack_bytes or r.spill_stores or r.spill_loads]
        assert not local, f"a stack frame (local memory) on {arch}: {local}"


@needs_sass
def test_wgmma_wrappers_lower_to_hgmma_of_each_precision():
    # kernels/gpuconv_wgmma.cuh on sm_90a, through the emulator's wgmma test kernel: an HGMMA of every shape and
    # precision it wraps, the fence and the wait of the asynchronous groups, and no local memory (64 or 128
    # accumulators a thread stay in registers).
    listing = sass.disassemble(nvrtc.compile_program(str(WGMMA_KERNEL), "sm_90a").cubin)
    hgmma = set(re.findall(r"HGMMA\.(64x\d+x\d+\.F32(?:\.BF16|\.TF32)?)\s", listing))
    assert hgmma == {f"64x{n}x{k}.F32{t}" for n in (64, 128) for k, t in ((16, ""), (16, ".BF16"), (8, ".TF32"))}
    assert "WARPGROUP.ARRIVE" in listing and "WARPGROUP.DEPBAR.LE" in listing
    assert not re.search(r"\b(LDL|STL)\b", listing)


@needs_sass
@pytest.mark.parametrize("path", WGMMA_FILES, ids=lambda p: p.name)
def test_wgmma_main_loops(path):
    # kernels/conv_wgmma_*.cu on sm_90a: a reduction step is 4 HGMMA of the kernel's precision (2 row halves x 2
    # k16 steps, or k8 for TF32) after one warpgroup arrive (the fence) and one wait, with the 16-byte copies
    # (LDGSTS) of the next stage and one barrier; no local memory, no generic loads; and ptxas does not serialize
    # the wgmma (its C75xx "Potential Performance Loss" notes, e.g. for accumulators that other instructions write
    # inside the pipeline). The TF32 loops (forward and dx) run two steps a trip (their two sets of A registers),
    # each with A's 16 LDS a thread (rounded in registers: no LDSM); dx's DZ_TF32 variant (dz rounded by
    # backward's pass) reads both operands from shared memory, one step a trip, as the 16-bit loops.
    log = nvrtc.compile_program(str(path), "sm_90a").log
    assert "Potential Performance Loss" not in log, log
    rows = [r for r in _rows(path, "sm_90a") if r.kernel.startswith("gpuconv_wgmma_")]
    want_types = {"__half", "__nv_bfloat16", "float"}
    assert {_template_args(r.kernel)[0] for r in rows} == want_types
    assert len(rows) == len(want_types) + (path.name == cuda_tc.WGMMA_BACKWARD_FILE), [r.kernel for r in rows]
    for r in rows:
        tf32 = _template_args(r.kernel)[0] == "float"
        a_registers = tf32 and _template_args(r.kernel)[2:] != ["true"]
        steps = 2 if a_registers else 1
        want = "HGMMA.64x128x" + ("8.F32.TF32" if tf32 else "16.F32" + (".BF16" if "bfloat16" in r.kernel else ""))
        assert r.loop_opcodes.get(want) == 4 * steps and set(r.hmma) == {want}, (r.kernel, r.hmma)
        loop = r.loop_counts
        assert r.loop_opcodes["WARPGROUP.ARRIVE"] == r.loop_opcodes["WARPGROUP.DEPBAR.LE"] == steps, r.kernel
        assert loop["LDGSTS"] == 8 * steps and loop["BAR"] == steps, (r.kernel, loop)
        assert loop["HMMA"] == loop["FFMA"] == loop["LDSM"] == 0, (r.kernel, loop)
        assert loop["LDS"] == 16 * steps * a_registers, (r.kernel, loop)
        assert r.counts["LDL"] == r.counts["STL"] == 0 and loop["LD"] == 0, (r.kernel, r.counts)


# Instructions a warp issues per reduction step in the main loops of the tiles large layers take (NVRTC 12.9,
# `python tools/tc_model.py --sass`; docs/performance.md's SASS table). A ceiling 4% above each count: a
# refactor that makes ptxas spend more (the copies' row state held by value in their closure cost 6-24
# instructions a step, unnoticed for a day: docs/performance.md, 2026-12-03 (5)) fails here, and a change that
# lowers a count should lower its entry.
LOOP_INSTRUCTIONS = {
    ("conv_tc_forward.cu", "sm_90"): {"gpuconv_tc_fwd<__half, 128, 128, 4, true>": 272,
                                      "gpuconv_tc_fwd<__half, 128, 64, 4, true>": 208,
                                      "gpuconv_tc_fwd<__half, 256, 64, 3, true>": 315,
                                      "gpuconv_tc_fwd<float, 96, 128, 4, true>": 347,
                                      "gpuconv_tc_fwd<float, 128, 128, 4, true>": 426},
    ("conv_tc_backward.cu", "sm_90"): {"gpuconv_tc_bwd_input<__half, 128, 128, 4, true>": 243,
                                       "gpuconv_tc_bwd_input<__half, 128, 64, 4, true>": 169,
                                       "gpuconv_tc_bwd_input<__half, 256, 64, 3, true>": 272,
                                       "gpuconv_tc_bwd_input<float, 128, 128, 4, true, true>": 308,
                                       "gpuconv_tc_bwd_weight<__half, 128, 128, 4, true>": 378,
                                       "gpuconv_tc_bwd_weight<float, 128, 128, 4, true, true>": 422},
    # per step: the TF32 register-A loops run two steps a trip
    ("conv_wgmma_forward.cu", "sm_90a"): {"gpuconv_wgmma_fwd<__half, 4>": 212, "gpuconv_wgmma_fwd<float, 4>": 316},
    ("conv_wgmma_backward.cu", "sm_90a"): {"gpuconv_wgmma_bwd_input<__half, 4>": 265,
                                           "gpuconv_wgmma_bwd_input<float, 4>": 301,
                                           "gpuconv_wgmma_bwd_input<float, 4, true>": 265},
}


@needs_sass
@pytest.mark.parametrize("file, arch", list(LOOP_INSTRUCTIONS), ids=[f"{f}-{a}" for f, a in LOOP_INSTRUCTIONS])
def test_main_loops_issue_no_more_than_measured(file, arch):
    rows = {r.kernel: r for r in _rows(nvrtc.kernel_path(file), arch)}
    over = {}
    for kernel, count in LOOP_INSTRUCTIONS[(file, arch)].items():
        ops = rows[kernel].loop_opcodes
        steps = sum(n for op, n in ops.items() if op.startswith("HGMMA.")) // 4 or 1
        got = sum(ops.values()) / steps
        if got > 1.04 * count:
            over[kernel] = (got, count)
    assert not over, f"main loops now issue more instructions a step than measured (got, measured): {over}"


@needs_sass
@pytest.mark.parametrize("arch", TC_ARCHES)
@pytest.mark.parametrize("path", SIMT_FILES, ids=lambda p: p.name)
def test_strict_gemm_main_loop_keeps_its_micro_tile(path, arch):
    rows = [r for r in _rows(path, arch) if r.kernel.startswith(SIMT_GEMMS)]
    assert rows
    for r in rows:
        ctype = _template_args(r.kernel)[0]
        loop = r.loop_opcodes
        # One 16-step tile of the 4x4 micro-tile: 16 multiply-adds per 2 LDS.128 (4 for double), 16 times. The
        # dz loads of the gradient kernels add the activation's derivative (a few FFMA) to the same loop.
        fma, other, lds = ("DFMA", "FFMA", 64) if ctype == "double" else ("FFMA", "DFMA", 32)
        assert r.loop_counts[fma] >= 256 and r.loop_counts[other] == 0, (r.kernel, arch, loop)
        assert loop.get("LDS.128") == r.loop_counts["LDS"] == lds, (r.kernel, arch, loop)
        assert r.loop_ratio >= 256 / lds, (r.kernel, arch, loop)
        assert r.loop_counts["LDSM"] == 0 and r.loop_counts["BAR"] == 1, (r.kernel, arch, loop)


@needs_sass
def test_format_sass_table():
    text = sass.format_sass_table(files=[str(SASS_KERNELS.parent / "emulator_kernels" / "matmul_tiled.cu")],
                                  arches=("sm_70", "sm_80"))
    assert text.startswith("kernel SASS") and "matmul_tiled" in text and "loop math:smem ld" in text
    if not sass.disassembles("sm_70"):
        assert "sm_70: not disassembled" in text


# ------------------------------------------------------------------- what strict float32 calls actually run
def _launched_kernels(calls) -> set:
    """(file, kernel) of every kernel the CUDA backend asks for while running ``calls`` on the emulator."""
    from gpuconv.backends.cuda import CudaBackend
    from gpuconv.cuda.modules import get_module

    seen = set()

    class Recorder:
        def __init__(self, fname, module):
            self.fname, self.module = fname, module

        def get_function(self, name):
            seen.add((self.fname, name))
            return self.module.get_function(name)

    be = CudaBackend("emulator", np, get_module=lambda kind, fname: Recorder(fname, get_module(kind, fname)))
    calls(be)
    return seen


@needs_sass
def test_strict_float32_runs_no_tensor_core_kernel():
    from gpuconv._config import make_config
    from gpuconv.cuda.modules import emulator_unavailable_reason

    if emulator_unavailable_reason() is not None:
        pytest.skip(f"emulator unavailable: {emulator_unavailable_reason()}")
    rng = np.random.default_rng(5)
    # tiled (16+ channels per group) and direct paths, every operation
    shapes = [((1, 6, 6, 16), (3, 3, 16, 20), {"padding": 1}), ((1, 5, 5, 3), (3, 3, 3, 4), {"stride": 2})]

    def calls(be):
        for xs, ws, opts in shapes:
            cfg = make_config("test", xs, ws, **opts)
            x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
            b = rng.standard_normal(ws[3]).astype(np.float32)
            strict = {"precision": "highest"} if "precision" in inspect.signature(be.forward).parameters else {}
            y = be.forward(x, w, b, cfg, "relu", **strict)
            be.backward(np.ones_like(y), y, x, w, cfg, "relu", **strict)

    launched = _launched_kernels(calls)
    assert any(k.startswith("gpuconv_conv_fwd<float") for _, k in launched), launched
    for fname, kernel in sorted(launched):
        assert not _is_tc(kernel) and re.search(r"<float\b", kernel), (fname, kernel)
        for arch in TC_ARCHES:
            rows = {r.kernel: r for r in _rows(fname, arch)}
            assert kernel in rows, f"{kernel} not among {fname}'s compiled kernels"
            assert not rows[kernel].hmma, f"{kernel} on {arch} holds HMMA: {rows[kernel].hmma}"


# ------------------------------------------------------------------------------------------ the command line
def test_info_sass_without_nvdisasm_says_what_to_install(monkeypatch, capsys):
    from gpuconv import cli

    monkeypatch.setattr(sass, "nvdisasm_path", lambda: None)
    assert cli.main(["info", "--sass"]) == 0
    out = capsys.readouterr().out
    assert "kernel SASS: unavailable (" in out
    if nvrtc.unavailable_reason() is None:
        assert "pip install nvidia-cuda-nvdisasm" in out


@needs_sass
def test_info_kernels_sass_prints_the_table(capsys):
    from gpuconv import cli

    assert cli.main(["info", "--kernels", "--sass"]) == 0  # the compiles are this session's (cached)
    out = capsys.readouterr().out
    assert "kernel resources (NVRTC" in out and "kernel SASS (NVRTC" in out
    assert re.search(r"gpuconv_conv_fwd<float, 64>\s+sm_90\s+-\s+\d+", out)
    assert "256:32 = 8.0" in out
