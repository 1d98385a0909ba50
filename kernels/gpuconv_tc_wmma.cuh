// The warp-level part of the tensor-core kernels on nvcuda::wmma: the FP16 path of sm_70 and sm_75, where
// mma.sync m16n8k16 and ldmatrix are missing (gpuconv_tc_mma.cuh is the sm_80+ path, with the same three pieces:
// accumulators, one reduction step, epilogue). Included by gpuconv_tc.cuh (GPUCONV_TC_PTX = 0); the emulator
// runs it with -DGPUCONV_TC_WMMA (tests/test_tc_kernels.py).
//
// Fragments m16n16k16 for __half / __nv_bfloat16 and m16n16k8 precision::tf32 for float (every loaded operand
// element through wmma::__float_to_tf32), float accumulators; a warp tile is WTM x WTN, (WTM / 16) x (WTN / 16) fragments.
// The fragment layout is unspecified, so accumulators are never indexed by position: the epilogue stores each
// fragment to the warp's 16 x 20 float scratch (aliasing the drained pipeline buffers) and lanes read it back by
// (row, column) to add the bias, apply the activation and store.
#pragma once

#include <mma.h>

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

