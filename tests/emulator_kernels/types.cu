// Element types under the emulator: a struct by pointer and by value, and __hfma's single rounding in __half
// and __nv_bfloat16.
// gpuconv-nvrtc-arches: sm_80 sm_90 (bfloat16 arithmetic needs sm_80)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

struct Pair {
    float a;
    int b;
};

extern "C" __global__ void struct_scale(const Pair* __restrict__ in, Pair* __restrict__ out, Pair s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i].a = in[i].a * s.a;
        out[i].b = in[i].b + s.b;
    }
}

extern "C" __global__ void fma_half_bf16(const __half* __restrict__ ha, const __half* __restrict__ hb,
                                         const __half* __restrict__ hc, __half* __restrict__ hout,
                                         const __nv_bfloat16* __restrict__ ba, const __nv_bfloat16* __restrict__ bb,
                                         const __nv_bfloat16* __restrict__ bc, __nv_bfloat16* __restrict__ bout, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        hout[i] = __hfma(ha[i], hb[i], hc[i]);
        bout[i] = __hfma(ba[i], bb[i], bc[i]);
    }
}
