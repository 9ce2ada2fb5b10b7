// bsconv_fused::cuda_refusal: whether the CUDA kernels can run a call, asked before the call (Python's
// backends._why_not uses it to pick another backend instead of launching something the kernels refuse).
//
//   cuda_refusal(int N, int C_in, int C_out, int H, int W, int[] kernel_size, int[] stride, int[] padding,
//                int[] dilation, ScalarType dtype, int device) -> str
//
// Returns "" when the kernels run the forward and every backward of this geometry and dtype on cuda:<device> (both
// output layouts, any subset of gradients); otherwise the reason: a build without CUDA kernels, no such device, a
// pre-sm_80 device, a build without an image for the device, a dtype the kernels lack, a parameter beyond int32, a
// dilated halo that does not fit in shared memory. Malformed arguments (sizes < 1, lists not of 2, an empty
// output) raise ValueError like the ops themselves. A call the kernels refuse raises NotImplementedError.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace bsconv_fused {

constexpr const char* kCudaRefusalSchema =
    "cuda_refusal(int N, int C_in, int C_out, int H, int W, int[] kernel_size, int[] stride, int[] padding, "
    "int[] dilation, ScalarType dtype, int device) -> str";

// Defined in csrc/glue/cuda_impl.cpp (CUDA build) or csrc/bsconv_fused.cpp (CPU-only build).
std::string cuda_refusal(int64_t N, int64_t C_in, int64_t C_out, int64_t H, int64_t W, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         at::ScalarType dtype, int64_t device);

}  // namespace bsconv_fused
