// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a), each PTX instruction wrapped once, as gpuconv_ptx.cuh wraps
// mma.sync: CUTLASS's and Triton's way to reach it (no CUDA C++ API exposes it). Compiles only for sm_90a.
//
// What the PTX ISA says ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions"):
//   A warpgroup is 4 consecutive warps, the first a multiple of 4. wgmma.mma_async computes D (64 x N, float) =
//   A (64 x K) B (K x N) + (accumulate ? D : 0), K = 32 bytes of elements (16 f16 / bf16, 8 tf32), with A and B
//   read from shared memory through 64-bit matrix descriptors (or A from registers), asynchronously: D's
//   registers, A's registers and the shared memory read are not to be touched until a wgmma.wait_group covers
//   the instruction. Every lane of the
//   warpgroup executes each of these instructions (.sync.aligned), with the same descriptors.
//   wgmma.fence orders the warpgroup's earlier register accesses before a wgmma.mma_async (needed before the
//   first one and after the accumulators were touched); commit_group closes a group of the mma_async issued
//   since the last one; wait_group N returns once at most N of the newest groups are still in flight.
//   D's fragment, lane l of warp w of the warpgroup, g = l / 4, q = l % 4, register i (N / 2 of them):
//     row 16 w + g + 8 ((i / 2) % 2), column 8 (i / 4) + 2 q + i % 2 (mma.sync's m16n8 C layout, N / 8 times).
//   TF32 operands must be TF32 values (the hardware ignores the low 13 mantissa bits), and must be K-major.
//
// The matrix descriptor ("Matrix Descriptor Format"): bits 0-13 the start address >> 4, 16-29 the leading
// dimension byte offset (LBO) >> 4, 32-45 the stride dimension byte offset (SBO) >> 4, 49-51 the base offset
// (0 here: a swizzled matrix's start is aligned to its pattern's repeat), 62-63 the layout: 0 interleaved (no
// swizzle), 1 128-byte, 2 64-byte, 3 32-byte swizzle. The canonical layouts, in 16-byte units, with T elements
// a unit and W = 1, 2, 4, 8 units a swizzle row (CUTLASS's cute/atom/mma_traits_sm90_gmma.hpp writes them so):
//   K-major  element (r, k):  unit (r % 8) W + (r / 8) SBO + (k / T) (LBO when interleaved, else 1), + k % T
//   MN-major element (r, k):  interleaved  (k % 8) + (r / T) SBO + (k / 8) LBO, + r % T
//                             swizzled     (r / T) % W + (r / (T W)) LBO + (k % 8) W + (k / 8) SBO, + r % T
// then the swizzle on the shared byte address: bits 4.. (3, 2, 1 of them for 128, 64, 32 bytes) ^= bits 7...
// The transposes (f16 / bf16 only): TRANS_A = 1 reads A M-major, TRANS_B = 1 reads B N-major; 0 is K-major.
//
// Under gpuconv's CPU emulator (GPUCONV_EMULATOR) the same names come from the emulator's gpuconv_wgmma.h,
// which runs the instructions by these rules and fails a launch on what the ISA leaves undefined (see there).
#pragma once

#include "gpuconv_ptx.cuh"

enum GpuconvWgmmaSwizzle { GPUCONV_WGMMA_INTERLEAVE = 0, GPUCONV_WGMMA_SW128 = 1, GPUCONV_WGMMA_SW64 = 2,
                           GPUCONV_WGMMA_SW32 = 3 };

#ifdef GPUCONV_EMULATOR
#include <gpuconv_wgmma.h>
#else

__device__ __forceinline__ void gpuconv_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

__device__ __forceinline__ void gpuconv_wgmma_commit_group() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void gpuconv_wgmma_wait_group() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Ties N accumulator registers to this point of the instruction stream (CUTLASS's warpgroup_fence_operand):
// reads after it stay after the wait_group before it. The wait does not name the registers, so without it the
// compiler may move their reads above the wait, and ptxas then serializes the wgmma (its note C7514).
template <int N>
__device__ __forceinline__ void gpuconv_wgmma_fence_operands(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define GPUCONV_WG_R8(b)                                                                                  \
    "+f"(d[b + 0]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3]), "+f"(d[b + 4]), "+f"(d[b + 5]),     \
        "+f"(d[b + 6]), "+f"(d[b + 7])
#define GPUCONV_WG_D32 GPUCONV_WG_R8(0), GPUCONV_WG_R8(8), GPUCONV_WG_R8(16), GPUCONV_WG_R8(24)
#define GPUCONV_WG_D64 GPUCONV_WG_D32, GPUCONV_WG_R8(32), GPUCONV_WG_R8(40), GPUCONV_WG_R8(48), GPUCONV_WG_R8(56)
#define GPUCONV_WG_S32                                                                                    \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "    \
    "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define GPUCONV_WG_S64                                                                                    \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "    \
    "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "     \
    "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "     \
    "%59, %60, %61, %62, %63}"
// One wgmma.mma_async with 16-bit operands: SHAPE "m64n64k16", TYPE "f16" or "bf16"; the descriptors, the
// accumulate flag (scale-d, as a predicate) and the two transposes follow the N / 2 accumulators.
#define GPUCONV_WG_MMA16(SHAPE, TYPE, S, D, A, B, P, TA, TB)                                              \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P ", 0;\nwgmma.mma_async.sync.aligned." SHAPE       \
                 ".f32." TYPE "." TYPE " " S ", %" A ", %" B ", p, 1, 1, %" TA ", %" TB ";\n}\n"          \
                 : D                                                                                      \
                 : "l"(a), "l"(b), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B))
#define GPUCONV_WG_MMA_TF32(SHAPE, S, D, A, B, P)                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P ", 0;\nwgmma.mma_async.sync.aligned." SHAPE       \
                 ".f32.tf32.tf32 " S ", %" A ", %" B ", p, 1, 1;\n}\n"                                      \
                 : D                                                                                      \
                 : "l"(a), "l"(b), "r"(accumulate))
#define GPUCONV_WG_MMA_TF32_RS(SHAPE, S, D, A, B, P)                                                      \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P ", 0;\nwgmma.mma_async.sync.aligned." SHAPE       \
                 ".f32.tf32.tf32 " S ", " A ", %" B ", p, 1, 1;\n}\n"                                       \
                 : D                                                                                      \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate))

// Both shapes of one 16-bit type, inside a wrapper with N, TRANS_A, TRANS_B, d, a, b and accumulate in scope.
#define GPUCONV_WG_MMA16_N(TYPE)                                                                         \
    static_assert(N == 64 || N == 128, "gpuconv_wgmma_" TYPE ": N is 64 or 128");                         \
    if constexpr (N == 64)                                                                                \
        GPUCONV_WG_MMA16("m64n64k16", TYPE, GPUCONV_WG_S32, GPUCONV_WG_D32, "32", "33", "34", "35", "36"); \
    else                                                                                                  \
        GPUCONV_WG_MMA16("m64n128k16", TYPE, GPUCONV_WG_S64, GPUCONV_WG_D64, "64", "65", "66", "67", "68")

// d (this thread's N / 2 accumulators of D, 64 x N) = A (64 x 16) B (16 x N) + (accumulate ? d : 0), f16.
template <int N, int TRANS_A, int TRANS_B>
__device__ __forceinline__ void gpuconv_wgmma_f16(float (&d)[N / 2], unsigned long long a, unsigned long long b,
                                                  int accumulate) {
    GPUCONV_WG_MMA16_N("f16");
}

// The same with bf16 operands.
template <int N, int TRANS_A, int TRANS_B>
__device__ __forceinline__ void gpuconv_wgmma_bf16(float (&d)[N / 2], unsigned long long a, unsigned long long b,
                                                   int accumulate) {
    GPUCONV_WG_MMA16_N("bf16");
}

// d = A (64 x 8) B (8 x N) + (accumulate ? d : 0), tf32 operands, both K-major.
template <int N>
__device__ __forceinline__ void gpuconv_wgmma_tf32(float (&d)[N / 2], unsigned long long a, unsigned long long b,
                                                   int accumulate) {
    static_assert(N == 64 || N == 128, "gpuconv_wgmma_tf32: N is 64 or 128");
    if constexpr (N == 64)
        GPUCONV_WG_MMA_TF32("m64n64k8", GPUCONV_WG_S32, GPUCONV_WG_D32, "32", "33", "34");
    else
        GPUCONV_WG_MMA_TF32("m64n128k8", GPUCONV_WG_S64, GPUCONV_WG_D64, "64", "65", "66");
}

// The register-A form: d = A (64 x 8, this thread's 4 registers of it) B (8 x N, K-major, from its descriptor) +
// (accumulate ? d : 0), tf32. Register v of lane l of warp w holds A's row 16 w + l / 4 + 8 (v % 2), column
// l % 4 + 4 (v / 2) (mma.sync's m16n8k8 A layout; CuTe's ALayout_64x8). A's registers are operands in flight
// like the accumulators: not to be written before the wait_group that covers the instruction.
template <int N>
__device__ __forceinline__ void gpuconv_wgmma_tf32_rs(float (&d)[N / 2], const unsigned (&a)[4],
                                                      unsigned long long b, int accumulate) {
    static_assert(N == 64 || N == 128, "gpuconv_wgmma_tf32_rs: N is 64 or 128");
    if constexpr (N == 64)
        GPUCONV_WG_MMA_TF32_RS("m64n64k8", GPUCONV_WG_S32, GPUCONV_WG_D32, "{%32, %33, %34, %35}", "36", "37");
    else
        GPUCONV_WG_MMA_TF32_RS("m64n128k8", GPUCONV_WG_S64, GPUCONV_WG_D64, "{%64, %65, %66, %67}", "68", "69");
}

#undef GPUCONV_WG_MMA_TF32_RS
#undef GPUCONV_WG_MMA16_N
#undef GPUCONV_WG_MMA16
#undef GPUCONV_WG_MMA_TF32
#undef GPUCONV_WG_S64
#undef GPUCONV_WG_S32
#undef GPUCONV_WG_D64
#undef GPUCONV_WG_D32
#undef GPUCONV_WG_R8

#endif  // GPUCONV_EMULATOR

// The descriptor of a matrix whose canonical layout starts at `smem` (shared memory, 16-byte aligned), with the
// leading / stride byte offsets `lbo`, `sbo` (multiples of 16) and a GpuconvWgmmaSwizzle.
__device__ __forceinline__ unsigned long long gpuconv_wgmma_desc(const void* smem, unsigned lbo, unsigned sbo,
                                                                 unsigned swizzle) {
    const unsigned long long addr = gpuconv_smem_addr(smem);
    return ((addr >> 4) & 0x3FFFull) | ((unsigned long long)((lbo >> 4) & 0x3FFFu) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3FFFu) << 32) | ((unsigned long long)(swizzle & 3u) << 62);
}
