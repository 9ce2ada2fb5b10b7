// Fused BSConvU forward on the CPU: the image is processed in strips of output rows; for each strip the
// intermediate t = PW(x) + mid_bias is computed (BLAS GEMM) for the input rows the strip needs into a per-thread
// channels-last buffer that stays in cache, and the depthwise stencil reads it from there. Consecutive strips of one
// task slide down the image and keep the overlapping halo rows, so t is computed about once per row.
#include <ATen/Parallel.h>

#include <cstring>
#include <type_traits>

#include "strip_utils.h"

namespace bsconv_fused {
namespace cpu {
namespace {

using detail::acc_t;

// Channels per register block: the accumulators of one output pixel stay in vector registers across all taps
// (64 floats = 4 AVX-512 / 8 AVX2 registers) instead of going through memory once per tap.
template <typename A>
constexpr int64_t kChunk = 64 * sizeof(float) / sizeof(A);

// Taps (i, j) of output pixel (ho, wo) whose input lies inside the image, as [i_lo, i_hi) x [j_lo, j_hi).
inline void valid_taps(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t k, int64_t size, int64_t& lo,
                       int64_t& hi) {
  const int64_t base = o * stride - pad;  // input coordinate of tap 0
  lo = base >= 0 ? 0 : detail::ceil_div(-base, dil);
  hi = std::min(k, detail::floor_div(size - 1 - base, dil) + 1);
  if (hi < lo) hi = lo;
}

template <typename A, int64_t kLen>
BSCONV_INLINE void dw_pixel_block(const Geometry& g, const A* BSCONV_RESTRICT tbuf, int64_t tbuf_h0,
                                  const A* BSCONV_RESTRICT dwT, const A* BSCONV_RESTRICT bias, int64_t ho,
                                  int64_t wo, int64_t i_lo, int64_t i_hi, int64_t j_lo, int64_t j_hi, int64_t o0,
                                  int64_t len, A* BSCONV_RESTRICT out) {
  const int64_t Co = g.C_out;
  const int64_t n = kLen > 0 ? kLen : len;
  A acc[kLen > 0 ? kLen : kChunk<A>];
  if (bias != nullptr) {
    for (int64_t o = 0; o < n; ++o) acc[o] = bias[o0 + o];
  } else {
    for (int64_t o = 0; o < n; ++o) acc[o] = A(0);
  }
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const int64_t h = ho * g.stride_h - g.pad_h + i * g.dil_h;
    const A* trow = tbuf + (h - tbuf_h0) * g.W * Co + o0;
    for (int64_t j = j_lo; j < j_hi; ++j) {
      const int64_t w = wo * g.stride_w - g.pad_w + j * g.dil_w;
      const A* BSCONV_RESTRICT t = trow + w * Co;
      const A* BSCONV_RESTRICT wt = dwT + (i * g.kw + j) * Co + o0;
      for (int64_t o = 0; o < n; ++o) acc[o] += wt[o] * t[o];
    }
  }
  for (int64_t o = 0; o < n; ++o) out[o0 + o] = acc[o];
}

// One output row of the depthwise stencil into out[Wo][C_out]. tbuf holds t rows starting at image row tbuf_h0,
// pixel-major; every row this output row reads lies in it.
template <typename A>
BSCONV_INLINE void dw_row_impl(const Geometry& g, const A* BSCONV_RESTRICT tbuf, int64_t tbuf_h0,
                               const A* BSCONV_RESTRICT dwT, const A* BSCONV_RESTRICT bias, int64_t ho,
                               A* BSCONV_RESTRICT out) {
  const int64_t Co = g.C_out;
  int64_t i_lo, i_hi;
  valid_taps(ho, g.stride_h, g.pad_h, g.dil_h, g.kh, g.H, i_lo, i_hi);
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    int64_t j_lo, j_hi;
    valid_taps(wo, g.stride_w, g.pad_w, g.dil_w, g.kw, g.W, j_lo, j_hi);
    A* o_px = out + wo * Co;
    int64_t o0 = 0;
    for (; o0 + kChunk<A> <= Co; o0 += kChunk<A>)
      dw_pixel_block<A, kChunk<A>>(g, tbuf, tbuf_h0, dwT, bias, ho, wo, i_lo, i_hi, j_lo, j_hi, o0, kChunk<A>,
                                   o_px);
    if (o0 < Co)
      dw_pixel_block<A, 0>(g, tbuf, tbuf_h0, dwT, bias, ho, wo, i_lo, i_hi, j_lo, j_hi, o0, Co - o0, o_px);
  }
}

BSCONV_CPU_CLONES void dw_row(const Geometry& g, const float* tbuf, int64_t tbuf_h0, const float* dwT,
                              const float* bias, int64_t ho, float* out) {
  dw_row_impl<float>(g, tbuf, tbuf_h0, dwT, bias, ho, out);
}

BSCONV_CPU_CLONES void dw_row(const Geometry& g, const double* tbuf, int64_t tbuf_h0, const double* dwT,
                              const double* bias, int64_t ho, double* out) {
  dw_row_impl<double>(g, tbuf, tbuf_h0, dwT, bias, ho, out);
}

// out[Wo][C_out] into one output row of y. NCHW rows are written through 16x16 blocks so that both the reads
// (stride C_out) and the writes (stride 1) stay within a few cache lines.
template <typename T, typename A>
BSCONV_INLINE void store_row_impl(const Geometry& g, const A* BSCONV_RESTRICT out, T* BSCONV_RESTRICT yrow,
                                  Strides4 ys) {
  const int64_t Co = g.C_out;
  if (ys.c <= ys.w) {
    for (int64_t wo = 0; wo < g.Wo; ++wo)
      for (int64_t o = 0; o < Co; ++o) yrow[wo * ys.w + o * ys.c] = static_cast<T>(out[wo * Co + o]);
  } else if (ys.w == 1) {
    // Full 16x16 tiles go through a fixed-size local transpose the compiler turns into vector shuffles.
    constexpr int64_t kB = 16;
    for (int64_t o0 = 0; o0 < Co; o0 += kB)
      for (int64_t w0 = 0; w0 < g.Wo; w0 += kB) {
        const int64_t o1 = std::min(Co, o0 + kB), w1 = std::min(g.Wo, w0 + kB);
        if (o1 - o0 == kB && w1 - w0 == kB) {
          A tile[kB][kB];
          for (int64_t o = 0; o < kB; ++o)
            for (int64_t l = 0; l < kB; ++l) tile[o][l] = out[(w0 + l) * Co + o0 + o];
          for (int64_t o = 0; o < kB; ++o) {
            T* d = yrow + (o0 + o) * ys.c + w0;
            for (int64_t l = 0; l < kB; ++l) d[l] = static_cast<T>(tile[o][l]);
          }
          continue;
        }
        for (int64_t o = o0; o < o1; ++o) {
          T* d = yrow + o * ys.c;
          for (int64_t wo = w0; wo < w1; ++wo) d[wo] = static_cast<T>(out[wo * Co + o]);
        }
      }
  } else {
    for (int64_t o = 0; o < Co; ++o)
      for (int64_t wo = 0; wo < g.Wo; ++wo) yrow[o * ys.c + wo * ys.w] = static_cast<T>(out[wo * Co + o]);
  }
}

template <typename T, typename A>
void store_row(const Geometry& g, const A* out, T* yrow, Strides4 ys) {
  store_row_impl<T, A>(g, out, yrow, ys);
}

BSCONV_CPU_CLONES void store_row(const Geometry& g, const float* out, float* yrow, Strides4 ys) {
  store_row_impl<float, float>(g, out, yrow, ys);
}

// Input rows [lo, hi) of t that output rows [o0, o1) read, clipped to the image (may be empty).
inline void input_rows(const Geometry& g, int64_t o0, int64_t o1, int64_t& lo, int64_t& hi) {
  lo = std::min(std::max<int64_t>(o0 * g.stride_h - g.pad_h, 0), g.H);
  hi = std::min(std::max<int64_t>((o1 - 1) * g.stride_h - g.pad_h + (g.kh - 1) * g.dil_h + 1, 0), g.H);
  if (hi < lo) hi = lo;
}

}  // namespace

template <typename T>
void forward(const Geometry& g, const T* x, Strides4 xs, const T* pw, const T* dw, const T* bias,
             const T* mid_bias, T* y, Strides4 ys) {
  using A = acc_t<T>;
  const detail::PackedWeights<T, A> wts(g, pw, dw, bias, mid_bias);
  const int64_t Co = g.C_out;

  // Output rows per strip: as many as keep the strip's t rows within the cache budget (at least one).
  const int64_t row_bytes = g.W * Co * static_cast<int64_t>(sizeof(A));
  auto rows_in = [&](int64_t R) {
    return std::min(g.H, (R - 1) * g.stride_h + (g.kh - 1) * g.dil_h + 1);
  };
  int64_t R = 1;
  while (R < g.Ho && rows_in(R + 1) * row_bytes <= detail::kStripBytes) ++R;

  // Tasks are (image, band of output rows); each band pays the halo once, so use as few bands as keep every thread
  // busy. The forward has no reductions: the split never changes the result.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t bands = std::max<int64_t>(1, detail::ceil_div(threads, g.N));
  if ((g.N * bands) % threads != 0) bands = std::max<int64_t>(1, detail::ceil_div(4 * threads, g.N));
  bands = std::min(bands, g.Ho);
  const int64_t band_rows = detail::ceil_div(g.Ho, bands);
  bands = detail::ceil_div(g.Ho, band_rows);

  at::parallel_for(0, g.N * bands, 1, [&](int64_t begin, int64_t end) {
    detail::Scratch<A, 0> tbuf_s;
    detail::Scratch<A, 1> xbuf_s;
    detail::Scratch<A, 2> out_s;
    A* const tbuf = tbuf_s.data(std::max<int64_t>(rows_in(R), 1) * g.W * Co);
    A* const out_buf = out_s.data(g.Wo * Co);
    detail::Buffer<A>& xbuf = xbuf_s.get();
    // Channels-last y of the accumulation type: the stencil writes straight into it.
    const bool direct_out = std::is_same<T, A>::value && ys.c == 1 && ys.w == Co;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / bands;
      const int64_t o_begin = (task % bands) * band_rows, o_end = std::min(g.Ho, o_begin + band_rows);
      const T* img = x + n * xs.n;
      int64_t buf_lo = 0, buf_hi = 0;  // t rows currently held in tbuf
      for (int64_t o0 = o_begin; o0 < o_end; o0 += R) {
        const int64_t o1 = std::min(o_end, o0 + R);
        int64_t lo, hi;
        input_rows(g, o0, o1, lo, hi);
        int64_t first_new = lo;
        if (lo < buf_hi && lo >= buf_lo) {  // slide the halo rows to the front instead of recomputing them
          const int64_t keep_hi = std::min(hi, buf_hi);
          std::memmove(tbuf, tbuf + (lo - buf_lo) * g.W * Co,
                       static_cast<size_t>((keep_hi - lo) * g.W * Co) * sizeof(A));
          first_new = keep_hi;
        }
        detail::pointwise_rows<T, A>(g, img, xs, first_new, hi, wts.pw.data(), wts.mid_ptr(),
                                     tbuf + (first_new - lo) * g.W * Co, xbuf);
        buf_lo = lo;
        buf_hi = hi;
        for (int64_t ho = o0; ho < o1; ++ho) {
          T* yrow = y + n * ys.n + ho * ys.h;
          if (direct_out) {
            dw_row(g, tbuf, lo, wts.dwT.data(), wts.bias_ptr(), ho, reinterpret_cast<A*>(yrow));
          } else {
            dw_row(g, tbuf, lo, wts.dwT.data(), wts.bias_ptr(), ho, out_buf);
            store_row(g, static_cast<const A*>(out_buf), yrow, ys);
          }
        }
      }
    }
  });
}

template void forward<float>(const Geometry&, const float*, Strides4, const float*, const float*, const float*,
                             const float*, float*, Strides4);
template void forward<double>(const Geometry&, const double*, Strides4, const double*, const double*,
                              const double*, const double*, double*, Strides4);
template void forward<c10::BFloat16>(const Geometry&, const c10::BFloat16*, Strides4, const c10::BFloat16*,
                                     const c10::BFloat16*, const c10::BFloat16*, const c10::BFloat16*,
                                     c10::BFloat16*, Strides4);
template void forward<c10::Half>(const Geometry&, const c10::Half*, Strides4, const c10::Half*, const c10::Half*,
                                 const c10::Half*, const c10::Half*, c10::Half*, Strides4);

}  // namespace cpu
}  // namespace bsconv_fused
