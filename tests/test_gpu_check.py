"""tools/gpu_check.py's GPU checks run here as their own dry runs, the same code through the CPU emulator:
bigoffsets (offsets past 2**31 elements) on a small x, with a clean skip where there is no GPU, and accuracy
(every kernel in every mode against its bound from gpuconv/_accuracy.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuconv.cuda.modules import emulator_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, **env):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *args], capture_output=True,
                          text=True, check=False, cwd=ROOT, env=dict(os.environ, **env), timeout=300)


@pytest.mark.skipif(emulator_unavailable_reason() is not None, reason=f"emulator: {emulator_unavailable_reason()}")
def test_bigoffsets_dry_run_on_the_emulator():
    proc = _run("bigoffsets", "--small", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for k in ("forward", "dx", "dw"):
        assert f"bigoffsets {k}" in proc.stdout and "FAIL" not in proc.stdout


def test_bigoffsets_skips_without_a_gpu():
    proc = _run("bigoffsets", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode == 0 and "bigoffsets: skipped, needs a GPU" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(emulator_unavailable_reason() is not None, reason=f"emulator: {emulator_unavailable_reason()}")
def test_accuracy_dry_run_on_the_emulator():
    """Every case within its bound in every mode; the fused sigmoid gradients in 2-byte storage need the error
    their dz carries (dz_error * sum |dy||b|), which the bound once left out."""
    proc = _run("accuracy", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode == 0 and "accuracy: all within the bounds" in proc.stdout, proc.stdout + proc.stderr
    assert "sigmoid" in proc.stdout and "fused dw" in proc.stdout


@pytest.mark.skipif(emulator_unavailable_reason() is not None, reason=f"emulator: {emulator_unavailable_reason()}")
def test_wgmma_rate_dry_run_on_the_emulator():
    proc = _run("wgmma_rate", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("result ok") == 2 and "copies=1" in proc.stdout, proc.stdout


@pytest.mark.skipif(emulator_unavailable_reason() is not None, reason=f"emulator: {emulator_unavailable_reason()}")
def test_compile_builds_every_kernel_file():
    # the step that fills the kernel cache first (the emulator's builds here, CuPy's on a GPU): one line a file
    from gpuconv.cuda.modules import kernel_files

    proc = _run("compile", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("compile: ")]
    assert sorted(ln.split()[1] for ln in lines) == sorted(p.name for p in kernel_files()), proc.stdout


@pytest.mark.skipif(emulator_unavailable_reason() is not None, reason=f"emulator: {emulator_unavailable_reason()}")
def test_sanitize_wgmma_dry_run_on_the_emulator():
    # the same pass on the emulator with sm_90's plans: every wgmma kernel of the plans runs once
    proc = _run("sanitize_wgmma", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kernel in ("gpuconv_wgmma_fwd<__half, 4>", "gpuconv_wgmma_fwd<float, 4>", "gpuconv_wgmma_bwd_input<__half, 4>",
                   "gpuconv_wgmma_bwd_input<float, 4>", "gpuconv_wgmma_bwd_input<float, 4, true>"):
        assert kernel in proc.stdout, proc.stdout


@pytest.mark.skipif(emulator_unavailable_reason() is not None, reason=f"emulator: {emulator_unavailable_reason()}")
def test_wgmma_dx_dry_run_on_the_emulator():
    # the TF32 dx from a user's dz and from a rounded one on sm_90's plans: both wgmma variants, the same bits
    proc = _run("wgmma_dx", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for kernel in ("gpuconv_wgmma_bwd_input<float, 4>:", "gpuconv_wgmma_bwd_input<float, 4, true>:"):
        assert kernel in proc.stdout, proc.stdout
    assert "results bitwise equal" in proc.stdout, proc.stdout


def test_bench_rejects_an_unknown_mode():
    proc = _run("bench", "fp8", GPU_CHECK_BACKEND="emulator")
    assert proc.returncode != 0 and "unknown mode(s) fp8; choose from bf16, fp16, fp32, tf32" in proc.stderr, \
        proc.stdout + proc.stderr


def test_markdown_resource_table_marks_the_architectures_a_kernel_is_not_built_for(monkeypatch, capsys):
    """`gpu_check.py resources --markdown`: a column per architecture, those of files built for others (sm_90a,
    the wgmma files) after the default ones, and "-" where a kernel is not built for a column's."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import gpu_check

    from gpuconv.cuda import nvrtc

    def row(kernel, arch, regs):
        return "f.cu", nvrtc.KernelResources(kernel, arch, regs, 16, 0, 0, 0)

    rows = [row("k_all", a, 30 + i) for i, a in enumerate(nvrtc.ARCHES)] + [row("k_bf16", "sm_80", 40),
                                                                           row("k_wg", "sm_90a", 184)]
    monkeypatch.setattr(nvrtc, "resource_table", lambda: rows)
    assert gpu_check.print_resources(markdown=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| kernel | sm_70 regs | sm_80 regs | sm_90 regs | sm_90a regs | static smem (B) | spill bytes |"
    assert "| `k_all` | 30 | 31 | 32 | - | 16 | 0 |" in lines
    assert "| `k_bf16` | - | 40 | - | - | 16 | 0 |" in lines and "| `k_wg` | - | - | - | 184 | 16 | 0 |" in lines
