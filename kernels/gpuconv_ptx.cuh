// The inline-PTX tensor-core instructions of the sm_80+ kernels, each wrapped once (CUTLASS's and Triton's way to
// reach ldmatrix and mma.sync, which nvcuda::wmma hides: wmma lowers the BF16 and TF32 fragment loads to
// generic loads, and its fragment layout is unspecified, so an epilogue cannot use the accumulators in place).
//
// Fragment layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16 / mma.m16n8k8", "Warp-level matrix
// load instruction: ldmatrix"). For lane l of the warp, g = l / 4 (groupID) and q = l % 4 (threadID_in_group):
//   ldmatrix .x4  lanes 8 j .. 8 j + 7 pass the addresses of rows 0..7 of matrix j (16 bytes each, 16-byte
//                 aligned, in shared memory); r[j] of lane l holds elements (g, 2 q) (low half) and (g, 2 q + 1)
//                 (high half) of matrix j; with .trans, those of its transpose: (2 q, g) and (2 q + 1, g).
//   m16n8k16 (f16, bf16; two 16-bit elements a register, the lower column / row in the low half)
//                 A (16 x 16, row): a[0] = (g, 2q..2q+1), a[1] = (g + 8, 2q..), a[2] = (g, 2q + 8..),
//                 a[3] = (g + 8, 2q + 8..);  B (16 x 8, col): b[0] = (2q..2q+1, g), b[1] = (2q + 8.., g)
//   m16n8k8 (tf32; one element a register)
//                 A (16 x 8): a[0] = (g, q), a[1] = (g + 8, q), a[2] = (g, q + 4), a[3] = (g + 8, q + 4);
//                 B (8 x 8):  b[0] = (q, g), b[1] = (q + 4, g)
//   C, D (16 x 8, float, both shapes): d[0] = (g, 2q), d[1] = (g, 2q + 1), d[2] = (g + 8, 2q), d[3] = (g + 8, 2q + 1)
//   cp.async.ca   a 16-byte copy to shared memory, per thread (not warp-collective), cached in L1 on the way.
// The others are warp-collective (.sync.aligned): every lane of the warp executes the same instruction. TF32 operands
// must be TF32 values (wmma::__float_to_tf32, cvt.rna.tf32.f32): the hardware ignores the low 13 bits.
//
// Under gpuconv's CPU emulator (GPUCONV_EMULATOR) the same names come from the emulator's gpuconv_ptx.h, which
// implements these layouts (tests/test_emulator_ptx.py checks them against the ISA's tables) and fails a launch
// on what the ISA leaves undefined: a lane missing, an address unaligned or outside shared memory, a TF32 operand
// with low bits set.
#pragma once

#ifdef GPUCONV_EMULATOR
#include <gpuconv_ptx.h>
#else

__device__ __forceinline__ unsigned gpuconv_smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16
__device__ __forceinline__ void gpuconv_ldmatrix_x4(unsigned (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(gpuconv_smem_addr(row)));
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
__device__ __forceinline__ void gpuconv_ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(gpuconv_smem_addr(row)));
}

// d += a * b: mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
__device__ __forceinline__ void gpuconv_mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4],
                                                         const unsigned (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a * b: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
__device__ __forceinline__ void gpuconv_mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4],
                                                          const unsigned (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a * b: mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
__device__ __forceinline__ void gpuconv_mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                         const unsigned (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// cp.async.ca.shared.global of 16 bytes: an asynchronous copy that also allocates in L1 (__pipeline_memcpy_async's
// 16-byte copies are .cg, which bypass it). Committed and waited for like the pipeline primitives' copies
// (__pipeline_commit, __pipeline_wait_prior: cp.async.commit_group / wait_group). dst 16-byte aligned in shared
// memory, src 16-byte aligned in global memory.
__device__ __forceinline__ void gpuconv_cp_async_ca16(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" : : "r"(gpuconv_smem_addr(dst)), "l"(src) : "memory");
}

#endif  // GPUCONV_EMULATOR
