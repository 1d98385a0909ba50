// Test-only kernel for the CPU emulator: the CUDA built-ins its prelude provides, computed on one input value
// per thread, so that tests compare them with numpy and NVRTC checks that the same text compiles for a GPU.
#include <cuda_fp16.h>

__device__ __forceinline__ float square(float v) { return v * v; }

extern "C" __global__ void __launch_bounds__(64) builtins(const float* __restrict__ x,    // n values in (0, 4)
                                                          float* __restrict__ f,          // n * 16 results
                                                          int* __restrict__ k,            // n * 8 results
                                                          double* __restrict__ d,         // n * 2 results
                                                          __half* __restrict__ h,         // n * 2 results
                                                          unsigned long long* __restrict__ total,  // 1 value
                                                          int n) {
    const dim3 block = blockDim;
    int i = blockIdx.x * block.x + threadIdx.x;
    if (i >= n) return;
    float v = __ldg(&x[i]);
    float* fo = f + 16 * i;
    fo[0] = expf(v);
    fo[1] = logf(v);
    fo[2] = sqrtf(v);
    fo[3] = rsqrtf(v);
    fo[4] = __expf(v);
    fo[5] = __fdividef(v, 3.0f);
    fo[6] = fmaf(v, 2.0f, 1.0f);
    fo[7] = fmaxf(v, 2.0f) + fminf(v, 1.0f);
    fo[8] = tanhf(v - 2.0f);
    fo[9] = fabsf(v - 2.0f);
    fo[10] = max(v, 2.5f) - min(v, 0.5f);
    fo[11] = __saturatef(v - 1.5f);
    fo[12] = __int_as_float(__float_as_int(v));
    fo[13] = square(v);
    float4 q = make_float4(v, 2.0f * v, 3.0f, 4.0f);
    fo[14] = q.x + q.y + q.z + q.w;
    fo[15] = __half2float(__float2half_rn(v));
    int* ko = k + 8 * i;
    unsigned u = unsigned(i) * 2654435761u;
    ko[0] = __popc(u);
    ko[1] = __clz(int(u | 1u));
    ko[2] = __ffs(i);
    ko[3] = int(__brev(unsigned(i)));
    ko[4] = min(i, 7) + max(i, 3);
    ko[5] = warpSize;
    ko[6] = __float2int_rn(v * 10.0f);
    ko[7] = int(block.x);
    d[2 * i] = exp(double(v));
    d[2 * i + 1] = sqrt(double(v)) + fmax(double(v), 1.0);
    __half a = __float2half(v), b = __float2half(0.5f);
    h[2 * i] = __hadd(__hmul(a, b), b);
    h[2 * i + 1] = a * b + b;
    __syncwarp();
    __threadfence_block();
    atomicAdd(total, (unsigned long long)i);
    __threadfence();
}
