// CUDA implementation of bsconv_fused::cpp_forward / cpp_backward: the thin torch side of the torch-free kernels
// in csrc/cuda (interface csrc/cuda/bsconv_cuda.h). Compiled only in the CUDA build (setup.py).
// The glue validates, sets the device guard (tensors on cuda:1 work), picks the current stream, allocates outputs
// and workspace through torch's caching allocator, and casts the kernels' fp32 weight gradients to the weight dtype.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>

#include "cuda/bsconv_cuda.h"
#include "glue/checks.h"
#include "glue/cuda_refusal.h"

namespace bsconv_fused {
namespace {

cuda::Geometry cuda_geometry(const glue::ConvShape& s) {
  cuda::Geometry g{};
  g.N = s.N, g.C_in = s.C_in, g.C_out = s.C_out, g.H = s.H, g.W = s.W, g.Ho = s.Ho, g.Wo = s.Wo;
  g.kh = static_cast<int>(s.kh), g.kw = static_cast<int>(s.kw);
  g.stride_h = static_cast<int>(s.stride[0]), g.stride_w = static_cast<int>(s.stride[1]);
  g.pad_h = static_cast<int>(s.padding[0]), g.pad_w = static_cast<int>(s.padding[1]);
  g.dil_h = static_cast<int>(s.dilation[0]), g.dil_w = static_cast<int>(s.dilation[1]);
  return g;
}

cuda::Strides4 cuda_strides(const at::Tensor& t) {
  const glue::Strides s = glue::strides_of(t);
  return {s.n, s.c, s.h, s.w};
}

bool cuda_dtype_supported(at::ScalarType st) { return st == at::kFloat || st == at::kHalf || st == at::kBFloat16; }

// The kernel geometry is int32 for the per-axis quantities (sizes and offsets are 64-bit): a limit of the kernels,
// reported as a refusal, not as bad input. Empty when the shape fits.
std::string int32_refusal(const glue::ConvShape& s) {
  constexpr int64_t kIntMax = 2147483647;
  if (s.kh > kIntMax || s.kw > kIntMax || s.stride[0] > kIntMax || s.stride[1] > kIntMax ||
      s.padding[0] > kIntMax || s.padding[1] > kIntMax || s.dilation[0] > kIntMax || s.dilation[1] > kIntMax) {
    return "kernel size, stride, padding and dilation must fit in int32 for the CUDA kernels";
  }
  return {};
}

// A call the kernels refuse: NotImplementedError in Python, distinct from bad input (ValueError / TypeError) and
// from CUDA errors (RuntimeError).
[[noreturn]] void raise_refused(const char* op, const std::string& why) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": the CUDA kernels cannot run this call: ",
                              why.empty() ? std::string("(no reason reported)") : why,
                              ". bsconv_fused::cuda_refusal reports this before a call; backend='auto' runs such "
                              "calls on another backend");
}

void check_cuda_args(const char* op, const at::Tensor& x, const glue::ConvShape& s) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(cuda_dtype_supported(st), op, ": the CUDA kernels support float32, float16 and bfloat16, got ",
                   st, " (float64 runs on backend 'torch')");
  const std::string why = int32_refusal(s);
  if (!why.empty()) raise_refused(op, why);
}

cuda::DType cuda_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "bsconv_fused: unsupported dtype for the CUDA kernels: ", st);
  }
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return t->contiguous();
}

bool deterministic_requested() {
  if (at::globalContext().deterministicAlgorithms()) return true;
  const char* env = std::getenv("BSCONV_FUSED_DETERMINISTIC");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mid_bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t activation) {
  constexpr const char* op = "bsconv_fused::cpp_forward";
  const glue::ConvShape s = glue::check_conv_args(op, x, pw, dw, bias, mid_bias, stride, padding, dilation);
  glue::check_activation(op, activation);
  check_cuda_args(op, x, s);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y =
      at::empty({s.N, s.C_out, s.Ho, s.Wo}, x.options().memory_format(glue::output_memory_format(x)));
  const at::Tensor pwc = pw.contiguous(), dwc = dw.contiguous();
  const auto biasc = contiguous_opt(bias), midc = contiguous_opt(mid_bias);
  const bool allow_tf32 = at::globalContext().allowTF32CuDNN();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cuda::Geometry g = cuda_geometry(s);
  const cuda::DType dtype = cuda_dtype(x.scalar_type());
  const cudaError_t err = cuda::forward(g, dtype, x.const_data_ptr(), cuda_strides(x), pwc.const_data_ptr(),
                                        dwc.const_data_ptr(), ptr_or_null(biasc), ptr_or_null(midc),
                                        y.mutable_data_ptr(), cuda_strides(y), static_cast<int>(activation),
                                        allow_tf32, stream);
  if (err == cuda::kRefused) raise_refused(op, cuda::forward_refusal(g, dtype));
  C10_CUDA_CHECK(err);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
    const std::optional<at::Tensor>& mid_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, const c10::List<bool>& output_mask) {
  constexpr const char* op = "bsconv_fused::cpp_backward";
  const glue::ConvShape s =
      glue::check_backward_args(op, grad_y, x, pw, dw, mid_bias, stride, padding, dilation, output_mask);
  check_cuda_args(op, x, s);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool need[5] = {output_mask[0], output_mask[1], output_mask[2], output_mask[3], output_mask[4]};

  // Gradients not requested come back as empty (0,) tensors: custom ops cannot return None.
  auto empty_grad = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = need[0] ? at::empty(x.sizes(), x.options().memory_format(glue::output_memory_format(x)))
                          : empty_grad();
  // The kernels write weight gradients in fp32 (their reductions accumulate in fp32).
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dpw32 = need[1] ? at::empty({s.C_out, s.C_in}, f32) : at::Tensor();
  at::Tensor ddw32 = need[2] ? at::empty({s.C_out, 1, s.kh, s.kw}, f32) : at::Tensor();
  at::Tensor dbias32 = need[3] ? at::empty({s.C_out}, f32) : at::Tensor();
  at::Tensor dmid32 = need[4] ? at::empty({s.C_out}, f32) : at::Tensor();

  if (need[0] || need[1] || need[2] || need[3] || need[4]) {
    const at::Tensor pwc = pw.contiguous(), dwc = dw.contiguous();
    const auto midc = contiguous_opt(mid_bias);
    const cuda::Geometry g = cuda_geometry(s);
    const cuda::DType dtype = cuda_dtype(x.scalar_type());
    const bool deterministic = deterministic_requested();
    const bool allow_tf32 = at::globalContext().allowTF32CuDNN();
    const size_t ws_bytes =
        cuda::backward_workspace_bytes(g, dtype, need[1], need[2], need[3], need[4], deterministic);
    at::Tensor workspace;
    if (ws_bytes > 0) workspace = at::empty({static_cast<int64_t>(ws_bytes)}, x.options().dtype(at::kByte));
    auto f32_ptr = [](at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<float>() : nullptr; };
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
    const cudaError_t err = cuda::backward(g, dtype, grad_y.const_data_ptr(), cuda_strides(grad_y), x.const_data_ptr(),
                                  cuda_strides(x), pwc.const_data_ptr(), dwc.const_data_ptr(), ptr_or_null(midc),
                                  need[0] ? dx.mutable_data_ptr() : nullptr,
                                  need[0] ? cuda_strides(dx) : cuda::Strides4{0, 0, 0, 0}, f32_ptr(dpw32),
                                  f32_ptr(ddw32), f32_ptr(dbias32), f32_ptr(dmid32),
                                  ws_bytes > 0 ? workspace.mutable_data_ptr() : nullptr, ws_bytes, deterministic,
                                  allow_tf32, stream);
    if (err == cuda::kRefused) raise_refused(op, cuda::backward_refusal(g, dtype));
    C10_CUDA_CHECK(err);
  }
  // Weight gradients are dense and in the weight dtype (the shared contract of every op pair).
  auto finish = [&](bool needed, const at::Tensor& t32, at::IntArrayRef shape) {
    if (!needed) return empty_grad();
    return t32.reshape(shape).to(pw.scalar_type());
  };
  return {dx, finish(need[1], dpw32, pw.sizes()), finish(need[2], ddw32, dw.sizes()),
          finish(need[3], dbias32, {s.C_out}), finish(need[4], dmid32, {s.C_out})};
}

}  // namespace

std::string cuda_refusal(int64_t N, int64_t C_in, int64_t C_out, int64_t H, int64_t W, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         at::ScalarType dtype, int64_t device) {
  constexpr const char* op = "bsconv_fused::cuda_refusal";
  TORCH_CHECK_VALUE(N >= 1 && C_in >= 1 && C_out >= 1 && H >= 1 && W >= 1, op,
                    ": N, C_in, C_out, H and W must be >= 1, got ", N, ", ", C_in, ", ", C_out, ", ", H, ", ", W);
  glue::check_pair(op, "kernel_size", kernel_size, 1);
  glue::check_pair(op, "stride", stride, 1);
  glue::check_pair(op, "padding", padding, 0);
  glue::check_pair(op, "dilation", dilation, 1);
  glue::ConvShape s{};
  s.N = N, s.C_in = C_in, s.C_out = C_out, s.H = H, s.W = W, s.kh = kernel_size[0], s.kw = kernel_size[1];
  for (int i = 0; i < 2; ++i) s.stride[i] = stride[i], s.padding[i] = padding[i], s.dilation[i] = dilation[i];
  // Same rule and arithmetic as glue::check_conv_args (the kernel sizes are >= 1 here, so no overflow below int64).
  TORCH_CHECK_VALUE(H + 2 * s.padding[0] >= s.dilation[0] * (s.kh - 1) + 1 &&
                        W + 2 * s.padding[1] >= s.dilation[1] * (s.kw - 1) + 1,
                    op, ": the output would be empty: input ", H, "x", W, ", kernel ", kernel_size, ", stride ",
                    stride, ", padding ", padding, ", dilation ", dilation,
                    "; the padded input must be at least the dilated kernel size");
  s.Ho = (H + 2 * s.padding[0] - s.dilation[0] * (s.kh - 1) - 1) / s.stride[0] + 1;
  s.Wo = (W + 2 * s.padding[1] - s.dilation[1] * (s.kw - 1) - 1) / s.stride[1] + 1;
  if (!cuda_dtype_supported(dtype)) {
    return std::string("the CUDA kernels support float32, float16 and bfloat16, not ") + c10::toString(dtype);
  }
  const int64_t count = c10::cuda::device_count();
  if (device < 0 || device >= count) {
    return "no CUDA device cuda:" + std::to_string(device) + " (" + std::to_string(count) + " visible)";
  }
  std::string why = int32_refusal(s);
  if (!why.empty()) return why;
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const cuda::Geometry g = cuda_geometry(s);
  why = cuda::forward_refusal(g, cuda_dtype(dtype));
  if (why.empty()) why = cuda::backward_refusal(g, cuda_dtype(dtype));
  return why;
}

}  // namespace bsconv_fused

TORCH_LIBRARY_IMPL(bsconv_fused, CUDA, m) {
  m.impl("cpp_forward", &bsconv_fused::forward_cuda);
  m.impl("cpp_backward", &bsconv_fused::backward_cuda);
}
