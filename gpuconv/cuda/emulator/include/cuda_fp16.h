// gpuconv emulator: kernels `#include <cuda_fp16.h>` for NVRTC; under g++ the emulator's prelude
// (gpuconv_emu.h, included first) already defines __half and its functions, so this file is empty.
#pragma once
