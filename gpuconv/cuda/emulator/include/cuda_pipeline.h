// gpuconv emulator: cuda_pipeline.h. The primitives (__pipeline_memcpy_async, __pipeline_commit,
// __pipeline_wait_prior) are what gpuconv's kernels use; see cuda_pipeline_primitives.h.
#pragma once
#include <cuda_pipeline_primitives.h>
