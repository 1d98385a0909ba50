// Tensor-core fragments (nvcuda::wmma) and bfloat16 under the emulator; the same text compiles with NVRTC for
// sm_80 and sm_90 (tests/test_nvrtc.py; bfloat16 and TF32 fragments need sm_80).
// gpuconv-nvrtc-arches: sm_80 sm_90
#include <mma.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
using namespace nvcuda;

// gpuconv-name-expressions: wmma_gemm<__half, nvcuda::wmma::row_major, nvcuda::wmma::row_major, float>
// gpuconv-name-expressions: wmma_gemm<__half, nvcuda::wmma::col_major, nvcuda::wmma::col_major, float>
// gpuconv-name-expressions: wmma_gemm<__half, nvcuda::wmma::row_major, nvcuda::wmma::col_major, __half>
// gpuconv-name-expressions: wmma_gemm<__half, nvcuda::wmma::col_major, nvcuda::wmma::row_major, __half>
// gpuconv-name-expressions: wmma_gemm<__nv_bfloat16, nvcuda::wmma::row_major, nvcuda::wmma::row_major, float>
// gpuconv-name-expressions: wmma_gemm<__nv_bfloat16, nvcuda::wmma::col_major, nvcuda::wmma::col_major, float>
// gpuconv-name-expressions: wmma_gemm<__nv_bfloat16, nvcuda::wmma::row_major, nvcuda::wmma::col_major, float>
// gpuconv-name-expressions: wmma_gemm<nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major, nvcuda::wmma::row_major, float>
// gpuconv-name-expressions: wmma_gemm<nvcuda::wmma::precision::tf32, nvcuda::wmma::col_major, nvcuda::wmma::col_major, float>
// gpuconv-name-expressions: wmma_gemm<nvcuda::wmma::precision::tf32, nvcuda::wmma::col_major, nvcuda::wmma::row_major, float>

template <class T> struct Operand { typedef T type; static constexpr int k = 16; };
template <> struct Operand<wmma::precision::tf32> { typedef float type; static constexpr int k = 8; };
template <class L> struct IsCol { static constexpr bool value = false; };
template <> struct IsCol<wmma::col_major> { static constexpr bool value = true; };

// C (M x N, row-major if c_col == 0) = C + A (M x K) B (K x N), one warp per 16 x 16 tile of C, blockDim 32 x
// warps. A and B are row- or column-major per LA / LB (leading dimensions lda, ldb). convert == 0 skips the
// TF32 conversion (a bug the emulator must catch). Layout-agnostic: loads, fills, uniform elementwise scaling.
template <class T, class LA, class LB, class TC>
__global__ void wmma_gemm(const typename Operand<T>::type* a, const typename Operand<T>::type* b, TC* c, int m,
                          int n, int k, int lda, int ldb, int ldc, int c_col, int convert) {
    constexpr int KT = Operand<T>::k;
    int tile = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int tiles_n = n / 16;
    if (tile >= (m / 16) * tiles_n) return;  // whole warps only
    int i0 = tile / tiles_n * 16, j0 = tile % tiles_n * 16;
    const bool a_col = IsCol<LA>::value, b_col = IsCol<LB>::value;
    wmma::layout_t cl = c_col ? wmma::mem_col_major : wmma::mem_row_major;
    TC* cp = c + (c_col ? j0 * ldc + i0 : i0 * ldc + j0);
    wmma::fragment<wmma::accumulator, 16, 16, KT, TC> acc;
    wmma::load_matrix_sync(acc, cp, ldc, cl);
    for (int e = 0; e < acc.num_elements; ++e) acc.x[e] = acc.x[e] * TC(0.5f);  // uniform: layout-agnostic
    wmma::fragment<wmma::matrix_a, 16, 16, KT, T, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, KT, T, LB> fb;
    for (int kk = 0; kk < k; kk += KT) {
        wmma::load_matrix_sync(fa, a + (a_col ? kk * lda + i0 : i0 * lda + kk), lda);
        wmma::load_matrix_sync(fb, b + (b_col ? j0 * ldb + kk : kk * ldb + j0), ldb);
        if (convert) {
            for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
            for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
        }
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(cp, acc, ldc, cl);
}

// The TF32 conversion (wmma::__float_to_tf32) of n floats.
extern "C" __global__ void tf32_round(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = wmma::__float_to_tf32(x[i]);
}

// Relies on the fragment layout (a bug): lane l writes its accumulator elements to out[l * 8 + e] and adds its
// lane number to each, which only means something under one particular element <-> (row, col) mapping.
extern "C" __global__ void wmma_layout_dependent(const __half* a, const __half* b, float* out, float* c) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    int lane = threadIdx.x % 32;
    for (int e = 0; e < acc.num_elements; ++e) out[lane * acc.num_elements + e] = acc.x[e];
    for (int e = 0; e < acc.num_elements; ++e) acc.x[e] += float(lane);
    wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// Misuses of the warp-collective operations, by mode: 1 lane 31 exits first, 2 lanes pass different pointers,
// 3 a misaligned pointer, 4 an ldm that is not a multiple of 16 bytes, 5 lanes at different lines.
extern "C" __global__ void wmma_misuse(const __half* a, float* c, int mode) {
    int lane = threadIdx.x % 32;
    if (mode == 1 && lane == 31) return;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    const __half* p = a;
    unsigned ldm = 16;
    if (mode == 2) p = a + (lane & 1) * 256;
    if (mode == 3) p = a + 1;
    if (mode == 4) ldm = 12;
    if (mode == 5 && lane == 3) {
        wmma::load_matrix_sync(fa, p, ldm);
    } else {
        wmma::load_matrix_sync(fa, p, ldm);
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, float(fa.x[0]));
    wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// bfloat16 arithmetic and conversions: out[8 * i + ...] for inputs x[i], y[i] (floats, converted first).
extern "C" __global__ void bf16_ops(const float* x, const float* y, const __nv_bfloat16* z, float* out,
                                    __nv_bfloat16* zout, __nv_bfloat16 s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __nv_bfloat16 a = __float2bfloat16(x[i]), b = __float2bfloat16_rn(y[i]);
    float* o = out + 8 * i;
    o[0] = __bfloat162float(a);
    o[1] = __bfloat162float(a + b);
    o[2] = __bfloat162float(a - b);
    o[3] = __bfloat162float(a * b);
    o[4] = __bfloat162float(a / b);
    o[5] = __bfloat162float(__hfma(a, b, z[i]));
    o[6] = __bfloat162float(__hmax(a, b)) + (__hlt(a, b) ? 1000.0f : 0.0f);
    o[7] = float(-a) + float(__habs(b));
    __nv_bfloat16 t = z[i];
    t += s;
    zout[i] = t * s;
}
