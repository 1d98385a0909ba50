"""The emulator's warpgroup MMA (kernels/gpuconv_wgmma.cuh under the emulator's gpuconv_wgmma.h) against
layouts written out here on their own: the canonical shared-memory layouts as CUTLASS writes them in CuTe's
notation (cute/atom/mma_traits_sm90_gmma.hpp, make_gmma_desc), the 16-byte-chunk swizzles, and the PTX ISA's
fragment of the accumulators D. Integer-valued operands make every result exact, so they are compared bit for
bit. Then the misuses the ISA leaves undefined, each of which must fail the launch.

Run under AddressSanitizer with tools/asan_emulator.sh tests/test_emulator_wgmma.py.
"""
import itertools
from pathlib import Path

import numpy as np
import pytest

from gpuconv.cuda.emulator import EmulatorError
from gpuconv.cuda.modules import emulator_unavailable_reason, get_module

REASON = emulator_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"CPU emulator unavailable: {REASON}")

SOURCE = Path(__file__).resolve().parent / "emulator_kernels" / "wgmma.cu"
KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"
KINDS = {"f16": 0, "bf16": 1, "tf32": 2}
SWIZZLES = {"interleave": 0, "128B": 1, "64B": 2, "32B": 3}
SWIZZLE_UNITS = {"interleave": 1, "32B": 2, "64B": 4, "128B": 8}  # W: 16-byte units a swizzle row
LAYOUT = np.dtype([(f, "<i4") for f in ("off", "per", "inner", "outer", "lbo", "sbo", "swz")])


def kernel():
    k = get_module("emulator", str(SOURCE), options=(f"-I{KERNELS_DIR}",)).get_function("wgmma_gemm")
    k.max_dynamic_shared_size_bytes = 227 * 1024  # an sm_90 block's opt-in limit, as a GPU caller would set it
    return k


@pytest.fixture(params=("forward", "reverse", "shuffle"))
def any_schedule(request):
    from gpuconv.cuda.emulator import schedule as use

    with use(request.param):
        yield request.param


# ---- CuTe's notation: a mode (shape, stride) maps an index colexicographically -------------------------------
def cute(shape, stride, i):
    if isinstance(shape, int):
        return i * stride
    offset = 0
    for s, d in zip(shape, stride):
        size = int(np.prod(s)) if isinstance(s, tuple) else s
        offset += cute(s, d, i % size)
        i //= size
    return offset


def canonical(major, swizzle, t, sbo, lbo):
    """CUTLASS's canonical GMMA layouts, in elements (T elements a 16-byte unit; SBO, LBO in elements):
    (MN index r, K index k) -> offset. As make_gmma_desc's comments write them, m and k left open (64)."""
    if major == "K":
        w = SWIZZLE_UNITS[swizzle]
        rows = ((8, 64), (w * t if swizzle != "interleave" else t, sbo))
        cols = ((t, 2), (1, lbo if swizzle == "interleave" else t))
    elif swizzle == "interleave":  # ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
        rows = ((t, 1, 64), (1, t, sbo))
        cols = ((8, 64), (t, lbo))
    else:  # ((T,W,m),(8,k)):((1,T,LBO),(WT,SBO))
        w = SWIZZLE_UNITS[swizzle]
        rows = ((t, w, 64), (1, t, lbo))
        cols = ((8, 64), (w * t, sbo))
    return lambda r, k: cute(*rows, r) + cute(*cols, k)


def swizzled(byte, swizzle):
    """Swizzle<B,4,3> on a byte address: bits 4 .. 4 + B ^= bits 7 .. 7 + B."""
    b = {"interleave": 0, "32B": 1, "64B": 2, "128B": 3}[swizzle]
    return byte ^ (((byte >> 7) & ((1 << b) - 1)) << 4)


def plan(major, swizzle, rows, steps, es, pad):
    """A layout of a rows x (steps * 32 bytes of k) operand in 16-byte units (the LAYOUT fields, in bytes):
    core matrices or swizzle atoms one after another, `pad` atoms of gap after each row of them (SBO / LBO read,
    not assumed)."""
    w = SWIZZLE_UNITS[swizzle]
    atom = 128 * w  # 8 rows of W units
    if major == "K":
        if swizzle == "interleave":  # 8 x 16-byte core matrices down the rows, then the next 16 bytes of k
            sbo, lbo = 128, (rows // 8 + pad) * 128
            return dict(per=1, inner=0, outer=2 * lbo, lbo=lbo, sbo=sbo), sbo, lbo
        sbo = atom + pad * atom  # the next 8 rows
        return dict(per=w // 2, inner=32, outer=(rows // 8) * sbo, lbo=16, sbo=sbo), sbo, 16
    t = 16 // es
    if swizzle == "interleave":  # 8 k x 16 bytes of MN core matrices along MN, then the next 8 k
        sbo, lbo = 128, (rows // t + pad) * 128
        return dict(per=1, inner=0, outer=2 * lbo, lbo=lbo, sbo=sbo), sbo, lbo
    blocks = rows // (t * w)  # atoms along MN
    lbo, sbo = atom, (blocks + pad) * atom
    return dict(per=1, inner=0, outer=2 * sbo, lbo=lbo, sbo=sbo), sbo, lbo


def place(image, used, values, off, layout, major, swizzle, steps, es, kk):
    """Writes values (rows x steps * kk, as raw little-endian element codes) into the image."""
    fields, sbo, lbo = layout
    offset = canonical(major, swizzle, 16 // es, sbo // es, lbo // es)
    rows = values.shape[0]
    for s in range(steps):
        start = off + (s % fields["per"]) * fields["inner"] + (s // fields["per"]) * fields["outer"]
        for r, k in itertools.product(range(rows), range(kk)):
            byte = swizzled(start + es * offset(r, k), swizzle)
            assert not used[byte:byte + es].any(), "the test's layout puts two elements on one byte"
            used[byte:byte + es] = True
            image[byte:byte + es] = np.frombuffer(values[r, s * kk + k].tobytes(), np.uint8)


def codes(x, kind):
    """Element codes of integer-valued float32 x in the operand type."""
    if kind == "f16":
        return x.astype(np.float16)
    if kind == "bf16":
        return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # exact for these integers
    return x.astype(np.float32)


def d_cell(t, i):
    """The PTX ISA's accumulator fragment of wgmma .m64nNk*: thread t of the warpgroup, register i -> (row, col)."""
    warp, lane = divmod(t, 32)
    g, q = divmod(lane, 4)
    return 16 * warp + g + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * q + i % 2


def run(kind="f16", n=64, a_major="K", b_major="K", swz_a="128B", swz_b="128B", steps=2, accumulate_first=1,
        pipelined=0, mode=0, pad=0, threads=128, seed=0, a_values=None):
    rng = np.random.default_rng(seed)
    es = 4 if kind == "tf32" else 2
    kk = 32 // es
    a = rng.integers(-3, 4, (64, steps * kk)).astype(np.float32) if a_values is None else a_values
    b = rng.integers(-3, 4, (steps * kk, n)).astype(np.float32)
    init = rng.integers(-8, 9, (64, n)).astype(np.float32)
    la, lb = plan(a_major, swz_a, 64, steps, es, pad), plan(b_major, swz_b, n, steps, es, pad)
    a_bytes = 64 * steps * 32 * 2 * (pad + 1) + 4096
    b_off = (a_bytes + 1023) // 1024 * 1024
    size = b_off + n * steps * 32 * 2 * (pad + 1) + 4096
    image, used = np.zeros(size, np.uint8), np.zeros(size, bool)
    place(image, used, codes(a, kind), 0, la, a_major, swz_a, steps, es, kk)
    place(image, used, codes(b.T.copy(), kind), b_off, lb, b_major, swz_b, steps, es, kk)
    frag = np.zeros((threads, n // 2), np.float32)
    for t, i in itertools.product(range(threads), range(n // 2)):
        frag[t, i] = init[d_cell(t % 128, i)]
    out = np.full((threads, n // 2), np.nan, np.float32)
    lay = [np.array([(0, la[0]["per"], la[0]["inner"], la[0]["outer"], la[0]["lbo"], la[0]["sbo"],
                      SWIZZLES[swz_a])], LAYOUT)[0],
           np.array([(b_off, lb[0]["per"], lb[0]["inner"], lb[0]["outer"], lb[0]["lbo"], lb[0]["sbo"],
                      SWIZZLES[swz_b])], LAYOUT)[0]]
    i32 = np.int32
    kernel()((1,), (threads,), (image.view("V16").copy(), i32(size // 16), out, frag,
                                i32(KINDS[kind]), i32(n), i32(a_major == "MN"), i32(b_major == "MN"), *lay,
                                i32(steps), i32(accumulate_first), i32(pipelined), i32(mode)),
             shared_mem=size + 1024)
    expected = a.astype(np.float64) @ b.astype(np.float64) + (init if accumulate_first else 0)
    got = np.empty((64, n), np.float32)
    for t, i in itertools.product(range(128), range(n // 2)):
        got[d_cell(t, i)] = out[t, i]
    return got, expected.astype(np.float32), out


CASES = [(kind, n, am, bm, swz) for kind in ("f16", "bf16") for n in (64, 128)
         for am, bm in itertools.product(("K", "MN"), repeat=2) for swz in SWIZZLES] + \
        [("tf32", n, "K", "K", swz) for n in (64, 128) for swz in SWIZZLES]


@pytest.mark.parametrize("kind,n,a_major,b_major,swizzle", CASES)
def test_the_product_lands_in_the_isa_fragment(kind, n, a_major, b_major, swizzle):
    got, expected, _ = run(kind, n, a_major, b_major, swizzle, swizzle, steps=2 if n == 128 else 4,
                           seed=hash((kind, n, a_major, b_major, swizzle)) % 1000)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("pipelined", (0, 1))
@pytest.mark.parametrize("accumulate_first", (0, 1))
def test_groups_chain_on_the_same_accumulators(any_schedule, pipelined, accumulate_first):
    # pipelined: each step's mma_async is committed and waited for with wait_group<1>, so the next one is issued
    # on accumulators still in flight; the chain must add up in issue order all the same.
    got, expected, _ = run("f16", 64, "K", "MN", "128B", "64B", steps=5, accumulate_first=accumulate_first,
                           pipelined=pipelined, seed=3)
    np.testing.assert_array_equal(got, expected)


def test_mixed_swizzles_padded_atoms_and_two_warpgroups(any_schedule):
    # SBO / LBO with gaps are read from the descriptors, not assumed; a second warpgroup computes the same D.
    got, expected, out = run("bf16", 128, "MN", "K", "32B", "interleave", steps=3, pad=1, threads=256, seed=5)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(out[128:], out[:128])


def test_accumulators_read_in_flight_hold_poison():
    _, _, out = run(mode=1)
    assert np.isnan(out).all() and (out.view(np.uint32) == 0x7FC0BAD0).all()


MISUSES = {
    2: "still in flight when the block ended",
    3: "no wgmma.fence",
    4: r"reads \(A\) changed before the wgmma.wait_group",
    5: "warps 0-3 of a warpgroup executed different wgmma instructions",
    6: "lane 3 passes other descriptors",
    7: "not in the dynamic shared memory",
    9: "lane 5 wrote accumulator register 1 while",
    10: "not on the 1024-byte repeat of its 128-byte swizzle",
    11: "all 32 lanes of the warp must execute it",
    13: "has a base offset",
    14: "still in flight when the block ended",
    15: "warp 1: 2, 1, 1, other descriptors",
}


@pytest.mark.parametrize("mode", sorted(MISUSES))
def test_misuse_fails_the_launch(mode):
    with pytest.raises(EmulatorError, match=MISUSES[mode]):
        run(mode=mode)


def test_a_block_of_partial_warpgroups_fails():
    with pytest.raises(EmulatorError, match="not whole warpgroups"):
        run(threads=96)


def test_tf32_operands_must_be_rounded():
    a = np.random.default_rng(1).integers(-3, 4, (64, 16)).astype(np.float32)
    a[5, 3] = np.float32(1 + 2 ** -20)  # low mantissa bits set: never rounded to TF32
    with pytest.raises(EmulatorError, match=r"element \(5, 3\) of A .* not a TF32 value"):
        run("tf32", a_values=a)


# ---- the register-A form (tf32): A's fragment as CuTe's ALayout_64x8 writes it ---------------------------------
A_REGISTERS = (((4, 8, 4), (64, 1, 16)), ((2, 2), (8, 256)))  # (thread, value) -> m + 64 k of a 64 x 8 A


def a_cell(t, v):
    """CuTe's register layout of a tf32 A operand: thread t of the warpgroup, register v -> (row, col)."""
    (ts, td), (vs, vd) = A_REGISTERS
    offset = cute(ts, td, t) + cute(vs, vd, v)
    return offset % 64, offset // 64


def run_rs(n=128, swz_b="128B", steps=3, accumulate_first=1, pipelined=0, mode=0, seed=0, a_values=None):
    rng = np.random.default_rng(seed)
    a = rng.integers(-3, 4, (64, steps * 8)).astype(np.float32) if a_values is None else a_values
    b = rng.integers(-3, 4, (steps * 8, n)).astype(np.float32)
    init = rng.integers(-8, 9, (64, n)).astype(np.float32)
    lb = plan("K", swz_b, n, steps, 4, 0)
    size = n * steps * 32 * 2 + 4096
    image, used = np.zeros(size, np.uint8), np.zeros(size, bool)
    place(image, used, b.T.copy(), 0, lb, "K", swz_b, steps, 4, 8)
    regs = np.zeros((steps, 128, 4), np.float32)
    for s, t, v in itertools.product(range(steps), range(128), range(4)):
        r, k = a_cell(t, v)
        regs[s, t, v] = a[r, 8 * s + k]
    frag = np.zeros((128, n // 2), np.float32)
    for t, i in itertools.product(range(128), range(n // 2)):
        frag[t, i] = init[d_cell(t, i)]
    out = np.full((128, n // 2), np.nan, np.float32)
    lay = np.array([(0, lb[0]["per"], lb[0]["inner"], lb[0]["outer"], lb[0]["lbo"], lb[0]["sbo"],
                     SWIZZLES[swz_b])], LAYOUT)[0]
    k = get_module("emulator", str(SOURCE), options=(f"-I{KERNELS_DIR}",)).get_function("wgmma_gemm_rs")
    k.max_dynamic_shared_size_bytes = 227 * 1024
    i32 = np.int32
    k((1,), (128,), (image.view("V16").copy(), i32(size // 16), out, frag, regs.view(np.uint32).ravel(), i32(n),
                     lay, i32(steps), i32(accumulate_first), i32(pipelined), i32(mode)), shared_mem=size + 1024)
    expected = a.astype(np.float64) @ b.astype(np.float64) + (init if accumulate_first else 0)
    got = np.empty((64, n), np.float32)
    for t, i in itertools.product(range(128), range(n // 2)):
        got[d_cell(t, i)] = out[t, i]
    return got, expected.astype(np.float32)


def test_the_register_layout_is_mma_syncs_a_fragment():
    # CuTe's ALayout_64x8 is, warp by warp, mma.sync m16n8k8's A: lane (g, q), register v -> row g + 8 (v % 2),
    # column q + 4 (v / 2) of the warp's 16 rows
    for t, v in itertools.product(range(128), range(4)):
        warp, lane = divmod(t, 32)
        assert a_cell(t, v) == (16 * warp + lane // 4 + 8 * (v % 2), lane % 4 + 4 * (v // 2))


@pytest.mark.parametrize("n,swizzle,pipelined,accumulate_first",
                         [(n, swz, p, af) for n in (64, 128) for swz in SWIZZLES for p, af in ((0, 1), (1, 0))])
def test_register_a_lands_in_the_isa_fragment(n, swizzle, pipelined, accumulate_first):
    got, expected = run_rs(n, swizzle, steps=3, accumulate_first=accumulate_first, pipelined=pipelined,
                           seed=hash((n, swizzle, pipelined)) % 1000)
    np.testing.assert_array_equal(got, expected)


def test_register_a_changed_in_flight_fails(any_schedule):
    with pytest.raises(EmulatorError, match=r"the registers that the .* reads \(A\) changed before"):
        run_rs(mode=16)


def test_register_a_must_be_rounded():
    a = np.random.default_rng(2).integers(-3, 4, (64, 24)).astype(np.float32)
    a[21, 8 + 6] = np.float32(1 + 2 ** -20)  # step 1, row 21 = warp 1's row 5 (g 5, r8 0), column 6 (q 2, v 2 or 3)
    with pytest.raises(EmulatorError, match="register 2 of A in lane 22 .* not a TF32 value"):
        run_rs(a_values=a)


@pytest.mark.parametrize("copies", (0, 1))
def test_rate_probe_runs_the_kernels_main_loop(copies):
    # kernels/probe_wgmma_rate.cu (tools/gpu_check.py wgmma_rate) on the wgmma kernels' main loop: every element of
    # src 1/8, so each accumulator sums steps x 32 / 64 and a thread's 128 of them 64 x steps, whatever the layout;
    # on stages filled once, or copied anew every step.
    from gpuconv.backends import cuda_tc

    k = get_module("emulator", "probe_wgmma_rate.cu").get_function("gpuconv_wgmma_rate<__half>")
    smem = cuda_tc.wgmma_smem_bytes()
    k.max_dynamic_shared_size_bytes = smem
    src = np.full(cuda_tc.WGMMA_STAGES * cuda_tc.WGMMA_STAGE_BYTES // 2, 0.125, np.float16)
    out = np.full(2 * 128, np.nan, np.float32)
    k((2,), (128,), (src, out, np.int32(5), np.int32(copies)), shared_mem=smem)
    np.testing.assert_array_equal(out, np.float32(64 * 5))
