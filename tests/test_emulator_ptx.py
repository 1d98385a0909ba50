"""The emulator's inline-PTX tensor-core instructions (kernels/gpuconv_ptx.cuh under the emulator's gpuconv_ptx.h)
against the PTX ISA's fragment tables, written out here on their own, under every thread schedule.

Run under AddressSanitizer with tools/asan_emulator.sh tests/test_emulator_ptx.py.
"""
from pathlib import Path

import numpy as np
import pytest

from gpuconv.cuda.modules import emulator_unavailable_reason, get_module

REASON = emulator_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"CPU emulator unavailable: {REASON}")

SOURCE = Path(__file__).resolve().parent / "emulator_kernels" / "ptx.cu"
KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"


def kernel(name):
    # -I kernels/: gpuconv_ptx.cuh's folder joins the library's cache key (the include itself is relative).
    return get_module("emulator", str(SOURCE), options=(f"-I{KERNELS_DIR}",)).get_function(name)


@pytest.fixture(params=("forward", "reverse", "shuffle"))
def any_schedule(request):
    from gpuconv.cuda.emulator import schedule as use

    with use(request.param):
        yield request.param


# ---- the PTX ISA's tables, as the ISA writes them ---------------------------------------------------------
# "Matrix Fragments for mma.m16n8k16 with floating point type", "... for mma.m16n8k8" (.tf32) and "Warp-level
# matrix load instruction: ldmatrix": element i of lane l's fragment -> (row, col), with groupID g = l // 4 and
# threadID_in_group q = l % 4. f16 / bf16 fragments count 16-bit elements: element i is in register i // 2, in
# its low half when i is even.
def _gq(lane):
    return lane // 4, lane % 4


def a_m16n8k16(lane, i):  # a0..a7
    g, q = _gq(lane)
    row = g if i < 2 or 4 <= i < 6 else g + 8
    col = q * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def b_m16n8k16(lane, i):  # b0..b3
    g, q = _gq(lane)
    return q * 2 + (i & 1) + (8 if i >= 2 else 0), g


def a_m16n8k8_tf32(lane, i):  # a0..a3
    g, q = _gq(lane)
    return (g if i in (0, 2) else g + 8), (q if i in (0, 1) else q + 4)


def b_m16n8k8_tf32(lane, i):  # b0, b1
    g, q = _gq(lane)
    return (q if i == 0 else q + 4), g


def c_d(lane, i):  # c0..c3, d0..d3 (both shapes)
    g, q = _gq(lane)
    return (g if i < 2 else g + 8), q * 2 + (i & 1)


def ldmatrix_source(lane, j, half, trans):
    """ldmatrix .x4: (the lane whose address is the row read, the 16-bit element of that row) for element `half`
    of register r[j] of `lane`. Lanes 8 j .. 8 j + 7 address rows 0..7 of matrix j; a lane holds elements
    (g, 2 q) and (g, 2 q + 1) of it, or with .trans those of the transpose, (2 q, g) and (2 q + 1, g)."""
    g, q = _gq(lane)
    row, col = (q * 2 + half, g) if trans else (g, q * 2 + half)
    return 8 * j + row, col


# ---- fragments <-> registers ------------------------------------------------------------------------------
def bits16(x):
    return np.asarray(x).view(np.uint16).astype(np.uint32)


def pack16(m, table, nregs):
    """Per-lane registers (32 x nregs uint32) of a 16-bit matrix: element 2 r low, 2 r + 1 high."""
    b = bits16(m)
    regs = np.zeros((32, nregs), np.uint32)
    for lane in range(32):
        for i in range(2 * nregs):
            regs[lane, i // 2] |= b[table(lane, i)] << np.uint32(16 * (i & 1))
    return regs


def pack32(m, table, nregs):
    b = np.asarray(m, np.float32).view(np.uint32)
    return np.array([[b[table(lane, i)] for i in range(nregs)] for lane in range(32)], np.uint32)


def accumulators(c):
    return np.array([[c[c_d(lane, i)] for i in range(4)] for lane in range(32)], np.float32)


def unpack_d(regs):
    d = np.full((16, 8), np.nan, np.float32)
    for lane in range(32):
        for i in range(4):
            d[c_d(lane, i)] = regs[lane, i]
    return d


def tf32(x):
    """cvt.rna.tf32.f32 on float32 values."""
    u = np.asarray(x, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


# ---- ldmatrix --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trans", [0, 1])
def test_ldmatrix_matches_the_isa_table(any_schedule, trans):
    rng = np.random.default_rng(trans)
    codes = rng.permutation(2**16)[:64 * 8].astype(np.uint16)  # 64 rows of 8 distinct 16-bit codes
    rows = np.concatenate([rng.permutation(64)[:32] for _ in range(2)]).astype(np.int32)  # two warps
    out = np.zeros((64, 4), np.uint32)
    kernel("ptx_ldmatrix")((1,), (64,), (codes, rows, out, np.int32(trans)))
    tile = codes.reshape(64, 8)
    expected = np.zeros_like(out)
    for warp in range(2):
        for lane in range(32):
            for j in range(4):
                for half in range(2):
                    src, col = ldmatrix_source(lane, j, half, trans)
                    code = np.uint32(tile[rows[32 * warp + src], col])
                    expected[32 * warp + lane, j] |= code << np.uint32(16 * half)
    np.testing.assert_array_equal(out, expected)


# ---- mma -------------------------------------------------------------------------------------------------
def _operands(kind, rng):
    """A (16 x K), B (K x 8) in the operand type, their float32 values, C (16 x 8)."""
    k = 8 if kind == "tf32" else 16
    a, b = rng.standard_normal((16, k)), rng.standard_normal((k, 8))
    if kind == "f16":
        a, b = a.astype(np.float16), b.astype(np.float16)
    elif kind == "bf16":
        bf = pytest.importorskip("ml_dtypes").bfloat16
        a, b = a.astype(bf), b.astype(bf)
    else:
        a, b = tf32(a.astype(np.float32)), tf32(b.astype(np.float32))
    c = rng.standard_normal((16, 8)).astype(np.float32)
    return a, b, a.astype(np.float32), b.astype(np.float32), c


def _registers(kind, a, b):
    if kind == "tf32":
        return pack32(a, a_m16n8k8_tf32, 4), pack32(b, b_m16n8k8_tf32, 2)
    return pack16(a, a_m16n8k16, 4), pack16(b, b_m16n8k16, 2)


@pytest.mark.parametrize("kind", ["f16", "bf16", "tf32"])
def test_mma_matches_the_isa_tables(any_schedule, kind):
    rng = np.random.default_rng(len(kind))
    warps = [_operands(kind, rng) for _ in range(2)]  # two warps, each its own problem
    regs = [_registers(kind, a, b) for a, b, *_ in warps]
    ra = np.concatenate([r[0] for r in regs])
    rb = np.concatenate([r[1] for r in regs])
    rd = np.concatenate([accumulators(w[4]) for w in warps])
    kernel("ptx_mma")((1,), (64,), (ra, rb, rd, np.int32(["f16", "bf16", "tf32"].index(kind))))
    for w, (_, _, fa, fb, c) in enumerate(warps):
        d = unpack_d(rd[32 * w:32 * (w + 1)])
        exact = fa.astype(np.float64) @ fb.astype(np.float64) + c
        bound = 2.0**-22 * (np.abs(fa).astype(np.float64) @ np.abs(fb) + np.abs(c))  # float sums of 17 terms
        assert np.all(np.abs(d - exact) <= bound), f"warp {w}: D differs from A @ B + C"
        ordered = c.copy()
        for k in range(fa.shape[1]):  # the emulator's order: c, then k = 0, 1, ...; exact float32 products
            ordered = ordered + fa[:, k, None] * fb[None, k, :]
        np.testing.assert_array_equal(d, ordered)


def test_ldmatrix_feeds_mma(any_schedule):
    """A through ldmatrix.x4, B through ldmatrix.x4.trans, two m16n8k16 mmas: A @ B, as the kernels use them."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((16, 16)).astype(np.float16)
    b = rng.standard_normal((16, 16)).astype(np.float16)
    d = np.zeros((16, 16), np.float32)
    kernel("ptx_ldmatrix_mma")((1,), (32,), (a.view(np.uint16), b.view(np.uint16), d))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(d, exact, rtol=0, atol=2.0**-22 * (np.abs(a.astype(np.float64)) @ np.abs(b)).max())


# ---- what the ISA leaves undefined fails the launch --------------------------------------------------------
def _line_of(text):
    return 1 + next(i for i, t in enumerate(SOURCE.read_text().splitlines()) if text in t)


LDMATRIX = r"ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16"
TF32_MMA = r"mma\.sync\.aligned\.m16n8k8\.row\.col\.f32\.tf32\.tf32\.f32"


@pytest.mark.parametrize("mode,message", [
    (1, LDMATRIX + r" is warp-collective \(\.sync\.aligned\): all 32 lanes .* only lanes 0xffffff7f did"),
    (2, r"lanes of warp 0 wait at different warp barriers: lane 0 at an ldmatrix / mma\.sync instruction on line "
        r"\d+, lane 7 at __syncwarp"),
    (3, LDMATRIX + r": lane 5's row address 0x[0-9a-f]+ is not 16-byte aligned"),
    (4, LDMATRIX + r": lane 5's row address 0x[0-9a-f]+ is not in shared memory"),
    (5, LDMATRIX + r": lane 5's row address 0x[0-9a-f]+ is not in shared memory"),
    (6, TF32_MMA + r": a\[2\] of lane 9 is 1\.00000012 \(bits 0x3f800001\), not a TF32 value"),
    (7, TF32_MMA + r" is warp-collective \(\.sync\.aligned\): all 32 lanes .* only lanes 0xffffff7f did"),
])
def test_misuse_fails_the_launch(any_schedule, mode, message):
    from gpuconv.cuda.emulator import EmulatorError

    x = np.array([0x3F800000, 0x3F800001], np.uint32)  # 1.0f, 1 + 2^-23
    call = "gpuconv_mma_m16n8k8_tf32(d, a, b)" if mode >= 6 else "gpuconv_ldmatrix_x4(r, row)"
    line = rf" on line {_line_of(call)}" if mode != 2 else ""
    with pytest.raises(EmulatorError, match=rf"kernel 'ptx_misuse'.*{message}.*{line}"):
        kernel("ptx_misuse")((1,), (32,), (x, np.zeros(128, np.uint32), np.int32(mode)), shared_mem=256)


@pytest.mark.parametrize("bit", range(13))
def test_every_low_mantissa_bit_fails_a_tf32_mma(bit):
    """Each of the 13 mantissa bits below TF32's (not only the lowest, which mode 6 above sets) marks an operand
    that cvt.rna.tf32.f32 never produced; the next bit up is a TF32 value, which runs."""
    from gpuconv.cuda.emulator import EmulatorError

    run = kernel("ptx_misuse")
    out = np.zeros(128, np.uint32)
    x = np.array([0x3F800000, 0x3F800000 | (1 << bit)], np.uint32)
    with pytest.raises(EmulatorError, match=rf"a\[2\] of lane 9 is .* \(bits 0x{x[1]:08x}\), not a TF32 value"):
        run((1,), (32,), (x, out, np.int32(6)), shared_mem=256)
    run((1,), (32,), (np.array([0x3F800000, 0x3F802000], np.uint32), out, np.int32(6)), shared_mem=256)
    want = np.full((32, 4), 8.0, np.float32)  # D = A @ B over k = 8 of ones, but row g = 2 of lane 9's a[2]:
    want[8:12, :2] += np.float32(2.0**-10)    # 1 + 2^-10 at (2, 5), in d[0], d[1] of lanes 8..11 (g = 2)
    np.testing.assert_array_equal(out.view(np.float32).reshape(32, 4), want)


# ---- cp.async.ca: the pipeline primitives' deferred copy and its checks, under its own name -----------------
def test_cp_async_ca_copies_after_the_wait(any_schedule):
    x = np.random.default_rng(21).standard_normal(4 * 32).astype(np.float32)
    out = np.zeros_like(x)
    kernel("ptx_cp_async_ca")((1,), (32,), (x, out, np.int32(0)))
    np.testing.assert_array_equal(out, np.roll(x, -4))
    kernel("ptx_cp_async_ca")((1,), (32,), (x, out, np.int32(1)))  # read before the wait: poison
    assert (out.view(np.uint32) == 0xFFFFFFFF).all()


@pytest.mark.parametrize("mode,message", [
    (2, r"gpuconv_cp_async_ca16\(dst=.*\) on line {line}: the destination and the source must be aligned"),
    (3, r"asynchronous copies never waited for \(the first from gpuconv_cp_async_ca16 on line {line}"),
])
def test_cp_async_ca_misuse_is_reported(mode, message):
    from gpuconv.cuda.emulator import EmulatorError

    x = np.ones(4 * 32 + 4, np.float32)
    line = _line_of("gpuconv_cp_async_ca16(tile + 4 * t")
    with pytest.raises(EmulatorError, match=rf"kernel 'ptx_cp_async_ca'.*" + message.format(line=line)):
        kernel("ptx_cp_async_ca")((1,), (32,), (x, np.zeros(4 * 32, np.float32), np.int32(mode)))
