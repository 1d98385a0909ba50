// The wgmma rate probe of `python tools/gpu_check.py wgmma_rate` (the first GPU run measures what
// tools/tc_model.py assumes: wgmma's share of the dense rate, and what the stage copies cost it), on the wgmma
// kernels' own tile and main loop (kernels/gpuconv_wg.cuh). tests/test_emulator_wgmma.py runs it on the emulator;
// the same text compiles with NVRTC for sm_90a (tests/test_nvrtc.py). Not a convolution kernel: no plan launches it.
// gpuconv-nvrtc-arches: sm_90a
// gpuconv-name-expressions: gpuconv_wgmma_rate<__half>
#include "gpuconv_wg.cuh"

// Each block (one warpgroup, 128 x 128 tile) runs `steps` reduction steps of 2 x 2 m64n128k16. copies = 0: on
// stages filled once from src; copies = 1: every step's 16 KB copied anew from src by cp.async, as the convolution
// kernels copy their stages. out[block * 128 + thread] = the sum of the thread's accumulators (with every element
// of src equal to v: 128 x steps x 32 v^2, whatever the layout).
template <typename T>
__global__ void __launch_bounds__(GPUCONV_TC_THREADS, 2) gpuconv_wgmma_rate(
    const T* __restrict__ src,  // Tile::STAGES * Tile::STAGE_BYTES bytes
    float* __restrict__ out,    // gridDim.x * 128 floats, written
    int steps,                  // reduction steps, at least 1
    int copies)                 // 1: copy every step's stage from src
{
#if GPUCONV_WGMMA_BUILT
    typedef gpuconv_wg_tile<T, 4, false> Tile;
    extern __shared__ __align__(128) unsigned char smem_bytes[];  // Tile::SMEM_BYTES
    unsigned char* smem = gpuconv_wg_smem<Tile>(smem_bytes);
    const int t = threadIdx.x;
    constexpr int CHUNKS = Tile::STAGE_BYTES / 16 / Tile::THREADS;  // 16-byte copies a thread and stage
    const unsigned char* s8 = reinterpret_cast<const unsigned char*>(src);
    for (int c = t; c < Tile::STAGES * Tile::STAGE_BYTES / 16; c += Tile::THREADS)
        *reinterpret_cast<int4*>(smem + 16 * c) = *reinterpret_cast<const int4*>(s8 + 16 * c);
    __syncthreads();
    auto issue = [&](int, int s) {
        if (!copies) return;
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const int c = t + Tile::THREADS * i;
            __pipeline_memcpy_async(smem + s * Tile::STAGE_BYTES + 16 * c, s8 + s * Tile::STAGE_BYTES + 16 * c, 16);
        }
    };
    float acc[2][64];
    gpuconv_wg_mainloop<T, Tile>(smem, steps, issue, acc);
    float sum = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 64; ++i) sum += acc[h][i];
    out[blockIdx.x * Tile::THREADS + t] = sum;
#endif
}
