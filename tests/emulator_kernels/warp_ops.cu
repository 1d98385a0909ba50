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

// Block-wide votes (threads past n exit first and drop out of the barrier), and a shuffle among the lower
// half-warp only (mask 0xffff, width 16) while the upper half takes the other branch.
extern "C" __global__ void block_votes(const int* __restrict__ x,  // n values
                                       int* __restrict__ out,      // 3 values: count, and, or
                                       int* __restrict__ half,     // blockDim.x values
                                       int n) {
    int i = threadIdx.x;
    if (i >= n) return;
    int p = x[i] > 0;
    int count = __syncthreads_count(p);
    int all = __syncthreads_and(p);
    int any = __syncthreads_or(p);
    if (i == 0) {
        out[0] = count;
        out[1] = all;
        out[2] = any;
    }
    if ((i & 31) < 16) {
        half[i] = __shfl_down_sync(0xffffu, x[i], 1, 16);
    } else {
        half[i] = -x[i];
    }
}
