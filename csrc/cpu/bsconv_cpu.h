// Tensor-free interface of the fused CPU kernels (csrc/cpu/*.cpp), called by the torch glue (csrc/bsconv_fused.cpp).
//
// The glue validates, allocates and dispatches on dtype; the kernels only compute, on raw pointers, so the same
// code serves NCHW, channels_last and sliced views (every activation is addressed through element strides).
// Weights are dense: pw (C_out, C_in) row-major, dw (C_out, kh, kw) row-major, bias / mid_bias (C_out) or nullptr.
//
// Instantiated for float, double, c10::BFloat16 and c10::Half. Low-precision types accumulate in float, double in
// double: the intermediate is held in the accumulation type in a per-thread strip buffer and never rounded.
#pragma once

#include <cstdint>

namespace bsconv_fused {
namespace cpu {

struct Geometry {
  int64_t N, C_in, C_out, H, W, Ho, Wo;
  int64_t kh, kw;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dil_h, dil_w;
};

struct Strides4 {
  int64_t n, c, h, w;  // in elements
};

// y = act(DW(PW(x) + mid_bias) + bias), mid_bias added at in-image positions only; act is one of the codes of
// csrc/activation.h (0: none), applied in the accumulation type before the cast to T. The glue validates it.
template <typename T>
void forward(const Geometry& g, const T* x, Strides4 xs, const T* pw, const T* dw, const T* bias,
             const T* mid_bias, T* y, Strides4 ys, int act = 0);

// Gradients of forward(). A null output pointer means "not requested" and skips the work only it needs.
// Weight gradients are dense and in T: dpw (C_out, C_in), ddw (C_out, kh, kw), dbias (C_out), dmid (C_out).
// Deterministic (run to run, at a given thread count): reductions run over a partition that depends on the shapes
// only and are summed in a fixed order; no atomics.
template <typename T>
void backward(const Geometry& g, const T* grad_y, Strides4 gys, const T* x, Strides4 xs, const T* pw, const T* dw,
              const T* mid_bias, T* dx, Strides4 dxs, T* dpw, T* ddw, T* dbias, T* dmid);

}  // namespace cpu
}  // namespace bsconv_fused
