// Fused BSConvU forward on the CPU: the image is processed in strips of output rows; for each strip the
// intermediate t = PW(x) + mid_bias is computed (BLAS GEMM, through torch) for the input rows the strip needs into a
// per-thread channels-last buffer that stays in cache, and the vectorized depthwise stencil reads it from there.
// Consecutive strips of one task slide down the image and keep the overlapping halo rows, so t is computed once per
// row. Work is split over (image, block of output channels, band of output rows): channel blocks are columns of the
// GEMM and independent in the depthwise step, so they split an image without recomputing anything; bands pay the
// halo once each and are only used where channel blocks would be too narrow.
#include <ATen/Parallel.h>

#include <cstring>
#include <numeric>
#include <type_traits>

#include "../activation.h"
#include "strip_utils.h"

namespace bsconv_fused {
namespace cpu {
namespace {

using detail::acc_t;

// Taps (i, j) of output pixel (ho, wo) whose input lies inside the image, as [i_lo, i_hi) x [j_lo, j_hi).
inline void valid_taps(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t k, int64_t size, int64_t& lo,
                       int64_t& hi) {
  const int64_t base = o * stride - pad;  // input coordinate of tap 0
  lo = base >= 0 ? 0 : detail::ceil_div(-base, dil);
  hi = std::min(k, detail::floor_div(size - 1 - base, dil) + 1);
  if (hi < lo) hi = lo;
}

// One block of output channels of the depthwise step, as the stencil sees it.
template <typename A>
struct DwBlock {
  const A* tbuf;    // t rows from image row tbuf_h0 on, [row][W][cb]
  int64_t tbuf_h0;
  int64_t cb;       // channels in the block
  const A* dwT;     // tap-major depthwise weights of the block's first channel (row stride C_out)
  const A* bias;    // the block's first channel, or nullptr
  A* out;           // output pixel wo at out + wo * out_ld
  int64_t out_ld;
  int act;          // activation code (csrc/activation.h), applied to the accumulators before they are stored
};

// Channels per register block: the accumulators of one output pixel stay in vector registers across all taps
// (64 floats = 4 AVX-512 / 8 AVX2 registers) instead of going through memory once per tap.
template <typename A>
constexpr int64_t kChunk = 64 * sizeof(float) / sizeof(A);

// Channels [o0, o0 + n) of one output pixel, n = kLen when kLen > 0 (a full register block, fully unrolled).
// Plain fixed-length loops rather than at::vec::Vectorized: outside ATen's per-ISA builds (no CPU_CAPABILITY_*
// defined) Vectorized is the generic std::array implementation, whose accumulators GCC 12 keeps in stack slots
// (every FMA of the clones reads the stack, checked with objdump); these loops are vectorized by the target clones
// into register-resident FMAs.
template <typename A, int64_t kLen>
BSCONV_INLINE void dw_pixel(const Geometry& g, const DwBlock<A>& b, int64_t ho, int64_t wo, int64_t i_lo,
                            int64_t i_hi, int64_t j_lo, int64_t j_hi, int64_t o0, int64_t len) {
  const int64_t Co = g.C_out, cb = b.cb;
  const int64_t n = kLen > 0 ? kLen : len;
  A acc[kLen > 0 ? kLen : kChunk<A>];
  if (b.bias != nullptr) {
    for (int64_t o = 0; o < n; ++o) acc[o] = b.bias[o0 + o];
  } else {
    for (int64_t o = 0; o < n; ++o) acc[o] = A(0);
  }
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const int64_t h = ho * g.stride_h - g.pad_h + i * g.dil_h;
    const A* trow = b.tbuf + (h - b.tbuf_h0) * g.W * cb + o0;
    for (int64_t j = j_lo; j < j_hi; ++j) {
      const int64_t w = wo * g.stride_w - g.pad_w + j * g.dil_w;
      const A* BSCONV_RESTRICT t = trow + w * cb;
      const A* BSCONV_RESTRICT wt = b.dwT + (i * g.kw + j) * Co + o0;
      for (int64_t o = 0; o < n; ++o) acc[o] += wt[o] * t[o];
    }
  }
  // The epilogue: one switch per pixel and channel block, a plain loop per case (vectorized by the clones, no
  // branch per element); act 0 stores the accumulators unchanged.
  switch (b.act) {
    case activation::kNone: break;
    case activation::kRelu:
      for (int64_t o = 0; o < n; ++o) acc[o] = activation::apply(acc[o], activation::kRelu);
      break;
    case activation::kRelu6:
      for (int64_t o = 0; o < n; ++o) acc[o] = activation::apply(acc[o], activation::kRelu6);
      break;
    case activation::kHardswish:
      for (int64_t o = 0; o < n; ++o) acc[o] = activation::apply(acc[o], activation::kHardswish);
      break;
    case activation::kSilu:
      for (int64_t o = 0; o < n; ++o) acc[o] = activation::apply(acc[o], activation::kSilu);
      break;
    default: break;  // unreachable: the glue validates the code
  }
  A* BSCONV_RESTRICT out = b.out + wo * b.out_ld + o0;
  for (int64_t o = 0; o < n; ++o) out[o] = acc[o];
}

// One output row of the depthwise stencil for one channel block; every t row it reads lies in b.tbuf.
template <typename A>
BSCONV_INLINE void dw_row_impl(const Geometry& g, const DwBlock<A>& b, int64_t ho) {
  int64_t i_lo, i_hi;
  valid_taps(ho, g.stride_h, g.pad_h, g.dil_h, g.kh, g.H, i_lo, i_hi);
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    int64_t j_lo, j_hi;
    valid_taps(wo, g.stride_w, g.pad_w, g.dil_w, g.kw, g.W, j_lo, j_hi);
    int64_t o0 = 0;
    for (; o0 + kChunk<A> <= b.cb; o0 += kChunk<A>)
      dw_pixel<A, kChunk<A>>(g, b, ho, wo, i_lo, i_hi, j_lo, j_hi, o0, kChunk<A>);
    if (o0 < b.cb) dw_pixel<A, 0>(g, b, ho, wo, i_lo, i_hi, j_lo, j_hi, o0, b.cb - o0);
  }
}

BSCONV_CPU_CLONES void dw_row(const Geometry& g, const DwBlock<float>& b, int64_t ho) { dw_row_impl<float>(g, b, ho); }
BSCONV_CPU_CLONES void dw_row(const Geometry& g, const DwBlock<double>& b, int64_t ho) {
  dw_row_impl<double>(g, b, ho);
}

// out[Wo][cb] into one output row of y (yrow points at the block's first channel). NCHW rows are written through
// 16x16 blocks so that both the reads (stride cb) and the writes (stride 1) stay within a few cache lines.
template <typename T, typename A>
BSCONV_INLINE void store_row_impl(const Geometry& g, const A* BSCONV_RESTRICT out, int64_t cb, T* BSCONV_RESTRICT yrow,
                                  Strides4 ys) {
  if (ys.c <= ys.w) {
    for (int64_t wo = 0; wo < g.Wo; ++wo)
      for (int64_t o = 0; o < cb; ++o) yrow[wo * ys.w + o * ys.c] = static_cast<T>(out[wo * cb + o]);
  } else if (ys.w == 1) {
    // Full 16x16 tiles go through a fixed-size local transpose the compiler turns into vector shuffles.
    constexpr int64_t kB = 16;
    for (int64_t o0 = 0; o0 < cb; o0 += kB)
      for (int64_t w0 = 0; w0 < g.Wo; w0 += kB) {
        const int64_t o1 = std::min(cb, o0 + kB), w1 = std::min(g.Wo, w0 + kB);
        if (o1 - o0 == kB && w1 - w0 == kB) {
          A tile[kB][kB];
          for (int64_t o = 0; o < kB; ++o)
            for (int64_t l = 0; l < kB; ++l) tile[o][l] = out[(w0 + l) * cb + o0 + o];
          for (int64_t o = 0; o < kB; ++o) {
            T* d = yrow + (o0 + o) * ys.c + w0;
            for (int64_t l = 0; l < kB; ++l) d[l] = static_cast<T>(tile[o][l]);
          }
          continue;
        }
        for (int64_t o = o0; o < o1; ++o) {
          T* d = yrow + o * ys.c;
          for (int64_t wo = w0; wo < w1; ++wo) d[wo] = static_cast<T>(out[wo * cb + o]);
        }
      }
  } else {
    for (int64_t o = 0; o < cb; ++o)
      for (int64_t wo = 0; wo < g.Wo; ++wo) yrow[o * ys.c + wo * ys.w] = static_cast<T>(out[wo * cb + o]);
  }
}

template <typename T, typename A>
void store_row(const Geometry& g, const A* out, int64_t cb, T* yrow, Strides4 ys) {
  store_row_impl<T, A>(g, out, cb, yrow, ys);
}

BSCONV_CPU_CLONES void store_row(const Geometry& g, const float* out, int64_t cb, float* yrow, Strides4 ys) {
  store_row_impl<float, float>(g, out, cb, yrow, ys);
}

// Input rows [lo, hi) of t that output rows [o0, o1) read, clipped to the image (may be empty).
inline void input_rows(const Geometry& g, int64_t o0, int64_t o1, int64_t& lo, int64_t& hi) {
  lo = std::min(std::max<int64_t>(o0 * g.stride_h - g.pad_h, 0), g.H);
  hi = std::min(std::max<int64_t>((o1 - 1) * g.stride_h - g.pad_h + (g.kh - 1) * g.dil_h + 1, 0), g.H);
  if (hi < lo) hi = lo;
}

// How the forward splits the work: tasks are (image, channel block, band of output rows).
struct ForwardSplit {
  int64_t cblocks, cb;  // channel blocks of cb channels (the last may be narrower)
  int64_t bands;
};

ForwardSplit plan_forward(const Geometry& g, int64_t threads) {
  ForwardSplit s{1, g.C_out, 1};
  threads = std::max<int64_t>(1, threads);
  if (g.N % threads == 0 || g.N >= 4 * threads) return s;  // whole images keep every thread busy
  // Split each image into `want` parts so that N * want is a multiple of the thread count.
  const int64_t want = threads / std::gcd(g.N, threads);
  // Channel blocks, rounded to 16 channels (whole vectors), if that leaves them at least kMinBlock wide: a narrower
  // GEMM column block runs the BLAS below its efficient sizes.
  constexpr int64_t kMinBlock = 16;
  const int64_t cb = detail::ceil_div(detail::ceil_div(g.C_out, want), 16) * 16;
  const int64_t cblocks = detail::ceil_div(g.C_out, cb);
  if (cblocks == want && g.C_out / want >= kMinBlock) {
    s.cblocks = cblocks;
    s.cb = cb;
    return s;
  }
  // Bands of output rows otherwise: each pays the halo once, so use as few as keep every thread busy.
  int64_t bands = std::max<int64_t>(1, detail::ceil_div(threads, g.N));
  if ((g.N * bands) % threads != 0) bands = std::max<int64_t>(1, detail::ceil_div(4 * threads, g.N));
  bands = std::min(bands, g.Ho);
  s.bands = bands;
  return s;
}

}  // namespace

template <typename T>
void forward(const Geometry& g, const T* x, Strides4 xs, const T* pw, const T* dw, const T* bias,
             const T* mid_bias, T* y, Strides4 ys, int act) {
  using A = acc_t<T>;
  const detail::PackedWeights<T, A> wts(g, pw, dw, bias, mid_bias);
  const int64_t Co = g.C_out;
  const ForwardSplit split = plan_forward(g, at::get_num_threads());
  const int64_t band_rows = detail::ceil_div(g.Ho, split.bands);
  const int64_t bands = detail::ceil_div(g.Ho, band_rows);

  // Output rows per strip: as many as keep the strip's t rows (one channel block) within the cache budget.
  const int64_t row_bytes = g.W * split.cb * static_cast<int64_t>(sizeof(A));
  auto rows_in = [&](int64_t R) {
    return std::min(g.H, (R - 1) * g.stride_h + (g.kh - 1) * g.dil_h + 1);
  };
  int64_t R = 1;
  while (R < g.Ho && rows_in(R + 1) * row_bytes <= detail::kStripBytes) ++R;

  // The forward has no reductions: the split never changes the result.
  at::parallel_for(0, g.N * split.cblocks * bands, 1, [&](int64_t begin, int64_t end) {
    detail::Scratch<A, 0> tbuf_s;
    detail::Scratch<A, 1> xbuf_s;
    detail::Scratch<A, 2> out_s;
    A* const tbuf = tbuf_s.data(std::max<int64_t>(rows_in(R), 1) * g.W * split.cb);
    A* const out_buf = out_s.data(g.Wo * split.cb);
    detail::Buffer<A>& xbuf = xbuf_s.get();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (split.cblocks * bands);
      const int64_t c0 = (task / bands % split.cblocks) * split.cb, cb = std::min(split.cb, Co - c0);
      const int64_t o_begin = (task % bands) * band_rows, o_end = std::min(g.Ho, o_begin + band_rows);
      const T* img = x + n * xs.n;
      // Channels-last y of the accumulation type: the stencil writes straight into it.
      const bool direct_out = std::is_same<T, A>::value && ys.c == 1;
      DwBlock<A> blk{tbuf, 0, cb, wts.dwT.data() + c0, wts.bias_ptr() != nullptr ? wts.bias_ptr() + c0 : nullptr,
                     out_buf, cb, act};
      int64_t buf_lo = 0, buf_hi = 0;  // t rows currently held in tbuf
      for (int64_t o0 = o_begin; o0 < o_end; o0 += R) {
        const int64_t o1 = std::min(o_end, o0 + R);
        int64_t lo, hi;
        input_rows(g, o0, o1, lo, hi);
        int64_t first_new = lo;
        if (lo < buf_hi && lo >= buf_lo) {  // slide the halo rows to the front instead of recomputing them
          const int64_t keep_hi = std::min(hi, buf_hi);
          std::memmove(tbuf, tbuf + (lo - buf_lo) * g.W * cb,
                       static_cast<size_t>((keep_hi - lo) * g.W * cb) * sizeof(A));
          first_new = keep_hi;
        }
        detail::pointwise_rows<T, A>(g, img, xs, first_new, hi, c0, cb, wts.pw.data(), wts.mid_ptr(),
                                     tbuf + (first_new - lo) * g.W * cb, xbuf);
        buf_lo = lo;
        buf_hi = hi;
        blk.tbuf_h0 = lo;
        for (int64_t ho = o0; ho < o1; ++ho) {
          T* yrow = y + n * ys.n + ho * ys.h + c0 * ys.c;
          if (direct_out) {
            blk.out = reinterpret_cast<A*>(yrow);
            blk.out_ld = ys.w;
            dw_row(g, blk, ho);
          } else {
            dw_row(g, blk, ho);
            store_row(g, static_cast<const A*>(out_buf), cb, yrow, ys);
          }
        }
      }
    }
  });
}

template void forward<float>(const Geometry&, const float*, Strides4, const float*, const float*, const float*,
                             const float*, float*, Strides4, int);
template void forward<double>(const Geometry&, const double*, Strides4, const double*, const double*,
                              const double*, const double*, double*, Strides4, int);
template void forward<c10::BFloat16>(const Geometry&, const c10::BFloat16*, Strides4, const c10::BFloat16*,
                                     const c10::BFloat16*, const c10::BFloat16*, const c10::BFloat16*,
                                     c10::BFloat16*, Strides4, int);
template void forward<c10::Half>(const Geometry&, const c10::Half*, Strides4, const c10::Half*, const c10::Half*,
                                 const c10::Half*, const c10::Half*, c10::Half*, Strides4, int);

}  // namespace cpu
}  // namespace bsconv_fused
