// Test-only kernels for the CPU emulator: warp shuffles and votes.

// Sum of each block's values: shuffle-down within warps, per-warp partials in shared memory, one atomicAdd.
extern "C" __global__ void block_sum(const float* __restrict__ x,  // n values
                                    float* __restrict__ out,      // 1 value, accumulated
                                    int n) {
    __shared__ float partial[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nwarps = (blockDim.x + warpSize - 1) / warpSize;
        v = lane < nwarps ? partial[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
        if (lane == 0) atomicAdd(out, v);
    }
}

// Per lane: inclusive prefix sum within the warp (shfl_up), the warp's lane-0 value (shfl broadcast),
// the warp's maximum (shfl_xor), ballot / any / all of (x > 0).
extern "C" __global__ void warp_misc(const int* __restrict__ x,      // 32 * nwarps values
                                     int* __restrict__ scan,         // inclusive prefix sum within each warp
                                     int* __restrict__ first,        // lane 0's value
                                     int* __restrict__ wmax,         // warp maximum
                                     unsigned* __restrict__ ballot,  // bits of x > 0
                                     int* __restrict__ any_all) {    // 2 * (any, all) per thread
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    int v = x[i];
    int s = v;
    for (int d = 1; d < 32; d *= 2) {
        int up = __shfl_up_sync(0xffffffffu, s, d);
        if (lane >= d) s += up;
    }
    scan[i] = s;
    first[i] = __shfl_sync(0xffffffffu, v, 0);
    int m = v;
    for (int d = 16; d > 0; d /= 2) m = max(m, __shfl_xor_sync(0xffffffffu, m, d));
    wmax[i] = m;
    ballot[i] = __ballot_sync(0xffffffffu, v > 0);
    any_all[2 * i] = __any_sync(0xffffffffu, v > 0);
    any_all[2 * i + 1] = __all_sync(0xffffffffu, v > 0);
}
