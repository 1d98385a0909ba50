// Forward pass on Hopper's warpgroup MMA (wgmma, sm_90a): y = act(conv(x, w) + bias), the implicit GEMM of
// kernels/conv_tc_forward.cu (rows = N*OH*OW output pixels, columns = Mg output channels, reduction = the
// KH*KW*Cg taps; blockIdx.z = group) with the same 16-byte copies (kernels/gpuconv_tc_fwd_copies.cuh), FP16 and
// BF16 products, float accumulators.
//
//   gpuconv_wgmma_fwd<T, STAGES>
//     T       __half or __nv_bfloat16
//     STAGES  shared buffers; STAGES - 2 steps of copies in flight ahead of the step the tensor cores multiply,
//             whose wgmma stays in flight while the next step's copies land (gpuconv_wg_mainloop)
// The block is one warpgroup (128 threads) and a 128 x 128 tile: each 64-byte reduction step is 2 x 2
// wgmma.mma_async m64n128k16, rows 0-63 and 64-127 of the tile, each 64 accumulators a thread. Operands stay in
// shared memory, in wgmma's canonical layouts (kernels/gpuconv_wgmma.cuh): A (x, BM x BK, channels fastest)
// K-major with the 64-byte swizzle, a 64-byte row a pixel; B (w, BK x BN, output channels fastest as in HWIO)
// N-major with the 128-byte swizzle, atoms of 8 reduction rows x 64 columns. The routing (cuda_tc.forward_plan)
// takes it on sm_90 for Cg and Mg whole 16-byte runs, Mg above 64 and 16-byte aligned x and w; NVRTC builds it
// for sm_90a only (elsewhere the body is empty), and the CUDA backend compiles this file with -arch=sm_90a.
// gpuconv-nvrtc-arches: sm_90a
// gpuconv-name-expressions: gpuconv_wgmma_fwd<__half, 4>, gpuconv_wgmma_fwd<__nv_bfloat16, 4>
#include "gpuconv_tc_fwd_copies.cuh"

#if defined(GPUCONV_EMULATOR) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GPUCONV_WGMMA_BUILT 1
#include "gpuconv_wgmma.cuh"
#else
#define GPUCONV_WGMMA_BUILT 0
#endif

// The tile and its shared-memory layout: per stage A (8 KB) then B (8 KB), from a 1024-byte aligned base (the
// 128-byte swizzle repeats every 1024 bytes; the launch's shared_mem has room to align).
template <typename T, int STAGES_>
struct gpuconv_wg_tile {
    static constexpr int BM = 128, BN = 128, STAGES = STAGES_;
    static constexpr int BK = GPUCONV_TC_BYTES_K / sizeof(T);  // 32: one 64-byte swizzle row of A
    static constexpr int VEC = 16 / sizeof(T), THREADS = GPUCONV_TC_THREADS;
    static constexpr int A_BYTES = BM * GPUCONV_TC_BYTES_K, B_BYTES = BK * BN * (int)sizeof(T);
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES, ALIGN = 1024;
    static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + ALIGN;
    static_assert(sizeof(T) == 2 && BK == 32 && THREADS == 128, "16-bit operands, one warpgroup");

    // Byte offsets in a stage's A of element (m, k), and in its B of (k, n): 16-byte unit u of a swizzle row r
    // is stored at unit u ^ (r's bits that the swizzle takes: (m / 2) % 4 for 64 bytes, k % 8 for 128).
    __host__ __device__ static constexpr int a_byte(int m, int k) {
        return m * 64 + (((k / VEC) ^ ((m / 2) % 4)) << 4) + (k % VEC) * 2;
    }
    __host__ __device__ static constexpr int b_byte(int k, int n) {
        return ((k / 8) * 2 + n / 64) * 1024 + (k % 8) * 128 + ((((n % 64) / VEC) ^ (k % 8)) << 4) + (n % VEC) * 2;
    }
    __device__ static T* a_at(T* smem, int s, int m, int k) {
        return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(smem) + s * STAGE_BYTES + a_byte(m, k));
    }
    __device__ static T* b_at(T* smem, int s, int k, int n) {
        return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(smem) + s * STAGE_BYTES + A_BYTES +
                                    b_byte(k, n));
    }
};

#if GPUCONV_WGMMA_BUILT
template <typename T> struct gpuconv_wg_mma;
template <> struct gpuconv_wg_mma<__half> {
    __device__ static void run(float (&d)[64], unsigned long long a, unsigned long long b, int accumulate) {
        gpuconv_wgmma_f16<128, 0, 1>(d, a, b, accumulate);
    }
};
template <> struct gpuconv_wg_mma<__nv_bfloat16> {
    __device__ static void run(float (&d)[64], unsigned long long a, unsigned long long b, int accumulate) {
        gpuconv_wgmma_bf16<128, 0, 1>(d, a, b, accumulate);
    }
};

// acc[h] = A (rows 64 h ..) B over KT >= 1 reduction steps. Every thread commits one cp.async batch a step, so at
// step kt __pipeline_wait_prior(D - 1) means "step kt has landed" for this thread's copies, and the barrier
// after it makes everyone's visible. The copies issued then overwrite the stage of step kt - 2, whose wgmma
// every warp has waited for (wait_group 1 at the end of step kt - 1) before that barrier; step kt - 1's
// wgmma may still run, on its own stage. With one warpgroup a block the barrier is what CUDA's memory model
// asks for; CUTLASS's single-warpgroup cp.async mainloop (MainloopSm90CpAsyncGmma) does without it, relying on
// wgmma being one warpgroup operation (the emulator's lockstep of warp-collective operations cannot tell).
template <typename T, typename Tile, typename Issue>
__device__ __forceinline__ void gpuconv_wg_mainloop(unsigned char* smem, int KT, Issue& issue,
                                                    float (&acc)[2][64]) {
    constexpr int S = Tile::STAGES, D = S - 2;
    static_assert(D >= 1, "at least 3 stages");
#pragma unroll
    for (int s = 0; s < D; ++s) {
        if (s < KT) issue(s, s);
        __pipeline_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        __pipeline_wait_prior(D - 1);
        __syncthreads();
        const int next = kt + D;
        if (next < KT) issue(next, next % S);
        __pipeline_commit();
        const unsigned char* st = smem + (kt % S) * Tile::STAGE_BYTES;
        gpuconv_wgmma_fence();
#pragma unroll
        for (int j = 0; j < Tile::BK / 16; ++j) {
            // B: 16 reduction rows are two atoms along k (SBO 2048 bytes), 128 columns two along n (LBO 1024)
            const unsigned long long b = gpuconv_wgmma_desc(st + Tile::A_BYTES + 4096 * j, 1024, 2048,
                                                            GPUCONV_WGMMA_SW128);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                // A: 8-row groups of 512 bytes (SBO); the k16 step j is 32 bytes into each swizzled row
                const unsigned long long a = gpuconv_wgmma_desc(st + 4096 * h + 32 * j, 16, 512,
                                                                GPUCONV_WGMMA_SW64);
                gpuconv_wg_mma<T>::run(acc[h], a, b, kt > 0 || j > 0);
            }
        }
        gpuconv_wgmma_commit_group();
        gpuconv_wgmma_wait_group<1>();
    }
    gpuconv_wgmma_wait_group<0>();
}

template <typename T, int STAGES>
__device__ __forceinline__ void gpuconv_wgmma_fwd_body(const T* __restrict__ x, const T* __restrict__ w,
                                                       const T* __restrict__ bias, T* __restrict__ y,
                                                       GPUCONV_CONV_SHAPE_PARAMS, int has_bias, int act) {
    typedef gpuconv_wg_tile<T, STAGES> Tile;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES, the launch's shared_mem
    unsigned char* smem = smem_bytes + ((Tile::ALIGN - (gpuconv_smem_addr(smem_bytes) % Tile::ALIGN)) % Tile::ALIGN);

    const int Cg = C / G, Mg = M / G;
    const int g = blockIdx.z;
    const int P = N * OH * OW;
    const int K = KH * KW * Cg;
    const int row0 = blockIdx.x * Tile::BM, col0 = blockIdx.y * Tile::BN;
    const int KT = (K + Tile::BK - 1) / Tile::BK;

    float acc[2][64];  // the first wgmma of each half overwrites them (accumulate 0): no zeroing, whose moves
                       // into the accumulators would make ptxas serialize the wgmma (its warning C7515)

    auto issue = gpuconv_tc_fwd_copies<T, Tile>(reinterpret_cast<T*>(smem), x + g * Cg, w + g * Mg + col0, N, H, W,
                                                C, KH, KW, M, G, OH, OW, s1, s2, d1, d2, pt, pl, row0, col0);
    gpuconv_wg_mainloop<T, Tile>(smem, KT, issue, acc);

    // Epilogue from D's fragment: lane (g, q) of warp w holds rows 16 w + gr and + 8 of each 64-row half,
    // columns 8 j + 2 q and + 1 (register 4 j + 2 r8 + c). Bias and activation on the float sums, one rounding.
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gr = lane / 4, q = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int r8 = 0; r8 < 2; ++r8) {
            const int row = row0 + 64 * h + 16 * warp + 8 * r8 + gr;
            if (row >= P) continue;
            T* out = y + (gpuconv_i64)row * M + g * Mg;
#pragma unroll
            for (int j = 0; j < 16; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = col0 + 8 * j + 2 * q + c;
                    if (col >= Mg) continue;
                    float v = acc[h][4 * j + 2 * r8 + c];
                    if (has_bias) v += gpuconv_to_acc(bias[g * Mg + col]);
                    gpuconv_store(out + col, gpuconv_act_forward(v, act));
                }
            }
        }
    }
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
