// Test-only kernels for the CPU emulator: C = A B with 16x16 shared-memory tiles (row-major, any sizes).
// matmul_tiled has both barriers; matmul_tiled_racy lacks the second one (a race the emulator must expose:
// a fast thread overwrites the tile for the next step while slower threads still read the current one).
#define TILE 16

extern "C" __global__ void matmul_tiled(const float* __restrict__ a,  // m x k
                                        const float* __restrict__ b,  // k x n
                                        float* __restrict__ c,        // m x n
                                        int m, int n, int k) {
    __shared__ float as[TILE][TILE];
    __shared__ float bs[TILE][TILE];
    int row = blockIdx.y * TILE + threadIdx.y;
    int col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int t = 0; t < k; t += TILE) {
        as[threadIdx.y][threadIdx.x] = (row < m && t + threadIdx.x < k) ? a[row * k + t + threadIdx.x] : 0.0f;
        bs[threadIdx.y][threadIdx.x] = (col < n && t + threadIdx.y < k) ? b[(t + threadIdx.y) * n + col] : 0.0f;
        __syncthreads();
        for (int i = 0; i < TILE; ++i) acc += as[threadIdx.y][i] * bs[i][threadIdx.x];
        __syncthreads();
    }
    if (row < m && col < n) c[row * n + col] = acc;
}

extern "C" __global__ void matmul_tiled_racy(const float* __restrict__ a,  // m x k
                                             const float* __restrict__ b,  // k x n
                                             float* __restrict__ c,        // m x n
                                             int m, int n, int k) {
    __shared__ float as[TILE][TILE];
    __shared__ float bs[TILE][TILE];
    int row = blockIdx.y * TILE + threadIdx.y;
    int col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int t = 0; t < k; t += TILE) {
        as[threadIdx.y][threadIdx.x] = (row < m && t + threadIdx.x < k) ? a[row * k + t + threadIdx.x] : 0.0f;
        bs[threadIdx.y][threadIdx.x] = (col < n && t + threadIdx.y < k) ? b[(t + threadIdx.y) * n + col] : 0.0f;
        __syncthreads();
        for (int i = 0; i < TILE; ++i) acc += as[threadIdx.y][i] * bs[i][threadIdx.x];
        // missing: __syncthreads();
    }
    if (row < m && col < n) c[row * n + col] = acc;
}
