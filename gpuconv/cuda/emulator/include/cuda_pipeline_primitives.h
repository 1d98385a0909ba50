// gpuconv emulator: the cuda_pipeline_primitives.h asynchronous copies (cp.async) for g++.
//
// __pipeline_memcpy_async copies size_and_align bytes (4, 8 or 16; the last zfill of them zeros) from global
// to shared memory. Under the emulator the copy is deferred: the destination holds poison (0xFF bytes: NaN,
// -1) until the thread's __pipeline_wait_prior that covers the copy's group performs it, so a read before the
// wait, or by another thread without a __syncthreads after the wait, sees poison. A thread that exits with
// copies not waited for fails the launch; so do a size other than 4/8/16, misaligned pointers, a destination
// outside shared memory and a source outside the kernel's argument arrays.
#pragma once

namespace gpuconv_emu {
struct PipelineLine {  // the caller's line, as a type no argument converts to by accident
    unsigned v;
    explicit PipelineLine(unsigned line) : v(line) {}
};
}  // namespace gpuconv_emu

inline void __pipeline_memcpy_async(void* __restrict__ dst_shared, const void* __restrict__ src_global,
                                    size_t size_and_align, size_t zfill = 0,
                                    ::gpuconv_emu::PipelineLine line = ::gpuconv_emu::PipelineLine(__builtin_LINE())) {
    ::gpuconv_emu::pipeline_copy(dst_shared, src_global, size_and_align, zfill, line.v, "__pipeline_memcpy_async");
}
inline void __pipeline_commit() { ::gpuconv_emu::pipeline_commit(); }
inline void __pipeline_wait_prior(size_t prior,
                                  ::gpuconv_emu::PipelineLine line = ::gpuconv_emu::PipelineLine(__builtin_LINE())) {
    ::gpuconv_emu::pipeline_wait_prior(prior, line.v);
}
