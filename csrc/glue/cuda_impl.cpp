// CUDA implementation of bsconv_fused::cpp_forward / cpp_backward: the thin torch side of the torch-free kernels
// in csrc/cuda (interface csrc/cuda/bsconv_cuda.h). Compiled only in the CUDA build (setup.py).
// The glue validates, sets the device guard (tensors on cuda:1 work), picks the current stream, allocates outputs
// and workspace through torch's caching allocator, and casts the kernels' fp32 weight gradients to the weight dtype.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

#include "cuda/bsconv_cuda.h"
#include "glue/checks.h"

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

void check_cuda_args(const char* op, const at::Tensor& x, const glue::ConvShape& s) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op,
                   ": the CUDA kernels support float32, float16 and bfloat16, got ", st,
                   " (float64 runs on backend 'torch')");
  // The kernel geometry is int32 for the small per-axis quantities; the sizes and offsets are 64-bit.
  constexpr int64_t kIntMax = 2147483647;
  TORCH_CHECK_VALUE(s.kh <= kIntMax && s.kw <= kIntMax && s.stride[0] <= kIntMax && s.stride[1] <= kIntMax &&
                        s.padding[0] <= kIntMax && s.padding[1] <= kIntMax && s.dilation[0] <= kIntMax &&
                        s.dilation[1] <= kIntMax,
                    op, ": kernel size, stride, padding and dilation must fit in int32");
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

// The kernels return cudaErrorInvalidConfiguration when a (dilated) kernel's halo does not fit in shared memory even
// for a 1x1 output tile (csrc/cuda/README.md). Such calls run the two-layer ATen path instead, with a warning.
constexpr const char* kFallbackWarning =
    "bsconv_fused: the CUDA kernels cannot tile this kernel size / dilation in shared memory; this call ran the "
    "two-layer ATen path (pointwise conv + depthwise conv) instead";

at::Tensor pw_as_conv_weight(const at::Tensor& pw) { return pw.reshape({pw.size(0), pw.size(1), 1, 1}); }

at::Tensor reference_forward(const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
                             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mid_bias,
                             const glue::ConvShape& s) {
  // mid_bias as the pointwise conv's bias lands on in-image positions only, as in the fused kernels.
  const at::Tensor t = at::conv2d(x, pw_as_conv_weight(pw), mid_bias);
  const at::Tensor y = at::conv2d(t, dw, bias, {s.stride[0], s.stride[1]}, {s.padding[0], s.padding[1]},
                                  {s.dilation[0], s.dilation[1]}, s.C_out);
  return y.contiguous(glue::output_memory_format(x));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> reference_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
    const std::optional<at::Tensor>& mid_bias, const glue::ConvShape& s, const bool need[5]) {
  const at::Tensor pw4 = pw_as_conv_weight(pw);
  const at::Tensor t = at::conv2d(x, pw4, mid_bias);
  const bool need_dt = need[0] || need[1] || need[4];
  const std::vector<int64_t> bias_sizes{s.C_out};
  auto dw_grads = at::convolution_backward(
      grad_y, t, dw, need[3] ? at::OptionalIntArrayRef(bias_sizes) : at::OptionalIntArrayRef(std::nullopt),
      {s.stride[0], s.stride[1]}, {s.padding[0], s.padding[1]}, {s.dilation[0], s.dilation[1]}, false, {0, 0},
      s.C_out, {need_dt, need[2], need[3]});
  const at::Tensor& dt = std::get<0>(dw_grads);
  at::Tensor dx, dpw4;
  if (need[0] || need[1]) {
    auto pw_grads = at::convolution_backward(dt, x, pw4, std::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, 1,
                                             {need[0], need[1], false});
    dx = std::get<0>(pw_grads);
    dpw4 = std::get<1>(pw_grads);
  }
  auto empty_grad = [&] { return at::empty({0}, x.options()); };
  return {need[0] ? dx.contiguous(glue::output_memory_format(x)) : empty_grad(),
          need[1] ? dpw4.reshape(pw.sizes()).contiguous() : empty_grad(),
          need[2] ? std::get<1>(dw_grads).contiguous() : empty_grad(),
          need[3] ? std::get<2>(dw_grads).contiguous() : empty_grad(),
          need[4] ? dt.sum({0, 2, 3}).to(pw.scalar_type()) : empty_grad()};
}

at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mid_bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "bsconv_fused::cpp_forward";
  const glue::ConvShape s = glue::check_conv_args(op, x, pw, dw, bias, mid_bias, stride, padding, dilation);
  check_cuda_args(op, x, s);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y =
      at::empty({s.N, s.C_out, s.Ho, s.Wo}, x.options().memory_format(glue::output_memory_format(x)));
  const at::Tensor pwc = pw.contiguous(), dwc = dw.contiguous();
  const auto biasc = contiguous_opt(bias), midc = contiguous_opt(mid_bias);
  const bool allow_tf32 = at::globalContext().allowTF32CuDNN();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err =
      cuda::forward(cuda_geometry(s), cuda_dtype(x.scalar_type()), x.const_data_ptr(), cuda_strides(x),
                    pwc.const_data_ptr(), dwc.const_data_ptr(), ptr_or_null(biasc), ptr_or_null(midc),
                    y.mutable_data_ptr(), cuda_strides(y), allow_tf32, stream);
  if (err == cudaErrorInvalidConfiguration) {
    TORCH_WARN_ONCE(kFallbackWarning);
    return reference_forward(x, pw, dw, bias, mid_bias, s);
  }
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
    if (err == cudaErrorInvalidConfiguration) {
      TORCH_WARN_ONCE(kFallbackWarning);
      return reference_backward(grad_y, x, pw, dw, mid_bias, s, need);
    }
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
}  // namespace bsconv_fused

TORCH_LIBRARY_IMPL(bsconv_fused, CUDA, m) {
  m.impl("cpp_forward", &bsconv_fused::forward_cuda);
  m.impl("cpp_backward", &bsconv_fused::backward_cuda);
}
