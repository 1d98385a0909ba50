// Forward pass on Hopper's warpgroup MMA (wgmma, sm_90a): y = act(conv(x, w) + bias), the implicit GEMM of
// kernels/conv_tc_forward.cu (rows = N*OH*OW output pixels, columns = Mg output channels, reduction = the
// KH*KW*Cg taps; blockIdx.z = group) with the same 16-byte copies (kernels/gpuconv_tc_fwd_copies.cuh), FP16 and
// BF16 products, float accumulators.
//
//   gpuconv_wgmma_fwd<T, STAGES>
//     T       __half or __nv_bfloat16
//     STAGES  shared buffers; STAGES - 2 steps of copies in flight ahead of the step the tensor cores multiply,
//             whose wgmma stays in flight while the next step's copies land (gpuconv_wg_mainloop)
// The block is one warpgroup and a 128 x 128 tile (kernels/gpuconv_wg.cuh): A is x (channels fastest, K-major),
// B is w (output channels fastest as in HWIO: N-major). The routing (cuda_tc.forward_plan)
// takes it on sm_90 for Cg and Mg whole 16-byte runs, Mg above 64 and 16-byte aligned x and w; NVRTC builds it
// for sm_90a only (elsewhere the body is empty), and the CUDA backend compiles this file with -arch=sm_90a.
// gpuconv-nvrtc-arches: sm_90a
// gpuconv-name-expressions: gpuconv_wgmma_fwd<__half, 4>, gpuconv_wgmma_fwd<__nv_bfloat16, 4>
#include "gpuconv_tc_fwd_copies.cuh"
#include "gpuconv_wg.cuh"

#if GPUCONV_WGMMA_BUILT
template <typename T, int STAGES>
__device__ __forceinline__ void gpuconv_wgmma_fwd_body(const T* __restrict__ x, const T* __restrict__ w,
                                                       const T* __restrict__ bias, T* __restrict__ y,
                                                       GPUCONV_CONV_SHAPE_PARAMS, int has_bias, int act) {
    typedef gpuconv_wg_tile<T, STAGES, false> Tile;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES, the launch's shared_mem
    unsigned char* smem = gpuconv_wg_smem<Tile>(smem_bytes);

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;
    const int P = N * OH * OW;
    const int K = KH * KW * Cg;
    const int row0 = blockIdx.x * Tile::BM, col0 = blockIdx.y * Tile::BN;
    const int KT = (K + Tile::BK - 1) / Tile::BK;

    float acc[2][64];
    auto issue = gpuconv_tc_fwd_copies<T, Tile>(reinterpret_cast<T*>(smem), x + g * Cg, w + g * Mg + col0, N, H, W,
                                                C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl, row0, col0);
    gpuconv_wg_mainloop<T, Tile>(smem, KT, issue, acc);

    // Bias and activation on the float sums, one rounding on the store.
    auto row_of = [&](int r) -> gpuconv_i64 { return row0 + r < P ? (gpuconv_i64)(row0 + r) * M + g * Mg : -1; };
    auto emit = [&](gpuconv_i64 base, int c, float v) {
        gpuconv_tc_store(y + base, bias, g * Mg, col0 + c, Mg, v, has_bias, act);
    };
    gpuconv_wg_epilogue(acc, row_of, emit);
}
#endif  // GPUCONV_WGMMA_BUILT

// Two blocks an SM: 128 accumulators a thread, at most 255 registers.
template <typename T, int STAGES>
__global__ void __launch_bounds__(GPUCONV_TC_THREADS, 2) gpuconv_wgmma_fwd(
    const T* __restrict__ x,     // input (N, H, W, C), NHWC, contiguous, 16-byte aligned
    const T* __restrict__ w,     // weights (KH, KW, Cg, M), HWIO, contiguous, 16-byte aligned
    const T* __restrict__ bias,  // bias (M,); read only when has_bias != 0
    T* __restrict__ y,           // output (N, OH, OW, M), written: act(conv(x, w) + bias)
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int has_bias,                // 1: add bias[m]
    int act)                     // GPUCONV_ACT_* applied to z before the store
{
    // grid (ceil(N*OH*OW / 128), ceil(Mg / 128), G), block 128 (one warpgroup). Empty but on sm_90a.
#if GPUCONV_WGMMA_BUILT
    gpuconv_wgmma_fwd_body<T, STAGES>(x, w, bias, y, N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl,
                                      has_bias, act);
#endif
}
