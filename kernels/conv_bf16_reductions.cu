// The bfloat16 instantiations of three kernels of conv_backward.cu: gpuconv_act_bwd (the activation gradient),
// gpuconv_bias_grad and gpuconv_sum_partials (the deterministic db / dw reductions). bfloat16 has no entry in
// gpuconv/_registry.py DTYPES yet, so conv_backward.cu's generated instantiations do not cover it; its
// convolutions always run on tensor cores (kernels/conv_tc_*.cu). Delete this file when bfloat16 gets its entry.
// gpuconv-name-expressions: gpuconv_act_bwd<__nv_bfloat16>, gpuconv_bias_grad<__nv_bfloat16>, gpuconv_sum_partials<__nv_bfloat16>
#include "conv_backward.cu"
