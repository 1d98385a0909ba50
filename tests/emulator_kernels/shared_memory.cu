// Test-only kernels for the CPU emulator: dynamic shared memory, and shared memory poisoning.

// Reverses each block's chunk through dynamic shared memory (blockDim.x floats of it).
extern "C" __global__ void reverse_blocks(const float* __restrict__ x, float* __restrict__ y, int n) {
    extern __shared__ float buf[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
    if (j < n) y[j] = buf[threadIdx.x];
}

// Two dynamic arrays carved out of one buffer, as kernels do with an aligned byte buffer.
extern "C" __global__ void two_arrays(float* __restrict__ out, int n) {
    extern __shared__ __align__(16) unsigned char raw[];
    float* a = reinterpret_cast<float*>(raw);
    int* b = reinterpret_cast<int*>(raw + n * sizeof(float));
    a[threadIdx.x] = float(threadIdx.x);
    b[threadIdx.x] = int(threadIdx.x) * 2;
    __syncthreads();
    int o = n - 1 - threadIdx.x;
    out[threadIdx.x] = a[o] + float(b[o]);
}

// Reads shared memory that no thread wrote: under the emulator it holds the poison (NaN for floats).
extern "C" __global__ void read_uninitialised(float* __restrict__ out) {
    __shared__ float tile[64];
    extern __shared__ float dyn[];
    if (threadIdx.x % 2 == 0) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[2 * threadIdx.x] = tile[threadIdx.x];
    out[2 * threadIdx.x + 1] = dyn[threadIdx.x];
}

// Writes one float per thread into dynamic shared memory: past its end when the launch gives less.
extern "C" __global__ void overrun_dynamic(float* __restrict__ out) {
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = dyn[0];
}
