// The forward's 16-byte copies of its tiles, shared by the fast variant of kernels/conv_tc_forward.cu (ldmatrix +
// mma.sync) and kernels/conv_wgmma_forward.cu (wgmma): where each thread's chunks of x and w come from, in which
// order the reduction steps run, and zeros for the chunks in padding or past the tile's edge. Where the chunks go
// is the tile's: Tile::a_at / b_at (padded rows, or wgmma's swizzled layouts).
#pragma once

#include "gpuconv_tc.cuh"

// issue(kt, s) for the block tile at rows row0, columns col0 of the group whose x and w start at xg, wg (wg at
// column col0): starts the copies of reduction step kt into stage s of smem. rows: the caller's, written here
// and read by issue, which must not outlive it. It must be called for kt = 0, 1, 2,
// ... in order (it walks the taps). Needs Cg and Mg multiples of Tile::VEC and 16-byte aligned x, w.
// W_KMAJOR: w is the filter transposed, (G, Mg, KH*KW*Cg) with the reduction index fastest
// (gpuconv_tf32_filter_kmajor), and wg its row of output channel col0 of the group.
template <typename T, typename Tile, bool W_KMAJOR = false>
__device__ __forceinline__ auto gpuconv_tc_fwd_copies(gpuconv_tc_rows<Tile>& rows, T* smem, const T* __restrict__ xg,
                                                      const T* __restrict__ wg, GPUCONV_CONV_SHAPE_PARAMS, int row0,
                                                      int col0) {
    constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, V = Tile::VEC, TH = Tile::THREADS;
    const int Cg = C / G, Mg = M / G;
    const int P = N * OH * OW;   // GEMM rows
    const int K = KH * KW * Cg;  // reduction length
    const int t = threadIdx.x;
    // A: 16-byte chunk akc of rows t / KCH + (TH / KCH) i; B: chunk bn of reduction rows t / NCH + ... .
    constexpr int KCH = BK / V, RA = gpuconv_tc_rows<Tile>::R;
    // B: chunk bn of reduction rows t / NCH + (TH / NCH) j, or (W_KMAJOR) chunk akc of tile columns t / KCH + ...
    constexpr int NCH = W_KMAJOR ? KCH : BN / V, RB = W_KMAJOR ? BN * KCH / TH : BK * NCH / TH;
    static_assert(RA >= 1 && RB >= 1, "tile too small for the loaders");
    static_assert(TH % KCH == 0 && TH % NCH == 0 && RA * TH == BM * KCH && RB * TH == (W_KMAJOR ? BN : BK) * NCH,
                  "the loaders' chunks cover the tiles exactly once");
    const int akc = t % KCH;
    // rows: b * H (-1: row past the end), the window's top row, left column
#pragma unroll
    for (int i = 0; i < RA; ++i) {
        const int row = row0 + t / KCH + (TH / KCH) * i;
        rows.b[i] = -1;
        rows.h[i] = rows.w[i] = 0;
        if (row < P) {
            const int b = row / (OH * OW), rem = row - b * (OH * OW);
            const int oi = rem / OW, oj = rem - oi * OW;
            rows.b[i] = b * H;
            rows.h[i] = oi * s1 - pt;
            rows.w[i] = oj * s2 - pl;
        }
    }
    const int bn = (t % NCH) * V;
    const bool b_ok = col0 + bn < Mg;
    // The order of the steps (issue runs for kt = 0, 1, 2, ... in order). Where a step's channels lie in
    // one tap (Cg a multiple of BK), the taps run inside each block of BK channels, digits (n / BK, k1, k2):
    // the next step's x copies are this step's pixels shifted by one tap, which L1 still holds
    // (gpuconv_tc_copy16_cached; CUTLASS's fprop iterators walk the filter the same way). Otherwise the
    // steps follow the reduction index (k1, k2, n) and each thread walks its own chunk's digits: Cg % V == 0
    // keeps a chunk inside one tap, but a step may span several taps (Cg < BK, e.g. the stem with its
    // channels padded to one 16-byte run) and run past K (k1 == KH: zeros).
    // One walker for either order: digits (n / BK, k1, k2) a step at a time, or (k1, k2, n) BK at a time.
    const bool taps_inner = Cg % BK == 0;
    gpuconv_walk3 ka;
    if (taps_inner)
        ka.init(0, 1, KH, KW);
    else
        ka.init(akc * V, BK, KW, Cg);
    return [=, &rows](int, int s) mutable {
        // this thread's A chunk (k1, k2, n); k0: the reduction index of the step's first element
        const int k1 = taps_inner ? ka.i1 : ka.i0, k2 = taps_inner ? ka.i2 : ka.i1;
        const int n = taps_inner ? ka.i0 * BK + akc * V : ka.i2;
        const int k0 = (k1 * KW + k2) * Cg + n - akc * V;
        ka.advance();
#pragma unroll
        for (int i = 0; i < RA; ++i) {
            T* dst = Tile::a_at(smem, s, t / KCH + (TH / KCH) * i, akc * V);
            const int ih = rows.h[i] + k1 * d1, iw = rows.w[i] + k2 * d2;
            if (rows.b[i] >= 0 && k1 < KH && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                gpuconv_tc_copy16_cached(dst, xg + (gpuconv_i64)((rows.b[i] + ih) * W + iw) * C + n);
            else
                gpuconv_tc_zero16(dst);
        }
        if constexpr (W_KMAJOR) {
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int col = t / KCH + (TH / KCH) * j, kk = k0 + akc * V;
                T* dst = Tile::b_at(smem, s, akc * V, col);
                if (col0 + col < Mg && kk < K)
                    __pipeline_memcpy_async(dst, wg + (gpuconv_i64)col * K + kk, 16);
                else
                    gpuconv_tc_zero16(dst);
            }
        } else {
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int kr = t / NCH + (TH / NCH) * j, kk = k0 + kr;
                T* dst = Tile::b_at(smem, s, kr, bn);
                if (b_ok && kk < K)
                    __pipeline_memcpy_async(dst, wg + (gpuconv_i64)kk * M + bn, 16);
                else
                    gpuconv_tc_zero16(dst);
            }
        }
    };}
