// Argument validation and small helpers shared by the CPU glue (csrc/bsconv_fused.cpp) and the CUDA glue
// (csrc/glue/cuda_impl.cpp). Every failed check names the op, the argument and the rule; TORCH_CHECK_VALUE and
// TORCH_CHECK_TYPE surface in Python as ValueError and TypeError, like the Python-side checks in _shapes.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "../activation.h"

namespace bsconv_fused {
namespace glue {

struct ConvShape {
  int64_t N, C_in, C_out, H, W, Ho, Wo, kh, kw;
  int64_t stride[2], padding[2], dilation[2];
};

struct Strides {
  int64_t n, c, h, w;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

inline void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t minimum) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", name, " must have 2 entries (height, width), got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= minimum && v[1] >= minimum, op, ": ", name, " must be >= ", minimum,
                    " in every dimension, got ", v);
}

// The forward's activation code (csrc/activation.h; bsconv_fused/activation.py maps the names).
inline void check_activation(const char* op, int64_t activation) {
  TORCH_CHECK_VALUE(activation::valid(activation), op,
                    ": activation must be one of 0 (none), 1 (relu), 2 (relu6), 3 (hardswish), 4 (silu), got ",
                    activation);
}

inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must have a floating dtype (float16, bfloat16, float32, float64), got ", t.scalar_type());
}

// Checks every forward argument and returns the geometry. The backward reuses it (same arguments minus bias).
inline ConvShape check_conv_args(const char* op, const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mid_bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float_tensor(op, "x", x);
  check_float_tensor(op, "pw", pw);
  check_float_tensor(op, "dw", dw);
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C_in, H, W), got ", x.dim(), "-D with shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(pw.dim() == 2, op, ": pw must be the 2-D (C_out, C_in) pointwise matrix, got shape ",
                    pw.sizes());
  TORCH_CHECK_VALUE(pw.size(1) == x.size(1), op, ": pw has ", pw.size(1), " input channels but x has C_in=",
                    x.size(1), " (pw.shape[1] must equal x.shape[1])");
  TORCH_CHECK_VALUE(dw.dim() == 4 && dw.size(1) == 1, op, ": dw must have shape (C_out, 1, kh, kw), got ",
                    dw.sizes());
  TORCH_CHECK_VALUE(dw.size(0) == pw.size(0), op, ": dw has ", dw.size(0), " channels but pw has C_out=",
                    pw.size(0), " (they must match)");
  TORCH_CHECK_VALUE(dw.size(2) >= 1 && dw.size(3) >= 1, op, ": dw kernel size must be >= 1, got ", dw.sizes());
  const int64_t C_out = pw.size(0);
  const std::optional<at::Tensor>* opt[2] = {&bias, &mid_bias};
  const char* opt_names[2] = {"bias", "mid_bias"};
  for (int i = 0; i < 2; ++i) {
    if (!opt[i]->has_value()) continue;
    const at::Tensor& t = opt[i]->value();
    check_float_tensor(op, opt_names[i], t);
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == C_out, op, ": ", opt_names[i], " must have shape (C_out,) = (",
                      C_out, ",), got ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == x.device(), op, ": all tensors must be on the same device, got x on ",
                      x.device(), " and ", opt_names[i], " on ", t.device());
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": all tensors must have the same dtype, got x ",
                     x.scalar_type(), " and ", opt_names[i], " ", t.scalar_type());
  }
  TORCH_CHECK_VALUE(pw.device() == x.device() && dw.device() == x.device(), op,
                    ": all tensors must be on the same device, got x on ", x.device(), ", pw on ", pw.device(),
                    ", dw on ", dw.device());
  TORCH_CHECK_TYPE(pw.scalar_type() == x.scalar_type() && dw.scalar_type() == x.scalar_type(), op,
                   ": all tensors must have the same dtype, got x ", x.scalar_type(), ", pw ", pw.scalar_type(),
                   ", dw ", dw.scalar_type());
  TORCH_CHECK_VALUE(x.numel() > 0 && C_out > 0, op, ": x and the weights must be non-empty, got x ", x.sizes(),
                    " and C_out=", C_out);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);

  ConvShape s{};
  s.N = x.size(0), s.C_in = x.size(1), s.C_out = C_out, s.H = x.size(2), s.W = x.size(3);
  s.kh = dw.size(2), s.kw = dw.size(3);
  for (int i = 0; i < 2; ++i) s.stride[i] = stride[i], s.padding[i] = padding[i], s.dilation[i] = dilation[i];
  s.Ho = (s.H + 2 * s.padding[0] - s.dilation[0] * (s.kh - 1) - 1) / s.stride[0] + 1;
  s.Wo = (s.W + 2 * s.padding[1] - s.dilation[1] * (s.kw - 1) - 1) / s.stride[1] + 1;
  const bool empty_h = s.H + 2 * s.padding[0] < s.dilation[0] * (s.kh - 1) + 1;
  const bool empty_w = s.W + 2 * s.padding[1] < s.dilation[1] * (s.kw - 1) + 1;
  TORCH_CHECK_VALUE(!empty_h && !empty_w, op, ": the output would be empty: input ", s.H, "x", s.W, ", kernel ",
                    s.kh, "x", s.kw, ", stride ", stride, ", padding ", padding, ", dilation ", dilation,
                    "; the padded input must be at least the dilated kernel size");
  return s;
}

inline void check_grad_y(const char* op, const at::Tensor& grad_y, const at::Tensor& x, const ConvShape& s) {
  check_float_tensor(op, "grad_y", grad_y);
  TORCH_CHECK_VALUE(grad_y.dim() == 4 && grad_y.size(0) == s.N && grad_y.size(1) == s.C_out &&
                        grad_y.size(2) == s.Ho && grad_y.size(3) == s.Wo,
                    op, ": grad_y must have the output shape (", s.N, ", ", s.C_out, ", ", s.Ho, ", ", s.Wo,
                    "), got ", grad_y.sizes());
  TORCH_CHECK_VALUE(grad_y.device() == x.device(), op, ": grad_y must be on x's device ", x.device(), ", got ",
                    grad_y.device());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y must have x's dtype ", x.scalar_type(),
                   ", got ", grad_y.scalar_type());
}

inline void check_output_mask(const char* op, const c10::List<bool>& mask) {
  TORCH_CHECK_VALUE(mask.size() == 5, op,
                    ": output_mask must have 5 entries (x, pw, dw, bias, mid_bias), got ", mask.size());
}

// Every check of a cpp_backward call (the CPU and CUDA implementations share it); returns the call's geometry.
inline ConvShape check_backward_args(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                                     const at::Tensor& pw, const at::Tensor& dw,
                                     const std::optional<at::Tensor>& mid_bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     const c10::List<bool>& output_mask) {
  const ConvShape s = check_conv_args(op, x, pw, dw, std::nullopt, mid_bias, stride, padding, dilation);
  check_grad_y(op, grad_y, x, s);
  check_output_mask(op, output_mask);
  return s;
}

// The memory format of y and dx: x's, following bsconv_fused._shapes.suggest_memory_format (channels_last only when
// x is channels_last-contiguous and not also NCHW-contiguous), so the fake kernels and the real ones agree.
inline c10::MemoryFormat output_memory_format(const at::Tensor& x) {
  if (x.is_contiguous(c10::MemoryFormat::ChannelsLast) && !x.is_contiguous()) return c10::MemoryFormat::ChannelsLast;
  return c10::MemoryFormat::Contiguous;
}

}  // namespace glue
}  // namespace bsconv_fused
