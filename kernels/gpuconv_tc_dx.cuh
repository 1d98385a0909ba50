// dx's pieces shared by the mma.sync kernel (gpuconv_tc_bwd_input, kernels/conv_tc_backward.cu) and the wgmma
// one (gpuconv_wgmma_bwd_input, kernels/conv_wgmma_backward.cu): where a phase row's pixel lies in dx, the exact
// path of the NaN rule, and the 16-byte copies of dz and w into a stage (where the chunks go is the tile's:
// Tile::a_at / b_at).
#pragma once

#include "gpuconv_tc.cuh"

// The shape and phase arguments of the dx kernels, in the order of GPUCONV_CONV_SHAPE_PARAMS and
// GPUCONV_DX_PHASE_PARAMS, to pass them on.
#define GPUCONV_DX_ARGS                                                                                     \
    N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl, h0, Hp, qh0, w0, Wp, qw0, k1f, k1s, T1, k1b, k1i, \
        k2f, k2s, T2, k2b, k2i

// The offset in dx of the first channel of group g of the phase's row `row`.
__device__ __forceinline__ gpuconv_i64 gpuconv_tc_dx_pixel(int row, int g, GPUCONV_CONV_SHAPE_PARAMS,
                                                           GPUCONV_DX_PHASE_PARAMS) {
    const int b = row / (Hp * Wp), rem = row - b * (Hp * Wp);
    const int hp = rem / Wp;
    return (gpuconv_i64)((b * H + h0 + hp * s1) * W + w0 + (rem - hp * Wp) * s2) * C + g * (C / G);
}

// The exact path (w holds inf or NaN, gpuconv_nonfinite_flag): each element of the block's BM x BN tile at rows
// row0, columns col0 of group g (dzg, wg: dz and w at the group's first output channel) sums only the taps that
// reach an output pixel, of the operands as the tensor cores see them (gpuconv_tc_operand).
template <typename T, int BM, int BN, int TH>
__device__ __forceinline__ void gpuconv_tc_dx_exact(const T* __restrict__ dzg, const T* __restrict__ wg,
                                                    T* __restrict__ dx, const T* __restrict__ bias, int g, int row0,
                                                    int col0, GPUCONV_CONV_SHAPE_PARAMS, GPUCONV_DX_PHASE_PARAMS,
                                                    int has_bias, int out_act) {
    const int Cg = C / G, Mg = M / G, P = N * Hp * Wp;
    for (int e = threadIdx.x; e < BM * BN; e += TH) {
        const int row = row0 + e / BN, col = col0 + e % BN;
        if (row >= P || col >= Cg) continue;
        const int b = row / (Hp * Wp), rem = row - b * (Hp * Wp);
        const int hp = rem / Wp, qh = qh0 + hp, qw = qw0 + rem - hp * Wp;
        float v = 0.0f;
        for (int i1 = 0; i1 < T1; ++i1) {
            const int oi = qh - k1b - i1 * k1i, k1 = k1f + i1 * k1s;
            if ((unsigned)oi >= (unsigned)OH) continue;
            for (int i2 = 0; i2 < T2; ++i2) {
                const int oj = qw - k2b - i2 * k2i, k2 = k2f + i2 * k2s;
                if ((unsigned)oj >= (unsigned)OW) continue;
                const gpuconv_i64 o = (gpuconv_i64)((b * OH + oi) * OW + oj) * M;
                const T* wk = wg + ((k1 * KW + k2) * Cg + col) * M;
                for (int mm = 0; mm < Mg; ++mm)
                    v += gpuconv_tc_operand(dzg[o + mm]) * gpuconv_tc_operand(wk[mm]);
            }
        }
        gpuconv_tc_store(dx + gpuconv_tc_dx_pixel(row, g, GPUCONV_DX_ARGS), bias, g * Cg, col, Cg, v, has_bias,
                         out_act);
    }
}

// issue(kt, s) for the block tile at rows row0, columns col0 of group g's dz and w (dzg, wg): starts the copies of
// reduction step kt into stage s of smem. It must be called for kt = 0, 1, 2, ... in order (it walks the taps).
// rows: the caller's, written here and read by issue, which must not outlive it.
// Needs Mg a multiple of Tile::BK and 16-byte aligned dz, w.
template <typename T, typename Tile>
__device__ __forceinline__ auto gpuconv_tc_dx_copies(gpuconv_tc_rows<Tile>& rows, T* smem, const T* __restrict__ dzg,
                                                     const T* __restrict__ wg, int row0, int col0,
                                                     GPUCONV_CONV_SHAPE_PARAMS, GPUCONV_DX_PHASE_PARAMS) {
    constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, V = Tile::VEC, TH = Tile::THREADS;
    const int Cg = C / G, P = N * Hp * Wp;
    const int t = threadIdx.x;
    constexpr int KCH = BK / V, RA = gpuconv_tc_rows<Tile>::R, RB = BN * KCH / TH;
    static_assert(RA >= 1 && RB >= 1, "tile too small for the loaders");
    static_assert(TH % KCH == 0 && RA * TH == BM * KCH && RB * TH == BN * KCH,
                  "the loaders' chunks cover the tiles exactly once");
    const int kc = t % KCH;  // this thread's 16-byte chunk of a reduction step (A and B alike)
    // rows: batch (-1: past the end), the output row / column of a tap of offset 0
#pragma unroll
    for (int i = 0; i < RA; ++i) {
        const int row = row0 + t / KCH + (TH / KCH) * i;
        rows.b[i] = -1;
        rows.h[i] = rows.w[i] = 0;
        if (row < P) {
            const int b = row / (Hp * Wp), rem = row - b * (Hp * Wp);
            const int hp = rem / Wp;
            rows.b[i] = b;
            rows.h[i] = qh0 + hp;
            rows.w[i] = qw0 + rem - hp * Wp;
        }
    }
    int i1 = 0, i2 = 0, mm0 = 0;  // tap and first output channel of the step the next issue loads (taps fastest)
    return [=, &rows](int, int s) mutable {
        const int di = k1b + i1 * k1i, dj = k2b + i2 * k2i;  // output row = qh - di, column = qw - dj
        const int k1 = k1f + i1 * k1s, k2 = k2f + i2 * k2s;
#pragma unroll
        for (int i = 0; i < RA; ++i) {
            T* dst = Tile::a_at(smem, s, t / KCH + (TH / KCH) * i, kc * V);
            const int oi = rows.h[i] - di, oj = rows.w[i] - dj;
            if (rows.b[i] >= 0 && (unsigned)oi < (unsigned)OH && (unsigned)oj < (unsigned)OW)
                gpuconv_tc_copy16_cached(dst, dzg + (gpuconv_i64)((rows.b[i] * OH + oi) * OW + oj) * M + mm0 + kc * V);
            else
                gpuconv_tc_zero16(dst);
        }
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const int bc = t / KCH + (TH / KCH) * j;  // column (input channel) of the tile
            T* dst = Tile::b_at(smem, s, kc * V, bc);
            if (col0 + bc < Cg)
                __pipeline_memcpy_async(dst, wg + (gpuconv_i64)((k1 * KW + k2) * Cg + col0 + bc) * M + mm0 + kc * V, 16);
            else
                gpuconv_tc_zero16(dst);
        }
        // issue runs for kt = 0, 1, 2, ... in order. The taps run inside each block of BK output channels:
        // the next step's dz copies are this step's pixels shifted by one tap, which L1 still holds
        // (gpuconv_tc_copy16_cached).
        if (++i2 == T2) {
            i2 = 0;
            if (++i1 == T1) { i1 = 0; mm0 += BK; }
        }
    };}
