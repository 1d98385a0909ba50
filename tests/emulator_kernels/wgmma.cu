// Hopper's warpgroup MMA of kernels/gpuconv_wgmma.cuh under the emulator (its gpuconv_wgmma.h), for
// tests/test_emulator_wgmma.py; the same text compiles with NVRTC for sm_90a (tests/test_nvrtc.py).
// gpuconv-nvrtc-arches: sm_90a
#include "../../kernels/gpuconv_wgmma.cuh"

// The operands' layout in shared memory, for `steps` mma_async: A's descriptor for step s starts at byte
// a_off + (s % a_per) * a_inner + (s / a_per) * a_outer of the 1024-byte aligned image, with a_lbo, a_sbo and
// the swizzle a_swz; B's likewise.
struct WgLayout {
    int off, per, inner, outer, lbo, sbo, swz;
};

__device__ __forceinline__ unsigned long long wg_desc(const unsigned char* base, const WgLayout& l, int s) {
    return gpuconv_wgmma_desc(base + l.off + (s % l.per) * l.inner + (s / l.per) * l.outer, l.lbo, l.sbo, l.swz);
}

// Misuses (mode): 1 d read before the wait, 2 no wait, 3 no fence, 4 an operand byte written while in flight,
// 5 warp 2 skips the mma_async, 6 lane 3 passes another descriptor, 7 a descriptor of static shared memory,
// 9 d written while in flight, 10 A's start 128 bytes off its swizzle pattern, 11 lane 7 exits before the
// mma_async, 13 a base offset in B's descriptor, 14 no commit before the wait, 15 warp 1 passes another B
// descriptor. (8, a block of 96 threads, and 12, TF32 operands never rounded, are the host's.)
template <int N, int KIND, int TA, int TB>
__device__ void wg_run(float (&d)[N / 2], const unsigned char* base, WgLayout la, WgLayout lb, int steps,
                       int accumulate_first, int pipelined, int mode, float* out) {
    __shared__ __align__(16) unsigned char static_tile[1024];
    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    for (int s = 0; s < steps; ++s) {
        if (s == 0 || pipelined) {
            if (mode != 3) gpuconv_wgmma_fence();
        }
        unsigned long long da = wg_desc(base, la, s), db = wg_desc(base, lb, s);
        if (mode == 6 && lane == 3) da += 2;
        if (mode == 7) da = gpuconv_wgmma_desc(static_tile, la.lbo, la.sbo, la.swz);
        if (mode == 10) da = gpuconv_wgmma_desc(base + la.off + 128, la.lbo, la.sbo, la.swz);
        if (mode == 13) db |= 1ull << 49;
        if (mode == 15 && warp == 1) db += 2;
        if (mode == 11 && lane == 7) return;
        const int acc = s > 0 || accumulate_first;
        if (!(mode == 5 && warp == 2)) {
            if (KIND == 0) gpuconv_wgmma_f16<N, TA, TB>(d, da, db, acc);
            else if (KIND == 1) gpuconv_wgmma_bf16<N, TA, TB>(d, da, db, acc);
            else gpuconv_wgmma_tf32<N>(d, da, db, acc);
        }
        if (mode == 4 && t == 0 && s == 0) const_cast<unsigned char*>(base)[la.off] ^= 0x40;
        if (mode == 9 && t == 5) d[1] = 1.0f;
        if (pipelined && mode != 14) {
            gpuconv_wgmma_commit_group();
            gpuconv_wgmma_wait_group<1>();
        }
    }
    if (mode == 1)
        for (int i = 0; i < N / 2; ++i) out[t * (N / 2) + i] = d[i];
    if (mode == 2) return;
    if (!pipelined && mode != 14) gpuconv_wgmma_commit_group();
    gpuconv_wgmma_wait_group<0>();
}

template <int N, int KIND>
__device__ void wg_dispatch(float (&d)[N / 2], const unsigned char* base, WgLayout la, WgLayout lb, int ta,
                            int tb, int steps, int accumulate_first, int pipelined, int mode, float* out) {
    if (KIND == 2 || (!ta && !tb)) wg_run<N, KIND, 0, 0>(d, base, la, lb, steps, accumulate_first, pipelined, mode, out);
    else if (!ta) wg_run<N, KIND, 0, 1>(d, base, la, lb, steps, accumulate_first, pipelined, mode, out);
    else if (!tb) wg_run<N, KIND, 1, 0>(d, base, la, lb, steps, accumulate_first, pipelined, mode, out);
    else wg_run<N, KIND, 1, 1>(d, base, la, lb, steps, accumulate_first, pipelined, mode, out);
}

// The block copies the host's image (n16 16-byte units) to dynamic shared memory from its first 1024-byte aligned
// address (what a 128-byte swizzle's pattern repeats on), and returns that address.
__device__ unsigned char* wg_stage_image(const uint4* image, int n16) {
    extern __shared__ __align__(16) unsigned char dyn[];
    unsigned char* base = dyn + ((1024u - (gpuconv_smem_addr(dyn) & 1023u)) & 1023u);
    for (int i = threadIdx.x; i < n16; i += blockDim.x) reinterpret_cast<uint4*>(base)[i] = image[i];
    __syncthreads();
    return base;
}

template <int N>
__device__ void wg_gemm(const uint4* image, int n16, float* out, const float* init, int kind, int ta, int tb,
                        WgLayout la, WgLayout lb, int steps, int accumulate_first, int pipelined, int mode) {
    unsigned char* base = wg_stage_image(image, n16);
    const int t = threadIdx.x;
    float d[N / 2];
    for (int i = 0; i < N / 2; ++i) d[i] = init[t * (N / 2) + i];
    if (kind == 0) wg_dispatch<N, 0>(d, base, la, lb, ta, tb, steps, accumulate_first, pipelined, mode, out);
    else if (kind == 1) wg_dispatch<N, 1>(d, base, la, lb, ta, tb, steps, accumulate_first, pipelined, mode, out);
    else wg_dispatch<N, 2>(d, base, la, lb, ta, tb, steps, accumulate_first, pipelined, mode, out);
    if (mode == 1 || mode == 2 || (mode == 11 && t % 32 == 7)) return;
    for (int i = 0; i < N / 2; ++i) out[t * (N / 2) + i] = d[i];
}

// D (64 x n) = (accumulate_first ? init : 0) + sum over s < steps of A_s (64 x k) B_s (k x n), one warpgroup (or
// a block of several, each doing the same): the image (n16 16-byte units, laid out by the host) is copied to
// dynamic shared memory; kind 0 f16, 1 bf16, 2 tf32; ta / tb the transposes; thread t writes its N / 2
// accumulators to out[t * n / 2 ...] (init likewise). pipelined: a fence, mma_async, commit and wait_group<1>
// a step, then wait_group<0>; else one fence, every step, one commit and wait_group<0>.
extern "C" __global__ void wgmma_gemm(const uint4* image, int n16, float* out, const float* init, int kind, int n,
                                      int ta, int tb, WgLayout la, WgLayout lb, int steps, int accumulate_first,
                                      int pipelined, int mode) {
    if (n == 64) wg_gemm<64>(image, n16, out, init, kind, ta, tb, la, lb, steps, accumulate_first, pipelined, mode);
    else wg_gemm<128>(image, n16, out, init, kind, ta, tb, la, lb, steps, accumulate_first, pipelined, mode);
}

// The register-A form (tf32): thread t's 4 registers of A for step s are a_regs[(s * 128 + t % 128) * 4 ...]
// (the host lays them out), B as wgmma_gemm's; every step's registers stay untouched until the wait that covers
// its mma_async (at most 8 steps). pipelined as wgmma_gemm's. Misuse (mode): 16 thread 9 changes a register of
// step 0's A while that mma_async is in flight (to another TF32 value).
template <int N>
__device__ void wg_gemm_rs(const uint4* image, int n16, float* out, const float* init, const unsigned* a_regs,
                           WgLayout lb, int steps, int accumulate_first, int pipelined, int mode) {
    unsigned char* base = wg_stage_image(image, n16);
    const int t = threadIdx.x;
    float d[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; ++i) d[i] = init[t * (N / 2) + i];
    unsigned a[8][4];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        if (s >= steps) break;
#pragma unroll
        for (int v = 0; v < 4; ++v) a[s][v] = a_regs[(s * 128 + t % 128) * 4 + v];
        if (s == 0 || pipelined) gpuconv_wgmma_fence();
        gpuconv_wgmma_tf32_rs<N>(d, a[s], wg_desc(base, lb, s), s > 0 || accumulate_first);
        if (mode == 16 && t == 9 && s == 0) a[0][2] ^= 0x2000u;
        if (pipelined) {
            gpuconv_wgmma_commit_group();
            gpuconv_wgmma_wait_group<1>();
        }
    }
    if (!pipelined) gpuconv_wgmma_commit_group();
    gpuconv_wgmma_wait_group<0>();
#pragma unroll
    for (int i = 0; i < N / 2; ++i) out[t * (N / 2) + i] = d[i];
}

extern "C" __global__ void wgmma_gemm_rs(const uint4* image, int n16, float* out, const float* init,
                                         const unsigned* a_regs, int n, WgLayout lb, int steps,
                                         int accumulate_first, int pipelined, int mode) {
    if (n == 64) wg_gemm_rs<64>(image, n16, out, init, a_regs, lb, steps, accumulate_first, pipelined, mode);
    else wg_gemm_rs<128>(image, n16, out, init, a_regs, lb, steps, accumulate_first, pipelined, mode);
}
