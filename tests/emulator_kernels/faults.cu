// Test-only kernels for the CPU emulator: bugs it must report instead of hanging or passing silently.

// Half of warp 0 waits at __syncthreads while the other half waits in a shuffle: neither can complete.
extern "C" __global__ void deadlock(float* __restrict__ out) {
    float v = float(threadIdx.x);
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        v = __shfl_down_sync(0xffffffffu, v, 1);
    }
    out[threadIdx.x] = v;
}

// Threads reach __syncthreads from two different lines (a hang or silent corruption on a GPU).
extern "C" __global__ void divergent_barrier(float* __restrict__ out) {
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// Reads one element past the end of x.
extern "C" __global__ void read_past_end(const float* __restrict__ x, float* __restrict__ y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i < n ? i : 0] += x[i];
}

// Dereferences a null pointer.
extern "C" __global__ void null_deref(float* __restrict__ out) {
    float* volatile p = nullptr;
    out[threadIdx.x] = p[threadIdx.x];
}

// Local array larger than a fiber stack.
extern "C" __global__ void stack_hog(float* __restrict__ out, int n) {
    volatile float big[1 << 20];
    for (int i = 0; i < n; ++i) big[i * 1024] = float(i);
    out[threadIdx.x] = big[0];
}

// Calls __trap() in one thread.
extern "C" __global__ void trap_one(float* __restrict__ out) {
    if (threadIdx.x == 3) __trap();
    out[threadIdx.x] = 1.0f;
}

// Fails an assert() in the threads with an odd index (assert needs no include, under NVRTC or the emulator).
extern "C" __global__ void assert_odd(float* __restrict__ out) {
    assert(threadIdx.x % 2 == 0);
    out[threadIdx.x] = 1.0f;
}

// Thread 0 spins until thread 1 sets a flag: fine on a GPU (independent thread scheduling), a hang under
// cooperative fibers when thread 0 runs first.
extern "C" __global__ void spin_wait(int* __restrict__ flag) {
    if (threadIdx.x == 0) {
        while (atomicAdd(flag, 0) == 0) {}
    } else {
        atomicExch(flag, 1);
    }
}

// Writes y[n + offset] (offset >= 0: past the end; offset < -n: before the start) besides y[0..n).
extern "C" __global__ void write_out_of_bounds(float* __restrict__ y, int n, int offset) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 1.0f;
    if (i == 0) y[n + offset] = 2.0f;
}
