"""The CPU emulator: test-only kernels (tests/emulator_kernels/) against numpy, under both thread schedules.

Run under AddressSanitizer with tools/asan_emulator.sh.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpuconv.cuda.modules import emulator_unavailable_reason, get_module

REASON = emulator_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"CPU emulator unavailable: {REASON}")

KERNELS = Path(__file__).resolve().parent / "emulator_kernels"
REPO = Path(__file__).resolve().parent.parent
SANITIZE = os.environ.get("GPUCONV_EMULATOR_SANITIZE", "")
SCHEDULES = ("forward", "reverse")


def module(name):
    return get_module("emulator", str(KERNELS / name))


@pytest.fixture(params=SCHEDULES)
def schedule(request):
    from gpuconv.cuda.emulator import schedule as use

    with use(request.param):
        yield request.param


def run_script(code, env_extra=None, timeout=120):
    """Runs python code in a fresh process (for kernels that crash it); returns the CompletedProcess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True,
                          env=env, timeout=timeout)


# ---- results against numpy ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 255, 1000])
def test_vector_add(schedule, n):
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal((2, n), dtype=np.float32)
    c = np.full(n, np.nan, np.float32)
    module("vector_add.cu").get_function("vector_add")(((n + 127) // 128,), (128,), (a, b, c, np.int32(n)))
    np.testing.assert_array_equal(c, a + b)


@pytest.mark.parametrize("m,n,k", [(16, 16, 16), (37, 45, 50)])
def test_matmul_tiled(schedule, m, n, k):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.zeros((m, n), np.float32)
    grid = ((n + 15) // 16, (m + 15) // 16)
    module("matmul_tiled.cu").get_function("matmul_tiled")(grid, (16, 16), (a, b, c, *map(np.int32, (m, n, k))))
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


def test_missing_barrier_is_a_wrong_result_under_some_schedule():
    """The tiled matmul without its second barrier must fail under at least one schedule."""
    from gpuconv.cuda.emulator import schedule as use

    m = n = k = 48
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    racy = module("matmul_tiled.cu").get_function("matmul_tiled_racy")
    wrong = []
    for name in SCHEDULES:
        c = np.zeros((m, n), np.float32)
        with use(name):
            racy((3, 3), (16, 16), (a, b, c, np.int32(m), np.int32(n), np.int32(k)))
        if not np.allclose(c, a @ b, rtol=1e-4, atol=1e-4):
            wrong.append(name)
    assert wrong, "the race went unnoticed under every schedule"


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-14), (np.float16, 1e-3)])
def test_template_kernel_over_dtypes(schedule, dtype, rtol):
    ctype = {np.float32: "float", np.float64: "double", np.float16: "__half"}[dtype]
    n = 300
    rng = np.random.default_rng(2)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    alpha = dtype(0.75)
    if dtype is np.float16:  # __half arithmetic rounds after each operation
        expected = (alpha * x).astype(np.float16) + y
    else:
        expected = alpha * x + y
    axpy = module("templates.cu").get_function(f"axpy<{ctype}>")
    axpy((3,), (128,), (x, y, alpha, np.int32(n)))
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=rtol)


def test_block_sum_with_shuffles_and_atomics(schedule):
    n = 5000
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    out = np.zeros(1, np.float32)
    module("warp_ops.cu").get_function("block_sum")(((n + 255) // 256,), (256,), (x, out, np.int32(n)))
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-4, atol=1e-3)


def test_warp_shuffles_and_votes(schedule):
    nwarps = 4
    x = np.random.default_rng(4).integers(-5, 20, 32 * nwarps).astype(np.int32)
    x[32:64] = np.abs(x[32:64]) + 1  # warp 1: all positive
    x[64:96] = -np.abs(x[64:96]) - 1  # warp 2: none positive
    scan, first, wmax = (np.zeros_like(x) for _ in range(3))
    ballot = np.zeros(x.size, np.uint32)
    any_all = np.zeros(2 * x.size, np.int32)
    module("warp_ops.cu").get_function("warp_misc")((2,), (64,), (x, scan, first, wmax, ballot, any_all))
    w = x.reshape(nwarps, 32)
    np.testing.assert_array_equal(scan, np.cumsum(w, axis=1).ravel())
    np.testing.assert_array_equal(first, np.repeat(w[:, 0], 32))
    np.testing.assert_array_equal(wmax, np.repeat(w.max(axis=1), 32))
    bits = ((w > 0) * (1 << np.arange(32, dtype=np.uint64))).sum(axis=1).astype(np.uint32)
    np.testing.assert_array_equal(ballot, np.repeat(bits, 32))
    np.testing.assert_array_equal(any_all[0::2], np.repeat((w > 0).any(axis=1), 32))
    np.testing.assert_array_equal(any_all[1::2], np.repeat((w > 0).all(axis=1), 32))


@pytest.mark.parametrize("n", [64, 50])
def test_block_votes_and_partial_warp_shuffle(schedule, n):
    x = np.random.default_rng(6).integers(-3, 10, 64).astype(np.int32)
    out = np.zeros(3, np.int32)
    half = np.zeros(64, np.int32)
    module("warp_ops.cu").get_function("block_votes")((1,), (64,), (x, out, half, np.int32(n)))
    p = x[:n] > 0
    assert out.tolist() == [p.sum(), p.all(), p.any()]
    i = np.arange(n)
    lower = (i & 31) < 16
    src = np.where((i & 15) < 15, i + 1, i)
    np.testing.assert_array_equal(half[:n][lower], x[src][lower])
    np.testing.assert_array_equal(half[:n][~lower], -x[:n][~lower])


def test_atomics_from_many_blocks(schedule):
    n, bins = 20000, 7
    x = np.random.default_rng(5).integers(0, bins, n).astype(np.int32)
    counts = np.zeros(bins, np.uint32)
    mod = module("atomics.cu")
    mod.get_function("histogram")(((n + 255) // 256,), (256,), (x, counts, np.int32(n)))
    np.testing.assert_array_equal(counts, np.bincount(x, minlength=bins))

    v = x - 3
    out_d = np.zeros(1, np.float64)
    out_i = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max, 0], np.int32)
    out_f = np.zeros(1, np.float32)
    out_u = np.zeros(1, np.uint32)
    mod.get_function("reductions")(((n + 127) // 128,), (128,), (v, np.int32(n), out_d, out_i, out_f, out_u))
    assert out_d[0] == v.sum()
    assert (out_i[0], out_i[1], out_i[2]) == (v.max(), v.min(), n)
    assert out_f[0] == v.sum()  # small integers: exact in float32
    assert out_u[0] == n


def test_dynamic_shared_memory(schedule):
    n = 1000
    x = np.arange(n, dtype=np.float32)
    y = np.full(n, -1.0, np.float32)
    mod = module("shared_memory.cu")
    mod.get_function("reverse_blocks")((4,), (256,), (x, y, np.int32(n)), shared_mem=256 * 4)
    padded = np.concatenate([x, np.zeros(24, np.float32)]).reshape(4, 256)[:, ::-1].ravel()
    # y[j] = x-chunk reversed; entries past n are dropped
    expected = np.empty(1024, np.float32)
    for blk in range(4):
        expected[blk * 256:(blk + 1) * 256] = padded[blk * 256:(blk + 1) * 256]
    np.testing.assert_array_equal(y, expected[:n])

    out = np.zeros(64, np.float32)
    mod.get_function("two_arrays")((1,), (64,), (out, np.int32(64)), shared_mem=64 * 8)
    np.testing.assert_array_equal(out, 3.0 * (63 - np.arange(64)))


def test_write_past_dynamic_shared_memory_fails_the_launch(schedule):
    from gpuconv.cuda.emulator import EmulatorError

    out = np.zeros(64, np.float32)
    k = module("shared_memory.cu").get_function("overrun_dynamic")
    k((1,), (64,), (out,), shared_mem=64 * 4)  # exactly enough
    assert np.all(out == 1.0)
    if os.environ.get("GPUCONV_EMULATOR_SANITIZE") == "address":
        pytest.skip("under ASan the buffer has no guard: ASan itself reports the overrun")
    with pytest.raises(EmulatorError, match=r"wrote past the end of its dynamic shared memory \(byte 0 after the "
                                            r"128 bytes of shared_mem\)"):
        k((1,), (64,), (out,), shared_mem=32 * 4)


def test_shared_memory_starts_poisoned():
    out = np.zeros(2 * 64, np.float32)
    module("shared_memory.cu").get_function("read_uninitialised")((1,), (64,), (out,), shared_mem=64 * 4)
    static, dynamic = out[0::2], out[1::2]
    assert np.all(static[0::2] == 1.0)
    assert np.all(np.isnan(static[1::2])), "unwritten static shared memory must read as the poison (NaN)"
    assert np.all(np.isnan(dynamic)), "unwritten dynamic shared memory must read as the poison (NaN)"


def test_schedule_from_environment():
    proc = run_script(f"""
        import numpy as np
        from gpuconv.cuda.modules import get_module
        from gpuconv.cuda.emulator import current_schedule
        m = get_module("emulator", {str(KERNELS / 'matmul_tiled.cu')!r})
        a = np.ones((16, 16), np.float32); c = np.zeros((16, 16), np.float32)
        m.get_function("matmul_tiled")((1, 1), (16, 16), (a, a, c, *map(np.int32, (16, 16, 16))))
        assert (c == 16).all()
        print(current_schedule())
    """, {"GPUCONV_EMULATOR_SCHEDULE": "shuffle"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "shuffle"


def test_builtins_match_numpy(schedule):
    n = 100
    x = np.linspace(0.05, 3.95, n).astype(np.float32)
    f = np.zeros(16 * n, np.float32)
    k = np.zeros(8 * n, np.int32)
    d = np.zeros(2 * n, np.float64)
    h = np.zeros(2 * n, np.float16)
    total = np.zeros(1, np.uint64)
    module("builtins.cu").get_function("builtins")((2,), (64,), (x, f, k, d, h, total, np.int32(n)))
    f, k, d, h = f.reshape(n, 16), k.reshape(n, 8), d.reshape(n, 2), h.reshape(n, 2)
    x64 = x.astype(np.float64)
    expected = [np.exp(x64), np.log(x64), np.sqrt(x64), 1 / np.sqrt(x64), np.exp(x64), x64 / 3, x64 * 2 + 1,
                np.maximum(x64, 2) + np.minimum(x64, 1), np.tanh(x64 - 2), np.abs(x64 - 2),
                np.maximum(x64, 2.5) - np.minimum(x64, 0.5), np.clip(x64 - 1.5, 0, 1), x64, x64 * x64,
                3 * x64 + 7, x.astype(np.float16).astype(np.float64)]
    for j, e in enumerate(expected):
        np.testing.assert_allclose(f[:, j], e, rtol=2e-6, atol=1e-6, err_msg=f"float result {j}")
    i = np.arange(n)
    u = (i.astype(np.uint64) * 2654435761) % 2**32
    assert (k[:, 0] == [bin(int(v)).count("1") for v in u]).all()
    assert (k[:, 1] == [32 - int(v | 1).bit_length() for v in u]).all()
    assert (k[:, 2] == [(int(v) & -int(v)).bit_length() for v in i]).all()
    assert (k[:, 3].view(np.uint32) == [int(f"{v:032b}"[::-1], 2) for v in i]).all()
    assert (k[:, 4] == np.minimum(i, 7) + np.maximum(i, 3)).all()
    assert (k[:, 5] == 32).all() and (k[:, 7] == 64).all()
    assert (k[:, 6] == np.rint(x * np.float32(10))).all()
    np.testing.assert_allclose(d[:, 0], np.exp(x64), rtol=1e-15)
    np.testing.assert_allclose(d[:, 1], np.sqrt(x64) + np.maximum(x64, 1), rtol=1e-15)
    half = (x.astype(np.float16) * np.float16(0.5)) + np.float16(0.5)
    np.testing.assert_array_equal(h[:, 0], half)
    np.testing.assert_array_equal(h[:, 1], half)
    assert total[0] == i.sum()


# ---- launch checks ---------------------------------------------------------------------------------------
def test_python_scalars_are_refused():
    k = module("vector_add.cu").get_function("vector_add")
    a = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"argument 3 is int.*Python int.*long long"):
        k((1,), (4,), (a, a, a, 4))
    with pytest.raises(TypeError, match=r"argument 3 is int.*numpy int64"):
        k((1,), (4,), (a, a, a, np.int64(4)))
    with pytest.raises(TypeError, match=r"argument 0 is float\*.*array of float.*float64"):
        k((1,), (4,), (a.astype(np.float64), a, a, np.int32(4)))
    with pytest.raises(TypeError, match="takes 4 arguments"):
        k((1,), (4,), (a, a, a))


def test_bad_launch_configurations():
    from gpuconv.cuda.emulator import EmulatorError

    mod = module("vector_add.cu")
    k = mod.get_function("vector_add")
    a = np.zeros(4, np.float32)
    args = (a, a, a, np.int32(4))
    with pytest.raises(ValueError, match="more than 1024 threads"):
        k((1,), (32, 33), args)
    with pytest.raises(ValueError, match="grid"):
        k((0,), (4,), args)
    with pytest.raises(ValueError, match="shared_mem"):
        k((1,), (4,), args, shared_mem=100_000)
    with pytest.raises(EmulatorError, match="no kernel 'vector_sub'"):
        mod.get_function("vector_sub")
    k(4, 1, args)  # ints for grid and block, as cupy takes them


# ---- faults the emulator reports ---------------------------------------------------------------------------
def test_deadlock_is_reported_not_hung(schedule):
    from gpuconv.cuda.emulator import EmulatorError

    out = np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match=r"kernel 'deadlock'.*deadlock.*__syncthreads.*warp shuffle"):
        module("faults.cu").get_function("deadlock")((1,), (32,), (out,))


def test_divergent_barrier_is_reported(schedule):
    from gpuconv.cuda.emulator import EmulatorError

    out = np.zeros(64, np.float32)
    with pytest.raises(EmulatorError, match=r"divergent_barrier.*__syncthreads\(\) reached from different lines"):
        module("faults.cu").get_function("divergent_barrier")((2,), (64,), (out,))


def test_trap_is_reported():
    from gpuconv.cuda.emulator import EmulatorError

    out = np.zeros(8, np.float32)
    with pytest.raises(EmulatorError, match=r"trap_one.*thread \(3,0,0\).*__trap\(\)"):
        module("faults.cu").get_function("trap_one")((1,), (8,), (out,))
    # The module still works after a failed launch.
    module("faults.cu").get_function("divergent_barrier")  # lookup only
    a = np.ones(8, np.float32)
    c = np.zeros(8, np.float32)
    module("vector_add.cu").get_function("vector_add")((1,), (8,), (a, a, c, np.int32(8)))
    assert (c == 2).all()


def test_failed_assert_is_reported():
    from gpuconv.cuda.emulator import EmulatorError

    out = np.zeros(4, np.float32)
    with pytest.raises(EmulatorError, match=r"assert_odd.*thread \([13],0,0\).*assert\(threadIdx.x % 2 == 0\) failed"):
        module("faults.cu").get_function("assert_odd")((1,), (4,), (out,))


@pytest.mark.skipif(bool(SANITIZE), reason="under ASan, AddressSanitizer reports the fault itself")
def test_crash_names_the_kernel_and_launch():
    proc = run_script(f"""
        import numpy as np
        from gpuconv.cuda.modules import get_module
        m = get_module("emulator", {str(KERNELS / 'faults.cu')!r})
        m.get_function("null_deref")((2, 1), (8, 4), (np.zeros(64, np.float32),))
        print("survived")
    """)
    assert proc.returncode != 0 and "survived" not in proc.stdout
    assert "crash (SIGSEGV" in proc.stderr and "kernel 'null_deref' in launch" in proc.stderr, proc.stderr
    assert "grid=(2,1,1) block=(8,4,1)" in proc.stderr, proc.stderr


@pytest.mark.skipif(bool(SANITIZE), reason="under ASan, AddressSanitizer reports the fault itself")
def test_stack_overflow_is_named():
    proc = run_script(f"""
        import numpy as np
        from gpuconv.cuda.modules import get_module
        m = get_module("emulator", {str(KERNELS / 'faults.cu')!r})
        m.get_function("stack_hog")((1,), (2,), (np.zeros(2, np.float32), np.int32(1024)))
    """)
    assert proc.returncode != 0
    assert "kernel 'stack_hog' in launch" in proc.stderr and "stack overflow" in proc.stderr, proc.stderr


def test_spin_wait_hits_the_watchdog():
    proc = run_script(f"""
        import numpy as np
        from gpuconv.cuda.modules import get_module
        m = get_module("emulator", {str(KERNELS / 'faults.cu')!r})
        m.get_function("spin_wait")((1,), (2,), (np.zeros(1, np.int32),))
        print("survived")
    """, {"GPUCONV_EMULATOR_TIMEOUT": "1", "GPUCONV_EMULATOR_SCHEDULE": "forward"})
    assert proc.returncode == 124 and "survived" not in proc.stdout, (proc.returncode, proc.stderr)
    assert "kernel 'spin_wait' (grid=(1,1,1) block=(2,1,1) shared_mem=0) still runs after 1 s" in proc.stderr


def _libasan():
    from gpuconv.cuda.emulator._compile import compiler

    cxx, _ = compiler()
    try:
        out = subprocess.run([cxx, "-print-file-name=libasan.so"], check=False, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_out_of_bounds_read_is_caught_under_asan():
    libasan = _libasan()
    if libasan is None:
        pytest.skip("libasan not found (<compiler> -print-file-name=libasan.so gives no file)")
    proc = run_script(f"""
        import numpy as np
        from gpuconv.cuda.modules import get_module
        m = get_module("emulator", {str(KERNELS / 'faults.cu')!r})
        n = 100
        x = np.ones(n, np.float32); y = np.zeros(n, np.float32)
        m.get_function("read_past_end")((1,), (128,), (x, y, np.int32(n)))
        print("survived")
    """, {"LD_PRELOAD": libasan, "GPUCONV_EMULATOR_SANITIZE": "address",
          "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=23"}, timeout=300)
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert "read_past_end" in proc.stderr
    assert "AddressSanitizer stopped kernel 'read_past_end' in launch grid=(1,1,1) block=(128,1,1)" in proc.stderr
    assert proc.returncode != 0 and "survived" not in proc.stdout


# ---- module interface -------------------------------------------------------------------------------------
def test_no_compiler_means_unavailable_not_broken():
    proc = run_script("""
        import numpy as np
        import gpuconv
        from gpuconv.cuda.modules import emulator_unavailable_reason, get_module
        from gpuconv._dispatch import BackendUnavailable
        reason = emulator_unavailable_reason()
        assert reason and "no C++ compiler" in reason, reason
        try:
            get_module("emulator", "%s")
        except BackendUnavailable as exc:
            print("unavailable:", exc)
        x = np.ones((1, 5, 5, 2), np.float32); w = np.ones((3, 3, 2, 4), np.float32)
        print(gpuconv.conv2d(x, w).shape)
    """ % (KERNELS / "vector_add.cu"), {"GPUCONV_CXX": "no-such-compiler-gpuconv"})
    assert proc.returncode == 0, proc.stderr
    assert "unavailable: the CUDA emulator is unavailable: no C++ compiler" in proc.stdout
    assert "(1, 3, 3, 4)" in proc.stdout


def test_import_compiles_nothing(tmp_path):
    proc = run_script("""
        import sys, gpuconv, gpuconv.cuda.modules, gpuconv.cuda.nvrtc
        assert "gpuconv.cuda.emulator" not in sys.modules and "cuda.bindings.nvrtc" not in sys.modules
    """, {"GPUCONV_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert not any(tmp_path.iterdir())


def test_kernel_source_lookup(tmp_path):
    from gpuconv.cuda.modules import kernel_path, kernel_source

    assert kernel_path("README.md").parent.name == "kernels"
    assert "kernels" in kernel_source("README.md")
    with pytest.raises(FileNotFoundError, match="no_such.cu"):
        kernel_source("no_such.cu")
    with pytest.raises(ValueError, match="bare name"):
        kernel_source("../README.md")


def test_cupy_kind_without_cupy():
    from gpuconv._dispatch import BackendUnavailable, import_cupy

    try:
        import_cupy()
    except BackendUnavailable:
        pass
    else:
        pytest.skip("cupy is installed: the cupy kind is exercised by the GPU tests")
    with pytest.raises(BackendUnavailable, match="cupy"):
        get_module("cupy", str(KERNELS / "vector_add.cu"))


def test_modules_are_cached_and_name_expressions_registered():
    a = module("templates.cu")
    assert module("templates.cu") is a
    assert {"axpy<float>", "axpy<double>", "axpy<__half>"} <= set(a.kernel_names)
    assert a.get_function("axpy<__half>").param_types == ("__half*", "__half*", "__half", "int")


def test_source_scanning_and_rewrite():
    from gpuconv.cuda.emulator._compile import CompileError, extern_c_kernels, rewrite_source

    src = """char q = '"'; // extern "C" __global__ void commented(
extern "C" __global__ void __launch_bounds__(128) a(float* x) {}
/* extern "C" __global__ void b( */
extern "C" __global__ __launch_bounds__(64, 2) void c(float* x) {}
extern "C"
__global__ void d(int n) {
    extern __shared__ __align__(16) unsigned char raw[];
    extern __shared__ float
        buf[];
}
template <class T> __global__ void e(T* x) {}
"""
    assert extern_c_kernels(src) == ["a", "c", "d"]
    out = rewrite_source(src)
    assert out.count("\n") == src.count("\n"), "line numbers must not move"
    assert "unsigned char* const raw = reinterpret_cast<unsigned char*>(::gpuconv_emu::tl.dyn_smem);" in out
    assert "float* const buf = reinterpret_cast<float*>(::gpuconv_emu::tl.dyn_smem);" in out
    with pytest.raises(CompileError, match="line 2: .*at file scope"):
        rewrite_source("// top\nextern __shared__ float s[];\n")


def test_compile_error_points_at_the_kernel_file(tmp_path):
    from gpuconv.cuda.emulator import CompileError

    bad = tmp_path / "broken.cu"
    bad.write_text('extern "C" __global__ void k(float* x) {\n    x[0] = undefined_name;\n}\n')
    with pytest.raises(CompileError, match=r"broken.cu:2:.*undefined_name"):
        get_module("emulator", str(bad))


# ---- tensor cores (nvcuda::wmma), TF32, bfloat16 ---------------------------------------------------------
ALL_SCHEDULES = ("forward", "reverse", "shuffle")
TF32_MASK = np.uint32(0xFFFFE000)


@pytest.fixture(params=ALL_SCHEDULES)
def any_schedule(request):
    from gpuconv.cuda.emulator import schedule as use

    with use(request.param):
        yield request.param


def _ml_dtypes():
    return pytest.importorskip("ml_dtypes")


def tf32(x):
    """The hardware's cvt.rna.tf32.f32 on float32 values (the formula every gpuconv path uses)."""
    u = np.asarray(x, np.float32).view(np.uint32)
    finite = (u & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    r = np.where(finite, (u + np.uint32(0x1000)) & TF32_MASK, u)
    return r.astype(np.uint32).view(np.float32)


def _wmma_operands(kind, rng, m, n, k):
    """A (m x k), B (k x n) as the kernel's element dtype, and their exact float32 values."""
    if kind == "half":
        a, b = (rng.standard_normal(s).astype(np.float16) for s in ((m, k), (k, n)))
    elif kind == "bf16":
        bf = _ml_dtypes().bfloat16
        a, b = (rng.standard_normal(s).astype(np.float32).astype(bf) for s in ((m, k), (k, n)))
    else:
        a, b = (rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, n)))
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    if kind == "tf32":
        fa, fb = tf32(fa), tf32(fb)
    return a, b, fa, fb


def _in_memory(x, col, pad):
    """x stored row- or column-major with leading dimension (width + pad): the padded buffer."""
    t = x.T if col else x
    buf = np.zeros((t.shape[0], t.shape[1] + pad), x.dtype)
    buf[:, :t.shape[1]] = t
    return buf


def _wmma_reference(c0, fa, fb, ktile, acc_dtype):
    """0.5 * C, then per k tile: the exact products summed in float32 in k order, rounded to acc_dtype."""
    acc = (c0.astype(np.float32) * np.float32(0.5)).astype(acc_dtype)
    for k0 in range(0, fa.shape[1], ktile):
        s = acc.astype(np.float32)
        for kk in range(k0, k0 + ktile):
            s = s + fa[:, kk, None] * fb[None, kk, :]  # exact products; float32 sums in a fixed order
        acc = s.astype(acc_dtype)
    return acc


WMMA_CASES = [
    ("half", "row_major", "row_major", "float"), ("half", "col_major", "col_major", "float"),
    ("half", "row_major", "col_major", "__half"), ("half", "col_major", "row_major", "__half"),
    ("bf16", "row_major", "row_major", "float"), ("bf16", "col_major", "col_major", "float"),
    ("bf16", "row_major", "col_major", "float"),
    ("tf32", "row_major", "row_major", "float"), ("tf32", "col_major", "col_major", "float"),
    ("tf32", "col_major", "row_major", "float"),
]
_WMMA_CTYPE = {"half": "__half", "bf16": "__nv_bfloat16", "tf32": "nvcuda::wmma::precision::tf32"}


def _run_wmma_gemm(kind, la, lb, tc, c_col, seed=0, convert=1, a=None, b=None):
    m = n = 32
    k = 32
    rng = np.random.default_rng(seed)
    a0, b0, fa, fb = _wmma_operands(kind, rng, m, n, k)
    a = a0 if a is None else a
    b = b0 if b is None else b
    acc_dtype = np.float16 if tc == "__half" else np.float32
    c0 = rng.standard_normal((m, n)).astype(acc_dtype)
    pad = 8
    amem, bmem = _in_memory(a, la == "col_major", pad), _in_memory(b, lb == "col_major", pad)
    cmem = _in_memory(c0, bool(c_col), pad)
    name = (f"wmma_gemm<{_WMMA_CTYPE[kind]}, nvcuda::wmma::{la}, nvcuda::wmma::{lb}, {tc}>")
    kern = module("wmma.cu").get_function(name)
    ints = map(np.int32, (m, n, k, amem.shape[1], bmem.shape[1], cmem.shape[1], c_col, convert))
    kern((2,), (64,), (amem, bmem, cmem, *ints))  # 4 tiles: 2 blocks of 2 warps
    out = cmem[:, :(m if c_col else n)]
    out = out.T if c_col else out
    return out, _wmma_reference(c0, fa, fb, 8 if kind == "tf32" else 16, acc_dtype)


@pytest.mark.parametrize("kind,la,lb,tc", WMMA_CASES)
@pytest.mark.parametrize("c_col", [0, 1])
def test_wmma_gemm_matches_numpy(any_schedule, kind, la, lb, tc, c_col):
    out, ref = _run_wmma_gemm(kind, la, lb, tc, c_col, seed=len(kind) + c_col)
    np.testing.assert_array_equal(out, ref)  # same products, same order of sums: bit for bit


def test_wmma_results_do_not_depend_on_the_fragment_layout(monkeypatch):
    """Layout-agnostic code gives identical results in both layouts; layout-dependent code does not."""
    a = np.random.default_rng(5).standard_normal((16, 16)).astype(np.float16)
    b = np.random.default_rng(6).standard_normal((16, 16)).astype(np.float16)
    results = {}
    for layout in ("forward", "permuted"):
        monkeypatch.setenv("GPUCONV_EMULATOR_WMMA_LAYOUT", layout)
        out, ref = _run_wmma_gemm("half", "row_major", "row_major", "float", 0, seed=9)
        np.testing.assert_array_equal(out, ref)
        raw, c = np.zeros(256, np.float32), np.zeros((16, 16), np.float32)
        module("wmma.cu").get_function("wmma_layout_dependent")((1,), (32,), (a, b, raw, c))
        results[layout] = (raw, c)
    product = a.astype(np.float32) @ b.astype(np.float32)
    for raw, _ in results.values():  # each lane's elements are some permutation of the product
        np.testing.assert_allclose(np.sort(raw), np.sort(product.ravel()), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(results["forward"][0], results["permuted"][0])
    assert not np.array_equal(results["forward"][1], results["permuted"][1])


def test_wmma_layout_follows_the_schedule(monkeypatch):
    from gpuconv.cuda.emulator import wmma_layout

    monkeypatch.delenv("GPUCONV_EMULATOR_WMMA_LAYOUT", raising=False)
    assert [wmma_layout(s) for s in ALL_SCHEDULES] == ["forward", "permuted", "permuted"]
    monkeypatch.setenv("GPUCONV_EMULATOR_WMMA_LAYOUT", "sideways")
    with pytest.raises(ValueError, match="GPUCONV_EMULATOR_WMMA_LAYOUT"):
        wmma_layout("forward")


def test_unconverted_tf32_operand_is_caught(any_schedule):
    from gpuconv.cuda.emulator import EmulatorError

    with pytest.raises(EmulatorError, match=r"wmma_gemm<nvcuda::wmma::precision::tf32.*not a TF32 value"):
        _run_wmma_gemm("tf32", "row_major", "row_major", "float", 0, convert=0)
    # Operands that are TF32 values already need no conversion.
    rng = np.random.default_rng(0)
    a0, b0, _, _ = _wmma_operands("tf32", rng, 32, 32, 32)
    out, ref = _run_wmma_gemm("tf32", "row_major", "row_major", "float", 0, convert=0, a=tf32(a0), b=tf32(b0))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("mode,message", [
    (1, r"warp-collective: all 32 lanes .* only lanes 0x7fffffff"),
    (2, r"lanes of the warp passed different arguments"),
    (3, r"not 256-bit \(32-byte\) aligned"),
    (4, r"ldm=12 elements \(24 bytes\) is not a multiple of 16 bytes"),
    (5, r"lanes of warp 0 wait at different warp barriers: .*a wmma operation on line"),
])
def test_wmma_misuse_is_reported(any_schedule, mode, message):
    from gpuconv.cuda.emulator import EmulatorError

    a = np.ones(1024, np.float16)
    c = np.zeros(256, np.float32)
    with pytest.raises(EmulatorError, match=r"kernel 'wmma_misuse'.*" + message) as info:
        module("wmma.cu").get_function("wmma_misuse")((1,), (32,), (a, c, np.int32(mode)))
    assert "line" in str(info.value)


def test_tf32_rounding_matches_the_formula(any_schedule):
    special = np.array([
        0x3F800000, 0x3F801000, 0x3F800FFF, 0x3F803000, 0x3F802000, 0xBF801000, 0xBF800FFF, 0xBF803000,  # ties
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7FF000, 0x7F7FEFFF,  # max float rounds to inf
        0x7F800000, 0xFF800000, 0x7FC00000, 0x7FC00001, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF,  # inf, NaN
        0x00000001, 0x00000FFF, 0x00001000, 0x00001FFF, 0x007FFFFF, 0x807FF000, 0x80001000, 0x00000000, 0x80000000,
    ], np.uint32)
    rand = np.random.default_rng(7).integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([special, rand]).view(np.float32)
    y = np.zeros_like(x)
    n = x.size
    module("wmma.cu").get_function("tf32_round")(((n + 255) // 256,), (256,), (x, y, np.int32(n)))
    np.testing.assert_array_equal(y.view(np.uint32), tf32(x).view(np.uint32))
    # The ties round away from zero; the largest float rounds to inf; NaN payloads are kept.
    assert y.view(np.uint32)[1] == 0x3F802000 and y.view(np.uint32)[5] == 0xBF802000
    assert np.isposinf(y[8]) and np.isneginf(y[9]) and y.view(np.uint32)[15] == 0x7FC00001


def test_bfloat16_arithmetic_and_conversions(any_schedule):
    bf = _ml_dtypes().bfloat16
    rng = np.random.default_rng(8)
    n = 300
    x = (rng.standard_normal(n) * 10).astype(np.float32)
    x[:6] = np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x7FC00001, 0xFF800000, 0x00000001],
                     np.uint32).view(np.float32)  # ties to even, overflow, NaN, -inf, a denormal
    y = (rng.standard_normal(n) * 3).astype(np.float32)
    z = rng.standard_normal(n).astype(np.float32).astype(bf)
    out = np.zeros(8 * n, np.float32)
    zout = np.zeros(n, bf)
    s = bf(1.3)
    module("wmma.cu").get_function("bf16_ops")((2,), (256,), (x, y, z, out, zout, s, np.int32(n)))
    f32 = np.float32
    a, b = x.astype(bf), y.astype(bf)
    fa, fb, fz = a.astype(f32), b.astype(f32), z.astype(f32)
    r = lambda v: np.asarray(v, f32).astype(bf).astype(f32)  # noqa: E731 - one rounding to bfloat16
    with np.errstate(all="ignore"):
        expected = np.stack([
            fa, r(fa + fb), r(fa - fb), r(fa * fb), r(fa / fb),
            (fa.astype(np.float64) * fb + fz).astype(bf).astype(f32),
            r(np.fmax(fa, fb)) + np.where(fa < fb, f32(1000), f32(0)), -fa + np.abs(fb),
        ], axis=1).ravel()
    np.testing.assert_array_equal(out, expected)
    assert out.view(np.uint32)[8 * 0] == 0x3F800000 and out.view(np.uint32)[8 * 1] == 0x3F820000
    assert np.isinf(out[8 * 2]) and np.isnan(out[8 * 3])
    zs = (fz + f32(s)).astype(bf).astype(f32)
    np.testing.assert_array_equal(zout.astype(f32), r(zs * f32(s)))


def test_argument_tags_tell_element_types_apart():
    bf = _ml_dtypes().bfloat16
    k = module("wmma.cu").get_function("bf16_ops")
    assert k.param_types == ("float*", "float*", "__nv_bfloat16*", "float*", "__nv_bfloat16*", "__nv_bfloat16",
                             "int")
    x = np.zeros(4, np.float32)
    good = [x, x, np.zeros(4, bf), np.zeros(32, np.float32), np.zeros(4, bf), bf(1), np.int32(4)]
    k((1,), (32,), tuple(good))
    for i, bad, what in [(2, np.zeros(4, np.float16), "float16"), (2, np.zeros(4, np.int16), "int16"),
                         (4, np.zeros(4, np.uint16), "uint16"), (5, np.float16(1), "float16"),
                         (0, np.zeros(4, bf), "bfloat16")]:
        args = list(good)
        args[i] = bad
        with pytest.raises(TypeError, match=rf"bf16_ops: argument {i} is .*; got a numpy .*{what}"):
            k((1,), (32,), tuple(args))
    with pytest.raises(TypeError, match=r"argument 2 is __nv_bfloat16\*, so it takes an array of __nv_bfloat16 "
                                        r"\(ml_dtypes.bfloat16\)"):
        k((1,), (32,), (x, x, x, x, x, bf(1), np.int32(4)))
    half = module("templates.cu").get_function("axpy<__half>")
    with pytest.raises(TypeError, match=r"argument 0 is __half\*, so it takes an array of __half \(numpy float16\)"):
        half((1,), (32,), (np.zeros(4, bf), np.zeros(4, np.float16), np.float16(1), np.int32(4)))


# ---- out-of-bounds writes (default build: guard bytes around every argument buffer) ------------------------
@pytest.mark.skipif(bool(SANITIZE), reason="under ASan, AddressSanitizer reports the write itself")
@pytest.mark.parametrize("offset,where", [(0, "0 bytes past the end"), (100, "400 bytes past the end"),
                                          (-101, "4 bytes before the start")])
def test_out_of_bounds_write_is_reported(offset, where):
    from gpuconv.cuda.emulator import EmulatorError

    n = 100
    y = np.zeros(n, np.float32)
    with pytest.raises(EmulatorError, match=rf"kernel 'write_out_of_bounds'.*wrote out of bounds: {where} of the "
                                            rf"400-byte buffer of argument\(s\) 0"):
        module("faults.cu").get_function("write_out_of_bounds")((1,), (128,), (y, np.int32(n), np.int32(offset)))
    np.testing.assert_array_equal(y, 1.0)  # the in-bounds results still arrive


def test_aliased_arguments_share_one_buffer(any_schedule):
    """The same array twice (in place) and overlapping views see one memory, as on a GPU."""
    n = 300
    a = np.arange(n, dtype=np.float32)
    b = np.ones(n, np.float32)
    add = module("vector_add.cu").get_function("vector_add")
    add((3,), (128,), (a, b, a, np.int32(n)))
    np.testing.assert_array_equal(a, np.arange(n) + 1)
    buf = np.zeros(n + 1, np.float32)
    add((3,), (128,), (buf[1:], b, buf[:-1], np.int32(n)))  # c[i] = a[i] + b[i] with c = a shifted by one
    assert buf[:-1].min() >= 1  # every c[i] saw a real a[i] (1 + earlier sums), none a stray copy


# ---- asynchronous copies (cuda_pipeline.h) ----------------------------------------------------------------
def test_cp_async_with_wait_and_barrier(any_schedule):
    x = np.random.default_rng(10).standard_normal(256).astype(np.float32)
    y = np.zeros(256, np.float32)
    module("pipeline.cu").get_function("cp_async_shift")((1,), (64,), (x, y, np.int32(0)))
    np.testing.assert_array_equal(y, np.roll(x, -4))


def test_cp_async_read_before_the_wait_sees_poison(any_schedule):
    x = np.random.default_rng(11).standard_normal(256).astype(np.float32)
    y = np.zeros(256, np.float32)
    module("pipeline.cu").get_function("cp_async_shift")((1,), (64,), (x, y, np.int32(1)))
    assert np.isnan(y).all()


def test_cp_async_missing_barrier_is_a_wrong_result_under_some_schedule():
    from gpuconv.cuda.emulator import schedule as use

    x = np.random.default_rng(12).standard_normal(256).astype(np.float32)
    wrong = []
    for name in ALL_SCHEDULES:
        y = np.zeros(256, np.float32)
        with use(name):
            module("pipeline.cu").get_function("cp_async_shift")((1,), (64,), (x, y, np.int32(2)))
        if not np.array_equal(y, np.roll(x, -4)):
            wrong.append(name)
    assert wrong == list(ALL_SCHEDULES)  # each thread reads another's copy before that thread has waited


def test_cp_async_never_waited_is_reported(any_schedule):
    from gpuconv.cuda.emulator import EmulatorError

    x = np.ones(256, np.float32)
    source = (KERNELS / "pipeline.cu").read_text().splitlines()
    line = 1 + next(i for i, t in enumerate(source) if "__pipeline_memcpy_async(&tile[4 * t]" in t)
    with pytest.raises(EmulatorError, match=rf"kernel 'cp_async_shift'.*exited with 1 asynchronous copies never "
                                            rf"waited for \(the first from __pipeline_memcpy_async on line {line}\)"):
        module("pipeline.cu").get_function("cp_async_shift")((1,), (64,), (x, np.zeros(256, np.float32),
                                                                            np.int32(3)))


def test_cp_async_groups_and_zfill(any_schedule):
    x = np.random.default_rng(13).standard_normal(256).astype(np.float32)
    y = np.zeros(384, np.float32)
    module("pipeline.cu").get_function("cp_async_groups")((1,), (32,), (x, y))
    np.testing.assert_array_equal(y[:128], x[:128])
    zfilled = x[128:].reshape(32, 4).copy()
    zfilled[:, 2:] = 0
    np.testing.assert_array_equal(y[128:256], zfilled.ravel())
    assert (y[256:].view(np.uint32) == 0xFFFFFFFF).all()  # the second group was still pending: poison


def test_cp_async_double_buffered_pipeline(any_schedule):
    blocks, chunks = 3, 5
    x = np.random.default_rng(14).standard_normal((blocks, chunks, 256)).astype(np.float32)
    y = np.zeros((blocks, 256), np.float32)
    module("pipeline.cu").get_function("cp_async_pipeline_sum")((blocks,), (64,), (x, y, np.int32(chunks)))
    expected = np.zeros((blocks, 256), np.float32)
    for c in range(chunks):  # the kernel's order of sums
        expected += np.roll(x[:, c], -64, axis=1)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("mode,message", [
    (1, "size_and_align must be 4, 8 or 16"),
    (2, "must be aligned to size_and_align"),
    (3, "the destination is not in shared memory"),
    (4, "not inside global memory"),
    (5, "zfill is larger than size_and_align"),
    (6, "not inside global memory"),
])
def test_cp_async_misuse_is_reported(mode, message):
    from gpuconv.cuda.emulator import EmulatorError

    n = 256
    x = np.ones(n, np.float32)
    with pytest.raises(EmulatorError, match=rf"kernel 'cp_async_misuse'.*__pipeline_memcpy_async\(.*\) on line \d+: .*"
                                            rf"{message}"):
        module("pipeline.cu").get_function("cp_async_misuse")((1,), (16,), (x, np.zeros(n, np.float32),
                                                                             np.int32(mode), np.int32(n)))


# ---- the compile cache heals ------------------------------------------------------------------------------
HEAL_SOURCE = ('extern "C" __global__ void add_one(float* x, int n) {\n'
               '    int i = blockIdx.x * blockDim.x + threadIdx.x;\n'
               '    if (i < n) x[i] += 1.0f;\n}\n')


def _seed_files():
    """The runtime object and precompiled header for the current flags, from the cache in use now."""
    from gpuconv.cuda.emulator import _compile

    rt = _compile.runtime_object()
    pch = None if _compile.sanitize_mode() else _compile.precompiled_header().parent
    return rt, pch


def _seed(cache_emulator_dir, files=None):
    """Copies the runtime object and precompiled header (content-keyed, as any shared cache holds them) into a
    fresh cache folder, so that a test compiles only its own small kernel there."""
    import shutil

    rt, pch = files or _seed_files()
    d = Path(cache_emulator_dir)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rt, d / rt.name)
    if pch is not None:
        shutil.copytree(pch, d / pch.name, dirs_exist_ok=True)
    return d


def _load_in_fresh_process(cache, token, extra_env=None):
    """Compiles (or loads from the cache) a small kernel in a new process, runs it; returns (path, stderr)."""
    proc = run_script(f"""
        import numpy as np
        from gpuconv.cuda.emulator import load_module
        m = load_module({HEAL_SOURCE!r} + "// {token}\\n", filename="heal.cu")
        x = np.zeros(40, np.float32)
        m.get_function("add_one")((1,), (64,), (x, np.int32(40)))
        assert (x == 1).all(), x
        print(m.path)
    """, {"GPUCONV_CACHE_DIR": str(cache), **(extra_env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_truncated_cached_library_is_rebuilt(tmp_path):
    from gpuconv.cuda.emulator._compile import intact

    _seed(tmp_path / "emulator")
    path, _ = _load_in_fresh_process(tmp_path, "truncated")
    assert intact(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    assert not intact(path)
    again, err = _load_in_fresh_process(tmp_path, "truncated")
    assert again == path and intact(path), err


def test_foreign_library_at_a_cache_path_is_rebuilt(tmp_path):
    from gpuconv.cuda.emulator._compile import compiler, intact

    _seed(tmp_path / "emulator")
    path, _ = _load_in_fresh_process(tmp_path, "foreign")
    other, _ = _load_in_fresh_process(tmp_path, "another kernel")
    for foreign in ("emulator library of another kernel", "plain shared library"):
        if foreign.startswith("plain"):
            src = tmp_path / "plain.cpp"
            src.write_text('extern "C" int gpuconv_emu_num_entries = 7;\n')
            subprocess.run([compiler()[0], "-shared", "-fPIC", str(src), "-o", str(path)], check=True)
        else:
            path.write_bytes(other.read_bytes())
        assert not intact(path), foreign
        again, err = _load_in_fresh_process(tmp_path, "foreign")
        assert again == path and intact(path), (foreign, err)


def _fallback_loads_and_runs(monkeypatch, cache, expected):
    """With GPUCONV_CACHE_DIR=cache unusable: a warning naming it, a private folder, kernels that run."""
    from gpuconv.cuda.emulator import _compile, load_module

    seed = _seed_files()
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(cache))
    monkeypatch.setattr(_compile, "_usable_dirs", {})
    with pytest.warns(RuntimeWarning, match=expected):
        d = _compile.cache_dir()
    assert not str(d).startswith(str(cache)) and os.access(d, os.W_OK)
    assert _compile.cache_dir() == d  # warned once, kept for the process
    _seed(d, seed)
    m = load_module(HEAL_SOURCE + f"// fallback {cache.name}\n", filename="heal.cu")
    assert Path(m.path).parent == d
    x = np.zeros(8, np.float32)
    m.get_function("add_one")((1,), (32,), (x, np.int32(8)))
    assert (x == 1).all()


def test_cache_dir_that_is_a_file_falls_back_with_a_warning(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("not a folder")
    _fallback_loads_and_runs(monkeypatch, not_a_dir,
                             rf"GPUCONV_CACHE_DIR='{not_a_dir}'.*(NotADirectoryError|FileExistsError).*private "
                             r"temporary folder")


def test_read_only_cache_dir_falls_back_with_a_warning(tmp_path, monkeypatch):
    from gpuconv.cuda.emulator import _compile

    cache = tmp_path / "ro"
    (cache / "emulator").mkdir(parents=True)
    (cache / "emulator").chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the probe see what a user would
        real = _compile._probe_writable

        def probe(d):
            if Path(d) == cache / "emulator":
                raise PermissionError(13, "Permission denied", str(d))
            real(d)

        monkeypatch.setattr(_compile, "_probe_writable", probe)
    try:
        _fallback_loads_and_runs(monkeypatch, cache, r"GPUCONV_CACHE_DIR=.*ro'.*PermissionError.*private temporary")
    finally:
        (cache / "emulator").chmod(0o755)


def test_concurrent_processes_share_one_cache_entry(tmp_path):
    code = f"""
        import numpy as np
        from gpuconv.cuda.emulator import load_module
        m = load_module({HEAL_SOURCE!r} + "// concurrent\\n", filename="heal.cu")
        x = np.zeros(40, np.float32)
        m.get_function("add_one")((1,), (64,), (x, np.int32(40)))
        assert (x == 1).all()
    """
    _seed(tmp_path / "emulator")
    env = dict(os.environ, GPUCONV_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    leftovers = [f.name for f in (tmp_path / "emulator").iterdir() if f.name.endswith((".tmp", ".cpp"))]
    assert not leftovers


# ---- element types: structs, __hfma -----------------------------------------------------------------------
PAIR = np.dtype([("a", "<f4"), ("b", "<i4")])


def test_struct_arguments_take_their_own_dtype(any_schedule):
    k = module("types.cu").get_function("struct_scale")
    assert k.param_types == ("Pair*", "Pair*", "Pair", "int")
    n = 50
    x = np.zeros(n, PAIR)
    x["a"] = np.arange(n)
    x["b"] = -np.arange(n)
    out = np.zeros(n, PAIR)
    s = np.array((0.5, 7), PAIR)[()]
    k((1,), (64,), (x, out, s, np.int32(n)))
    np.testing.assert_array_equal(out["a"], np.arange(n, dtype=np.float32) * np.float32(0.5))
    np.testing.assert_array_equal(out["b"], 7 - np.arange(n))
    with pytest.raises(TypeError, match=r"argument 0 is Pair\*, so it takes an array of Pair \(a numpy void or "
                                        r"structured dtype of 8 bytes\); got a numpy array of float64"):
        k((1,), (64,), (np.zeros(n), out, s, np.int32(n)))
    with pytest.raises(TypeError, match=r"argument 2 is Pair, so it takes a numpy scalar of Pair"):
        k((1,), (64,), (x, out, np.int64(3), np.int32(n)))


def test_hfma_rounds_once(any_schedule):
    """__hfma(a, b, c) = a * b + c rounded once (fmaf then a rounding to half/bfloat16 would round twice)."""
    bf = _ml_dtypes().bfloat16
    rng = np.random.default_rng(15)
    n = 200
    # Found by search: float rounds each of these to a tie of the narrow type, on the wrong side.
    hx = float.fromhex
    hard_h = [(hx("0x1.5p+0"), hx("0x1.b4p-1"), hx("0x1p-24")), (hx("0x1.4p+0"), hx("0x1.fdp-1"), hx("0x1p-24")),
              (hx("0x1.e04p+0"), hx("0x1.e2p-1"), hx("0x1.e08p-15"))]
    hard_b = [(hx("0x1.8p+0"), hx("0x1.fcp-1"), hx("0x1.0ap-27")), (hx("0x1.8p+0"), hx("0x1.bcp-1"), hx("0x1.7cp-26")),
              (hx("0x1.4p+0"), hx("0x1.94p-1"), hx("0x1.c2p-30"))]
    ha, hb, hc = (np.concatenate([np.array(v), rng.standard_normal(n - 3)]).astype(np.float16)
                  for v in zip(*hard_h))
    ba, bb, bc = (np.concatenate([np.array(v), rng.standard_normal(n - 3)]).astype(np.float32).astype(bf)
                  for v in zip(*hard_b))
    hout, bout = np.zeros(n, np.float16), np.zeros(n, bf)
    module("types.cu").get_function("fma_half_bf16")((1,), (256,), (ha, hb, hc, hout, ba, bb, bc, bout,
                                                                       np.int32(n)))
    f64 = np.float64
    exact_h = ha.astype(f64) * hb.astype(f64) + hc.astype(f64)  # exact in float64 for these values
    np.testing.assert_array_equal(hout, exact_h.astype(np.float16))  # numpy: double -> half rounds once
    exact_b = ba.astype(f64) * bb.astype(f64) + bc.astype(f64)
    once = np.array([1.4921875, 1.3046875, 0.98828125])  # the nearest bfloat16 values of the exact results
    np.testing.assert_array_equal(bout[:3].astype(f64), once)
    np.testing.assert_array_equal(bout[3:].astype(f64), exact_b[3:].astype(np.float32).astype(bf).astype(f64))
