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
