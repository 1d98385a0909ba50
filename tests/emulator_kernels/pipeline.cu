// Asynchronous copies (cuda_pipeline.h primitives) under the emulator: deferred to the wait, poison before it.
#include <cuda_pipeline.h>

// y[i] = tile[(i + 4) % 256]: each of 64 threads copies 16 bytes of x into shared memory and reads the bytes
// another thread copied. mode 0: correct; 1: reads its own copy before its wait; 2: no __syncthreads after the
// waits; 3: never waits at all.
extern "C" __global__ void cp_async_shift(const float* __restrict__ x, float* __restrict__ y, int mode) {
    __shared__ __align__(16) float tile[256];
    int t = threadIdx.x;
    __pipeline_memcpy_async(&tile[4 * t], &x[4 * t], 16);
    __pipeline_commit();
    if (mode == 0 || mode == 2) __pipeline_wait_prior(0);
    if (mode != 2) __syncthreads();
    for (int j = 0; j < 4; ++j) y[4 * t + j] = tile[mode == 1 ? 4 * t + j : (4 * t + 4 + j) % 256];
    if (mode == 1) __pipeline_wait_prior(0);
}

// Two groups: after __pipeline_wait_prior(1) the first is done and the second (zfill 8: its last two floats
// zero) still pending. y[0, 128): group 1; y[128, 256): group 2 after the last wait; y[256, 384): group 2 before.
extern "C" __global__ void cp_async_groups(const float* __restrict__ x, float* __restrict__ y) {
    __shared__ __align__(16) float tile[256];
    int t = threadIdx.x;  // 32 threads
    __pipeline_memcpy_async(&tile[4 * t], &x[4 * t], 16);
    __pipeline_commit();
    __pipeline_memcpy_async(&tile[128 + 4 * t], &x[128 + 4 * t], 16, 8);
    __pipeline_commit();
    __pipeline_wait_prior(1);
    for (int j = 0; j < 4; ++j) {
        y[4 * t + j] = tile[4 * t + j];
        y[256 + 4 * t + j] = tile[128 + 4 * t + j];
    }
    __pipeline_wait_prior(0);
    for (int j = 0; j < 4; ++j) y[128 + 4 * t + j] = tile[128 + 4 * t + j];
}

// A double-buffered pipeline: block b sums chunks of 256 floats, y[b, i] = sum_c x[b, c, (i + 64) % 256].
extern "C" __global__ void cp_async_pipeline_sum(const float* __restrict__ x, float* __restrict__ y, int chunks) {
    __shared__ __align__(16) float buf[2][256];
    int t = threadIdx.x;  // 64 threads
    const float* base = x + (size_t)blockIdx.x * chunks * 256;
    __pipeline_memcpy_async(&buf[0][4 * t], base + 4 * t, 16);
    __pipeline_commit();
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int c = 0; c < chunks; ++c) {
        if (c + 1 < chunks) __pipeline_memcpy_async(&buf[(c + 1) & 1][4 * t], base + (c + 1) * 256 + 4 * t, 16);
        __pipeline_commit();
        __pipeline_wait_prior(1);
        __syncthreads();
        for (int j = 0; j < 4; ++j) acc[j] += buf[c & 1][(4 * t + 64 + j) % 256];
        __syncthreads();
    }
    for (int j = 0; j < 4; ++j) y[blockIdx.x * 256 + 4 * t + j] = acc[j];
}

// Misuses, by mode: 1 size 12; 2 a misaligned source; 3 a destination in global memory; 4 a source that is not
// global memory; 5 zfill over the size; 6 a source past the end of x (n floats).
extern "C" __global__ void cp_async_misuse(const float* __restrict__ x, float* __restrict__ y, int mode, int n) {
    __shared__ __align__(16) float tile[64];
    __shared__ __align__(16) float other[4];
    int t = threadIdx.x;
    void* dst = &tile[4 * t];
    const void* src = &x[4 * t];
    size_t size = 16, zfill = 0;
    if (mode == 1) size = 12;
    if (mode == 2) src = &x[4 * t + 1];
    if (mode == 3) dst = &y[4 * t];
    if (mode == 4) src = other;
    if (mode == 5) zfill = 20;
    if (mode == 6) src = &x[n];
    __pipeline_memcpy_async(dst, src, size, zfill);
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncthreads();
    y[t] = tile[4 * t];
}
