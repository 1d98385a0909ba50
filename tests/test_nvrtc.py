"""NVRTC compile checks: every kernel file (kernels/ and the emulator's test kernels) compiles for sm_70/80/90
with no error, no warning and no register spill. Needs cuda-bindings + nvidia-cuda-nvrtc-cu12, not a GPU."""
from pathlib import Path

import pytest

from gpuconv.cuda import nvrtc
from gpuconv.cuda.modules import build_inputs, declared_arches, kernel_files, registered_name_expressions

REASON = nvrtc.unavailable_reason()
needs_nvrtc = pytest.mark.skipif(REASON is not None, reason=f"NVRTC unavailable: {REASON}")

TEST_KERNELS = Path(__file__).resolve().parent / "emulator_kernels"
# faults.cu holds deliberately broken kernels (one has a 4 MiB local array): compiled, not held to the rules.
FILES = [*kernel_files(), *(p for p in sorted(TEST_KERNELS.glob("*.cu")) if p.name != "faults.cu")]


@needs_nvrtc
@pytest.mark.parametrize("arch", (*nvrtc.ARCHES, "sm_90a"))
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_compiles_cleanly_without_spills(path, arch):
    # A test kernel for some architectures only says so: "// gpuconv-nvrtc-arches: sm_80 sm_90". sm_90a (wgmma)
    # is for the files that name it.
    arches = declared_arches(path.read_text()) or nvrtc.ARCHES
    if arch not in arches:
        pytest.skip(f"{path.name} is for {' '.join(arches)} only")
    rows = nvrtc.compile_report(str(path), arch)
    assert rows, f"{path.name}: no kernel entry compiled for {arch}"
    spills = [r for r in rows if r.spill_stores or r.spill_loads]
    assert not spills, f"register spills: {spills}"
    expected = set(build_inputs(path)[1])  # what gpuconv.cuda.modules compiles: the same list
    assert expected <= {r.kernel for r in rows}


@needs_nvrtc
def test_fault_kernels_compile():
    rows = nvrtc.compile_report(str(TEST_KERNELS / "faults.cu"), "sm_90")
    assert {"deadlock", "divergent_barrier", "null_deref", "read_past_end"} <= {r.kernel for r in rows}


@needs_nvrtc
def test_resource_rows_for_the_tiled_matmul():
    rows = {r.kernel: r for r in nvrtc.compile_report(str(TEST_KERNELS / "matmul_tiled.cu"), "sm_80")}
    assert rows["matmul_tiled"].shared_mem_bytes == 2 * 16 * 16 * 4
    assert 0 < rows["matmul_tiled"].registers <= 255


@needs_nvrtc
def test_errors_and_warnings_raise(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')
    with pytest.raises(nvrtc.NvrtcError, match="undefined_name"):
        nvrtc.compile_report(str(bad), "sm_80")
    warn = tmp_path / "warn.cu"
    warn.write_text('extern "C" __global__ void k(float* x) { int unused; x[0] = 1.0f; }\n')
    with pytest.raises(nvrtc.NvrtcError, match="warning"):
        nvrtc.compile_report(str(warn), "sm_80")


@needs_nvrtc
def test_format_resource_table():
    text = nvrtc.format_resource_table(files=[str(TEST_KERNELS / "templates.cu")], arches=("sm_80",))
    assert "axpy<__half>" in text and "regs" in text
    assert nvrtc.format_resource_table().startswith("kernel resources")


def test_parse_ptxas_log():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kIfEvPT_i' for 'sm_90'
ptxas info    : Function properties for _Z1kIfEvPT_i
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem
ptxas info    : Compiling entry function 'g' for 'sm_70'
ptxas info    : Function properties for g
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 6 registers, 356 bytes cmem[0]
"""
    rows = nvrtc.parse_ptxas(log)
    assert rows["_Z1kIfEvPT_i"] == {"registers": 40, "shared_mem_bytes": 2048, "spill_stores": 8,
                                    "spill_loads": 4, "stack_bytes": 16}
    assert rows["g"]["registers"] == 6 and rows["g"]["shared_mem_bytes"] == 0


def test_registered_name_expressions():
    src = ("// gpuconv-name-expressions: f<float, 3>, f<double, 3>\n"
           "//gpuconv-name-expressions: g<__half>,f<float, 3>\n")
    assert registered_name_expressions(src) == ("f<float, 3>", "f<double, 3>", "g<__half>")
