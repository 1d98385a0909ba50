// A small tensor-core GEMM for the SASS tests (tests/test_sass.py): one warp per 16 x 16 tile of
// c = a @ b (row-major a (n, k), b (k, n), k a multiple of 16), its tiles of a and b copied into shared memory
// with cp.async, the product on wmma fragments. It proves the HMMA and LDGSTS parsing before the real
// tensor-core kernels exist; it is compiled by NVRTC only (never launched).
// The `float` instantiation runs TF32 (m16n16k8), `__half` FP16 and `__nv_bfloat16` BF16 (m16n16k16).
// gpuconv-name-expressions: tc_test_gemm<float>, tc_test_gemm<__half>, tc_test_gemm<__nv_bfloat16>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <mma.h>

using namespace nvcuda;

template <typename T> struct tc_shape { static constexpr int K = 16; typedef T elem; };
template <> struct tc_shape<float> { static constexpr int K = 8; typedef wmma::precision::tf32 elem; };

template <typename T>
__global__ void tc_test_gemm(const T* __restrict__ a,  // (n, k), row-major
                             const T* __restrict__ b,  // (k, n), row-major
                             float* __restrict__ c,    // (n, n), row-major, written
                             int n,                    // rows of a, columns of b (a multiple of 16)
                             int k)                    // reduction length (a multiple of 16)
{
    constexpr int KS = tc_shape<T>::K;
    typedef typename tc_shape<T>::elem E;
    __shared__ __align__(128) T As[16][16];
    __shared__ __align__(128) T Bs[16][16];
    const int lane = threadIdx.x, row0 = blockIdx.y * 16, col0 = blockIdx.x * 16;
    wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    constexpr int PER_COPY = 16 / sizeof(T);  // elements per 16-byte asynchronous copy
    for (int k0 = 0; k0 < k; k0 += 16) {
#pragma unroll
        for (int i = lane * PER_COPY; i < 256; i += 32 * PER_COPY) {
            const int r = i / 16, q = i % 16;
            __pipeline_memcpy_async(&As[r][q], &a[(row0 + r) * k + k0 + q], 16);
            __pipeline_memcpy_async(&Bs[r][q], &b[(k0 + r) * n + col0 + q], 16);
        }
        __pipeline_commit();
        __pipeline_wait_prior(0);
        __syncwarp();
        for (int kk = 0; kk < 16; kk += KS) {
            wmma::fragment<wmma::matrix_a, 16, 16, KS, E, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, KS, E, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, &As[0][kk], 16);
            wmma::load_matrix_sync(fb, &Bs[kk][0], 16);
            if constexpr (KS == 8) {
                for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
                for (int t = 0; t < fb.num_elements; ++t) fb.x[t] = wmma::__float_to_tf32(fb.x[t]);
            }
            wmma::mma_sync(acc, fa, fb, acc);
        }
        __syncwarp();
    }
    wmma::store_matrix_sync(&c[row0 * n + col0], acc, n, wmma::mem_row_major);
}
