// Forward pass on Hopper's warpgroup MMA (wgmma, sm_90a): y = act(conv(x, w) + bias), the implicit GEMM of
// kernels/conv_tc_forward.cu (rows = N*OH*OW output pixels, columns = Mg output channels, reduction = the
// KH*KW*Cg taps; blockIdx.z = group) with the same 16-byte copies (kernels/gpuconv_tc_fwd_copies.cuh), FP16,
// BF16 or TF32 products, float accumulators.
//
//   gpuconv_wgmma_fwd<T, STAGES>
//     T       __half or __nv_bfloat16; or float (TF32), with w the filter transposed and rounded by
//             gpuconv_tf32_filter_kmajor first
//     STAGES  shared buffers; STAGES - 2 steps of copies in flight ahead of the step the tensor cores multiply,
//             whose wgmma stays in flight while the next step's copies land (gpuconv_wg_mainloop)
// The block is one warpgroup and a 128 x 128 tile (kernels/gpuconv_wg.cuh): A is x (channels fastest, K-major),
// B is w (output channels fastest as in HWIO: N-major; TF32: K-major from the transposed filter, since wgmma's
// TF32 operands are K-major only, and A from registers, rounded there). The routing (cuda_tc.forward_plan)
// takes it on sm_90 for Cg and Mg whole 16-byte runs, Mg above 64 and 16-byte aligned x and w; NVRTC builds it
// for sm_90a only (elsewhere the body is empty), and the CUDA backend compiles this file with -arch=sm_90a.
// gpuconv-nvrtc-arches: sm_90a
// gpuconv-name-expressions: gpuconv_wgmma_fwd<__half, 4>, gpuconv_wgmma_fwd<__nv_bfloat16, 4>
// gpuconv-name-expressions: gpuconv_wgmma_fwd<float, 4>, gpuconv_tf32_filter_kmajor<float>
#include "gpuconv_tc_fwd_copies.cuh"
#include "gpuconv_wg.cuh"

#if GPUCONV_WGMMA_BUILT
template <typename T, int STAGES>
__device__ __forceinline__ void gpuconv_wgmma_fwd_body(const T* __restrict__ x, const T* __restrict__ w,
                                                       const T* __restrict__ bias, T* __restrict__ y,
                                                       GPUCONV_CONV_SHAPE_PARAMS, int has_bias, int act) {
    constexpr bool TF32 = sizeof(T) == 4;  // w: the transposed, rounded filter (G, Mg, KH*KW*Cg)
    typedef gpuconv_wg_tile<T, STAGES, TF32> Tile;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES, the launch's shared_mem
    unsigned char* smem = gpuconv_wg_smem<Tile>(smem_bytes);

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;
    const int P = N * OH * OW;
    const int K = KH * KW * Cg;
    const int row0 = blockIdx.x * Tile::BM, col0 = blockIdx.y * Tile::BN;
    const int KT = (K + Tile::BK - 1) / Tile::BK;

    float acc[2][64];
    const T* wg = TF32 ? w + (gpuconv_i64)(g * Mg + col0) * K : w + g * Mg + col0;
    gpuconv_tc_rows<Tile> rows;
    auto issue = gpuconv_tc_fwd_copies<T, Tile, TF32>(rows, reinterpret_cast<T*>(smem), x + g * Cg, wg, N, H, W, C,
                                                      KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl, row0, col0);
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
    const T* __restrict__ w,     // weights (KH, KW, Cg, M), HWIO; float: (G, Mg, KH*KW*Cg) as TF32 values;
                                 // contiguous, 16-byte aligned
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

// The TF32 forward's filter: wt[g][m][(k1 * KW + k2) * Cg + c] = w[k1][k2][c][g * Mg + m] rounded to TF32
// (cvt.rna, the rounding of the mma.sync kernels' fragments and of the NumPy oracle), so that the wgmma
// kernel's B copies are K-major 16-byte runs already rounded. One thread an element of wt, in order (the
// writes coalesce; the reads are strided, from a filter of a few MB that L2 holds).
template <typename T>
__global__ void gpuconv_tf32_filter_kmajor(const T* __restrict__ w,  // (KH, KW, Cg, M), HWIO, contiguous
                                           T* __restrict__ wt,       // (G, Mg, KH*KW*Cg), written
                                           int K,                    // KH*KW*Cg
                                           int M) {                  // G * Mg
    // grid-stride over the K * M elements (1-D grid)
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < K * M; i += gridDim.x * blockDim.x) {
        const int gm = i / K, k = i - gm * K;  // gm = g * Mg + m: the row of wt
        wt[i] = gpuconv_tc_operand<T>(w[(gpuconv_i64)k * M + gm]);
    }
}
