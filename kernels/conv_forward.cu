// Forward pass: y = act(conv(x, w) + bias), convolution, bias and activation fused (z never goes to memory).
//
//   z[b,i,j,m] = sum_{k1,k2,n} w[k1,k2,n,m] * x[b, i*s1 + k1*d1 - pt, j*s2 + k2*d2 - pl, g*Cg + n] + bias[m]
//
// Two paths, chosen by gpuconv/backends/cuda.py:
//   gpuconv_conv_fwd<T, BN>  tiled implicit GEMM per group: rows = N*OH*OW output pixels, columns = Mg output
//                            channels, reduction = KH*KW*Cg taps (ordered k1, k2, n like the HWIO weights);
//                            tiles of 64 x 64 (BN = 64) or, for at most 32 output channels per group, 128 x 32.
//   gpuconv_conv_fwd_direct  one thread per output element, for few output channels per group (depthwise):
//                            a 64-wide column tile would mostly compute padding there.
#include "gpuconv_common.cuh"

template <typename T, int BN>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_conv_fwd(
    const T* __restrict__ x,     // input (N, H, W, C), NHWC, contiguous
    const T* __restrict__ w,     // weights (KH, KW, Cg, M), HWIO, contiguous
    const T* __restrict__ bias,  // bias (M,); read only when has_bias != 0
    T* __restrict__ y,           // output (N, OH, OW, M), written: act(conv(x, w) + bias)
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int has_bias,                // 1: add bias[m]
    int act)                     // GPUCONV_ACT_* applied to z before the store
{
    typedef typename gpuconv_acc<T>::type Acc;
    constexpr int TX = BN / 4;                    // threads along the columns of the tile
    constexpr int BM = 4 * GPUCONV_THREADS / TX;  // tile rows: 64 for BN = 64, 128 for BN = 32
    constexpr int RA = BM / 16;                   // A elements each thread loads per step
    constexpr int RB = BN / 16;                   // B elements each thread loads per step
    __shared__ __align__(16) Acc As[2][GPUCONV_BK][BM + GPUCONV_PAD];  // im2col tiles of x: As[buffer][k][row]
    __shared__ __align__(16) Acc Bs[2][GPUCONV_BK][BN + GPUCONV_PAD];  // weight tiles: Bs[buffer][k][column]

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;                 // this block's group
    const int P = N * OH * OW;                // GEMM rows
    const int K = KH * KW * Cg;               // GEMM reduction length
    const int row0 = blockIdx.x * BM;
    const int col0 = blockIdx.y * BN;
    const int t = threadIdx.x, tx = t % TX, ty = t / TX;

    // Loader of A: reduction index k0 + t % BK for the rows t / BK + 16 i; each row's pixel decoded once.
    const int ak = t % GPUCONV_BK;
    int a_b[RA], a_ih[RA], a_iw[RA];  // batch (-1: row past the end), top-left input row and column of the window
#pragma unroll
    for (int i = 0; i < RA; ++i) {
        const int row = row0 + t / GPUCONV_BK + 16 * i;
        a_b[i] = -1;
        a_ih[i] = a_iw[i] = 0;
        if (row < P) {
            const int b = row / (OH * OW), rem = row - b * (OH * OW);
            const int oi = rem / OW, oj = rem - oi * OW;
            a_b[i] = b;
            a_ih[i] = oi * s1 - pt;
            a_iw[i] = oj * s2 - pl;
        }
    }
    // Loader of B: column t % BN for the reduction rows t / BN + (THREADS / BN) j (coalesced along M).
    const int bcol = t % BN;
    const bool bcol_ok = col0 + bcol < Mg;
    const T* wcol = w + g * Mg + col0 + bcol;
    const T* xg = x + g * Cg;

    Acc acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);

    // The next tile is loaded into registers (ra, rb) while the current one is multiplied, then stored to the
    // other shared buffer: one barrier per step.
    Acc ra[RA], rb[RB];
    gpuconv_walk3 kr;  // reduction index k0 + ak as digits (k1, k2, cn), advanced without divisions
    kr.init(ak, GPUCONV_BK, KW, Cg);
    auto load = [&](int k0) {
        const bool r_ok = k0 + ak < K;
        const int k1 = kr.i0, k2 = kr.i1, cn = kr.i2;
        kr.advance();
#pragma unroll
        for (int i = 0; i < RA; ++i) {
            const int ih = a_ih[i] + k1 * d1, iw = a_iw[i] + k2 * d2;
            ra[i] = Acc(0);
            if (r_ok && a_b[i] >= 0 && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                ra[i] = gpuconv_to_acc(xg[(gpuconv_i64)((a_b[i] * H + ih) * W + iw) * C + cn]);
        }
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const int kr = k0 + t / BN + (GPUCONV_THREADS / BN) * j;
            rb[j] = (bcol_ok && kr < K) ? gpuconv_to_acc(wcol[(gpuconv_i64)kr * M]) : Acc(0);
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < RA; ++i) As[buf][ak][t / GPUCONV_BK + 16 * i] = ra[i];
#pragma unroll
        for (int j = 0; j < RB; ++j) Bs[buf][t / BN + (GPUCONV_THREADS / BN) * j][bcol] = rb[j];
    };

    gpuconv_gemm_mainloop<Acc, BM, BN>(0, K, load, stage, As, Bs, acc, tx, ty);

    // Epilogue: bias and activation in registers, coalesced stores along M.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + 4 * ty + i;
        if (row >= P) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + 4 * tx + j;
            if (col >= Mg) continue;
            const int m = g * Mg + col;
            Acc z = acc[i][j];
            if (has_bias) z += gpuconv_to_acc(bias[m]);
            gpuconv_store(y + (gpuconv_i64)row * M + m, gpuconv_act_forward(z, act));
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_conv_fwd_direct(
    const T* __restrict__ x,     // input (N, H, W, C), NHWC, contiguous
    const T* __restrict__ w,     // weights (KH, KW, Cg, M), HWIO, contiguous
    const T* __restrict__ bias,  // bias (M,); read only when has_bias != 0
    T* __restrict__ y,           // output (N, OH, OW, M), written: act(conv(x, w) + bias)
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int has_bias,                // 1: add bias[m]
    int act)                     // GPUCONV_ACT_* applied before the store
{
    typedef typename gpuconv_acc<T>::type Acc;
    // Block (bx, by), bx * by = GPUCONV_THREADS: threadIdx.x walks output channels, threadIdx.y pixels.
    const int m = blockIdx.y * blockDim.x + threadIdx.x;  // output channel
    const int p = blockIdx.x * blockDim.y + threadIdx.y;  // output pixel
    if (m >= M || p >= N * OH * OW) return;
    const int Cg = C / G, Mg = M / G;
    const gpuconv_i64 e = (gpuconv_i64)p * M + m;
    const int g = m / Mg;
    const int b = p / (OH * OW), rem = p - b * (OH * OW);
    const int oi = rem / OW, oj = rem - oi * OW;
    Acc z = Acc(0);
    for (int k1 = 0; k1 < KH; ++k1) {
        const int ih = oi * s1 - pt + k1 * d1;
        for (int k2 = 0; k2 < KW; ++k2) {
            const int iw = oj * s2 - pl + k2 * d2;
            const T* wp = w + (k1 * KW + k2) * Cg * M + m;
            if ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) {
                const T* xp = x + (gpuconv_i64)((b * H + ih) * W + iw) * C + g * Cg;
                for (int n = 0; n < Cg; ++n) z += gpuconv_to_acc(xp[n]) * gpuconv_to_acc(wp[n * M]);
            } else {
                // padding: zeros that enter the products (NaN/Inf rule), so a NaN or Inf weight gives NaN here
                // as in the tiled path; no x load. 0 * w adds nothing to z for a finite w.
                for (int n = 0; n < Cg; ++n) z += Acc(0) * gpuconv_to_acc(wp[n * M]);
            }
        }
    }
    if (has_bias) z += gpuconv_to_acc(bias[m]);
    gpuconv_store(y + e, gpuconv_act_forward(z, act));
}
