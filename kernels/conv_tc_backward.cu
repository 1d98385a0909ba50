// Backward pass on tensor cores: dx and the dw partial sums, the same implicit GEMMs as gpuconv_conv_bwd_input
// and gpuconv_conv_bwd_weight (kernels/conv_backward.cu), on tensor cores. Design: kernels/gpuconv_tc.cuh.
// They read dz itself: for relu / sigmoid / tanh the backend first computes dz = dy * act'(z), rounded to the
// storage type, once for both (gpuconv_act_bwd; with a bias, db's gpuconv_bias_grad pass stores it as it sums),
// so the main loops stay pure asynchronous copies and MMAs.
//
//   (gpuconv_nonfinite_flag of conv_backward.cu sets flag = 1 if w holds an inf or NaN: one launch before the dx
//   kernels, no host sync; the SIMT dx path uses the same kernel)
//   gpuconv_tc_bwd_input<T, BM, BN, STAGES, VEC>
//       dx of one stride phase (one launch per phase, as the SIMT kernel): rows = the phase's input pixels,
//       columns = Cg, reduction = the phase's taps x Mg (steps ordered block of BK output channels, tap row, tap
//       column on the VEC path; tap row, tap column, output channel on the element path). A (dz) is
//       stored row-major (output channels fastest, as in NHWC), B (w) column-major (output channels fastest, as
//       in HWIO). VEC: Mg a multiple of BK (one reduction step in one tap), 16-byte aligned dz, w.
//       NaN rule: a tap that reaches no output pixel reads a zero dz, and 0 * (inf or NaN weight) would put a NaN
//       into dx that the chain rule does not have. When gpuconv_nonfinite_flag has set the flag, the block takes
//       an exact loop instead of the GEMM, summing only the taps that reach an output pixel (of the operands
//       as the MMA path rounds them; slow, for a case that is a bug upstream anyway). A transposed convolution
//       (conv2d_transpose) adds its bias and applies its activation in the epilogue, as the SIMT kernels do.
//   gpuconv_tc_bwd_weight<T, BM, BN, STAGES, VEC>
//       dw partial sums, one fixed split of the N*OH*OW pixels per blockIdx.z (split count and chunk from the
//       shape only): rows = KH*KW*Cg taps (k1, k2, n), columns = Mg, reduction = the split's pixels. A (x) is
//       stored column-major (input channels fastest), B (dz) row-major. gpuconv_sum_partials then adds the splits
//       in order, so dw is bitwise the same on every run. VEC: Cg and Mg multiples of 16 bytes, aligned arrays.
//   DZ_TF32 (float only, a template argument after VEC, false by default): dz holds TF32 values already (the
//       backend's pass rounded it as it stored it, for relu / sigmoid / tanh in precision "tf32"), so the loads
//       of dz's fragments (dx's A, dw's B) skip the conversion. The results are bitwise those of the default
//       variant, which rounds dz in the loads (rounding twice rounds as once); the emulator's mma.sync fails on
//       an operand that is no TF32 value, so a pass that forgot to round would be caught.
// Tiles (cuda_tc._tile): 128 x 128 (dx also 96 x 128) for more than 64 columns, else 128 x 64 (dx also
// 256 x 64), 4 stages (3 for 256 x 64, 2 for the FP16 kernels of sm_70 / sm_75; generic variants: 128 x 64, 2
// stages).
// gpuconv-name-expressions: gpuconv_nonfinite_flag<float>, gpuconv_nonfinite_flag<__half>, gpuconv_nonfinite_flag<__nv_bfloat16>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<float, 128, 128, 4, true>, gpuconv_tc_bwd_input<__half, 128, 128, 4, true>, gpuconv_tc_bwd_input<__nv_bfloat16, 128, 128, 4, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<float, 96, 128, 4, true>, gpuconv_tc_bwd_input<__half, 96, 128, 4, true>, gpuconv_tc_bwd_input<__nv_bfloat16, 96, 128, 4, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<float, 128, 64, 4, true>, gpuconv_tc_bwd_input<__half, 128, 64, 4, true>, gpuconv_tc_bwd_input<__nv_bfloat16, 128, 64, 4, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<float, 256, 64, 3, true>, gpuconv_tc_bwd_input<__half, 256, 64, 3, true>, gpuconv_tc_bwd_input<__nv_bfloat16, 256, 64, 3, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<__half, 128, 128, 2, true>, gpuconv_tc_bwd_input<__half, 128, 64, 2, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<float, 128, 64, 2, false>, gpuconv_tc_bwd_input<__half, 128, 64, 2, false>, gpuconv_tc_bwd_input<__nv_bfloat16, 128, 64, 2, false>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<float, 128, 128, 4, true, true>, gpuconv_tc_bwd_input<float, 96, 128, 4, true, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_input<float, 128, 64, 4, true, true>, gpuconv_tc_bwd_input<float, 256, 64, 3, true, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_weight<float, 128, 128, 4, true>, gpuconv_tc_bwd_weight<__half, 128, 128, 4, true>, gpuconv_tc_bwd_weight<__nv_bfloat16, 128, 128, 4, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_weight<float, 128, 64, 4, true>, gpuconv_tc_bwd_weight<__half, 128, 64, 4, true>, gpuconv_tc_bwd_weight<__nv_bfloat16, 128, 64, 4, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_weight<float, 128, 128, 4, true, true>, gpuconv_tc_bwd_weight<float, 128, 64, 4, true, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_weight<__half, 128, 128, 2, true>, gpuconv_tc_bwd_weight<__half, 128, 64, 2, true>
// gpuconv-name-expressions: gpuconv_tc_bwd_weight<float, 128, 64, 2, false>, gpuconv_tc_bwd_weight<__half, 128, 64, 2, false>, gpuconv_tc_bwd_weight<__nv_bfloat16, 128, 64, 2, false>
// The bfloat16 instantiations of kernels of conv_backward.cu (included below; gpuconv_nonfinite_flag above): gpuconv_act_bwd (dz for these
// kernels), gpuconv_bias_grad and gpuconv_sum_partials (the deterministic db / dw reductions). bfloat16 has no
// entry in gpuconv/_registry.py DTYPES yet, so conv_backward.cu's generated instantiations do not cover it.
// gpuconv-name-expressions: gpuconv_act_bwd<__nv_bfloat16>, gpuconv_bias_grad<__nv_bfloat16>, gpuconv_sum_partials<__nv_bfloat16>
#include "gpuconv_tc_dx.cuh"
#include "conv_backward.cu"

template <typename T, int BM, int BN, int STAGES, bool VEC, bool DZ_TF32>
__device__ __forceinline__ void gpuconv_tc_bwd_input_body(
    const T* __restrict__ dz, const T* __restrict__ w, const int* __restrict__ wflag, T* __restrict__ dx,
    const T* __restrict__ bias, GPUCONV_CONV_SHAPE_PARAMS, GPUCONV_DX_PHASE_PARAMS, int has_bias, int out_act) {
    typedef gpuconv_tc_tile<T, BM, BN, STAGES, true, false, DZ_TF32, false> Tile;
    constexpr int BK = Tile::BK, TH = Tile::THREADS;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES, the launch's shared_mem
    T* smem = reinterpret_cast<T*>(smem_bytes);

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;
    const int P = N * Hp * Wp;   // GEMM rows: the phase's input pixels
    const int K = T1 * T2 * Mg;  // reduction: the phase's taps x output channels of the group
    const int row0 = blockIdx.x * BM, col0 = blockIdx.y * BN;
    const int t = threadIdx.x, warp = t / 32;
    const int wm0 = (warp / Tile::WN) * Tile::WTM, wn0 = (warp % Tile::WN) * Tile::WTN;
    const int KT = (K + BK - 1) / BK;
    const T* dzg = dz + g * Mg;
    const T* wg = w + g * Mg;

    if (*wflag) {
        gpuconv_tc_dx_exact<T, BM, BN, TH>(dzg, wg, dx, bias, g, row0, col0, GPUCONV_DX_ARGS, has_bias, out_act);
        return;
    }

    gpuconv_tc_acc<T, Tile> acc;
    acc.zero();

    if constexpr (VEC) {
        gpuconv_tc_rows<Tile> rows;
        auto issue = gpuconv_tc_dx_copies<T, Tile>(rows, smem, dzg, wg, row0, col0, GPUCONV_DX_ARGS);
        gpuconv_tc_mainloop<T, Tile, true, false>(smem, KT, issue, acc, wm0, wn0);
    } else {
        // Element loads: reduction index kt * BK + t % BK for A rows t / BK + (TH / BK) i and B columns likewise.
        constexpr int AR = TH / BK, RA = BM / AR, RB = BN / AR;
        __shared__ int rinfo[3][BM];  // per tile row: batch (-1: past the end), qh, qw
        for (int r = t; r < BM; r += TH) {
            const int row = row0 + r;
            rinfo[0][r] = -1;
            rinfo[1][r] = rinfo[2][r] = 0;
            if (row < P) {
                const int b = row / (Hp * Wp), rem = row - b * (Hp * Wp);
                const int hp = rem / Wp;
                rinfo[0][r] = b;
                rinfo[1][r] = qh0 + hp;
                rinfo[2][r] = qw0 + rem - hp * Wp;
            }
        }
        __syncthreads();
        const int ak = t % BK;
        gpuconv_walk3 kr;  // reduction index kt * BK + ak as digits (tap row i1, tap column i2, mm)
        kr.init(ak, BK, T2 > 0 ? T2 : 1, Mg);  // T2 = 0: a phase no tap reaches (K = 0, nothing issued)
        auto issue = [&](int kt, int s) {
            const bool k_ok = kt * BK + ak < K;
            const int i1 = kr.i0, i2 = kr.i1, mm = kr.i2;
            kr.advance();  // issue runs for kt = 0, 1, 2, ... in order
            const int di = k1b + i1 * k1i, dj = k2b + i2 * k2i;
            const int k1 = k1f + i1 * k1s, k2 = k2f + i2 * k2s;
#pragma unroll
            for (int i = 0; i < RA; ++i) {
                const int r = t / BK + AR * i;
                const int b = rinfo[0][r], oi = rinfo[1][r] - di, oj = rinfo[2][r] - dj;
                T v = T(0.0f);
                if (k_ok && b >= 0 && (unsigned)oi < (unsigned)OH && (unsigned)oj < (unsigned)OW)
                    v = dzg[(gpuconv_i64)((b * OH + oi) * OW + oj) * M + mm];
                *Tile::a_at(smem, s, r, ak) = v;
            }
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int bc = t / BK + AR * j;
                *Tile::b_at(smem, s, ak, bc) = (k_ok && col0 + bc < Cg)
                    ? wg[(gpuconv_i64)((k1 * KW + k2) * Cg + col0 + bc) * M + mm] : T(0.0f);
            }
        };
        gpuconv_tc_mainloop<T, Tile, true, false>(smem, KT, issue, acc, wm0, wn0);
    }

    auto row_of = [&](int r) -> gpuconv_i64 {
        return row0 + r < P ? gpuconv_tc_dx_pixel(row0 + r, g, GPUCONV_DX_ARGS) : -1;
    };
    auto emit = [&](gpuconv_i64 base, int c, float v) {
        gpuconv_tc_store(dx + base, bias, g * Cg, col0 + c, Cg, v, has_bias, out_act);
    };
    gpuconv_tc_epilogue<T, Tile>(smem_bytes, acc, wm0, wn0, row_of, emit);
}

template <typename T, int BM, int BN, int STAGES, bool VEC, bool DZ_TF32 = false>
__global__ void __launch_bounds__(GPUCONV_TC_THREADS, 2) gpuconv_tc_bwd_input(
    const T* __restrict__ dz,    // gradient of the pre-activation output (N, OH, OW, M), contiguous
    const T* __restrict__ w,     // weights (KH, KW, Cg, M), HWIO
    const int* __restrict__ wflag,  // 1: w holds inf or NaN (gpuconv_nonfinite_flag), take the exact path
    T* __restrict__ dx,          // written: input gradient (N, H, W, C), the pixels of this stride phase
    const T* __restrict__ bias,  // bias (C,) of a transposed convolution; read only when has_bias != 0
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    GPUCONV_DX_PHASE_PARAMS,     // one stride phase of dx (gpuconv_common.cuh)
    int has_bias,                // 1: add bias[c] to dx (conv2d_transpose); 0 for a gradient
    int out_act)                 // GPUCONV_ACT_* applied to dx (+ bias) on the store; identity for a gradient
{
    // grid (ceil(N*Hp*Wp / BM), ceil(Cg / BN), G), block GPUCONV_TC_THREADS (128). Empty on targets without
    // this tensor-core type.
    if constexpr (gpuconv_tc<T>::enabled)
        gpuconv_tc_bwd_input_body<T, BM, BN, STAGES, VEC, DZ_TF32>(
            dz, w, wflag, dx, bias, N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl, h0, Hp, qh0, w0, Wp,
            qw0, k1f, k1s, T1, k1b, k1i, k2f, k2s, T2, k2b, k2i, has_bias, out_act);
}

template <typename T, int BM, int BN, int STAGES, bool VEC, bool DZ_TF32>
__device__ __forceinline__ void gpuconv_tc_bwd_weight_body(
    const T* __restrict__ dz, const T* __restrict__ x, float* __restrict__ ws, GPUCONV_CONV_SHAPE_PARAMS,
    int chunk) {
    typedef gpuconv_tc_tile<T, BM, BN, STAGES, false, true, false, DZ_TF32> Tile;
    constexpr int BK = Tile::BK, V = Tile::VEC, TH = Tile::THREADS;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES, the launch's shared_mem
    T* smem = reinterpret_cast<T*>(smem_bytes);

    const int Cg = C / G, Mg = M / G;
    const int K = KH * KW * Cg;  // rows of dw
    const int tiles_n = (Mg + BN - 1) / BN;
    const int g = blockIdx.y / tiles_n;
    const int row0 = blockIdx.x * BM, col0 = (blockIdx.y - g * tiles_n) * BN;
    const int P = N * OH * OW;
    const int p_begin = blockIdx.z * chunk, p_end = min(P, p_begin + chunk);
    const int t = threadIdx.x, warp = t / 32;
    const int wm0 = (warp / Tile::WN) * Tile::WTM, wn0 = (warp % Tile::WN) * Tile::WTN;
    const int KT = (p_end - p_begin + BK - 1) / BK;  // chunk is a multiple of BK: only the last split is short
    const T* xg = x + g * Cg;
    const gpuconv_i64 dzcol = g * Mg + col0;

    gpuconv_tc_acc<T, Tile> acc;
    acc.zero();

    // This thread's dw row r (k1, k2, n): the input offsets of its tap; ok = r < K.
    auto decode_row = [&](int r, int& k1d1, int& k2d2, int& n, bool& ok) {
        ok = r < K;
        k1d1 = k2d2 = n = 0;
        if (ok) {
            const int kk = r / Cg, k1 = kk / KW;
            n = r - kk * Cg;
            k1d1 = k1 * d1 - pt;
            k2d2 = (kk - k1 * KW) * d2 - pl;
        }
    };

    if constexpr (VEC) {
        // A: thread t copies the 16-byte chunks (V rows = input channels of one tap) t % 8 + 8 j, j < CPT, of
        // pixels t / 8 + (TH / 8) i, i < PPT: eight threads copy 128 contiguous bytes of a pixel (whole lines,
        // conflict-free stores), and a thread walks PPT pixels, not the RA that one chunk a thread would need
        // (the walks and the pixels' address terms were most of dw's loop: docs/performance.md). B: chunk
        // t % NCH of pixels t / NCH + (TH / NCH) j.
        // The x copies are cached in L1 (gpuconv_tc_copy16_cached): where a tile's rows hold several taps
        // (Cg < BM), the taps of a step copy the same pixels shifted by a tap, and L1 serves the re-reads.
        constexpr int MCH = BM / V, RA = BK * MCH / TH, CPT = MCH / 8, PPT = RA / CPT;
        constexpr int NCH = BN / V, RB = BK * NCH / TH;
        static_assert(RA >= 1 && RB >= 1, "tile too small for the loaders");
        static_assert(MCH % 8 == 0 && TH % 8 == 0 && CPT * PPT == RA && (TH / 8) * PPT == BK && TH % NCH == 0 &&
                      RB * TH == BK * NCH, "the loaders' chunks cover the tiles exactly once");  // e.g. no BM = 96
        int k1d1[CPT], k2d2[CPT], n[CPT];
        bool r_ok[CPT];
#pragma unroll
        for (int j = 0; j < CPT; ++j)  // Cg % V == 0: the V rows of a chunk share one tap
            decode_row(row0 + (t % 8 + 8 * j) * V, k1d1[j], k2d2[j], n[j], r_ok[j]);
        const int bn = (t % NCH) * V;
        const bool c_ok = col0 + bn < Mg;
        gpuconv_walk3 px[PPT];  // digits (b, oi, oj) of this thread's A pixels, advanced by BK per step
#pragma unroll
        for (int i = 0; i < PPT; ++i) px[i].init(p_begin + t / 8 + (TH / 8) * i, BK, OH, OW);
        auto issue = [&](int kt, int s) {
            const int p0 = p_begin + kt * BK;
#pragma unroll
            for (int i = 0; i < PPT; ++i) {
                const int pk = t / 8 + (TH / 8) * i, p = p0 + pk;
                const int ih0 = px[i].i1 * s1, iw0 = px[i].i2 * s2, bh = px[i].i0 * H;
#pragma unroll
                for (int j = 0; j < CPT; ++j) {
                    T* dst = Tile::a_at(smem, s, (t % 8 + 8 * j) * V, pk);
                    const int ih = ih0 + k1d1[j], iw = iw0 + k2d2[j];
                    if (p < p_end && r_ok[j] && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                        gpuconv_tc_copy16_cached(dst, xg + (gpuconv_i64)((bh + ih) * W + iw) * C + n[j]);
                    else
                        gpuconv_tc_zero16(dst);
                }
                px[i].advance();  // issue runs for kt = 0, 1, 2, ... in order
            }
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int pk = t / NCH + (TH / NCH) * j, p = p0 + pk;
                T* dst = Tile::b_at(smem, s, pk, bn);
                if (p < p_end && c_ok)
                    __pipeline_memcpy_async(dst, dz + (gpuconv_i64)p * M + dzcol + bn, 16);
                else
                    gpuconv_tc_zero16(dst);
            }
        };
        gpuconv_tc_mainloop<T, Tile, false, true>(smem, KT, issue, acc, wm0, wn0);
    } else {
        // Element loads: A's pixel kt * BK + t % BK for rows t / BK + (TH / BK) i (the rows' taps decoded once
        // into shared memory), B's column t % BN for pixels t / BN + (TH / BN) j.
        constexpr int AR = TH / BK, RA = BM / AR;
        constexpr int BR = TH / BN, RB = BK / BR;
        __shared__ int rinfo[3][BM];  // per tile row: k1 * d1 - pt, k2 * d2 - pl, n (n = -1: past K)
        for (int r = t; r < BM; r += TH) {
            int k1d1, k2d2, n;
            bool ok;
            decode_row(row0 + r, k1d1, k2d2, n, ok);
            rinfo[0][r] = k1d1;
            rinfo[1][r] = k2d2;
            rinfo[2][r] = ok ? n : -1;
        }
        __syncthreads();
        const int ak = t % BK;
        gpuconv_walk3 px;  // digits (b, oi, oj) of pixel p_begin + kt * BK + ak
        px.init(p_begin + ak, BK, OH, OW);
        const int bcol = t % BN;
        const bool bcol_ok = col0 + bcol < Mg;
        auto issue = [&](int kt, int s) {
            const int p0 = p_begin + kt * BK;
            const bool p_ok = p0 + ak < p_end;
            const int b = px.i0, oi = px.i1, oj = px.i2;
            px.advance();  // issue runs for kt = 0, 1, 2, ... in order
#pragma unroll
            for (int i = 0; i < RA; ++i) {
                const int r = t / BK + AR * i;
                const int n = rinfo[2][r], ih = oi * s1 + rinfo[0][r], iw = oj * s2 + rinfo[1][r];
                T v = T(0.0f);
                if (p_ok && n >= 0 && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                    v = xg[(gpuconv_i64)((b * H + ih) * W + iw) * C + n];
                *Tile::a_at(smem, s, r, ak) = v;
            }
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int pk = t / BN + BR * j, p = p0 + pk;
                T v = T(0.0f);
                if (p < p_end && bcol_ok) v = dz[(gpuconv_i64)p * M + dzcol + bcol];
                *Tile::b_at(smem, s, pk, bcol) = v;
            }
        };
        gpuconv_tc_mainloop<T, Tile, false, true>(smem, KT, issue, acc, wm0, wn0);
    }

    float* out = ws + (gpuconv_i64)blockIdx.z * K * M;
    auto row_of = [&](int r) -> gpuconv_i64 { return row0 + r < K ? (gpuconv_i64)(row0 + r) * M + dzcol : -1; };
    auto emit = [&](gpuconv_i64 base, int c, float v) {
        if (col0 + c < Mg) out[base + c] = v;
    };
    gpuconv_tc_epilogue<T, Tile>(smem_bytes, acc, wm0, wn0, row_of, emit);
}

template <typename T, int BM, int BN, int STAGES, bool VEC, bool DZ_TF32 = false>
__global__ void __launch_bounds__(GPUCONV_TC_THREADS, 2) gpuconv_tc_bwd_weight(
    const T* __restrict__ dz,    // gradient of the pre-activation output (N, OH, OW, M), contiguous
    const T* __restrict__ x,     // input (N, H, W, C)
    float* __restrict__ ws,      // written: partial sums (splits, KH*KW*Cg, M)
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int chunk)                   // output pixels per split (a multiple of BK); split = blockIdx.z
{
    // grid (ceil(KH*KW*Cg / BM), ceil(Mg / BN) * G, splits), block GPUCONV_TC_THREADS (128). Empty on targets
    // without this type.
    if constexpr (gpuconv_tc<T>::enabled)
        gpuconv_tc_bwd_weight_body<T, BM, BN, STAGES, VEC, DZ_TF32>(dz, x, ws, N, H, W, C, KH, KW, M, G, OH, OW,
                                                                     s1, s2, d1, d2, pt, pl, chunk);
}
