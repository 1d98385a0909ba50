// dx on Hopper's warpgroup MMA (wgmma, sm_90a): the implicit GEMM of gpuconv_tc_bwd_input
// (kernels/conv_tc_backward.cu; one launch per stride phase: rows = the phase's input pixels, columns = Cg,
// reduction = the phase's taps x Mg) with the same 16-byte copies, exact path and epilogue rule
// (kernels/gpuconv_tc_dx.cuh), FP16, BF16 or TF32 products, float accumulators.
//
//   gpuconv_wgmma_bwd_input<T, STAGES, DZ_TF32>
//     T        __half, __nv_bfloat16, or float (TF32: w rounded first, gpuconv_tf32_flag_round)
//     STAGES   shared buffers (gpuconv_wg_mainloop)
//     DZ_TF32  float only, false by default: dz holds TF32 values (backward's pass stored it rounded, as for the
//              mma.sync kernels' DZ_TF32 variants), so A is read from shared memory as it is
// The block is one warpgroup and a 128 x 128 tile (kernels/gpuconv_wg.cuh): A is dz (output channels fastest,
// K-major; in TF32 loaded to registers and rounded there, unless DZ_TF32), B is w read along its output channels
// (K-major too).
// The routing (cuda_tc.backward_input_plan) takes it on sm_90 for Cg above 64 and Mg a multiple of a reduction
// step, 16-byte aligned dz and w; NVRTC builds it for sm_90a only (elsewhere the body is empty), and the CUDA
// backend compiles this file with -arch=sm_90a. The first launch of the plan sets wflag when w holds inf / NaN:
// gpuconv_nonfinite_flag (kernels/conv_tc_backward.cu), or in TF32 gpuconv_tf32_flag_round, which also writes
// the rounded w that the phases then read.
// gpuconv-nvrtc-arches: sm_90a
// gpuconv-name-expressions: gpuconv_wgmma_bwd_input<__half, 4>, gpuconv_wgmma_bwd_input<__nv_bfloat16, 4>
// gpuconv-name-expressions: gpuconv_wgmma_bwd_input<float, 4>, gpuconv_wgmma_bwd_input<float, 4, true>
// gpuconv-name-expressions: gpuconv_tf32_flag_round<float>
#include "gpuconv_tc_dx.cuh"
#include "gpuconv_wg.cuh"

#if GPUCONV_WGMMA_BUILT
template <typename T, int STAGES, bool DZ_TF32>
__device__ __forceinline__ void gpuconv_wgmma_bwd_input_body(
    const T* __restrict__ dz, const T* __restrict__ w, const int* __restrict__ wflag, T* __restrict__ dx,
    const T* __restrict__ bias, GPUCONV_CONV_SHAPE_PARAMS, GPUCONV_DX_PHASE_PARAMS, int has_bias, int out_act) {
    typedef gpuconv_wg_tile<T, STAGES, true, DZ_TF32> Tile;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES, the launch's shared_mem
    unsigned char* smem = gpuconv_wg_smem<Tile>(smem_bytes);

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;
    const int P = N * Hp * Wp;
    const int K = T1 * T2 * Mg;
    const int row0 = blockIdx.x * Tile::BM, col0 = blockIdx.y * Tile::BN;
    const int KT = (K + Tile::BK - 1) / Tile::BK;
    const T* dzg = dz + g * Mg;
    const T* wg = w + g * Mg;

    if (*wflag) {
        gpuconv_tc_dx_exact<T, Tile::BM, Tile::BN, Tile::THREADS>(dzg, wg, dx, bias, g, row0, col0, GPUCONV_DX_ARGS,
                                                                  has_bias, out_act);
        return;
    }
    float acc[2][64];
    if (KT > 0) {
        gpuconv_tc_rows<Tile> rows;
        auto issue = gpuconv_tc_dx_copies<T, Tile>(rows, reinterpret_cast<T*>(smem), dzg, wg, row0, col0,
                                                   GPUCONV_DX_ARGS);
        gpuconv_wg_mainloop<T, Tile>(smem, KT, issue, acc);
    } else {  // a phase no tap reaches: dx is act(0 + bias) there
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int i = 0; i < 64; ++i) acc[h][i] = 0.0f;
    }

    auto row_of = [&](int r) -> gpuconv_i64 {
        return row0 + r < P ? gpuconv_tc_dx_pixel(row0 + r, g, GPUCONV_DX_ARGS) : -1;
    };
    auto emit = [&](gpuconv_i64 base, int c, float v) {
        gpuconv_tc_store(dx + base, bias, g * Cg, col0 + c, Cg, v, has_bias, out_act);
    };
    gpuconv_wg_epilogue(acc, row_of, emit);
}
#endif  // GPUCONV_WGMMA_BUILT

// Two blocks an SM: 128 accumulators a thread, at most 255 registers.
template <typename T, int STAGES, bool DZ_TF32 = false>
__global__ void __launch_bounds__(GPUCONV_TC_THREADS, 2) gpuconv_wgmma_bwd_input(
    const T* __restrict__ dz,       // gradient of the pre-activation output (N, OH, OW, M), contiguous, aligned;
                                    // DZ_TF32: TF32 values
    const T* __restrict__ w,        // weights (KH, KW, Cg, M), HWIO, 16-byte aligned; float: TF32 values
    const int* __restrict__ wflag,  // 1: w holds inf or NaN (gpuconv_nonfinite_flag), take the exact path
    T* __restrict__ dx,             // written: input gradient (N, H, W, C), the pixels of this stride phase
    const T* __restrict__ bias,     // bias (C,) of a transposed convolution; read only when has_bias != 0
    GPUCONV_CONV_SHAPE_PARAMS,      // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    GPUCONV_DX_PHASE_PARAMS,        // one stride phase of dx (gpuconv_common.cuh)
    int has_bias,                   // 1: add bias[c] to dx (conv2d_transpose); 0 for a gradient
    int out_act)                    // GPUCONV_ACT_* applied to dx (+ bias) on the store; identity for a gradient
{
    // grid (ceil(N*Hp*Wp / 128), ceil(Cg / 128), G), block 128 (one warpgroup). Empty but on sm_90a.
#if GPUCONV_WGMMA_BUILT
    gpuconv_wgmma_bwd_input_body<T, STAGES, DZ_TF32>(dz, w, wflag, dx, bias, GPUCONV_DX_ARGS, has_bias, out_act);
#endif
}

// The TF32 dx's pass over w: flag = 1 if w holds inf / NaN (as gpuconv_nonfinite_flag: from the values as given,
// so the NaN rule is the mma.sync kernels'), and wr = w rounded to TF32 (cvt.rna, the rounding of the mma.sync
// kernels' fragments and of the NumPy oracle), which the wgmma phases read as B. The exact path rounds its
// operands itself: reading wr there changes nothing.
template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_tf32_flag_round(
    const T* __restrict__ w,   // weights, contiguous
    int* __restrict__ flag,    // set to 1 if some element is NaN or +-Inf (zeroed by the caller; never cleared)
    T* __restrict__ wr,        // written: w rounded to TF32
    gpuconv_i64 size)          // number of elements
{
    const gpuconv_i64 stride = (gpuconv_i64)gridDim.x * blockDim.x;
    bool bad = false;
    for (gpuconv_i64 i = (gpuconv_i64)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        const T v = w[i];
        bad |= !(v - v == v - v);  // NaN for NaN and +-Inf, 0 == 0 for every finite value
        wr[i] = gpuconv_tc_operand<T>(v);
    }
    if (bad) *flag = 1;  // every writer writes the same value: no atomic needed
}
