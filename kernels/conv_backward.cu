// Backward pass. Every gradient kernel reads dy (and, but for identity, the saved output y) and applies the
// activation gradient as it loads: dz = dy * act'(z) is never written to memory. With act = identity, dy is dz.
//
//   gpuconv_act_bwd               dz = dy * act'(z) alone, elementwise (the backend's activation_backward)
//                                 (rounded to TF32 on request, for the DZ_TF32 tensor-core kernels)
//   gpuconv_conv_bwd_input        dx, the transposed convolution, as a tiled implicit GEMM per group and
//                                 stride phase (one launch per phase): rows = the phase's input pixels,
//                                 columns = Cg, reduction = the phase's taps x Mg; taps reaching outside
//                                 (OH, OW) read 0, and pixels no output read get exactly 0
//   gpuconv_nonfinite_flag        flag = 1 if an array holds a NaN or Inf (set on the device, no host sync)
//   gpuconv_conv_bwd_input_exact  dx again, after the tiled launches, only when w holds a NaN or Inf (the flag;
//                                 else every thread returns at once): the tiles give a tap that reaches no
//                                 output pixel dz = 0, and 0 * NaN = NaN is a term the chain rule does not
//                                 have (the NaN/Inf rule, README); here each dx element adds exactly the taps
//                                 that reach an output pixel
//   gpuconv_conv_bwd_input_direct dx for few input channels per group (the stem layer, depthwise), by stride
//                                 phase: lanes split the output channels of a few pixels of one group,
//                                 then a shuffle butterfly adds their sums
//   gpuconv_conv_bwd_weight       dw partial sums, tiled GEMM per group: rows = KH*KW*Cg, columns = Mg,
//                                 reduction = a fixed slice of the N*OH*OW pixels per blockIdx.z ("split")
//   gpuconv_conv_bwd_weight_small dw partial sums, a thread per (weight element, pixel phase, split), the 8
//                                 phases added in order, for few output channels per group (depthwise)
//   gpuconv_bias_grad             db partial sums per split; with store_dz it also stores dz = dy * act'(z),
//                                 the tensor-core kernels' input, in the same pass over dy and y
//   gpuconv_sum_partials          out[e] = sum over splits s = 0, 1, ... of ws[s][e], in that order
//
// The two dx kernels also serve conv2d_transpose (the same operation): an epilogue then adds a bias and applies
// an activation to dx as it is stored (has_bias = 0, out_act = identity for a gradient).
//
// Determinism: no floating-point atomics. dw and db are reduced in a fixed order that depends only on the
// shape (the split count is a function of the shape), so repeated runs and any thread schedule give
// bitwise-equal results.
#include "gpuconv_common.cuh"

template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_nonfinite_flag(
    const T* __restrict__ a,   // any array, contiguous
    int* __restrict__ flag,    // set to 1 if some element is NaN or +-Inf (zeroed by the caller; never cleared)
    gpuconv_i64 size)          // number of elements
{
    const gpuconv_i64 stride = (gpuconv_i64)gridDim.x * blockDim.x;
    bool bad = false;
    for (gpuconv_i64 i = (gpuconv_i64)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        const typename gpuconv_acc<T>::type v = gpuconv_to_acc(a[i]);
        bad |= !(v - v == v - v);  // NaN for NaN and +-Inf, 0 == 0 for every finite value
    }
    if (bad) *flag = 1;  // every writer writes the same value: no atomic needed
}

template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_act_bwd(
    const T* __restrict__ dy,  // gradient of the output, any shape, contiguous
    const T* __restrict__ y,   // saved output act(z), same shape
    T* __restrict__ dz,        // written: dy * act'(z)
    gpuconv_i64 size,          // number of elements
    int act,                   // GPUCONV_ACT_*
    int tf32)                  // 1: store dz rounded to TF32 (float, for the DZ_TF32 tensor-core kernels)
{
    const gpuconv_i64 stride = (gpuconv_i64)gridDim.x * blockDim.x;
    for (gpuconv_i64 i = (gpuconv_i64)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride)
        gpuconv_store_dz(dz + i, gpuconv_load_dz(dy, y, i, act), tf32);
}

template <typename T, int BN>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_conv_bwd_input(
    const T* __restrict__ dy,  // output gradient (N, OH, OW, M), contiguous
    const T* __restrict__ y,   // saved output (N, OH, OW, M); read only when act != identity
    const T* __restrict__ w,   // weights (KH, KW, Cg, M), HWIO
    T* __restrict__ dx,        // written: input gradient (N, H, W, C), the pixels of this stride phase
    const T* __restrict__ bias,  // bias (C,) of a transposed convolution; read only when has_bias != 0
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    GPUCONV_DX_PHASE_PARAMS,     // one stride phase of dx (gpuconv_common.cuh)
    int act,                     // GPUCONV_ACT_* of the forward pass (its gradient is fused into the loads)
    int has_bias,                // 1: add bias[c] to dx (conv2d_transpose); 0 for a gradient
    int out_act)                 // GPUCONV_ACT_* applied to dx (+ bias) on the store; identity for a gradient
{
    // One launch per stride phase (ph, pw): the input pixels whose padded row and column (h + pt, w + pl) are
    // (ph, pw) modulo the strides. The launch wrapper lists the taps that reach them, so the reduction runs
    // over those taps only and no work goes to taps off the stride grid; a phase no tap reaches gets dx = 0.
    // blockIdx.z = group.
    // Tiles of 64 x 64 (BN = 64) or, for at most 32 input channels per group, 128 x 32 (as gpuconv_conv_fwd).
    typedef typename gpuconv_acc<T>::type Acc;
    constexpr int TX = BN / 4;                    // threads along the columns of the tile
    constexpr int BM = 4 * GPUCONV_THREADS / TX;  // tile rows
    constexpr int RA = BM / 16;                   // A elements each thread loads per step
    constexpr int RB = BN / 16;                   // B elements each thread loads per step
    __shared__ __align__(16) Acc As[2][GPUCONV_BK][BM + GPUCONV_PAD];  // dz tiles: [buffer][k][pixel]
    __shared__ __align__(16) Acc Bs[2][GPUCONV_BK][BN + GPUCONV_PAD];  // w tiles: [buffer][k][channel]

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;
    const int P = N * Hp * Wp;       // GEMM rows: the phase's input pixels
    const int K = T1 * T2 * Mg;      // reduction: the phase's taps x output channels of the group
    const int row0 = blockIdx.x * BM;
    const int col0 = blockIdx.y * BN;
    const int t = threadIdx.x, tx = t % TX, ty = t / TX;

    // Both loaders use reduction index k0 + t % BK and rows / columns t / BK + 16 i.
    const int ak = t % GPUCONV_BK;
    int a_b[RA], a_qh[RA], a_qw[RA];  // batch (-1: past the end), (h + pt - ph) / s1, (w + pl - pw) / s2
#pragma unroll
    for (int i = 0; i < RA; ++i) {
        const int row = row0 + t / GPUCONV_BK + 16 * i;
        a_b[i] = -1;
        a_qh[i] = a_qw[i] = 0;
        if (row < P) {
            const int b = row / (Hp * Wp), rem = row - b * (Hp * Wp);
            const int hp = rem / Wp;
            a_b[i] = b;
            a_qh[i] = qh0 + hp;
            a_qw[i] = qw0 + rem - hp * Wp;
        }
    }

    Acc acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);

    if (K > 0) {  // uniform over the block
        // Register-staged double buffering, as in gpuconv_conv_fwd: one barrier per step.
        Acc ra[RA], rb[RB];
        gpuconv_walk3 kr;  // reduction index k0 + ak as digits (tap row i1, tap column i2, mm)
        kr.init(ak, GPUCONV_BK, T2, Mg);
        auto load = [&](int k0) {
            const bool r_ok = k0 + ak < K;
            const int i1 = kr.i0, i2 = kr.i1, mm = kr.i2;
            kr.advance();
            const int k1 = k1f + i1 * k1s, k2 = k2f + i2 * k2s;
            const int di = k1b + i1 * k1i, dj = k2b + i2 * k2i;  // oi = qh - di, oj = qw - dj
            const int mg = g * Mg + mm;  // output channel of this reduction index
#pragma unroll
            for (int i = 0; i < RA; ++i) {
                ra[i] = Acc(0);
                const int oi = a_qh[i] - di, oj = a_qw[i] - dj;
                if (r_ok && a_b[i] >= 0 && (unsigned)oi < (unsigned)OH && (unsigned)oj < (unsigned)OW)
                    ra[i] = gpuconv_load_dz(dy, y, (gpuconv_i64)((a_b[i] * OH + oi) * OW + oj) * M + mg, act);
            }
#pragma unroll
            for (int j = 0; j < RB; ++j) {
                const int col = col0 + t / GPUCONV_BK + 16 * j;
                rb[j] = (r_ok && col < Cg) ? gpuconv_to_acc(w[((k1 * KW + k2) * Cg + col) * M + mg]) : Acc(0);
            }
        };
        auto stage = [&](int buf) {
#pragma unroll
            for (int i = 0; i < RA; ++i) As[buf][ak][t / GPUCONV_BK + 16 * i] = ra[i];
#pragma unroll
            for (int j = 0; j < RB; ++j) Bs[buf][ak][t / GPUCONV_BK + 16 * j] = rb[j];
        };

        gpuconv_gemm_mainloop<Acc, BM, BN>(0, K, load, stage, As, Bs, acc, tx, ty);
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + 4 * ty + i;
        if (row >= P) continue;
        const int b = row / (Hp * Wp), rem = row - b * (Hp * Wp);
        const int hp = rem / Wp;
        const int q = (b * H + h0 + hp * s1) * W + w0 + (rem - hp * Wp) * s2;  // input pixel
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + 4 * tx + j;
            if (col >= Cg) continue;
            Acc z = acc[i][j];  // epilogue of a transposed convolution, as gpuconv_conv_fwd's
            if (has_bias) z += gpuconv_to_acc(bias[g * Cg + col]);
            gpuconv_store(dx + (gpuconv_i64)q * C + g * Cg + col, gpuconv_act_forward(z, out_act));
        }
    }
}

// __launch_bounds__ with a minimum of 2 blocks per SM: with no minimum, ptxas squeezed it into 32 registers with
// spills (as gpuconv_conv_bwd_input_direct below).
template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS, 2) gpuconv_conv_bwd_input_exact(
    const T* __restrict__ dy,  // output gradient (N, OH, OW, M), contiguous
    const T* __restrict__ y,   // saved output (N, OH, OW, M); read only when act != identity
    const T* __restrict__ w,   // weights (KH, KW, Cg, M), HWIO
    const int* __restrict__ w_nonfinite,  // nonzero: w holds a NaN or Inf (gpuconv_nonfinite_flag)
    T* __restrict__ dx,        // rewritten when w_nonfinite: input gradient (N, H, W, C)
    const T* __restrict__ bias,  // bias (C,) of a transposed convolution; read only when has_bias != 0
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int act,                     // GPUCONV_ACT_* of the forward pass (its gradient is fused into the loads)
    int has_bias,                // 1: add bias[c] to dx (conv2d_transpose); 0 for a gradient
    int out_act)                 // GPUCONV_ACT_* applied to dx (+ bias) on the store; identity for a gradient
{
    // A separate kernel, so that the tiled kernel keeps its registers; a grid-stride loop over dx elements,
    // one element per thread at a time, taps (k1, k2) then output channels in order. Divisions are fine here:
    // this runs only for a w that already holds a NaN or Inf.
    if (!*w_nonfinite) return;
    typedef typename gpuconv_acc<T>::type Acc;
    const int Cg = C / G, Mg = M / G;
    const gpuconv_i64 total = (gpuconv_i64)N * H * W * C;
    const gpuconv_i64 stride = (gpuconv_i64)gridDim.x * blockDim.x;
    for (gpuconv_i64 e = (gpuconv_i64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int c = (int)(e % C);
        const gpuconv_i64 pix = e / C;
        const int iw = (int)(pix % W), ih = (int)((pix / W) % H), b = (int)(pix / ((gpuconv_i64)W * H));
        const int g = c / Cg, n = c - g * Cg;
        Acc v = Acc(0);
        for (int k1 = 0; k1 < KH; ++k1) {
            const int th = ih + pt - k1 * d1;  // = oi * s1 for the output row oi this tap comes from
            if (th < 0 || th % s1 || th / s1 >= OH) continue;
            for (int k2 = 0; k2 < KW; ++k2) {
                const int tw = iw + pl - k2 * d2;
                if (tw < 0 || tw % s2 || tw / s2 >= OW) continue;
                const gpuconv_i64 o = (gpuconv_i64)((b * OH + th / s1) * OW + tw / s2) * M + g * Mg;
                const T* wk = w + ((k1 * KW + k2) * Cg + n) * M + g * Mg;
                for (int mm = 0; mm < Mg; ++mm) v += gpuconv_load_dz(dy, y, o + mm, act) * gpuconv_to_acc(wk[mm]);
            }
        }
        if (has_bias) v += gpuconv_to_acc(bias[c]);
        gpuconv_store(dx + e, gpuconv_act_forward(v, out_act));
    }
}

// __launch_bounds__ with a minimum of 2 blocks per SM (at most 128 registers): with no minimum, ptxas 12.9
// squeezed this kernel into 32 registers with spills on sm_90.
template <typename T, int CMAX, int PX>
__global__ void __launch_bounds__(GPUCONV_THREADS, 2) gpuconv_conv_bwd_input_direct(
    const T* __restrict__ dy,  // output gradient (N, OH, OW, M), contiguous
    const T* __restrict__ y,   // saved output (N, OH, OW, M); read only when act != identity
    const T* __restrict__ w,   // weights (KH, KW, Cg, M), HWIO
    T* __restrict__ dx,        // written: input gradient (N, H, W, C), the pixels of this stride phase
    const T* __restrict__ bias,  // bias (C,) of a transposed convolution; read only when has_bias != 0
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    GPUCONV_DX_PHASE_PARAMS,     // one stride phase of dx (gpuconv_common.cuh)
    int act,                     // GPUCONV_ACT_* of the forward pass (its gradient is fused into the loads)
    int has_bias,                // 1: add bias[c] to dx (conv2d_transpose); 0 for a gradient
    int out_act)                 // GPUCONV_ACT_* applied to dx (+ bias) on the store; identity for a gradient
{
    // For few input channels per group (Cg <= CMAX < 16; the stem layer, depthwise). One launch per stride
    // phase, as gpuconv_conv_bwd_input. Block (L, 256 / L): the L = blockDim.x lanes (a power of two <= 32)
    // of one row split the reduction over the output channels m (lane, lane + L, ...), so a warp reads whole
    // sectors of dz and w rows; a row is PX consecutive pixels of the phase in one group, so each w value a
    // lane loads feeds PX pixels. Each lane keeps all PX x Cg sums, and the lanes' sums are added by a fixed
    // butterfly of shuffles. Rows run group-fastest, so with one channel per group (L = 1, depthwise)
    // neighbouring threads still read neighbouring addresses.
    typedef typename gpuconv_acc<T>::type Acc;
    const int L = blockDim.x, lane = threadIdx.x;
    const int Cg = (unsigned)C / G, Mg = (unsigned)M / G;
    const int P = N * Hp * Wp, blocks = (P + PX - 1) / PX;
    const gpuconv_i64 r = (gpuconv_i64)blockIdx.x * blockDim.y + threadIdx.y;
    // Threads past the last row stay to the end: every lane of a warp takes part in the shuffles.
    const bool active = r < (gpuconv_i64)blocks * G;
    const int qb = active ? (int)(r / G) : 0, g = active ? (int)(r - (gpuconv_i64)qb * G) : 0;
    int img[PX], qh[PX], qw[PX];  // per pixel: image, and the output row / column a tap of offset 0 reaches
#pragma unroll
    for (int j = 0; j < PX; ++j) {
        const int q = qb * PX + j;
        img[j] = (active && q < P) ? (int)((unsigned)q / (Hp * Wp)) : -1;  // -1: no pixel
        const int rem = q - img[j] * (Hp * Wp), hp = (unsigned)rem / Wp;
        qh[j] = qh0 + hp;
        qw[j] = qw0 + rem - hp * Wp;
    }
    Acc v[PX][CMAX];
#pragma unroll
    for (int j = 0; j < PX; ++j)
#pragma unroll
        for (int n = 0; n < CMAX; ++n) v[j][n] = Acc(0);
    for (int i1 = 0; i1 < T1; ++i1) {
        const int k1 = k1f + i1 * k1s;
        for (int i2 = 0; i2 < T2; ++i2) {
            const int k2 = k2f + i2 * k2s;
            gpuconv_i64 o[PX];  // each pixel's dz row for this tap, or -1 where the tap falls outside
            bool any = false;
#pragma unroll
            for (int j = 0; j < PX; ++j) {
                const int oi = qh[j] - k1b - i1 * k1i, oj = qw[j] - k2b - i2 * k2i;
                const bool in = img[j] >= 0 && oi >= 0 && oi < OH && oj >= 0 && oj < OW;
                o[j] = in ? (gpuconv_i64)((img[j] * OH + oi) * OW + oj) * M + g * Mg : -1;
                any |= in;
            }
            if (!any) continue;
            const T* wk = w + (k1 * KW + k2) * Cg * M + g * Mg;
            for (int mm = lane; mm < Mg; mm += L) {
                Acc wv[CMAX];
#pragma unroll
                for (int n = 0; n < CMAX; ++n) wv[n] = n < Cg ? gpuconv_to_acc(wk[n * M + mm]) : Acc(0);
#pragma unroll
                for (int j = 0; j < PX; ++j) {
                    if (o[j] < 0) continue;
                    const Acc d = gpuconv_load_dz(dy, y, o[j] + mm, act);
#pragma unroll
                    for (int n = 0; n < CMAX; ++n)
                        if (n < Cg) v[j][n] += d * wv[n];
                }
            }
        }
    }
    for (int off = L / 2; off > 0; off /= 2) {
#pragma unroll
        for (int j = 0; j < PX; ++j)
#pragma unroll
            for (int n = 0; n < CMAX; ++n)
                if (n < Cg) v[j][n] += __shfl_xor_sync(0xffffffffu, v[j][n], off, L);
    }
#pragma unroll
    for (int j = 0; j < PX; ++j) {
        if (img[j] < 0) continue;
        const int hp = qh[j] - qh0, wp = qw[j] - qw0;
        const int pixel = (img[j] * H + h0 + hp * s1) * W + w0 + wp * s2;
        T* out = dx + (gpuconv_i64)pixel * C + g * Cg;
#pragma unroll
        for (int n = 0; n < CMAX; ++n)
            if (n < Cg && n % L == lane) {
                Acc z = v[j][n];  // epilogue of a transposed convolution, as gpuconv_conv_fwd's
                if (has_bias) z += gpuconv_to_acc(bias[g * Cg + n]);
                gpuconv_store(out + n, gpuconv_act_forward(z, out_act));
            }
    }
}

template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_conv_bwd_weight(
    const T* __restrict__ dy,  // output gradient (N, OH, OW, M), contiguous
    const T* __restrict__ y,   // saved output (N, OH, OW, M); read only when act != identity
    const T* __restrict__ x,   // input (N, H, W, C)
    typename gpuconv_acc<T>::type* __restrict__ ws,  // written: partial sums (splits, KH*KW*Cg, M)
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int chunk,                   // output pixels per split (a multiple of GPUCONV_BK); split = blockIdx.z
    int act)                     // GPUCONV_ACT_* of the forward pass
{
    typedef typename gpuconv_acc<T>::type Acc;
    __shared__ __align__(16) Acc As[2][GPUCONV_BK][GPUCONV_BM + GPUCONV_PAD];  // im2col tiles, transposed: As[buffer][pixel][tap row]
    __shared__ __align__(16) Acc Bs[2][GPUCONV_BK][GPUCONV_BN + GPUCONV_PAD];  // dz tiles: Bs[buffer][pixel][output channel]

    const int Cg = C / G, Mg = M / G;
    const int K = KH * KW * Cg;                 // rows of dw
    const int tiles_n = (Mg + GPUCONV_BN - 1) / GPUCONV_BN;
    const int g = blockIdx.y / tiles_n;
    const int row0 = blockIdx.x * GPUCONV_BM;
    const int col0 = (blockIdx.y - g * tiles_n) * GPUCONV_BN;
    const int P = N * OH * OW;
    const int p_begin = blockIdx.z * chunk;
    const int p_end = min(P, p_begin + chunk);
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;

    // Loader roles: tap row / output channel t % 64, pixels p0 + t / 64 + 4 i.
    const int lr = t % GPUCONV_BM;
    const int r = row0 + lr;
    const bool r_ok = r < K;
    int k1d1 = 0, k2d2 = 0, cn = 0;
    if (r_ok) {
        const int kk = r / Cg;
        cn = r - kk * Cg;
        const int k1 = kk / KW;
        k1d1 = k1 * d1 - pt;
        k2d2 = (kk - k1 * KW) * d2 - pl;
    }
    const bool c_ok = col0 + lr < Mg;
    const int mcol = g * Mg + col0 + lr;
    const T* xg = x + g * Cg + cn;

    Acc acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);

    // This thread's 4 pixels p0 + t / 64 + 4 i, advanced by BK each step without divisions.
    gpuconv_walk3 px[4];  // digits (b, oi, oj)
#pragma unroll
    for (int i = 0; i < 4; ++i) px[i].init(p_begin + t / GPUCONV_BM + 4 * i, GPUCONV_BK, OH, OW);

    // Register-staged double buffering, as in gpuconv_conv_fwd: one barrier per step.
    Acc ra[4], rb[4];
    auto load = [&](int p0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int p = p0 + t / GPUCONV_BM + 4 * i;
            ra[i] = rb[i] = Acc(0);
            if (p < p_end) {
                const int ih = px[i].i1 * s1 + k1d1, iw = px[i].i2 * s2 + k2d2;
                if (r_ok && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                    ra[i] = gpuconv_to_acc(xg[(gpuconv_i64)((px[i].i0 * H + ih) * W + iw) * C]);
                if (c_ok) rb[i] = gpuconv_load_dz(dy, y, (gpuconv_i64)p * M + mcol, act);
            }
            px[i].advance();
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[buf][t / GPUCONV_BM + 4 * i][lr] = ra[i];
            Bs[buf][t / GPUCONV_BM + 4 * i][lr] = rb[i];
        }
    };

    gpuconv_gemm_mainloop<Acc, GPUCONV_BM, GPUCONV_BN>(p_begin, p_end, load, stage, As, Bs, acc, tx, ty);

    Acc* out = ws + (gpuconv_i64)blockIdx.z * K * M;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + 4 * ty + i;
        if (row >= K) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + 4 * tx + j;
            if (col < Mg) out[(gpuconv_i64)row * M + g * Mg + col] = acc[i][j];
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_conv_bwd_weight_small(
    const T* __restrict__ dy,  // output gradient (N, OH, OW, M), contiguous
    const T* __restrict__ y,   // saved output (N, OH, OW, M); read only when act != identity
    const T* __restrict__ x,   // input (N, H, W, C)
    typename gpuconv_acc<T>::type* __restrict__ ws,  // written: partial sums (splits, KH*KW*Cg*M)
    GPUCONV_CONV_SHAPE_PARAMS,   // N, H, W, C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl
    int chunk,                   // output pixels per split; split = blockIdx.y
    int act)                     // GPUCONV_ACT_* of the forward pass
{
    // Block (GPUCONV_RED_X, GPUCONV_RED_Y) = (32, 8): threadIdx.x = weight element (HWIO order, so m fastest
    // and dz loads coalesce), threadIdx.y = pixel phase; the 8 phases are added in order at the end.
    typedef typename gpuconv_acc<T>::type Acc;
    __shared__ Acc red[GPUCONV_RED_Y][GPUCONV_RED_X + 1];
    const int Cg = C / G, Mg = M / G;
    const int E = KH * KW * Cg * M;
    const int e = blockIdx.x * GPUCONV_RED_X + threadIdx.x;  // weight element (k1, k2, n, m)
    const int P = N * OH * OW;
    const int p_begin = blockIdx.y * chunk;
    const int p_end = min(P, p_begin + chunk);
    Acc v = Acc(0);
    if (e < E) {
        const int r = e / M, m = e - r * M;
        const int kk = r / Cg, n = r - kk * Cg;
        const int k1 = kk / KW, k2 = kk - k1 * KW;
        const int g = m / Mg;
        const T* xg = x + g * Cg + n;
        const int dh = k1 * d1 - pt, dw = k2 * d2 - pl;
        // Pixel p = p_begin + threadIdx.y + 8 k, decoded once and then advanced without divisions.
        gpuconv_walk3 px;  // digits (b, oi, oj)
        px.init(p_begin + threadIdx.y, GPUCONV_RED_Y, OH, OW);
        for (int p = p_begin + threadIdx.y; p < p_end; p += GPUCONV_RED_Y) {
            const int ih = px.i1 * s1 + dh, iw = px.i2 * s2 + dw;
            // a padding tap is a zero that enters the product, as in the forward pass (0 * NaN dz = NaN)
            const Acc xv = ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)
                               ? gpuconv_to_acc(xg[(gpuconv_i64)((px.i0 * H + ih) * W + iw) * C]) : Acc(0);
            v += xv * gpuconv_load_dz(dy, y, (gpuconv_i64)p * M + m, act);
            px.advance();
        }
    }
    red[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && e < E) {
        Acc s = red[0][threadIdx.x];
#pragma unroll
        for (int k = 1; k < GPUCONV_RED_Y; ++k) s += red[k][threadIdx.x];
        ws[(gpuconv_i64)blockIdx.y * E + e] = s;
    }
}

template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_bias_grad(
    const T* __restrict__ dy,  // output gradient, viewed as (P, M), contiguous
    const T* __restrict__ y,   // saved output, same shape; read only when act != identity
    typename gpuconv_acc<T>::type* __restrict__ ws,  // written: partial sums (splits, M)
    T* __restrict__ dz,        // written when store_dz != 0: dy * act'(z), same shape as dy (else unused)
    int P,                     // rows (N * OH * OW)
    int M,                     // channels
    int chunk,                 // rows per split; split = blockIdx.y
    int act,                   // GPUCONV_ACT_* of the forward pass
    int store_dz,              // 1: also store dz (rounded to T, as gpuconv_act_bwd does), 0: only sum it
    int tf32)                  // with store_dz, 1: dz rounded to TF32 instead (float; gpuconv_store_dz)
{
    // Block (GPUCONV_RED_X, GPUCONV_RED_Y) = (32, 8): threadIdx.x = channel within the block's 32,
    // threadIdx.y = row phase.
    typedef typename gpuconv_acc<T>::type Acc;
    __shared__ Acc red[GPUCONV_RED_Y][GPUCONV_RED_X + 1];
    const int m = blockIdx.x * GPUCONV_RED_X + threadIdx.x;
    const int p_begin = blockIdx.y * chunk;
    const int p_end = min(P, p_begin + chunk);
    Acc v = Acc(0);
    if (m < M)
        for (int p = p_begin + threadIdx.y; p < p_end; p += GPUCONV_RED_Y) {
            const gpuconv_i64 i = (gpuconv_i64)p * M + m;
            const Acc d = gpuconv_load_dz(dy, y, i, act);
            if (store_dz) gpuconv_store_dz(dz + i, d, tf32);
            v += d;  // the unrounded value, as without store_dz: db is the same either way
        }
    red[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && m < M) {
        Acc s = red[0][threadIdx.x];
#pragma unroll
        for (int k = 1; k < GPUCONV_RED_Y; ++k) s += red[k][threadIdx.x];
        ws[(gpuconv_i64)blockIdx.y * M + m] = s;
    }
}

template <typename T>
__global__ void __launch_bounds__(GPUCONV_THREADS) gpuconv_sum_partials(
    const typename gpuconv_acc<T>::type* __restrict__ ws,  // partial sums (splits, E)
    T* __restrict__ out,       // written: out[e] = sum_s ws[s, e], summed for s = 0, 1, ... in order
    int E,                     // elements per split
    int splits)                // number of splits
{
    typedef typename gpuconv_acc<T>::type Acc;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    Acc s = ws[e];
    for (int k = 1; k < splits; ++k) s += ws[(gpuconv_i64)k * E + e];
    gpuconv_store(out + e, s);
}
