// Test-only kernel for the CPU emulator: c = a + b, with an early return past the end.
extern "C" __global__ void vector_add(const float* __restrict__ a,  // input, n floats
                                      const float* __restrict__ b,  // input, n floats
                                      float* __restrict__ c,        // output, n floats
                                      int n) {                      // element count
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    c[i] = a[i] + b[i];
}
