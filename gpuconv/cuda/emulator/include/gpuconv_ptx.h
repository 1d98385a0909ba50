// gpuconv emulator: the inline-PTX tensor-core instructions of kernels/gpuconv_ptx.cuh, for g++.
//
// The same six functions as gpuconv_ptx.cuh: ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16,
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
// and cp.async.ca.shared.global (per thread: the pipeline primitives' copy, at the end of this file),
// with the PTX ISA's fragment layouts (the cell functions below; tests/test_emulator_ptx.py checks them against
// the ISA's tables). Each is warp-collective, as mma.h's wmma calls are: every lane publishes its Call, the lowest
// lane does the warp's work between two warp barriers. What the ISA leaves undefined fails the launch: a lane of
// the warp missing (exited, or at another instruction), an ldmatrix row address not 16-byte aligned or whose 16
// bytes are not in shared memory, a TF32 operand with any of its low 13 mantissa bits set (never rounded with
// cvt.rna.tf32.f32: the hardware would silently ignore them). mma sums in float, in a fixed order (c, then
// k = 0, 1, ...), the exact products of the operands, as mma.h's mma_sync does.
#pragma once

namespace gpuconv_emu {
namespace ptx {

using ::gpuconv_emu::Line;

// The ISA's fragment layouts: which (row, col) of the warp's matrix element `half` (0: the low 16 bits, 1: the
// high; 0 for a 32-bit element) of register `reg` of lane `lane` holds. g = groupID, q = threadID_in_group.
struct Cell {
    int row, col;
};
inline int group_id(int lane) { return lane >> 2; }
inline int thread_in_group(int lane) { return lane & 3; }
// ldmatrix: register j holds matrix j, each 8 x 8 matrix this way (its transpose with .trans).
inline Cell ldmatrix_cell(int lane, int half) { return {group_id(lane), 2 * thread_in_group(lane) + half}; }
// m16n8k16 A (16 x 16) and B (16 x 8), and the C / D accumulators (16 x 8) of both shapes, are 8 x 8 blocks in
// ldmatrix's layout (B's transposed): what makes ldmatrix load them.
inline Cell a16_cell(int lane, int reg, int half) {
    Cell c = ldmatrix_cell(lane, half);
    return {c.row + 8 * (reg & 1), c.col + 8 * (reg >> 1)};
}
inline Cell b16_cell(int lane, int reg, int half) {
    Cell c = ldmatrix_cell(lane, half);
    return {c.col + 8 * reg, c.row};
}
inline Cell cd_cell(int lane, int reg) {
    Cell c = ldmatrix_cell(lane, reg & 1);
    return {c.row + 8 * (reg >> 1), c.col};
}
// m16n8k8 tf32 A (16 x 8) and B (8 x 8): one element a register.
inline Cell a_tf32_cell(int lane, int reg) {
    return {group_id(lane) + 8 * (reg & 1), thread_in_group(lane) + 4 * (reg >> 1)};
}
inline Cell b_tf32_cell(int lane, int reg) { return {thread_in_group(lane) + 4 * reg, group_id(lane)}; }

enum Op { LDMATRIX = 0, LDMATRIX_TRANS = 1, MMA_F16 = 2, MMA_BF16 = 3, MMA_TF32 = 4 };
const char* const kOpNames[] = {
    "ldmatrix.sync.aligned.m8n8.x4.shared.b16", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
    "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"};

// What one lane passed; lanes publish a pointer to theirs (on their own stack) in their warp slot.
struct Call {
    int op;
    const void* row;  // ldmatrix: this lane's row address
    unsigned* r;      // ldmatrix: the destination registers
    const unsigned* a;
    const unsigned* b;
    float* d;  // mma: the accumulators, read (c) and written (d)
};

// The warp-collective frame (gpuconv_emu.h), and every lane must be at the same instruction.
template <class Body>
inline void collective(Call& me, unsigned line, Body&& body) {
    const char* name = kOpNames[me.op];
    warp_collective(me, line, WARP_PTX, name, " (.sync.aligned)", [&](Call* const* calls) {
        for (unsigned l = 0; l < 32; ++l)
            if (calls[l]->op != me.op)
                failf(line, "lanes of the warp executed different instructions: lane %u %s, lane %u %s", lane(), name,
                      l, kOpNames[calls[l]->op]);
        body(calls);
    });
}

inline unsigned short half_of(unsigned reg, int half) { return static_cast<unsigned short>(reg >> (16 * half)); }

inline void ldmatrix(Call* const* calls, bool trans, unsigned line) {
    const char* name = kOpNames[calls[0]->op];
    for (int l = 0; l < 32; ++l) {
        const void* p = calls[l]->row;
        if (reinterpret_cast<uintptr_t>(p) % 16 != 0 || !in_shared(p, 16))
            failf(line, "%s: lane %d's row address %p is %s (each row is 16 bytes of shared memory, 16-byte aligned)",
                  name, l, p, reinterpret_cast<uintptr_t>(p) % 16 ? "not 16-byte aligned" : "not in shared memory");
    }
    unsigned out[32][4];  // every row read before any register is written
    for (int l = 0; l < 32; ++l)
        for (int j = 0; j < 4; ++j) {
            unsigned v = 0;
            for (int h = 0; h < 2; ++h) {
                Cell c = ldmatrix_cell(l, h);
                if (trans) c = {c.col, c.row};
                unsigned short e;
                memcpy(&e, static_cast<const unsigned char*>(calls[8 * j + c.row]->row) + 2 * c.col, 2);
                v |= unsigned(e) << (16 * h);
            }
            out[l][j] = v;
        }
    for (int l = 0; l < 32; ++l) memcpy(calls[l]->r, out[l], sizeof out[l]);
}

inline float f16_value(unsigned short bits) { return float(__builtin_bit_cast(_Float16, bits)); }
inline float bf16_value(unsigned short bits) { return __builtin_bit_cast(float, unsigned(bits) << 16); }

inline float tf32_value(unsigned bits, const char* which, int reg, int l, unsigned line) {
    if (!is_tf32_value(bits))
        failf(line, "%s: %s[%d] of lane %d is %.9g (bits 0x%08x), not a TF32 value (low 13 mantissa bits set; the "
                    "hardware ignores them): round it with cvt.rna.tf32.f32 (wmma::__float_to_tf32) first",
              kOpNames[MMA_TF32], which, reg, l, double(__builtin_bit_cast(float, bits)), bits);
    return __builtin_bit_cast(float, bits);
}

// One lane's operand registers `regs` (a or b) into the matrix M at the cells of their layout: cell16(lane,
// reg, half) for two 16-bit elements a register, cell32(lane, reg) for one TF32 element.
template <int COLS, class Cell16, class Cell32>
inline void gather(int op, int l, const unsigned* regs, int nregs, Cell16 cell16, Cell32 cell32, float (*M)[COLS],
                   const char* which, unsigned line) {
    for (int reg = 0; reg < nregs; ++reg) {
        if (op == MMA_TF32) {
            Cell c = cell32(l, reg);
            M[c.row][c.col] = tf32_value(regs[reg], which, reg, l, line);
            continue;
        }
        for (int h = 0; h < 2; ++h) {
            Cell c = cell16(l, reg, h);
            unsigned short e = half_of(regs[reg], h);
            M[c.row][c.col] = op == MMA_F16 ? f16_value(e) : bf16_value(e);
        }
    }
}

// D (16 x 8) = A (16 x K) B (K x 8) + C, the fragments gathered from and scattered to the lanes by the layouts.
template <int K>
inline void mma(Call* const* calls, unsigned line) {
    float A[16][K], B[K][8], C[16][8];
    const int op = calls[0]->op;
    for (int l = 0; l < 32; ++l) {
        const Call& o = *calls[l];
        gather(op, l, o.a, 4, a16_cell, a_tf32_cell, A, "a", line);
        gather(op, l, o.b, 2, b16_cell, b_tf32_cell, B, "b", line);
        for (int reg = 0; reg < 4; ++reg) {
            Cell c = cd_cell(l, reg);
            C[c.row][c.col] = o.d[reg];  // all of c before any d is written
        }
    }
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) {
            float acc = C[r][n];
            for (int k = 0; k < K; ++k) acc += A[r][k] * B[k][n];  // exact products: <= 11-bit operands
            C[r][n] = acc;
        }
    for (int l = 0; l < 32; ++l)
        for (int reg = 0; reg < 4; ++reg) {
            Cell c = cd_cell(l, reg);
            calls[l]->d[reg] = C[c.row][c.col];
        }
}

inline void run_ldmatrix(Op op, unsigned (&r)[4], const void* row, unsigned line) {
    Call me{op, row, r, nullptr, nullptr, nullptr};
    collective(me, line, [&](Call* const* calls) { ldmatrix(calls, op == LDMATRIX_TRANS, line); });
}

template <int K>
inline void run_mma(Op op, float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], unsigned line) {
    Call me{op, nullptr, nullptr, a, b, d};
    collective(me, line, [&](Call* const* calls) { mma<K>(calls, line); });
}

}  // namespace ptx
}  // namespace gpuconv_emu

// The names of gpuconv_ptx.cuh, with the caller's line as a defaulted last argument.
inline void gpuconv_ldmatrix_x4(unsigned (&r)[4], const void* row,
                                ::gpuconv_emu::ptx::Line line = ::gpuconv_emu::ptx::Line(__builtin_LINE())) {
    ::gpuconv_emu::ptx::run_ldmatrix(::gpuconv_emu::ptx::LDMATRIX, r, row, line.v);
}
inline void gpuconv_ldmatrix_x4_trans(unsigned (&r)[4], const void* row,
                                      ::gpuconv_emu::ptx::Line line = ::gpuconv_emu::ptx::Line(__builtin_LINE())) {
    ::gpuconv_emu::ptx::run_ldmatrix(::gpuconv_emu::ptx::LDMATRIX_TRANS, r, row, line.v);
}
inline void gpuconv_mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                     ::gpuconv_emu::ptx::Line line = ::gpuconv_emu::ptx::Line(__builtin_LINE())) {
    ::gpuconv_emu::ptx::run_mma<16>(::gpuconv_emu::ptx::MMA_F16, d, a, b, line.v);
}
inline void gpuconv_mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                      ::gpuconv_emu::ptx::Line line = ::gpuconv_emu::ptx::Line(__builtin_LINE())) {
    ::gpuconv_emu::ptx::run_mma<16>(::gpuconv_emu::ptx::MMA_BF16, d, a, b, line.v);
}
inline void gpuconv_mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                     ::gpuconv_emu::ptx::Line line = ::gpuconv_emu::ptx::Line(__builtin_LINE())) {
    ::gpuconv_emu::ptx::run_mma<8>(::gpuconv_emu::ptx::MMA_TF32, d, a, b, line.v);
}
// cp.async.ca (16 bytes): the pipeline primitives' deferred copy, with their checks (alignment, shared
// destination, a wait before the read); L1 allocation has no meaning here.
inline void gpuconv_cp_async_ca16(void* dst, const void* src,
                                  ::gpuconv_emu::ptx::Line line = ::gpuconv_emu::ptx::Line(__builtin_LINE())) {
    ::gpuconv_emu::pipeline_copy(dst, src, 16, 0, line.v, "gpuconv_cp_async_ca16");
}
