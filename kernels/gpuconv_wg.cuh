// Shared device code of the wgmma kernels (kernels/conv_wgmma_*.cu, sm_90a): the block tile and its layouts in
// shared memory, the main loop, and the epilogue from D's fragment. The block is one warpgroup (128 threads) and
// a 128 x 128 tile; a 64-byte reduction step is 2 x 2 wgmma.mma_async m64n128k16 (rows 0-63 and 64-127 of the
// tile, 64 accumulators a thread each) with FP16 or BF16 operands, or 2 x 2 m64n128k8 with TF32 operands, float
// accumulators. The operands are copied to shared memory in wgmma's canonical layouts (kernels/gpuconv_wgmma.cuh):
//   A (BM x BK, the reduction index fastest: x of the forward, dz of dx) K-major with the 64-byte swizzle, a
//     64-byte row a tile row;
//   B (BK x BN) either N-major with the 128-byte swizzle, atoms of 8 reduction rows x 64 columns (w of the
//     forward: output channels fastest, as in HWIO), or K-major like A (w of dx: its reduction index, the output
//     channel, is fastest; the TF32 forward's w, transposed by gpuconv_tf32_filter_kmajor).
// FP16 and BF16 read both from shared memory. TF32 operands must be TF32 values, and x is the user's: A goes
// from shared memory to registers, is rounded there (cvt.rna, as the mma.sync kernels round their fragments)
// and feeds wgmma's register-A form; B must then be rounded already (the TF32 forward's transposed filter is).
// Where A holds TF32 values already (A_TF32: dx's dz as backward's pass stored it, DZ_TF32) TF32 reads both
// from shared memory too.
// Included where GPUCONV_WGMMA_BUILT (sm_90a, or the emulator); the kernels compile empty elsewhere.
#pragma once

#include "gpuconv_tc.cuh"

#if defined(GPUCONV_EMULATOR) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GPUCONV_WGMMA_BUILT 1
#include "gpuconv_wgmma.cuh"
#else
#define GPUCONV_WGMMA_BUILT 0
#endif

// The tile: per stage A (8 KB) then B (8 KB), from a 1024-byte aligned base (the 128-byte swizzle repeats every
// 1024 bytes; the launch's shared_mem has room to align). B_KMAJOR: B is stored K-major (else N-major; 16-bit
// types only). T float: TF32 products, A from registers (gpuconv_wg_mainloop) unless A_TF32 (A's copies are
// TF32 values: read from shared memory as B).
template <typename T, int STAGES_, bool B_KMAJOR_, bool A_TF32_ = false>
struct gpuconv_wg_tile {
    static constexpr int BM = 128, BN = 128, STAGES = STAGES_;
    static constexpr bool B_KMAJOR = B_KMAJOR_, A_TF32 = A_TF32_;
    static constexpr bool A_REGISTERS = sizeof(T) == 4 && !A_TF32;  // the register-A form, A rounded there
    static constexpr int BK = GPUCONV_TC_BYTES_K / sizeof(T);  // one 64-byte swizzle row of A
    static constexpr int KSTEPS = GPUCONV_TC_BYTES_K / 32;      // wgmma k steps a stage: 32 bytes of k each
    static constexpr int VEC = 16 / sizeof(T), THREADS = GPUCONV_TC_THREADS;
    static constexpr int A_BYTES = BM * GPUCONV_TC_BYTES_K, B_BYTES = BK * BN * (int)sizeof(T);
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES, ALIGN = 1024;
    static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + ALIGN;
    static_assert((sizeof(T) == 2 || (sizeof(T) == 4 && B_KMAJOR)) && BK * sizeof(T) == 64 && THREADS == 128,
                  "16-bit operands, or TF32 with B K-major; one warpgroup");
    static_assert(!A_TF32 || sizeof(T) == 4, "A_TF32: float operands only");

    // Byte offsets in a stage's A of element (m, k), and in its B of (k, n): 16-byte unit u of a swizzle row r
    // is stored at unit u ^ (r's bits that the swizzle takes: (r / 2) % 4 for 64 bytes, k % 8 for 128).
    __host__ __device__ static constexpr int kmajor_byte(int r, int k) {
        return r * 64 + (((k / VEC) ^ ((r / 2) % 4)) << 4) + (k % VEC) * (int)sizeof(T);
    }
    __host__ __device__ static constexpr int a_byte(int m, int k) { return kmajor_byte(m, k); }
    __host__ __device__ static constexpr int b_byte(int k, int n) {
        if (B_KMAJOR) return kmajor_byte(n, k);
        return ((k / 8) * 2 + n / 64) * 1024 + (k % 8) * 128 + ((((n % 64) / VEC) ^ (k % 8)) << 4) + (n % VEC) * 2;
    }
    __device__ static T* a_at(T* smem, int s, int m, int k) {
        return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(smem) + s * STAGE_BYTES + a_byte(m, k));
    }
    __device__ static T* b_at(T* smem, int s, int k, int n) {
        return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(smem) + s * STAGE_BYTES + A_BYTES +
                                    b_byte(k, n));
    }
};

#if GPUCONV_WGMMA_BUILT
// The dynamic shared memory of a wgmma kernel, aligned up to Tile::ALIGN in the shared address space.
template <typename Tile>
__device__ __forceinline__ unsigned char* gpuconv_wg_smem(unsigned char* smem_bytes) {
    return smem_bytes + ((Tile::ALIGN - (gpuconv_smem_addr(smem_bytes) % Tile::ALIGN)) % Tile::ALIGN);
}

// One m64n128k16 of a storage type; B read N-major (TRANS_B) unless B_KMAJOR.
template <typename T, bool B_KMAJOR> struct gpuconv_wg_mma;
template <bool B_KMAJOR> struct gpuconv_wg_mma<__half, B_KMAJOR> {
    __device__ static void run(float (&d)[64], unsigned long long a, unsigned long long b, int accumulate) {
        gpuconv_wgmma_f16<128, 0, B_KMAJOR ? 0 : 1>(d, a, b, accumulate);
    }
};
template <bool B_KMAJOR> struct gpuconv_wg_mma<__nv_bfloat16, B_KMAJOR> {
    __device__ static void run(float (&d)[64], unsigned long long a, unsigned long long b, int accumulate) {
        gpuconv_wgmma_bf16<128, 0, B_KMAJOR ? 0 : 1>(d, a, b, accumulate);
    }
};
template <> struct gpuconv_wg_mma<float, true> {  // m64n128k8: TF32 operands, both K-major
    __device__ static void run(float (&d)[64], unsigned long long a, unsigned long long b, int accumulate) {
        gpuconv_wgmma_tf32<128>(d, a, b, accumulate);
    }
};

// The pipeline of the main loop, shared by both kinds (gpuconv_wg_mainloop): Every thread commits one cp.async
// batch a step, so at step kt __pipeline_wait_prior(D - 1) means "step kt has landed" for this thread's copies,
// and the barrier after it makes everyone's visible. The copies issued then overwrite the stage of step kt - 2,
// whose wgmma every warp has waited for (wait_group 1 at the end of step kt - 1) before that barrier; step kt - 1's
// wgmma may still run, on its own stage. With one warpgroup a block the barrier is what CUDA's memory model
// asks for; CUTLASS's single-warpgroup cp.async mainloop (MainloopSm90CpAsyncGmma) does without it, relying on
// wgmma being one warpgroup operation (the emulator's lockstep of warp-collective operations cannot tell).
template <typename Tile>
struct gpuconv_wg_pipeline {
    static constexpr int S = Tile::STAGES, D = S - 2;
    static_assert(D >= 1, "at least 3 stages");

    template <typename Issue>
    __device__ static void prologue(int KT, Issue& issue) {
#pragma unroll
        for (int s = 0; s < D; ++s) {
            if (s < KT) issue(s, s);
            __pipeline_commit();
        }
    }
    // Step kt: its stage landed, the next copies started, mma(stage) issues the step's wgmma after a fence,
    // then one commit, and the wait that leaves only this step's wgmma in flight.
    template <typename Issue, typename Mma>
    __device__ static void step(unsigned char* smem, int kt, int KT, Issue& issue, Mma&& mma) {
        __pipeline_wait_prior(D - 1);
        __syncthreads();
        const int next = kt + D;
        if (next < KT) issue(next, next % S);
        __pipeline_commit();
        mma(smem + (kt % S) * Tile::STAGE_BYTES);
        gpuconv_wgmma_commit_group();
        gpuconv_wgmma_wait_group<1>();
    }
    __device__ static void finish(float (&acc)[2][64]) {
        gpuconv_wgmma_wait_group<0>();
        gpuconv_wgmma_fence_operands(acc[0]);  // the epilogue's reads stay after the wait
        gpuconv_wgmma_fence_operands(acc[1]);
    }
};

// This thread's registers of A for wgmma's register-A form, one step of stage st, rounded to TF32: a[j][h][v] is
// row 64 h + 16 w + g + 8 (v % 2), column 8 j + q + 4 (v / 2) of the step (warp w, lane (g, q); k8 step j, row
// half h; kernels/gpuconv_wgmma.cuh, gpuconv_wgmma_tf32_rs). The loads are free of bank conflicts: a warp's 32
// words of one (j, h, v) are 8 rows of the 64-byte swizzle (four 16-byte units in each pair of rows) x 4 words.
template <typename Tile>
__device__ __forceinline__ void gpuconv_wg_load_a_tf32(const unsigned char* st, unsigned (&a)[2][2][4]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gr = lane / 4, q = lane % 4;
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                const int m = 64 * h + 16 * warp + gr + 8 * (v % 2), k = 8 * j + q + 4 * (v / 2);
                const float x = *reinterpret_cast<const float*>(st + Tile::a_byte(m, k));
                a[j][h][v] = __float_as_uint(gpuconv_tc_operand<float>(x));
            }
}

// acc[h] = A (rows 64 h ..) B over KT >= 1 reduction steps (gpuconv_wg_pipeline). The first wgmma of each half
// runs with accumulate 0, so acc needs no zeroing: moves into the accumulators before the loop would make ptxas
// serialize the wgmma (its note C7515).
// 16-bit operands, and TF32 ones that are TF32 values in shared memory (Tile::A_TF32): both from shared memory,
// 2 x 2 m64n128k16 (m64n128k8 for TF32) a step.
// TF32 otherwise (Tile::A_REGISTERS): A's registers loaded and rounded from the step's stage, B from shared
// memory (K-major, TF32 values already), 2 x 2 m64n128k8 a step. A step's registers are operands in flight
// until the wait_group 1 at the end of the next step, so two sets alternate: the loop runs two steps a trip, one with each, and a step
// writes only the set whose wgmma (two steps back) was waited for. An odd last step runs after the loop: with
// it inside, under a condition, a path would reach the even step with the even set still in flight (the
// skipped odd step), and ptxas serializes every wgmma then (its note C7513).
template <typename T, typename Tile, typename Issue>
__device__ __forceinline__ void gpuconv_wg_mainloop(unsigned char* smem, int KT, Issue& issue,
                                                    float (&acc)[2][64]) {
    typedef gpuconv_wg_pipeline<Tile> Pipe;
    Pipe::prologue(KT, issue);
    if constexpr (Tile::A_REGISTERS) {
        static_assert(Tile::B_KMAJOR && Tile::BK == 16, "TF32: B K-major, two k8 steps a stage");
        unsigned a_even[2][2][4], a_odd[2][2][4];
        auto mma = [&](int kt, unsigned (&a)[2][2][4]) {
            return [&, kt](const unsigned char* st) {
                gpuconv_wg_load_a_tf32<Tile>(st, a);
                gpuconv_wgmma_fence();
#pragma unroll
                for (int j = 0; j < Tile::KSTEPS; ++j) {  // B K-major: the k8 step j 32 bytes into each row
                    const unsigned long long b =
                        gpuconv_wgmma_desc(st + Tile::A_BYTES + 32 * j, 16, 512, GPUCONV_WGMMA_SW64);
#pragma unroll
                    for (int h = 0; h < 2; ++h) gpuconv_wgmma_tf32_rs<128>(acc[h], a[j][h], b, kt > 0 || j > 0);
                }
            };
        };
        int kt = 0;
        for (; kt + 1 < KT; kt += 2) {  // at the top of a trip only an odd step's wgmma is in flight
            Pipe::step(smem, kt, KT, issue, mma(kt, a_even));
            Pipe::step(smem, kt + 1, KT, issue, mma(kt + 1, a_odd));
        }
        if (kt < KT) Pipe::step(smem, kt, KT, issue, mma(kt, a_even));
        Pipe::finish(acc);  // inside the registers' scope: the last wgmma reads them until this wait
    } else {
        for (int kt = 0; kt < KT; ++kt)
            Pipe::step(smem, kt, KT, issue, [&](const unsigned char* st) {
                gpuconv_wgmma_fence();
#pragma unroll
                for (int j = 0; j < Tile::KSTEPS; ++j) {
                    // B N-major: 16 reduction rows are two atoms along k (SBO 2048 bytes), 128 columns two along
                    // n (LBO 1024); B K-major as A: 8-row groups of 512 bytes (SBO), the k step j 32 bytes
                    // into each row
                    const unsigned long long b =
                        Tile::B_KMAJOR
                            ? gpuconv_wgmma_desc(st + Tile::A_BYTES + 32 * j, 16, 512, GPUCONV_WGMMA_SW64)
                            : gpuconv_wgmma_desc(st + Tile::A_BYTES + 4096 * j, 1024, 2048, GPUCONV_WGMMA_SW128);
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const unsigned long long a = gpuconv_wgmma_desc(st + 4096 * h + 32 * j, 16, 512,
                                                                        GPUCONV_WGMMA_SW64);
                        gpuconv_wg_mma<T, Tile::B_KMAJOR>::run(acc[h], a, b, kt > 0 || j > 0);
                    }
                }
            });
        Pipe::finish(acc);
    }
}

// Epilogue from D's fragment: lane (g, q) of warp w holds rows 16 w + g and + 8 of each 64-row half, columns
// 8 j + 2 q and + 1 (register 4 j + 2 r8 + c). row_of(r) maps a tile row to the output offset of its first
// element (-1: no such row), once per row; emit(offset, c, value) stores the value of tile column c.
template <typename RowOf, typename Emit>
__device__ __forceinline__ void gpuconv_wg_epilogue(const float (&acc)[2][64], RowOf& row_of, Emit& emit) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gr = lane / 4, q = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int r8 = 0; r8 < 2; ++r8) {
            const gpuconv_i64 base = row_of(64 * h + 16 * warp + 8 * r8 + gr);
            if (base < 0) continue;
#pragma unroll
            for (int j = 0; j < 16; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) emit(base, 8 * j + 2 * q + c, acc[h][4 * j + 2 * r8 + c]);
            }
        }
    }
}
#endif  // GPUCONV_WGMMA_BUILT
