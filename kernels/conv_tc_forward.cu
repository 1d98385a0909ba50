// Forward pass on tensor cores: y = act(conv(x, w) + bias), the same implicit GEMM as gpuconv_conv_fwd
// (rows = N*OH*OW output pixels, columns = Mg output channels, reduction = KH*KW*Cg taps (k1, k2, n) like the
// HWIO weights, its steps in that order or, where Cg is whole steps, taps inside each block of channels;
// blockIdx.z = group), on tensor cores. Design: kernels/gpuconv_tc.cuh.
//
//   gpuconv_tc_fwd<T, BM, BN, STAGES, VEC>
//     T       float (TF32 products, precision="tf32"), __half (FP16) or __nv_bfloat16 (BF16); float accumulators
//     BM x BN block tile (128 x 128 or 96 x 128; 128 x 64 or 256 x 64 for at most 64 output channels per
//             group: cuda_tc._tile), STAGES buffers
//     VEC     true: 16-byte cp.async copies of x and w runs; needs Cg and Mg multiples of 16 bytes (so one
//             copy lies in one tap) and 16-byte aligned x, w (the routing checks).
//             false: element loads, zeros outside, for any shape (the C = 3 stem, odd channel counts).
// The A tile (x) is stored row-major (channels fastest, as in NHWC), the B tile (w) row-major (output channels
// fastest, as in HWIO). Padding enters as zeros that are multiplied (a NaN weight reaches every output whose
// window covers it, as the SIMT kernels and the NumPy backend do).
// gpuconv-name-expressions: gpuconv_tc_fwd<float, 128, 128, 4, true>, gpuconv_tc_fwd<__half, 128, 128, 4, true>, gpuconv_tc_fwd<__nv_bfloat16, 128, 128, 4, true>
// gpuconv-name-expressions: gpuconv_tc_fwd<float, 96, 128, 4, true>, gpuconv_tc_fwd<__half, 96, 128, 4, true>, gpuconv_tc_fwd<__nv_bfloat16, 96, 128, 4, true>
// gpuconv-name-expressions: gpuconv_tc_fwd<float, 128, 64, 4, true>, gpuconv_tc_fwd<__half, 128, 64, 4, true>, gpuconv_tc_fwd<__nv_bfloat16, 128, 64, 4, true>
// gpuconv-name-expressions: gpuconv_tc_fwd<float, 256, 64, 3, true>, gpuconv_tc_fwd<__half, 256, 64, 3, true>, gpuconv_tc_fwd<__nv_bfloat16, 256, 64, 3, true>
// gpuconv-name-expressions: gpuconv_tc_fwd<__half, 128, 128, 2, true>, gpuconv_tc_fwd<__half, 128, 64, 2, true>
// gpuconv-name-expressions: gpuconv_tc_fwd<float, 128, 64, 2, false>, gpuconv_tc_fwd<__half, 128, 64, 2, false>, gpuconv_tc_fwd<__nv_bfloat16, 128, 64, 2, false>
#include "gpuconv_tc_fwd_copies.cuh"

template <typename T, int BM, int BN, int STAGES, bool VEC>
__device__ __forceinline__ void gpuconv_tc_fwd_body(const T* __restrict__ x, const T* __restrict__ w,
                                                    const T* __restrict__ bias, T* __restrict__ y,
                                                    GPUCONV_CONV_SHAPE_PARAMS, int has_bias, int act) {
    typedef gpuconv_tc_tile<T, BM, BN, STAGES, true, true> Tile;
    constexpr int BK = Tile::BK, TH = Tile::THREADS;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES, the launch's shared_mem
    T* smem = reinterpret_cast<T*>(smem_bytes);

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;
    const int P = N * OH * OW;   // GEMM rows
    const int K = KH * KW * Cg;  // reduction length
    const int row0 = blockIdx.x * BM, col0 = blockIdx.y * BN;
    const int t = threadIdx.x, warp = t / 32;
    const int wm0 = (warp / Tile::WN) * Tile::WTM, wn0 = (warp % Tile::WN) * Tile::WTN;
    const int KT = (K + BK - 1) / BK;
    const T* xg = x + g * Cg;
    const T* wg = w + g * Mg + col0;

    gpuconv_tc_acc<T, Tile> acc;
    acc.zero();

    if constexpr (VEC) {
        gpuconv_tc_rows<Tile> rows;
        auto issue = gpuconv_tc_fwd_copies<T, Tile>(rows, smem, xg, wg, N, H, W, C, KH, KW, M, G, OH, OW, s1, s2,
                                                    d1, d2, pt, pl, row0, col0);
        gpuconv_tc_mainloop<T, Tile, true, true>(smem, KT, issue, acc, wm0, wn0);
    } else {
        // Element loads: A's reduction index kt * BK + t % BK for rows t / BK + (TH / BK) i (the rows' window
        // corners decoded once into shared memory), B's column t % BN for rows t / BN + (TH / BN) j.
        constexpr int AR = TH / BK, RA = BM / AR;
        constexpr int BR = TH / BN, RB = BK / BR;
        __shared__ int rinfo[3][BM];  // per tile row: b * H (-1: past the end), top row, left column
        for (int r = t; r < BM; r += TH) {
            const int row = row0 + r;
            rinfo[0][r] = -1;
            rinfo[1][r] = rinfo[2][r] = 0;
            if (row < P) {
                const int b = row / (OH * OW), rem = row - b * (OH * OW);
                const int oi = rem / OW, oj = rem - oi * OW;
                rinfo[0][r] = b * H;
                rinfo[1][r] = oi * s1 - pt;
                rinfo[2][r] = oj * s2 - pl;
            }
        }
        __syncthreads();
        const int ak = t % BK;
        gpuconv_walk3 kr;  // reduction index kt * BK + ak as digits (k1, k2, n)
        kr.init(ak, BK, KW, Cg);
        const int bcol = t % BN;
        const bool bcol_ok = col0 + bcol < Mg;
        auto issue = [&](int kt, int s) {
            const bool k_ok = kt * BK + ak < K;
            const int k1 = kr.i0, k2 = kr.i1, cn = kr.i2;
            kr.advance();  // issue runs for kt = 0, 1, 2, ... in order
#pragma unroll
            for (int i = 0; i < RA; ++i) {
                const int r = t / BK + AR * i;
                const int pix = rinfo[0][r], ih = rinfo[1][r] + k1 * d1, iw = rinfo[2][r] + k2 * d2;
                T v = T(0.0f);
                if (k_ok && pix >= 0 && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                    v = xg[(gpuconv_i64)((pix + ih) * W + iw) * C + cn];
                *Tile::a_at(smem, s, r, ak) = v;
            }
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int kb = t / BN + BR * j, kk = kt * BK + kb;
                *Tile::b_at(smem, s, kb, bcol) = (bcol_ok && kk < K) ? wg[(gpuconv_i64)kk * M + bcol] : T(0.0f);
            }
        };
        gpuconv_tc_mainloop<T, Tile, true, true>(smem, KT, issue, acc, wm0, wn0);
    }

    // Epilogue: bias and activation on the float sums, one rounding on the store.
    auto row_of = [&](int r) -> gpuconv_i64 { return row0 + r < P ? (gpuconv_i64)(row0 + r) * M + g * Mg : -1; };
    auto emit = [&](gpuconv_i64 base, int c, float v) {
        gpuconv_tc_store(y + base, bias, g * Mg, col0 + c, Mg, v, has_bias, act);
    };
    gpuconv_tc_epilogue<T, Tile>(smem_bytes, acc, wm0, wn0, row_of, emit);
}

// Two blocks per SM: at most 255 registers (a 64 x 64 warp tile holds 128 accumulators a thread).
template <typename T, int BM, int BN, int STAGES, bool VEC>
__global__ void __launch_bounds__(GPUCONV_TC_THREADS, 2) gpuconv_tc_fwd(
    const T* __restrict__ x,     // input (N, H, W, C), NHWC, contiguous
    const T* __restrict__ w,     // weights (KH, KW, Cg, M), HWIO, contiguous
    const T* __restrict__ bias,  // bias (M,); read only when has_bias != 0
    T* __restrict__ y,           // output (N, OH, OW, M), written: act(conv(x, w) + bias)
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int has_bias,                // 1: add bias[m]
    int act)                     // GPUCONV_ACT_* applied to z before the store
{
    // grid (ceil(N*OH*OW / BM), ceil(Mg / BN), G), block GPUCONV_TC_THREADS (128). Empty on targets without
    // this tensor-core type.
    if constexpr (gpuconv_tc<T>::enabled)
        gpuconv_tc_fwd_body<T, BM, BN, STAGES, VEC>(x, w, bias, y, N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1,
                                                     d2, pt, pl, has_bias, act);
}
