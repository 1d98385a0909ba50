"""CUDA kernels: loading them (cupy.RawModule or the CPU emulator) and checking them with NVRTC.

    gpuconv.cuda.modules    get_module, kernel_source, emulator_unavailable_reason
    gpuconv.cuda.emulator   the CPU emulator (g++ + fibers)
    gpuconv.cuda.nvrtc      compile checks and the resource table (needs cuda-bindings, not a GPU)

Importing this package imports nothing heavy and compiles nothing.
"""
