// Shared device helpers of the gpuconv kernels: storage <-> accumulator conversion, activations, the tile
// sizes and the inner product of one shared-memory tile of the implicit GEMMs.
//
// Notation (the same names as gpuconv/_config.py):
//   x  (N, H, W, C)      input, NHWC              y, dy  (N, OH, OW, M)   output and its gradient
//   w  (KH, KW, Cg, M)   weights, HWIO            G groups, Cg = C / G, Mg = M / G, g = m / Mg
//   s1, s2 strides; d1, d2 dilations; pt, pl top and left paddings (bottom/right follow from OH, OW)
//
// Index widths: pixel counts (N*H*W, N*OH*OW) and weight counts (KH*KW*Cg*M) fit in int32 (the Python
// launch wrappers refuse larger problems); element offsets into x, y, dy, dx (pixel * channels) are 64-bit.
//
// The same text compiles under NVRTC (GPU) and under gpuconv's CPU emulator (g++, GPUCONV_EMULATOR defined,
// __half provided by the emulator's header; cuda_bf16.h comes from its include folder).
#pragma once

#ifndef GPUCONV_EMULATOR
#include <cuda_fp16.h>
#endif
#include <cuda_bf16.h>

typedef long long gpuconv_i64;

// Activation codes GPUCONV_ACT_<NAME> and launch constants come from Python as -D macros, named once there:
// gpuconv/_registry.py ACTIVATIONS and gpuconv/backends/_plans.py kernel_defines() (every way of compiling a
// package kernel, cupy, the emulator and the NVRTC checks, passes them).
//
// Implicit-GEMM tiles: a block of GPUCONV_THREADS threads computes a GPUCONV_BM x GPUCONV_BN tile of the
// output, stepping through the reduction GPUCONV_BK at a time; each thread holds a 4 x 4 micro-tile whose rows
// are 4*ty + i and columns 4*tx + j (tx = thread % 16, ty = thread / 16). The forward and dx kernels also have a
// 128 x 32 tile (tx = thread % 8, ty = thread / 8) for 16..32 channels per group. GPUCONV_PAD: shared tile row
// padding (elements). Column reductions (small-channel dw, db) run blocks of (GPUCONV_RED_X, GPUCONV_RED_Y).
#if !defined(GPUCONV_ACT_IDENTITY) || !defined(GPUCONV_ACT_RELU) || !defined(GPUCONV_ACT_SIGMOID) || \
    !defined(GPUCONV_ACT_TANH) || !defined(GPUCONV_BM) || !defined(GPUCONV_BN) || !defined(GPUCONV_BK) ||  \
    !defined(GPUCONV_THREADS) || !defined(GPUCONV_PAD) || !defined(GPUCONV_RED_X) || !defined(GPUCONV_RED_Y)
#error "compile gpuconv kernels through gpuconv.cuda.modules (it passes gpuconv.backends._plans.kernel_defines())"
#endif

// The shape arguments of every convolution kernel: the same 16 ints in this order, which the launch wrappers
// pass with gpuconv/backends/_plans.py dims(cfg). N, H, W, C input shape; KH, KW, M kernel height, width and
// output channels; G groups (C and M divisible by G); OH, OW output height, width; s1, s2 strides (rows,
// columns); d1, d2 dilations; pt, pl top and left padding (bottom and right follow from OH, OW).
#define GPUCONV_CONV_SHAPE_PARAMS                                                                     \
    int N, int H, int W, int C, int KH, int KW, int M, int G, int OH, int OW, int s1, int s2, int d1, int d2, \
        int pt, int pl

// One stride phase (ph, pw) of dx, as gpuconv/backends/_plans.py stride_phases lists it (the dx kernels read
// d1, d2, pt, pl only through these):
//   h0, Hp, qh0            the phase's rows: h = h0 + s1 * hp for hp < Hp; (h0 + pt - ph) / s1 = qh0
//   w0, Wp, qw0            the phase's columns, the same way
//   k1f, k1s, T1, k1b, k1i the phase's tap rows: k1 = k1f + k1s * i1 for i1 < T1, reaching output row
//                          oi = qh - (k1b + k1i * i1) from input row qh
//   k2f, k2s, T2, k2b, k2i the phase's tap columns, the same way
#define GPUCONV_DX_PHASE_PARAMS                                                                       \
    int h0, int Hp, int qh0, int w0, int Wp, int qw0, int k1f, int k1s, int T1, int k1b, int k1i, int k2f, \
        int k2s, int T2, int k2b, int k2i

// Accumulator type: float for float16, bfloat16 and float32 storage, double for float64.
template <typename T> struct gpuconv_acc { typedef float type; };
template <> struct gpuconv_acc<double> { typedef double type; };

// Storage -> accumulator.
__device__ __forceinline__ float gpuconv_to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float gpuconv_to_acc(float v) { return v; }
__device__ __forceinline__ double gpuconv_to_acc(double v) { return v; }

__device__ __forceinline__ float gpuconv_to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Accumulator -> storage (float16, bfloat16: round to nearest even, once).
__device__ __forceinline__ void gpuconv_store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void gpuconv_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void gpuconv_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void gpuconv_store(double* p, double v) { *p = v; }

__device__ __forceinline__ float gpuconv_exp(float v) { return expf(v); }
__device__ __forceinline__ double gpuconv_exp(double v) { return exp(v); }
__device__ __forceinline__ float gpuconv_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double gpuconv_tanh(double v) { return tanh(v); }

// y = act(z), one case per activation of gpuconv/_registry.py ACTIVATIONS. relu keeps NaN (as np.maximum);
// sigmoid's exp overflow gives 1 / inf = 0.
template <typename Acc>
__device__ __forceinline__ Acc gpuconv_act_forward(Acc z, int act) {
    switch (act) {
        case GPUCONV_ACT_RELU: return z < Acc(0) ? Acc(0) : z;
        case GPUCONV_ACT_SIGMOID: return Acc(1) / (Acc(1) + gpuconv_exp(-z));
        case GPUCONV_ACT_TANH: return gpuconv_tanh(z);
        default: return z;  // GPUCONV_ACT_IDENTITY (the wrappers pass registered codes only)
    }
}

// dz = dy * act'(z) from the saved output u = act(z), never through exp: relu -> a select (dy = inf with
// u <= 0 gives 0, as np.where), sigmoid -> dy * u * (1 - u), tanh -> dy * (1 - u * u).
template <typename Acc>
__device__ __forceinline__ Acc gpuconv_act_backward(Acc dy, Acc u, int act) {
    switch (act) {
        case GPUCONV_ACT_RELU: return u <= Acc(0) ? Acc(0) : dy;  // NaN u passes dy, as PyTorch
        case GPUCONV_ACT_SIGMOID: return dy * u * (Acc(1) - u);
        case GPUCONV_ACT_TANH: return dy * (Acc(1) - u * u);
        default: return dy;  // GPUCONV_ACT_IDENTITY
    }
}

// dz[i] read from dy (and the saved output y when act != identity): the activation gradient fused into the
// loads of the gradient kernels, so dz never goes to memory.
template <typename T>
__device__ __forceinline__ typename gpuconv_acc<T>::type gpuconv_load_dz(
    const T* __restrict__ dy, const T* __restrict__ y, gpuconv_i64 i, int act) {
    typedef typename gpuconv_acc<T>::type Acc;
    const Acc d = gpuconv_to_acc(dy[i]);
    if (act == GPUCONV_ACT_IDENTITY) return d;
    return gpuconv_act_backward(d, gpuconv_to_acc(y[i]), act);
}

// v rounded to TF32 as cvt.rna.tf32.f32 does (nearest, ties away from zero; NaN and inf unchanged), on its
// bits, so that any target computes it. The backward pass stores dz this way for the tensor-core kernels that
// take TF32 operands as they are (DZ_TF32 in kernels/conv_tc_backward.cu); gpuconv/backends/numpy.py
// tf32_round is the same rule.
__device__ __forceinline__ float gpuconv_round_tf32(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7F800000u) != 0x7F800000u) u = (u + 0x1000u) & 0xFFFFE000u;
    return __uint_as_float(u);
}

// dz = v stored for the tensor-core kernels: rounded to TF32 when tf32 != 0 (float only: the backend sets it
// for float32 in precision "tf32"), else rounded to T as gpuconv_store does.
template <typename T, typename Acc>
__device__ __forceinline__ void gpuconv_store_dz(T* p, Acc v, int) { gpuconv_store(p, v); }
__device__ __forceinline__ void gpuconv_store_dz(float* p, float v, int tf32) {
    *p = tf32 ? gpuconv_round_tf32(v) : v;
}

// A flat index v = (i0 * n1 + i1) * n2 + i2 kept as its digits (i0, i1, i2) while it advances by a fixed
// step, so that loops over pixels (b, oi, oj) or reduction indices (k1, k2, n) do no integer division (two
// per element otherwise, and a division in a loop can make ptxas spill).
struct gpuconv_walk3 {
    int i0, i1, i2;           // digits of the current index (i0 unbounded, i1 < n1, i2 < n2)
    int n1, n2;               // radices of the two low digits
    int step0, step1, step2;  // the step, split into digits the same way

    __device__ __forceinline__ void init(int v, int step, int n1_, int n2_) {
        n1 = n1_;
        n2 = n2_;
        i0 = v / (n1 * n2);
        const int rem = v - i0 * (n1 * n2);
        i1 = rem / n2;
        i2 = rem - i1 * n2;
        step0 = step / (n1 * n2);
        const int srem = step - step0 * (n1 * n2);
        step1 = srem / n2;
        step2 = srem - step1 * n2;
    }
    __device__ __forceinline__ void advance() {
        i2 += step2;
        if (i2 >= n2) { i2 -= n2; ++i1; }
        i1 += step1;
        if (i1 >= n1) { i1 -= n1; ++i0; }
        i0 += step0;
    }
};

// Four consecutive accumulators from shared memory in 128-bit loads (float4, or two double2).
__device__ __forceinline__ void gpuconv_load4(const float* p, float (&v)[4]) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ __forceinline__ void gpuconv_load4(const double* p, double (&v)[4]) {
    const double2 q0 = reinterpret_cast<const double2*>(p)[0], q1 = reinterpret_cast<const double2*>(p)[1];
    v[0] = q0.x; v[1] = q0.y; v[2] = q1.x; v[3] = q1.y;
}

// acc[i][j] += sum_k As[k][4 ty + i] * Bs[k][4 tx + j]: one GPUCONV_BK step of a block's tile product, two
// 128-bit shared loads per 16 multiply-adds. Rows are padded by GPUCONV_PAD (keeps 16-byte alignment and
// limits the transposing stores of the loaders to 2-way bank conflicts); tiles are declared __align__(16).
template <typename Acc, int BM = GPUCONV_BM, int BN = GPUCONV_BN>
__device__ __forceinline__ void gpuconv_tile_mma(const Acc (*As)[BM + GPUCONV_PAD], const Acc (*Bs)[BN + GPUCONV_PAD],
                                                 Acc (&acc)[4][4], int tx, int ty) {
#pragma unroll
    for (int k = 0; k < GPUCONV_BK; ++k) {
        Acc a[4], b[4];
        gpuconv_load4(&As[k][4 * ty], a);
        gpuconv_load4(&Bs[k][4 * tx], b);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
}

// The register-staged, double-buffered main loop of the tiled GEMM kernels, one barrier per step:
// load(k) fetches the tiles of reduction step k (k = begin, begin + GPUCONV_BK, ... < end) into registers and
// stage(buf) stores them into shared buffer buf, so the product of one buffer overlaps the loads of the next.
template <typename Acc, int BM, int BN, typename Load, typename Stage>
__device__ __forceinline__ void gpuconv_gemm_mainloop(int begin, int end, Load& load, Stage& stage,
                                                      Acc (*As)[GPUCONV_BK][BM + GPUCONV_PAD],
                                                      Acc (*Bs)[GPUCONV_BK][BN + GPUCONV_PAD],
                                                      Acc (&acc)[4][4], int tx, int ty) {
    load(begin);
    stage(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = begin; k0 < end; k0 += GPUCONV_BK) {
        const bool more = k0 + GPUCONV_BK < end;
        if (more) load(k0 + GPUCONV_BK);
        gpuconv_tile_mma<Acc, BM, BN>(As[buf], Bs[buf], acc, tx, ty);
        if (more) stage(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }
}
