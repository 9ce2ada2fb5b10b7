// Torch-free interface between the torch glue (csrc/bsconv_fused.cpp) and the CUDA kernels (csrc/cuda/*.cu).
//
// Why torch-free: a .cu that includes torch headers costs ~2.5 min per arch to build on the 2-core CI machine, a
// raw-pointer one ~3 s. The glue validates, allocates and picks the stream; the kernels only compute.
//
// Layout contract: x, y, grad_y and dx are addressed through element strides (n, c, h, w), so NCHW, channels_last
// and sliced views all work without copies. Weights are dense: pw is (C_out, C_in) row-major, dw is
// (C_out, kh, kw) row-major, bias and mid_bias are (C_out) or nullptr. All offsets are 64-bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

namespace bsconv_fused {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Geometry {
  int64_t N, C_in, C_out, H, W, Ho, Wo;
  int kh, kw;
  int stride_h, stride_w;
  int pad_h, pad_w;
  int dil_h, dil_w;
};

struct Strides4 {
  int64_t n, c, h, w;  // in elements
};

// Returned by forward / backward, without launching anything, when the kernels cannot run the call on the current
// device: a pre-sm_80 device, a build without an image for the device, a dilated halo that does not fit in shared
// memory even for a 1x1 output tile, or spans beyond the 32-bit tap arithmetic. forward_refusal /
// backward_refusal say why; cudaErrorInvalidConfiguration and every other error stay real errors.
constexpr cudaError_t kRefused = cudaErrorNotSupported;

// Why forward / backward would refuse this call on the current device (empty: they can run it). The forward check
// covers both output layouts, the backward check every gradient subset, so an empty answer holds for any call of
// this geometry and dtype. Cheap after the first call per device (the device limits are cached).
std::string forward_refusal(const Geometry& g, DType dtype);
std::string backward_refusal(const Geometry& g, DType dtype);

// y = act(DW(PW(x) + mid_bias) + bias) in one pass. Accumulation in fp32; the intermediate never leaves the chip.
// activation: a code of csrc/activation.h (0: none), applied in fp32 after the bias, before the cast to y's dtype
// (the glue validates it). allow_tf32: fp32 pointwise GEMM may use TF32 tensor cores (the glue passes
// torch.backends.cudnn.allow_tf32).
cudaError_t forward(const Geometry& g, DType dtype, const void* x, Strides4 x_strides, const void* pw,
                    const void* dw, const void* bias, const void* mid_bias, void* y, Strides4 y_strides,
                    int activation, bool allow_tf32, cudaStream_t stream);

// Bytes of device workspace the backward needs (split-reduction partials); may be 0.
size_t backward_workspace_bytes(const Geometry& g, DType dtype, bool need_dpw, bool need_ddw, bool need_dbias,
                                bool need_dmid, bool deterministic);

// Gradients of forward(). Any output pointer may be nullptr: that gradient is not computed.
// dx has x's dtype and dx_strides. The weight gradients are written in fp32 (the glue casts to the weight dtype):
// dpw (C_out, C_in), ddw (C_out, kh, kw), dbias (C_out), dmid (C_out). The intermediate is recomputed from x and
// its gradient is never materialised in device memory. deterministic: no atomics (fixed-order split reductions).
// workspace: at least backward_workspace_bytes(...) bytes, zero-initialisation not assumed.
cudaError_t backward(const Geometry& g, DType dtype, const void* grad_y, Strides4 gy_strides, const void* x,
                     Strides4 x_strides, const void* pw, const void* dw, const void* mid_bias, void* dx,
                     Strides4 dx_strides, float* dpw, float* ddw, float* dbias, float* dmid, void* workspace,
                     size_t workspace_bytes, bool deterministic, bool allow_tf32, cudaStream_t stream);

}  // namespace cuda
}  // namespace bsconv_fused
