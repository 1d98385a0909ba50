// Shared device code of the tensor-core kernels (kernels/conv_tc_*.cu): element traits, the shared-memory tile
// layouts, one block tile's warp-level MMA step, and the epilogue through shared memory.
//
// Design (kernels/README.md has the same text in short; docs/performance.md has the numbers):
//   - Implicit GEMMs as in the SIMT kernels (rows, columns and reduction as there), computed with nvcuda::wmma
//     fragments: m16n16k8 with precision::tf32 for float storage (every loaded operand element goes through
//     wmma::__float_to_tf32, the hardware's cvt.rna.tf32.f32), m16n16k16 for __half and __nv_bfloat16; float
//     accumulators in every case, rounded once to the storage type on the store.
//   - Block tile BM x BN (128 x 128 or 128 x 64), 256 threads = 8 warps; the warps tile the block as
//     (BM / WTM) x (BN / 32) with warp tiles WTM x 32, i.e. (WTM / 16) x 2 accumulator fragments each
//     (64 x 32 for 128 x 128: 8 fragments, 64 accumulator registers per thread).
//   - Reduction steps of BK elements (64 bytes of a row: 16 floats or 32 halves); STAGES shared buffers. On the
//     fast path the loaders issue 16-byte cp.async copies (__pipeline_memcpy_async) of whole 16-byte runs of
//     channels (needs the channel counts and pointers 16-byte aligned, see gpuconv/backends/cuda.py), and the
//     tile of step kt + STAGES - 1 is in flight while step kt is multiplied; chunks that fall in padding or
//     past the tile's edge are written as zeros. The generic path (any channel count, e.g. the C = 3 stem)
//     loads element by element into the same tiles, zeros outside: slower, never wrong.
//   - Shared rows are padded by 16 bytes (GPUCONV_TC_SKEW elements): a row is 80 or 272/528 bytes, so the 8
//     rows of 16 bytes one fragment-load phase reads fall in 8 different bank groups (no conflicts), and every
//     fragment pointer stays 32-byte aligned as load_matrix_sync requires.
//   - Epilogue: the fragment layout is unspecified, so accumulators are never indexed by position: each warp
//     stores one fragment at a time to its own 16 x 20 float scratch (aliasing the drained pipeline buffers),
//     and lanes read it back by (row, column) to add the bias, apply the activation and store.
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
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
#define GPUCONV_TC_SM70 1
#else
#define GPUCONV_TC_SM70 0
#endif

#define GPUCONV_TC_THREADS 256
#define GPUCONV_TC_WARPS (GPUCONV_TC_THREADS / 32)
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

// Round a float fragment's elements to TF32 (the float instantiations); half / bfloat16 fragments are exact.
template <typename Frag>
__device__ __forceinline__ void gpuconv_tc_round(Frag& f, const float*) {
#if GPUCONV_TC_SM80
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = nvcuda::wmma::__float_to_tf32(f.x[i]);
#endif
}
template <typename Frag, typename T>
__device__ __forceinline__ void gpuconv_tc_round(Frag&, const T*) {}

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
template <typename T, int BM_, int BN_, int STAGES_, bool A_ROW, bool B_ROW>
struct gpuconv_tc_tile {
    static constexpr int BM = BM_, BN = BN_, STAGES = STAGES_;
    static constexpr int BK = GPUCONV_TC_BYTES_K / sizeof(T);
    static constexpr int VEC = 16 / sizeof(T);  // elements of one 16-byte copy
    static constexpr int SKEW = VEC;            // 16 bytes of row padding
    static constexpr int FK = gpuconv_tc<T>::FK;
    static constexpr int WN = BN / 32;                       // warps along the columns
    static constexpr int WM = GPUCONV_TC_WARPS / WN;         // warps along the rows
    static constexpr int WTM = BM / WM;                      // rows of a warp tile
    static constexpr int FM = WTM / 16, FN = 2;              // fragments of a warp tile
    static constexpr int LDA = A_ROW ? BK + SKEW : BM + SKEW;
    static constexpr int LDB = B_ROW ? BN + SKEW : BK + SKEW;
    static constexpr int A_ELEMS = A_ROW ? BM * LDA : BK * LDA;
    static constexpr int B_ELEMS = B_ROW ? BK * LDB : BN * LDB;
    static constexpr int STAGE_ELEMS = A_ELEMS + B_ELEMS;
    static constexpr int SCRATCH_BYTES = GPUCONV_TC_WARPS * 16 * GPUCONV_TC_SCRATCH * 4;
    static constexpr int PIPE_BYTES = STAGES * STAGE_ELEMS * (int)sizeof(T);
    static constexpr int SMEM_BYTES = PIPE_BYTES > SCRATCH_BYTES ? PIPE_BYTES : SCRATCH_BYTES;
    static_assert(WTM % 16 == 0 && FM >= 1, "warp tile rows must be a multiple of 16");
    static_assert(BK % FK == 0, "a reduction step holds whole fragments");

    // Element (m, k) of stage s's A tile, and (k, n) of its B tile.
    __device__ static T* a_at(T* smem, int s, int m, int k) {
        return smem + s * STAGE_ELEMS + (A_ROW ? m * LDA + k : k * LDA + m);
    }
    __device__ static T* b_at(T* smem, int s, int k, int n) {
        return smem + s * STAGE_ELEMS + A_ELEMS + (B_ROW ? k * LDB + n : n * LDB + k);
    }
};

// The accumulators of one warp: Tile::FM x Tile::FN fragments of 16 x 16 floats.
template <typename T, typename Tile>
struct gpuconv_tc_acc {
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, Tile::FK, float> f[Tile::FM][Tile::FN];
    __device__ void zero() {
#pragma unroll
        for (int i = 0; i < Tile::FM; ++i)
#pragma unroll
            for (int j = 0; j < Tile::FN; ++j) nvcuda::wmma::fill_fragment(f[i][j], 0.0f);
    }
};

// acc += A(stage s) * B(stage s) over one BK step, for the warp tile at rows wm0, columns wn0 of the block.
template <typename T, typename Tile, bool A_ROW, bool B_ROW>
__device__ __forceinline__ void gpuconv_tc_step(T* smem, int s, gpuconv_tc_acc<T, Tile>& acc, int wm0, int wn0) {
    namespace wmma = nvcuda::wmma;
    typedef typename gpuconv_tc<T>::elem E;
    typedef typename gpuconv_tc_if<A_ROW, wmma::row_major, wmma::col_major>::type LA;
    typedef typename gpuconv_tc_if<B_ROW, wmma::row_major, wmma::col_major>::type LB;
#pragma unroll
    for (int kk = 0; kk < Tile::BK; kk += Tile::FK) {
        // The FN B fragments stay loaded while the A fragments stream past (fewer live registers).
        wmma::fragment<wmma::matrix_b, 16, 16, Tile::FK, E, LB> b[Tile::FN];
#pragma unroll
        for (int j = 0; j < Tile::FN; ++j) {
            wmma::load_matrix_sync(b[j], Tile::b_at(smem, s, kk, wn0 + 16 * j), Tile::LDB);
            gpuconv_tc_round(b[j], (const T*)nullptr);
        }
#pragma unroll
        for (int i = 0; i < Tile::FM; ++i) {
            wmma::fragment<wmma::matrix_a, 16, 16, Tile::FK, E, LA> a;
            wmma::load_matrix_sync(a, Tile::a_at(smem, s, wm0 + 16 * i, kk), Tile::LDA);
            gpuconv_tc_round(a, (const T*)nullptr);
#pragma unroll
            for (int j = 0; j < Tile::FN; ++j) wmma::mma_sync(acc.f[i][j], a, b[j], acc.f[i][j]);
        }
    }
}

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
    __syncthreads();  // the pipeline buffers are free for the epilogue scratch
}

// Epilogue: for each fragment of the warp tile, store it to the warp's scratch, then lane l handles row l / 2,
// columns 8 (l % 2) .. + 8 of it. row_of(r) maps a block-tile row to the output offset of its first element
// (-1: no such row), once per row; emit(offset, c, value) stores the value of block-tile column c.
template <typename T, typename Tile, typename RowOf, typename Emit>
__device__ __forceinline__ void gpuconv_tc_epilogue(unsigned char* smem_bytes, gpuconv_tc_acc<T, Tile>& acc,
                                                    int wm0, int wn0, RowOf& row_of, Emit& emit) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* scratch = reinterpret_cast<float*>(smem_bytes) + warp * 16 * GPUCONV_TC_SCRATCH;
    const int r = lane / 2, c0 = 8 * (lane % 2);
#pragma unroll
    for (int i = 0; i < Tile::FM; ++i) {
        const gpuconv_i64 base = row_of(wm0 + 16 * i + r);
#pragma unroll
        for (int j = 0; j < Tile::FN; ++j) {
            nvcuda::wmma::store_matrix_sync(scratch, acc.f[i][j], GPUCONV_TC_SCRATCH, nvcuda::wmma::mem_row_major);
            __syncwarp();
            if (base >= 0) {
#pragma unroll
                for (int c = 0; c < 8; ++c) emit(base, wn0 + 16 * j + c0 + c, scratch[r * GPUCONV_TC_SCRATCH + c0 + c]);
            }
            __syncwarp();
        }
    }
}

// A 16-byte chunk of zeros into shared memory (a tile chunk in padding or past the tile's edge).
template <typename T>
__device__ __forceinline__ void gpuconv_tc_zero16(T* dst) {
    *reinterpret_cast<int4*>(dst) = make_int4(0, 0, 0, 0);
}
