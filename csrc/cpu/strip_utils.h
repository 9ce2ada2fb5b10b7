// Helpers shared by the CPU forward and backward kernels: accumulation type, BLAS GEMM on raw pointers, gathering
// image rows into a matrix, row planning. Internal to csrc/cpu.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "bsconv_cpu.h"

// The hot loops over channels are compiled once per x86 ISA level and picked at load time (GCC function
// multi-versioning): the wheel stays portable (baseline x86-64) while AVX2/AVX-512 machines get wide FMAs, which
// the depthwise stencil needs to keep up with the BLAS GEMM.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__linux__)
#define BSCONV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BSCONV_CPU_CLONES
#endif

#if defined(__GNUC__)
#define BSCONV_INLINE inline __attribute__((always_inline))
#define BSCONV_RESTRICT __restrict__
#else
#define BSCONV_INLINE inline
#define BSCONV_RESTRICT
#endif

namespace bsconv_fused {
namespace cpu {
namespace detail {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

// 64-byte aligned storage for every buffer handed to the BLAS: its kernels may pick code paths by operand
// alignment, and malloc's varies from run to run, which would make results vary from run to run.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  static constexpr std::size_t kAlign = 64;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlign))); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t(kAlign)); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const noexcept { return false; }
};
template <typename T>
using Buffer = std::vector<T, AlignedAllocator<T>>;

// Per-thread scratch buffers reused across calls: a fresh strip buffer per call costs page faults on every call
// (glibc maps large blocks afresh), about a tenth of a forward at N=1. Slot tells apart the buffers of one kernel.
// Buffers that grew past kKeepBytes are released after use so an odd huge call does not pin memory.
template <typename A, int Slot>
class Scratch {
 public:
  Scratch() : buf_(storage()) {}
  ~Scratch() {
    if (buf_.capacity() * sizeof(A) > kKeepBytes) Buffer<A>().swap(buf_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Buffer<A>& get() { return buf_; }
  A* data(int64_t n) {  // at least n elements; contents unspecified
    if (static_cast<int64_t>(buf_.size()) < n) buf_.resize(static_cast<size_t>(n));
    return buf_.data();
  }

 private:
  static constexpr size_t kKeepBytes = size_t(16) << 20;
  static Buffer<A>& storage() {
    static thread_local Buffer<A> b;
    return b;
  }
  Buffer<A>& buf_;
};

// Bytes of per-thread strip buffers we aim to keep in a core's L2 (the intermediate strip plus what feeds it).
constexpr int64_t kStripBytes = 768 * 1024;

inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// C (m x n) = A (m x k) B (k x n), or C += A B, on raw buffers given with element strides (row, column).
// Goes through at::mm_out / at::addmm_out on borrowed tensors, i.e. whatever BLAS torch was built with (MKL on x86):
// ATen's cpublas::gemm entry points for float/double are not exported from libtorch. Called inside
// at::parallel_for, where the BLAS runs single-threaded in each worker, which is what the strip scheme wants.
template <typename A>
void matmul(int64_t m, int64_t n, int64_t k, const A* a, int64_t a_rs, int64_t a_cs, const A* b, int64_t b_rs,
            int64_t b_cs, A* c, int64_t c_rs, int64_t c_cs, bool accumulate) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  const at::Tensor ta = at::from_blob(const_cast<A*>(a), {m, k}, {a_rs, a_cs}, opts);
  const at::Tensor tb = at::from_blob(const_cast<A*>(b), {k, n}, {b_rs, b_cs}, opts);
  at::Tensor tc = at::from_blob(c, {m, n}, {c_rs, c_cs}, opts);
  if (accumulate) {
    at::addmm_out(tc, tc, ta, tb);
  } else {
    at::mm_out(tc, ta, tb);
  }
}

// Rows [h0, h1) of one image as a matrix of P = (h1 - h0) * W pixels by C channels, in the accumulation type.
// pixel_major: element (p, c) at data[p * ld + c] (channels_last); otherwise at data[c * ld + p] (NCHW).
template <typename A>
struct RowsMatrix {
  const A* data;
  int64_t ld;
  bool pixel_major;
};

inline bool prefers_pixel_major(Strides4 s) { return s.c <= s.w; }

// Points straight into the tensor when its layout already is such a matrix (same type, rows evenly strided);
// otherwise gathers (and converts) into buf.
template <typename T, typename A>
RowsMatrix<A> rows_matrix(const T* img, Strides4 s, int64_t h0, int64_t h1, int64_t W, int64_t C,
                          Buffer<A>& buf) {
  const int64_t P = (h1 - h0) * W;
  const bool pixel_major = prefers_pixel_major(s);
  if constexpr (std::is_same<T, A>::value) {
    const bool even_rows = (s.h == W * s.w) || (h1 - h0 == 1);
    if (even_rows && pixel_major && s.c == 1 && s.w >= C) return {img + h0 * s.h, s.w, true};
    if (even_rows && !pixel_major && s.w == 1 && s.c >= P) return {img + h0 * s.h, s.c, false};
  }
  if (static_cast<int64_t>(buf.size()) < P * C) buf.resize(P * C);
  A* dst = buf.data();
  if (pixel_major) {
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const T* src = img + h * s.h + w * s.w;
        A* d = dst + ((h - h0) * W + w) * C;
        for (int64_t c = 0; c < C; ++c) d[c] = static_cast<A>(src[c * s.c]);
      }
    return {dst, C, true};
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t h = h0; h < h1; ++h) {
      const T* src = img + c * s.c + h * s.h;
      A* d = dst + c * P + (h - h0) * W;
      for (int64_t w = 0; w < W; ++w) d[w] = static_cast<A>(src[w * s.w]);
    }
  return {dst, P, false};
}

// t = pw x (+ mid_bias) for the P pixels of X and the cb output channels whose pw rows start at pwA (and mid_bias at
// midA) into dst ([P][cb], pixel-major). A channel block is a plain column block of the GEMM: no halo, no overlap.
template <typename A>
void pointwise(const Geometry& g, const RowsMatrix<A>& X, int64_t P, int64_t cb, const A* pwA, const A* midA,
               A* dst) {
  const int64_t Ci = g.C_in;
  if (midA != nullptr)
    for (int64_t p = 0; p < P; ++p) std::copy(midA, midA + cb, dst + p * cb);
  // dst (P x cb) [+]= X (P x C_in) pw_block^T (C_in x cb)
  const int64_t x_rs = X.pixel_major ? X.ld : 1, x_cs = X.pixel_major ? 1 : X.ld;
  matmul<A>(P, cb, Ci, X.data, x_rs, x_cs, pwA, 1, Ci, dst, cb, 1, midA != nullptr);
}

// t rows [a, b) of one image (img = x + n * xs.n), channels [c0, c0 + cb), into dst.
template <typename T, typename A>
void pointwise_rows(const Geometry& g, const T* img, Strides4 xs, int64_t a, int64_t b, int64_t c0, int64_t cb,
                    const A* pwA, const A* midA, A* dst, Buffer<A>& xbuf) {
  if (a >= b) return;
  const RowsMatrix<A> X = rows_matrix<T, A>(img, xs, a, b, g.W, g.C_in, xbuf);
  pointwise<A>(g, X, (b - a) * g.W, cb, pwA + c0 * g.C_in, midA != nullptr ? midA + c0 : nullptr, dst);
}

// Dense copies of the weights in the accumulation type; dw transposed to tap-major (kh*kw, C_out) so the stencil's
// inner loops run over contiguous channels.
template <typename T, typename A>
struct PackedWeights {
  Buffer<A> pw, dwT, bias, mid;
  PackedWeights(const Geometry& g, const T* pw_, const T* dw_, const T* bias_, const T* mid_) {
    const int64_t Co = g.C_out, K = g.kh * g.kw;
    pw.resize(Co * g.C_in);
    for (int64_t i = 0; i < Co * g.C_in; ++i) pw[i] = static_cast<A>(pw_[i]);
    dwT.resize(K * Co);
    for (int64_t o = 0; o < Co; ++o)
      for (int64_t k = 0; k < K; ++k) dwT[k * Co + o] = static_cast<A>(dw_[o * K + k]);
    if (bias_ != nullptr) {
      bias.resize(Co);
      for (int64_t o = 0; o < Co; ++o) bias[o] = static_cast<A>(bias_[o]);
    }
    if (mid_ != nullptr) {
      mid.resize(Co);
      for (int64_t o = 0; o < Co; ++o) mid[o] = static_cast<A>(mid_[o]);
    }
  }
  const A* bias_ptr() const { return bias.empty() ? nullptr : bias.data(); }
  const A* mid_ptr() const { return mid.empty() ? nullptr : mid.data(); }
};

}  // namespace detail
}  // namespace cpu
}  // namespace bsconv_fused
