// gpuconv emulator: Hopper's warpgroup MMA of kernels/gpuconv_wgmma.cuh, for g++.
//
// The same names (fence, commit_group, wait_group, mma_async with f16 / bf16 / tf32 operands, tf32 also with A
// in registers, the matrix descriptor), run by gpuconv_wgmma.cuh's rules: the descriptor format, the canonical
// shared-memory layouts with their swizzles, and the register fragments of A and D (tests/test_emulator_wgmma.py
// checks them against tables of its own). Each instruction is warp-collective here (the frame of gpuconv_emu.h), and a warp computes its own 16
// rows of D, which is all that the warpgroup's result is; the rest of the warpgroup rule is checked when the
// block ends: its 4 warps must have executed the same instructions with the same descriptors.
//
// mma_async is asynchronous, as on the GPU: it reads its operands when issued and again when the
// wait_group that covers it runs, and only then writes the accumulators (in issue order, so mma_async on the
// same accumulators chain as the ISA orders them). Until then the accumulator registers hold NaN poison.
// What the ISA leaves undefined fails the launch:
// - a lane of the warp missing, lanes passing different descriptors or accumulate flags, a block that is not
//   whole warpgroups, warps of a warpgroup executing different instructions;
// - an mma_async with no wgmma.fence since the last wait_group (or the block start) in its warp: the emulator
//   asks for a fence before every batch, as CUTLASS issues one (the ISA needs it wherever other instructions
//   touched the registers: after a wait_group that may always be so);
// - accumulator registers written, or operand shared memory or A's registers changed, while an mma_async is in
//   flight;
// - an mma_async still in flight when the block ends (no wait_group covered it);
// - a descriptor with reserved bits or a base offset, a swizzled start address not aligned to its pattern's
//   repeat, an operand byte outside the dynamic shared memory (the only shared memory that has a shared address
//   here: it starts at address kSharedBase, 128-byte aligned but not 1024, so a kernel that takes a 1024-byte
//   alignment of its dynamic shared memory for granted reads the wrong bytes);
// - a TF32 operand with any of its low 13 mantissa bits set.
// Products are exact (operands of at most 11 significant bits) and sum in float in a fixed order: c, then
// k = 0, 1, ... (the GPU's order and internal precision are its own; tests hold results to bounds).
#pragma once

#include <stdlib.h>

namespace gpuconv_emu {
namespace wgmma {

using ::gpuconv_emu::Line;

constexpr unsigned long long kSharedBase = 0x480;  // the shared address of the dynamic shared memory's byte 0
constexpr unsigned kPoison = 0x7FC0BAD0u;           // a quiet NaN: the accumulators while an mma_async is in flight
constexpr int kMaxN = 128;

enum Kind { F16 = 0, BF16 = 1, TF32 = 2 };
const char* const kKindNames[] = {"f16", "bf16", "tf32"};
enum Op { MMA = 0, FENCE = 1, COMMIT = 2, WAIT = 3 };
const char* const kOpNames[] = {"wgmma.mma_async.sync.aligned", "wgmma.fence.sync.aligned",
                                "wgmma.commit_group.sync.aligned", "wgmma.wait_group.sync.aligned"};

struct Call {  // what one lane passed (on its stack)
    int op;
    int kind, n, ta, tb, accumulate, wait_n;
    unsigned long long a, b;
    float* d;
    const unsigned* ra;  // A's fragment in registers (the register-A form; tf32 only), else nullptr
};

// Accumulators that mma_async in flight write: the lanes' registers, and this warp's 16 rows of D as they will be.
struct Chain {
    bool live;
    int n, pending;
    float* d[32];
    float vals[16][kMaxN];
};

struct Pending {  // one mma_async in flight
    int chain, kind, n, k, ta, tb, accumulate;
    unsigned long long a, b;
    unsigned group, line;
    const unsigned* ra[32];  // the register-A form: each lane's 4 registers of A, else all nullptr
    float A[16][16];     // this warp's 16 rows of A (64 x k)
    float B[16][kMaxN];  // B (k x n)
};

struct WarpState {
    bool fenced;
    unsigned commits, waits;
    unsigned long long mmas, hash;
    Pending* ops;
    int nops, capops;
    Chain* chains;
    int nchains;
};

struct BlockState {
    WarpState warps[32];
};

template <class T>
inline T* grow(T* p, int& cap) {
    cap = cap ? 2 * cap : 4;
    auto* q = static_cast<T*>(realloc(p, sizeof(T) * size_t(cap)));
    if (!q) {
        fprintf(stderr, "gpuconv emulator: out of memory\n");
        abort();
    }
    return q;
}

// At the block's end: nothing in flight, and the warps of each warpgroup agree.
inline bool finish(void* state, bool failed, char* msg, size_t len) {
    auto* bs = static_cast<BlockState*>(state);
    bool ok = true;
    const int nwarps = (block_threads() + 31) / 32;
    for (int w = 0; w < nwarps && ok && !failed; ++w)
        if (bs->warps[w].nops) {
            snprintf(msg, len, "the %s.m64n%dk%d.%s issued on line %u by warp %d was still in flight when the block "
                     "ended: a wgmma.wait_group must cover it before its accumulators are used", kOpNames[MMA],
                     bs->warps[w].ops[0].n, bs->warps[w].ops[0].k, kKindNames[bs->warps[w].ops[0].kind],
                     bs->warps[w].ops[0].line, w);
            ok = false;
        }
    for (int w = 0; w + 3 < nwarps && ok && !failed; w += 4)
        for (int v = w + 1; v < w + 4 && ok; ++v) {
            const WarpState &a = bs->warps[w], &b = bs->warps[v];
            if (a.mmas == b.mmas && a.commits == b.commits && a.waits == b.waits && a.hash == b.hash) continue;
            snprintf(msg, len, "warps %d-%d of a warpgroup executed different wgmma instructions (warp %d: %llu "
                     "mma_async, %u commit_group, %u wait_group; warp %d: %llu, %u, %u%s): every warp of the "
                     "warpgroup executes each of them, with the same descriptors", w, w + 3, w, a.mmas, a.commits,
                     a.waits, v, b.mmas, b.commits, b.waits, a.mmas == b.mmas ? ", other descriptors" : "");
            ok = false;
        }
    for (int w = 0; w < 32; ++w) {
        free(bs->warps[w].ops);
        free(bs->warps[w].chains);
    }
    free(bs);
    return ok;
}

inline WarpState& warp_state() {
    BlockExtension& e = block_extension();
    if (!e.state) {
        e.state = calloc(1, sizeof(BlockState));
        if (!e.state) {
            fprintf(stderr, "gpuconv emulator: out of memory\n");
            abort();
        }
        e.finish = &finish;
    }
    return static_cast<BlockState*>(e.state)->warps[linear_tid() / 32];
}

inline unsigned shared_address(const void* p, unsigned line) {
    auto* base = static_cast<const unsigned char*>(tl.dyn_smem);
    auto* q = static_cast<const unsigned char*>(p);
    if (!base || q < base || q >= base + dyn_shared_bytes())
        failf(line, "gpuconv_smem_addr(%p): not in the dynamic shared memory (the emulator gives a shared address to "
                    "extern __shared__ memory only, where wgmma's operands live)", p);
    return unsigned(kSharedBase + (q - base));
}

struct Desc {
    unsigned long long start, lbo, sbo;  // bytes
    int layout, bits;                    // GpuconvWgmmaSwizzle; the address bits the swizzle XORs (3, 2, 1, 0)
};

inline Desc decode(unsigned long long v, const char* which, unsigned line) {
    const unsigned long long fields = 0x3FFFull | 0x3FFFull << 16 | 0x3FFFull << 32 | 7ull << 49 | 3ull << 62;
    if (v & ~fields)
        failf(line, "%s: matrix descriptor %s (0x%016llx) has reserved bits set", kOpNames[MMA], which, v);
    if ((v >> 49) & 7)
        failf(line, "%s: matrix descriptor %s (0x%016llx) has a base offset, which the emulator does not take: align "
                    "the swizzled matrix to its pattern's repeat", kOpNames[MMA], which, v);
    static const int kBits[4] = {0, 3, 2, 1};
    Desc d{(v & 0x3FFF) << 4, ((v >> 16) & 0x3FFF) << 4, ((v >> 32) & 0x3FFF) << 4, int(v >> 62), kBits[v >> 62]};
    if ((d.start >> 7) & ((1u << d.bits) - 1))
        failf(line, "%s: matrix %s starts at shared address 0x%llx, not on the %d-byte repeat of its %d-byte swizzle, "
                    "with a base offset of 0", kOpNames[MMA], which, d.start, 128 << d.bits, 16 << d.bits);
    return d;
}

// The shared byte address of element (r, k) of a matrix (r: its M or N index) in its canonical layout, before the
// swizzle (gpuconv_wgmma.cuh writes the rule).
inline unsigned long long element_address(const Desc& d, bool mn_major, int r, int k, int es) {
    const unsigned long long T = 16 / es, W = 1ull << d.bits, L = d.lbo / 16, S = d.sbo / 16;
    unsigned long long unit;
    if (!mn_major) unit = (r % 8) * W + (r / 8) * S + (k / T) * (d.layout == 0 ? L : 1);
    else if (d.layout == 0) unit = k % 8 + (r / T) * S + (k / 8) * L;
    else unit = (r / T) % W + r / (T * W) * L + (k % 8) * W + (k / 8) * S;
    return d.start + 16 * unit + es * ((mn_major ? r : k) % T);
}

inline float element(const Desc& d, bool mn_major, int r, int k, int kind, const char* which, unsigned line) {
    const int es = kind == TF32 ? 4 : 2;
    unsigned long long a = element_address(d, mn_major, r, k, es);
    a ^= ((a >> 7) & ((1u << d.bits) - 1)) << 4;
    if (a < kSharedBase || a + es > kSharedBase + dyn_shared_bytes())
        failf(line, "%s: element (%d, %d) of %s is at shared address 0x%llx, outside the dynamic shared memory "
                    "[0x%llx, 0x%llx)", kOpNames[MMA], r, k, which, a, kSharedBase, kSharedBase + dyn_shared_bytes());
    const unsigned char* p = static_cast<const unsigned char*>(tl.dyn_smem) + (a - kSharedBase);
    if (kind == TF32) {
        unsigned bits;
        memcpy(&bits, p, 4);
        if (!is_tf32_value(bits))
            failf(line, "%s.tf32: element (%d, %d) of %s is %.9g (bits 0x%08x), not a TF32 value (low 13 mantissa "
                        "bits set; the hardware ignores them): round it with cvt.rna.tf32.f32 first", kOpNames[MMA],
                  r, k, which, double(__builtin_bit_cast(float, bits)), bits);
        return __builtin_bit_cast(float, bits);
    }
    unsigned short e;
    memcpy(&e, p, 2);
    return kind == F16 ? float(__builtin_bit_cast(_Float16, e)) : __builtin_bit_cast(float, unsigned(e) << 16);
}

// This warp's operands of one mma_async: rows 16 w .. 16 w + 15 of A (64 x k), all of B (k x n).
// A from registers (the register-A form, tf32): register v of lane l holds row l / 4 + 8 (v % 2) of the warp's
// 16, column l % 4 + 4 (v / 2) (mma.sync's m16n8k8 A layout; CuTe's ALayout_64x8).
inline void gather_a_registers(const Pending& p, float (&A)[16][16]) {
    for (int l = 0; l < 32; ++l)
        for (int v = 0; v < 4; ++v) {
            const unsigned bits = p.ra[l][v];
            if (!is_tf32_value(bits))
                failf(p.line, "%s.tf32: register %d of A in lane %d is %.9g (bits 0x%08x), not a TF32 value (low 13 "
                              "mantissa bits set; the hardware ignores them): round it with cvt.rna.tf32.f32 first",
                      kOpNames[MMA], v, l, double(__builtin_bit_cast(float, bits)), bits);
            A[l / 4 + 8 * (v % 2)][l % 4 + 4 * (v / 2)] = __builtin_bit_cast(float, bits);
        }
}

inline void gather(const Pending& p, int warp_in_group, float (&A)[16][16], float (&B)[16][kMaxN]) {
    const Desc db = decode(p.b, "B", p.line);
    if (p.ra[0]) {
        gather_a_registers(p, A);
    } else {
        const Desc da = decode(p.a, "A", p.line);
        for (int r = 0; r < 16; ++r)
            for (int k = 0; k < p.k; ++k)
                A[r][k] = element(da, p.ta, 16 * warp_in_group + r, k, p.kind, "A", p.line);
    }
    for (int k = 0; k < p.k; ++k)
        for (int n = 0; n < p.n; ++n) B[k][n] = element(db, p.tb, n, k, p.kind, "B", p.line);
}

// D's fragment: register i of lane l holds row g + 8 ((i / 2) % 2) of the warp's 16, column 8 (i / 4) + 2 q + i % 2.
inline int d_row(int lane, int i) { return lane / 4 + 8 * ((i / 2) % 2); }
inline int d_col(int lane, int i) { return 8 * (i / 4) + 2 * (lane % 4) + i % 2; }

inline int chain_of(WarpState& ws, Call* const* calls, unsigned line) {
    for (int c = 0; c < ws.nchains; ++c) {
        Chain& ch = ws.chains[c];
        if (!ch.live || ch.d[0] != calls[0]->d) continue;
        for (int l = 0; l < 32; ++l)
            if (ch.d[l] != calls[l]->d || ch.n != calls[l]->n)
                failf(line, "%s: lane %d's accumulators differ from those of the mma_async in flight on the same "
                            "registers of lane 0", kOpNames[MMA], l);
        return c;
    }
    int c = 0;
    while (c < ws.nchains && ws.chains[c].live) ++c;
    if (c == ws.nchains) {
        int cap = ws.nchains;
        ws.chains = grow(ws.chains, cap);
        ws.nchains = cap;
        for (int i = c; i < cap; ++i) ws.chains[i].live = false;
    }
    Chain& ch = ws.chains[c];
    ch.live = true;
    ch.n = calls[0]->n;
    ch.pending = 0;
    for (int l = 0; l < 32; ++l) {
        ch.d[l] = calls[l]->d;
        for (int i = 0; i < ch.n / 2; ++i) {
            ch.vals[d_row(l, i)][d_col(l, i)] = ch.d[l][i];
            memcpy(&ch.d[l][i], &kPoison, 4);
        }
    }
    return c;
}

inline void issue(Call* const* calls, unsigned line) {
    const Call& c0 = *calls[0];
    for (int l = 1; l < 32; ++l)
        if (calls[l]->a != c0.a || calls[l]->b != c0.b || calls[l]->accumulate != c0.accumulate ||
            !calls[l]->ra != !c0.ra)
            failf(line, "%s: lane %d passes other descriptors or another accumulate flag than lane 0 (they are the "
                        "warpgroup's, the same in every lane)", kOpNames[MMA], l);
    if (block_threads() % 128)
        failf(line, "%s is warpgroup-collective: the block's %d threads are not whole warpgroups of 4 warps",
              kOpNames[MMA], block_threads());
    WarpState& ws = warp_state();
    if (!ws.fenced)
        failf(line, "%s with no wgmma.fence since the last wgmma.wait_group (or the block start) in this warp: fence "
                    "the registers before each batch of mma_async", kOpNames[MMA]);
    if (ws.nops == ws.capops) ws.ops = grow(ws.ops, ws.capops);
    Pending& p = ws.ops[ws.nops];
    p = Pending{-1, c0.kind, c0.n, c0.kind == TF32 ? 8 : 16, c0.ta, c0.tb, c0.accumulate, c0.a, c0.b, ws.commits,
                line, {}, {}, {}};
    for (int l = 0; l < 32; ++l) p.ra[l] = calls[l]->ra;
    gather(p, int(linear_tid() / 32 % 4), p.A, p.B);
    p.chain = chain_of(ws, calls, line);
    ws.chains[p.chain].pending++;
    ws.nops++;
    ws.mmas++;
    const unsigned long long fields[] = {c0.a, c0.b, unsigned(c0.kind), unsigned(c0.n), unsigned(c0.ta),
                                         unsigned(c0.tb), unsigned(c0.accumulate), c0.ra != nullptr};
    for (unsigned long long f : fields) ws.hash = (ws.hash ^ f) * 0x100000001B3ull;
}

inline void execute(const Pending& p, WarpState& ws) {
    float A[16][16], B[16][kMaxN];  // on the issuing lane's fiber stack
    gather(p, int(linear_tid() / 32 % 4), A, B);
    for (int r = 0; r < 16; ++r)
        if (memcmp(A[r], p.A[r], sizeof(float) * size_t(p.k)))
            failf(p.line, "the %s that the %s here reads (A) changed before the wgmma.wait_group that covers it",
                  p.ra[0] ? "registers" : "shared memory", kOpNames[MMA]);
    for (int k = 0; k < p.k; ++k)
        if (memcmp(B[k], p.B[k], sizeof(float) * size_t(p.n)))
            failf(p.line, "the shared memory that the %s here reads (B) changed before the wgmma.wait_group that "
                          "covers it", kOpNames[MMA]);
    Chain& ch = ws.chains[p.chain];
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < p.n; ++n) {
            float acc = p.accumulate ? ch.vals[r][n] : 0.0f;
            for (int k = 0; k < p.k; ++k) acc += p.A[r][k] * p.B[k][n];  // exact products: <= 11-bit operands
            ch.vals[r][n] = acc;
        }
    ch.pending--;
}

inline void wait(int n, unsigned line) {
    WarpState& ws = warp_state();
    const long long limit = (long long)ws.commits - n;
    int kept = 0;
    for (int i = 0; i < ws.nops; ++i) {
        if ((long long)ws.ops[i].group < limit) execute(ws.ops[i], ws);
        else ws.ops[kept++] = ws.ops[i];
    }
    ws.nops = kept;
    for (int c = 0; c < ws.nchains; ++c) {
        Chain& ch = ws.chains[c];
        if (!ch.live || ch.pending) continue;
        for (int l = 0; l < 32; ++l)
            for (int i = 0; i < ch.n / 2; ++i) {
                if (memcmp(&ch.d[l][i], &kPoison, 4))
                    failf(line, "lane %d wrote accumulator register %d while a %s on it was in flight (before this "
                                "wgmma.wait_group)", l, i, kOpNames[MMA]);
                ch.d[l][i] = ch.vals[d_row(l, i)][d_col(l, i)];
            }
        ch.live = false;
    }
    ws.fenced = false;
    ws.waits++;
}

template <class Body>
inline void collective(Call& me, unsigned line, Body&& body) {
    const char* name = kOpNames[me.op];
    warp_collective(me, line, WARP_WGMMA, name, " (.sync.aligned, by the whole warpgroup)",
                    [&](Call* const* calls) {
                        for (unsigned l = 0; l < 32; ++l)
                            if (calls[l]->op != me.op || calls[l]->kind != me.kind || calls[l]->n != me.n ||
                                calls[l]->wait_n != me.wait_n)
                                failf(line, "lanes of the warp executed different instructions: lane %u %s, lane %u "
                                            "%s", lane(), name, l, kOpNames[calls[l]->op]);
                        body(calls);
                    });
}

template <int N>
inline void run_mma(int kind, int ta, int tb, float (&d)[N / 2], unsigned long long a, unsigned long long b,
                    int accumulate, unsigned line, const unsigned* ra = nullptr) {
    static_assert(N == 64 || N == 128, "wgmma: N is 64 or 128");
    Call me{MMA, kind, N, ta, tb, accumulate != 0, 0, a, b, d, ra};
    collective(me, line, [&](Call* const* calls) { issue(calls, line); });
}

inline void run_simple(int op, int wait_n, unsigned line) {
    Call me{op, -1, 0, 0, 0, 0, wait_n, 0, 0, nullptr, nullptr};
    collective(me, line, [&](Call* const*) {
        if (op == FENCE) warp_state().fenced = true;
        else if (op == COMMIT) warp_state().commits++;
        else wait(wait_n, line);
    });
}

}  // namespace wgmma
}  // namespace gpuconv_emu

// The names of gpuconv_wgmma.cuh, with the caller's line as a defaulted last argument.
inline unsigned gpuconv_smem_addr(const void* p, ::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    return ::gpuconv_emu::wgmma::shared_address(p, line.v);
}
inline void gpuconv_wgmma_fence(::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    ::gpuconv_emu::wgmma::run_simple(::gpuconv_emu::wgmma::FENCE, 0, line.v);
}
inline void gpuconv_wgmma_commit_group(::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    ::gpuconv_emu::wgmma::run_simple(::gpuconv_emu::wgmma::COMMIT, 0, line.v);
}
template <int N>
inline void gpuconv_wgmma_wait_group(::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    ::gpuconv_emu::wgmma::run_simple(::gpuconv_emu::wgmma::WAIT, N, line.v);
}
// A compiler barrier on the GPU (kernels/gpuconv_wgmma.cuh); here the accumulators hold poison until the wait, so
// a read the compiler moved above it would show as NaN.
template <int N>
inline void gpuconv_wgmma_fence_operands(float (&)[N]) {}

template <int N, int TRANS_A, int TRANS_B>
inline void gpuconv_wgmma_f16(float (&d)[N / 2], unsigned long long a, unsigned long long b, int accumulate,
                              ::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    ::gpuconv_emu::wgmma::run_mma<N>(::gpuconv_emu::wgmma::F16, TRANS_A, TRANS_B, d, a, b, accumulate, line.v);
}
template <int N, int TRANS_A, int TRANS_B>
inline void gpuconv_wgmma_bf16(float (&d)[N / 2], unsigned long long a, unsigned long long b, int accumulate,
                               ::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    ::gpuconv_emu::wgmma::run_mma<N>(::gpuconv_emu::wgmma::BF16, TRANS_A, TRANS_B, d, a, b, accumulate, line.v);
}
template <int N>
inline void gpuconv_wgmma_tf32(float (&d)[N / 2], unsigned long long a, unsigned long long b, int accumulate,
                               ::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    ::gpuconv_emu::wgmma::run_mma<N>(::gpuconv_emu::wgmma::TF32, 0, 0, d, a, b, accumulate, line.v);
}
template <int N>
inline void gpuconv_wgmma_tf32_rs(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long b, int accumulate,
                                  ::gpuconv_emu::Line line = ::gpuconv_emu::Line(__builtin_LINE())) {
    ::gpuconv_emu::wgmma::run_mma<N>(::gpuconv_emu::wgmma::TF32, 0, 0, d, 0, b, accumulate, line.v, a);
}
