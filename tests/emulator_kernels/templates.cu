// Test-only kernel for the CPU emulator: y = alpha * x + y over float, double and __half (name expressions).
// gpuconv-name-expressions: axpy<float>, axpy<double>, axpy<__half>
#include <cuda_fp16.h>

template <typename T>
__global__ void __launch_bounds__(256) axpy(const T* __restrict__ x,  // n values
                                            T* __restrict__ y,        // n values, updated in place
                                            T alpha,                  // scale of x
                                            int n) {                  // element count
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = alpha * __ldg(&x[i]) + y[i];
}
