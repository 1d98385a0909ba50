// The inline-PTX tensor-core instructions of kernels/gpuconv_ptx.cuh under the emulator (its gpuconv_ptx.h), for
// tests/test_emulator_ptx.py; the same text compiles with NVRTC for sm_80 and sm_90 (tests/test_nvrtc.py).
// gpuconv-nvrtc-arches: sm_80 sm_90
#include <cuda_pipeline.h>

#include "../../kernels/gpuconv_ptx.cuh"

// ldmatrix x4 (trans != 0: x4.trans), one warp after another: lane l of warp w passes row rows[32 w + l] of a
// shared tile of 64 rows of 8 16-bit codes and writes its registers r[0..3] to out[(32 w + l) * 4 ...].
extern "C" __global__ void ptx_ldmatrix(const unsigned short* codes, const int* rows, unsigned* out, int trans) {
    __shared__ __align__(16) unsigned short tile[64 * 8];
    int t = threadIdx.x;
    for (int i = t; i < 64 * 8; i += blockDim.x) tile[i] = codes[i];
    __syncthreads();
    unsigned r[4];
    if (trans)
        gpuconv_ldmatrix_x4_trans(r, tile + 8 * rows[t]);
    else
        gpuconv_ldmatrix_x4(r, tile + 8 * rows[t]);
    for (int j = 0; j < 4; ++j) out[4 * t + j] = r[j];
}

// One mma per warp on registers from global memory: thread t loads a[4 t ..], b[2 t ..] and its accumulators
// d[4 t ..], runs the mma of `kind` (0 f16, 1 bf16: m16n8k16; 2 tf32: m16n8k8) and writes d back.
extern "C" __global__ void ptx_mma(const unsigned* a, const unsigned* b, float* d, int kind) {
    int t = threadIdx.x;
    unsigned ra[4], rb[2];
    float rd[4];
    for (int i = 0; i < 4; ++i) ra[i] = a[4 * t + i];
    for (int i = 0; i < 2; ++i) rb[i] = b[2 * t + i];
    for (int i = 0; i < 4; ++i) rd[i] = d[4 * t + i];
    if (kind == 0)
        gpuconv_mma_m16n8k16_f16(rd, ra, rb);
    else if (kind == 1)
        gpuconv_mma_m16n8k16_bf16(rd, ra, rb);
    else
        gpuconv_mma_m16n8k8_tf32(rd, ra, rb);
    for (int i = 0; i < 4; ++i) d[4 * t + i] = rd[i];
}

// d (16 x 16 float, row-major) = a (16 x 16) b (16 x 16), both __half bits, row-major, one warp, the way the
// tensor-core kernels do it: A through ldmatrix.x4, B (rows of k) through ldmatrix.x4.trans, two m16n8k16 mmas.
extern "C" __global__ void ptx_ldmatrix_mma(const unsigned short* a, const unsigned short* b, float* d) {
    __shared__ __align__(16) unsigned short sa[16 * 16];
    __shared__ __align__(16) unsigned short sb[16 * 16];
    int l = threadIdx.x;
    for (int i = l; i < 16 * 16; i += 32) {
        sa[i] = a[i];
        sb[i] = b[i];
    }
    __syncthreads();
    // Lanes 0-7 / 8-15 / 16-23 / 24-31: rows 0-7 / 8-15 / 0-7 / 8-15 of columns 0-7 / 0-7 / 8-15 / 8-15.
    unsigned ra[4], rb[4];
    gpuconv_ldmatrix_x4(ra, sa + (l % 16) * 16 + 8 * (l / 16));
    gpuconv_ldmatrix_x4_trans(rb, sb + (l % 16) * 16 + 8 * (l / 16));
    int g = l / 4, q = l % 4;
    for (int nt = 0; nt < 2; ++nt) {  // columns 8 nt .. 8 nt + 7 of d
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const unsigned bt[2] = {rb[2 * nt], rb[2 * nt + 1]};
        gpuconv_mma_m16n8k16_f16(acc, ra, bt);
        for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 16 + 8 * nt + 2 * q + i % 2] = acc[i];
    }
}

// Misuses, by mode, one warp, 256 bytes of dynamic shared memory: 1 lane 7 exits before the ldmatrix, 2 lane 7
// waits at a __syncwarp instead, 3 lane 5's row address is 2 bytes off, 4 lane 5 passes global memory, 5 lane 5's
// row is past the end of the dynamic shared memory, 6 lane 9's tf32 operand a[2] was never rounded to TF32,
// 7 lane 7 exits before the mma.
extern "C" __global__ void ptx_misuse(const unsigned* x, unsigned* out, int mode) {
    extern __shared__ __align__(16) unsigned short dyn[];
    int l = threadIdx.x;
    for (int i = l; i < 128; i += 32) dyn[i] = (unsigned short)i;
    __syncthreads();
    unsigned r[4] = {0u, 0u, 0u, 0u};
    const unsigned short* row = dyn + 8 * (l % 16);
    if (l == 5 && mode == 3) row += 1;
    if (l == 5 && mode == 4) row = reinterpret_cast<const unsigned short*>(x);
    if (l == 5 && mode == 5) row = dyn + 128;
    if (l == 7 && (mode == 1 || mode == 7)) return;
    if (mode <= 5) {
        if (l == 7 && mode == 2)
            __syncwarp();
        else
            gpuconv_ldmatrix_x4(r, row);
    } else {
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        unsigned a[4] = {x[0], x[0], x[0], x[0]}, b[2] = {x[0], x[0]};  // 1.0f
        if (l == 9 && mode == 6) a[2] = x[1];                          // 1 + 2^-23
        gpuconv_mma_m16n8k8_tf32(d, a, b);
        for (int i = 0; i < 4; ++i) r[i] = __float_as_uint(d[i]);
    }
    for (int i = 0; i < 4; ++i) out[4 * l + i] = r[i];
}

// cp.async.ca (gpuconv_cp_async_ca16) with the pipeline primitives' commit and wait: thread t copies x[4 t ..
// 4 t + 3] into shared memory and writes its neighbour's (t + 1) copy out. mode 0: after the wait and a barrier;
// 1: before its own wait (poison); 2: from a source off a 16-byte boundary; 3: never waits.
extern "C" __global__ void ptx_cp_async_ca(const float* x, float* out, int mode) {
    __shared__ __align__(16) float tile[4 * 64];
    const int t = threadIdx.x, n = blockDim.x;
    gpuconv_cp_async_ca16(tile + 4 * t, x + 4 * t + (mode == 2 && t == 3 ? 1 : 0));
    __pipeline_commit();
    if (mode == 3) return;
    if (mode == 1)
        for (int i = 0; i < 4; ++i) out[4 * t + i] = tile[4 * t + i];
    __pipeline_wait_prior(0);
    __syncthreads();
    if (mode != 1)
        for (int i = 0; i < 4; ++i) out[4 * t + i] = tile[4 * ((t + 1) % n) + i];
}
