// Test-only kernels for the CPU emulator: atomics from many blocks at once.
extern "C" __global__ void histogram(const int* __restrict__ x,  // n values in [0, bins)
                                     unsigned* __restrict__ counts, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&counts[x[i]], 1u);
}

// out[0] += sum (double), out_i[0] = max, out_i[1] = min, out_i[2] += count via atomicCAS loop,
// out_f[0] += sum (float), out_u[0] = number of increments by atomicInc (wrapping at a huge limit).
extern "C" __global__ void reductions(const int* __restrict__ x, int n, double* __restrict__ out_d,
                                      int* __restrict__ out_i, float* __restrict__ out_f,
                                      unsigned* __restrict__ out_u) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int v = x[i];
    atomicAdd(out_d, double(v));
    atomicMax(&out_i[0], v);
    atomicMin(&out_i[1], v);
    int old = out_i[2], assumed;
    do {
        assumed = old;
        old = atomicCAS(&out_i[2], assumed, assumed + 1);
    } while (old != assumed);
    atomicAdd(out_f, float(v));
    atomicInc(out_u, 0xffffffffu);
}
