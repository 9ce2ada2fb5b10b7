// The activation epilogue of the fused forward, shared by the CPU kernels, the CUDA kernels and their host
// emulation: y = act(DW(PW(x) + mid_bias) + bias), applied to the accumulator (fp32, fp64 for double on the CPU)
// after the bias and before the cast to y's dtype.
//
// The codes are part of the ops' schema (cpp_forward's `int activation`) and match bsconv_fused/activation.py and
// the Triton kernels' ACT constexpr; they never change meaning.
//
// NaN handling follows torch (relu(nan) = nan): the comparisons are written so that a NaN fails them and passes
// through, rather than fmaxf / std::max, whose NaN policies differ from torch's.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define BSCONV_ACT_HD __host__ __device__ __forceinline__
#else
#define BSCONV_ACT_HD inline
#endif

namespace bsconv_fused {
namespace activation {

constexpr int kNone = 0;
constexpr int kRelu = 1;
constexpr int kRelu6 = 2;
constexpr int kHardswish = 3;
constexpr int kSilu = 4;
constexpr int kCount = 5;

inline bool valid(int64_t code) { return code >= 0 && code < kCount; }

BSCONV_ACT_HD float act_exp(float v) { return expf(v); }
BSCONV_ACT_HD double act_exp(double v) { return exp(v); }

template <typename A>
BSCONV_ACT_HD A clamp06(A v) {
  return v < A(0) ? A(0) : (v > A(6) ? A(6) : v);
}

// One element. A is float or double; code is one of the constants above (anything else leaves v unchanged: the
// glue validates codes before any kernel runs).
template <typename A>
BSCONV_ACT_HD A apply(A v, int code) {
  switch (code) {
    case kRelu: return v < A(0) ? A(0) : v;
    case kRelu6: return clamp06(v);
    case kHardswish: return v * clamp06(v + A(3)) / A(6);  // as torch.nn.functional.hardswish
    case kSilu: return v / (A(1) + act_exp(-v));             // as torch's CPU silu: x / (1 + exp(-x))
    default: return v;
  }
}

}  // namespace activation
}  // namespace bsconv_fused
