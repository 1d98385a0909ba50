// Shared device code of the tensor-core kernels (kernels/conv_tc_*.cu): element traits, the shared-memory tile
// layouts and the multi-stage main loop; the warp-level MMAs and the epilogue come from gpuconv_tc_mma.cuh
// (ldmatrix + mma.sync, sm_80 and later) or gpuconv_tc_wmma.cuh (nvcuda::wmma, the FP16 path of sm_70 / sm_75).
//
// Design (kernels/README.md has the same text in short; docs/performance.md has the numbers):
//   - Implicit GEMMs as in the SIMT kernels (rows, columns and reduction as there), on tensor cores: TF32
//     products for float storage (operands rounded with cvt.rna.tf32.f32, wmma::__float_to_tf32), FP16 for
//     __half, BF16 for __nv_bfloat16; float accumulators in every case, rounded once to the storage type on the
//     store.
//   - Block tile BM x BN, 128 threads = 4 warps: 128 x 128 as 2 x 2 warp tiles of 64 x 64 (128 accumulators per
//     thread), 96 x 128 as 2 x 2 of 48 x 64 (more blocks where 128 x 128 would leave SMs idle in the last
//     round), 128 x 64 as 4 x 1 of 32 x 64, 256 x 64 as 4 x 1 of 64 x 64 (warp tiles at most 64 columns wide).
//     Large warp tiles read each shared byte for more products: per reduction step the warps of a 128 x 128
//     tile load 32 KB of operands, where 8 warps of 64 x 32 would load 48 KB, which would leave the ldmatrix
//     path bound by shared-memory bandwidth rather than by the tensor cores (docs/performance.md).
//   - Reduction steps of BK elements (64 bytes of a row: 16 floats or 32 halves); STAGES shared buffers. On the
//     fast path the loaders issue 16-byte cp.async copies (gpuconv_tc_copy16_cached for the activations,
//     __pipeline_memcpy_async for the rest) of whole 16-byte runs of
//     channels (needs the channel counts and pointers 16-byte aligned, see gpuconv/backends/cuda.py), and the
//     tile of step kt + STAGES - 1 is in flight while step kt is multiplied; chunks that fall in padding or
//     past the tile's edge are written as zeros. The generic path (any channel count, e.g. the C = 3 stem)
//     loads element by element into the same tiles, zeros outside: slower, never wrong.
//   - Shared rows are padded so that the fragment loads are conflict-free: by 16 bytes where a warp reads 8
//     rows of 16 bytes (ldmatrix, wmma: rows of 80, 272 or 528 bytes fall in 8 different bank groups), by 32
//     bytes where the TF32 path reads 32-bit elements across 4 rows (gpuconv_tc_mma.cuh): rows of 136 or 72
//     floats put the 4 x 8 elements in 32 different banks.
//   - Architectures: FP16 needs sm_70, TF32 and BF16 sm_80; on older targets NVRTC compiles those kernels
//     with an empty body (gpuconv_tc<T>::enabled is false) and the launch routing never picks them.
#pragma once

#include <mma.h>
#include <cuda_pipeline.h>
#include <cuda_bf16.h>

#include "gpuconv_common.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define GPUCONV_TC_SM80 1
#else
#define GPUCONV_TC_SM80 0
#endif
// The warp-level path: ldmatrix + mma.sync from sm_80 (and on the emulator), wmma before (or with -DGPUCONV_TC_WMMA,
// which the emulator tests use to run the sm_70 path).
#if GPUCONV_TC_SM80 && !defined(GPUCONV_TC_WMMA)
#define GPUCONV_TC_PTX 1
#else
#define GPUCONV_TC_PTX 0
#endif
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
#define GPUCONV_TC_SM70 1
#else
#define GPUCONV_TC_SM70 0
#endif

#define GPUCONV_TC_THREADS 128  // 4 warps a block (gpuconv_tc_tile places them over the tile)
#define GPUCONV_TC_BYTES_K 64   // bytes of one reduction step of a tile row (BK = 64 / sizeof(T))
#define GPUCONV_TC_SCRATCH 20   // row stride (floats) of a warp's 16 x 16 epilogue scratch

// Per storage type: whether this target has the tensor-core path, the fragment depth FK and wmma's element type.
template <typename T> struct gpuconv_tc;
template <> struct gpuconv_tc<__half> {
    static constexpr bool enabled = GPUCONV_TC_SM70;
    static constexpr int FK = 16;
    typedef __half elem;
};
#if GPUCONV_TC_SM80
template <> struct gpuconv_tc<float> {
    static constexpr bool enabled = true;
    static constexpr int FK = 8;
    typedef nvcuda::wmma::precision::tf32 elem;
};
template <> struct gpuconv_tc<__nv_bfloat16> {
    static constexpr bool enabled = true;
    static constexpr int FK = 16;
    typedef __nv_bfloat16 elem;
};
#else
template <> struct gpuconv_tc<float> { static constexpr bool enabled = false; static constexpr int FK = 8; };
template <> struct gpuconv_tc<__nv_bfloat16> { static constexpr bool enabled = false; static constexpr int FK = 16; };
#endif

template <bool C, typename A, typename B> struct gpuconv_tc_if { typedef A type; };
template <typename A, typename B> struct gpuconv_tc_if<false, A, B> { typedef B type; };

// A storage value as the tensor cores multiply it, in float: TF32-rounded for float, exact otherwise (the
// exact fallback loops use it, so that they compute what the MMA path would).
template <typename T>
__device__ __forceinline__ float gpuconv_tc_operand(T v) { return gpuconv_to_acc(v); }
#if GPUCONV_TC_SM80
template <>
__device__ __forceinline__ float gpuconv_tc_operand<float>(float v) { return nvcuda::wmma::__float_to_tf32(v); }
#endif

// The compile-time shape of a block tile and its shared-memory layout. A is BM x BK, B is BK x BN; each is
// stored either "row" (the reduction index fastest for A, the column index fastest for B) or "col"
// (transposed), whichever makes the global runs contiguous in shared memory:
//   A row: As[BM][BK + SKEW]   A col: As[BK][BM + SKEW]   B row: Bs[BK][BN + SKEW]   B col: Bs[BN][BK + SKEW]
// A_TF32 / B_TF32: the operand is stored as TF32 values already (dz rounded by the pass that wrote it), so the
// float fragment loads of the ldmatrix path skip their conversion; rounding twice would round as once.
template <typename T, int BM_, int BN_, int STAGES_, bool A_ROW, bool B_ROW, bool A_TF32 = false, bool B_TF32 = false>
struct gpuconv_tc_tile {
    static constexpr int BM = BM_, BN = BN_, STAGES = STAGES_;
    static constexpr bool ROUND_A = sizeof(T) == 4 && !A_TF32, ROUND_B = sizeof(T) == 4 && !B_TF32;
    static constexpr int BK = GPUCONV_TC_BYTES_K / sizeof(T);
    static constexpr int VEC = 16 / sizeof(T);  // elements of one 16-byte copy
    // Row padding: 32 bytes for the TF32 tiles the PTX path reads as 32-bit elements (A column-major, B
    // row-major), else 16 bytes (see the design notes above).
    static constexpr bool WORDS_A = GPUCONV_TC_PTX && sizeof(T) == 4 && !A_ROW;
    static constexpr bool WORDS_B = GPUCONV_TC_PTX && sizeof(T) == 4 && B_ROW;
    static constexpr int SKEW_A = WORDS_A ? 2 * VEC : VEC, SKEW_B = WORDS_B ? 2 * VEC : VEC;
    static constexpr int FK = gpuconv_tc<T>::FK;
    static constexpr int THREADS = GPUCONV_TC_THREADS, WARPS = THREADS / 32;
    static constexpr int WTN = BN < 64 ? BN : 64;           // columns of a warp tile
    static constexpr int WN = BN / WTN, WM = WARPS / WN;     // warps along the columns and the rows
    static constexpr int WTM = BM / WM;                      // rows of a warp tile
    static constexpr int FM = WTM / 16, FN = WTN / 16;       // 16 x 16 pieces of a warp tile
    static constexpr int LDA = A_ROW ? BK + SKEW_A : BM + SKEW_A;
    static constexpr int LDB = B_ROW ? BN + SKEW_B : BK + SKEW_B;
    static constexpr int A_ELEMS = A_ROW ? BM * LDA : BK * LDA;
    static constexpr int B_ELEMS = B_ROW ? BK * LDB : BN * LDB;
    static constexpr int STAGE_ELEMS = A_ELEMS + B_ELEMS;
    static constexpr int SCRATCH_BYTES = WARPS * 16 * GPUCONV_TC_SCRATCH * 4;
    static constexpr int PIPE_BYTES = STAGES * STAGE_ELEMS * (int)sizeof(T);
    static constexpr int SMEM_BYTES = PIPE_BYTES > SCRATCH_BYTES ? PIPE_BYTES : SCRATCH_BYTES;
    static_assert(WTM % 16 == 0 && FM >= 1 && WM * WTM == BM && WN * WTN == BN, "whole 16 x 16 pieces");
    static_assert(BK % FK == 0, "a reduction step holds whole fragments");

    // Offsets (elements) of A's (m, k) and B's (k, n) inside their tiles; element (m, k) of stage s's A tile, and
    // (k, n) of its B tile.
    __host__ __device__ static constexpr int a_off(int m, int k) { return A_ROW ? m * LDA + k : k * LDA + m; }
    __host__ __device__ static constexpr int b_off(int k, int n) { return B_ROW ? k * LDB + n : n * LDB + k; }
    __device__ static T* a_at(T* smem, int s, int m, int k) { return smem + s * STAGE_ELEMS + a_off(m, k); }
    __device__ static T* b_at(T* smem, int s, int k, int n) { return smem + s * STAGE_ELEMS + A_ELEMS + b_off(k, n); }
};

#if GPUCONV_TC_PTX
#include "gpuconv_tc_mma.cuh"
#else
#include "gpuconv_tc_wmma.cuh"
#endif

// The multi-stage main loop over KT reduction steps. issue(kt, s) starts the loads of step kt into stage s
// (cp.async copies and/or plain shared stores); every thread commits one pipeline batch per step, so
// __pipeline_wait_prior(STAGES - 2) means "step kt has landed" for this thread's copies, and the barrier after
// it makes every thread's copies and stores visible (and frees the stage that the next issue overwrites).
template <typename T, typename Tile, bool A_ROW, bool B_ROW, typename Issue>
__device__ __forceinline__ void gpuconv_tc_mainloop(T* smem, int KT, Issue& issue, gpuconv_tc_acc<T, Tile>& acc,
                                                    int wm0, int wn0) {
#pragma unroll
    for (int s = 0; s < Tile::STAGES - 1; ++s) {
        if (s < KT) issue(s, s);
        __pipeline_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        __pipeline_wait_prior(Tile::STAGES - 2);
        __syncthreads();
        const int next = kt + Tile::STAGES - 1;
        if (next < KT) issue(next, next % Tile::STAGES);
        __pipeline_commit();
        gpuconv_tc_step<T, Tile, A_ROW, B_ROW>(smem, kt % Tile::STAGES, acc, wm0, wn0);
    }
    __pipeline_wait_prior(0);
    __syncthreads();  // the pipeline buffers are free for the epilogue scratch (the wmma path's)
}

// A 16-byte copy of an activation run (x in the forward and dw, dz in dx) into a stage, allocating in L1 on sm_80
// and later (cp.async.ca): a window's taps re-read most of its pixels (the next tap along a row shifts them by
// one pixel), a few reduction steps later in the forward and dx, within the same step in dw where a tile's
// rows hold several taps, so L1 serves those re-reads instead of L2. CUTLASS's implicit-GEMM convolutions
// cache their activation copies the same way and stream the filter's (__pipeline_memcpy_async's 16-byte
// copies are .cg: L2 only), as these kernels do for w and for dw's dz, which no other copy of the block
// re-reads. Before sm_80 there is no cp.async: the pipeline primitive copies synchronously.
template <typename T>
__device__ __forceinline__ void gpuconv_tc_copy16_cached(T* dst, const T* src) {
#if GPUCONV_TC_PTX
    gpuconv_cp_async_ca16(dst, src);
#else
    __pipeline_memcpy_async(dst, src, 16);
#endif
}

// The epilogues' store of one output: act(v + bias[bias0 + col]) (the bias where has_bias) into out[col], one
// rounding, for col < n only (forward: n = Mg, bias0 = g * Mg; dx, whose bias is a transposed convolution's:
// n = Cg, bias0 = g * Cg).
template <typename T>
__device__ __forceinline__ void gpuconv_tc_store(T* out, const T* __restrict__ bias, int bias0, int col, int n, float v,
                                                 int has_bias, int act) {
    if (col >= n) return;
    if (has_bias) v += gpuconv_to_acc(bias[bias0 + col]);
    gpuconv_store(out + col, gpuconv_act_forward(v, act));
}

// A 16-byte chunk of zeros into shared memory (a tile chunk in padding or past the tile's edge).
template <typename T>
__device__ __forceinline__ void gpuconv_tc_zero16(T* dst) {
    *reinterpret_cast<int4*>(dst) = make_int4(0, 0, 0, 0);
}

// The state of one thread's 16-byte copies of an activation tile (gpuconv_tc_fwd_copies, gpuconv_tc_dx_copies):
// for each of the R tile rows it copies chunks of, the row's image (-1: a row past the end) and the row and
// column its tap of offset 0 reads. The kernel holds it and the copies' closure refers to it: copied into the
// closure, the arrays cost ptxas 6-24 more instructions a reduction step on sm_90 (gpuconv_tc_fwd<float, 96,
// 128, 4, true>: 371 against 347; docs/performance.md, 2026-12-03 (5)).
template <typename Tile>
struct gpuconv_tc_rows {
    static constexpr int R = Tile::BM * (Tile::BK / Tile::VEC) / Tile::THREADS;
    int b[R], h[R], w[R];
};
