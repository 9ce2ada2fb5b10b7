// Fused BSConvU backward on the CPU. The image is split into strips of intermediate (t) rows; each strip:
//   1. gathers the grad_y rows that reach it (a small halo) into a channels-last buffer,
//   2. recomputes t for its own rows only when d_dw needs it (t is never stored by the forward),
//   3. runs the transposed depthwise stencil: dt = DW^T(grad_y) and d_dw += grad_y * t, both from cache,
//   4. turns dt into dx (GEMM with pw) and d_pw (GEMM with x), and sums it into d_mid_bias.
// The strips partition t's rows exactly, so nothing but the grad_y halo is read twice and dt never reaches memory.
// Determinism: weight-gradient partial sums live in one slot per thread (fewer when there are fewer strips); each
// slot walks a fixed range of strips in order and the slots are summed in order, so repeated runs at one thread
// count give identical bits. Across thread counts the partition (and the BLAS's kernels) change, so only closeness
// is promised there.
#include <ATen/Parallel.h>

#include <cstring>

#include "strip_utils.h"

namespace bsconv_fused {
namespace cpu {
namespace {

using detail::acc_t;

// Channels per register block (as in the forward): accumulators stay in vector registers across taps / pixels.
template <typename A>
constexpr int64_t kChunk = 64 * sizeof(float) / sizeof(A);

// Where the taps of t row h came from: ho_of_i[i] = the output row whose tap i lands on h, or -1. Likewise the
// per-call table wo_of[j * W + w] for columns. Precomputed so the inner loops do no integer division.
struct TapRows {
  const int64_t* ho_of_i;  // [kh]
  const int64_t* wo_of;    // [kw][W]
};

template <typename A, int64_t kLen>
BSCONV_INLINE void dt_block(const Geometry& g, const A* BSCONV_RESTRICT G, int64_t g_lo, const A* BSCONV_RESTRICT dwT,
                            TapRows taps, int64_t w, int64_t o0, int64_t len, A* BSCONV_RESTRICT dt) {
  const int64_t Co = g.C_out;
  const int64_t n = kLen > 0 ? kLen : len;
  A acc[kLen > 0 ? kLen : kChunk<A>];
  for (int64_t o = 0; o < n; ++o) acc[o] = A(0);
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ho = taps.ho_of_i[i];
    if (ho < 0) continue;
    const A* grow = G + (ho - g_lo) * g.Wo * Co + o0;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t wo = taps.wo_of[j * g.W + w];
      if (wo < 0) continue;
      const A* BSCONV_RESTRICT gy = grow + wo * Co;
      const A* BSCONV_RESTRICT wt = dwT + (i * g.kw + j) * Co + o0;
      for (int64_t o = 0; o < n; ++o) acc[o] += wt[o] * gy[o];
    }
  }
  for (int64_t o = 0; o < n; ++o) dt[w * Co + o0 + o] = acc[o];
}

template <typename A, int64_t kLen>
BSCONV_INLINE void ddw_block(const Geometry& g, const A* BSCONV_RESTRICT grow, const A* BSCONV_RESTRICT t_row,
                             const int64_t* BSCONV_RESTRICT wo_of_j, int64_t o0, int64_t len,
                             A* BSCONV_RESTRICT dd) {
  const int64_t Co = g.C_out;
  const int64_t n = kLen > 0 ? kLen : len;
  A acc[kLen > 0 ? kLen : kChunk<A>];
  for (int64_t o = 0; o < n; ++o) acc[o] = A(0);
  for (int64_t w = 0; w < g.W; ++w) {
    const int64_t wo = wo_of_j[w];
    if (wo < 0) continue;
    const A* BSCONV_RESTRICT gy = grow + wo * Co + o0;
    const A* BSCONV_RESTRICT t = t_row + w * Co + o0;
    for (int64_t o = 0; o < n; ++o) acc[o] += gy[o] * t[o];
  }
  for (int64_t o = 0; o < n; ++o) dd[o0 + o] += acc[o];
}

// For t row h of the strip: dt_row[W][C_out] = DW^T(grad_y) (when dt_row is not null) and, when ddw_acc is not
// null, ddw_acc[tap][C_out] += sum over the row of grad_y * t. G holds grad_y rows from g_lo on, pixel-major.
template <typename A>
BSCONV_INLINE void dt_row_impl(const Geometry& g, const A* BSCONV_RESTRICT G, int64_t g_lo,
                               const A* BSCONV_RESTRICT dwT, TapRows taps, A* BSCONV_RESTRICT dt_row,
                               const A* BSCONV_RESTRICT t_row, A* BSCONV_RESTRICT ddw_acc) {
  const int64_t Co = g.C_out;
  constexpr int64_t C = kChunk<A>;
  if (dt_row != nullptr) {
    for (int64_t w = 0; w < g.W; ++w) {
      int64_t o0 = 0;
      for (; o0 + C <= Co; o0 += C) dt_block<A, C>(g, G, g_lo, dwT, taps, w, o0, C, dt_row);
      if (o0 < Co) dt_block<A, 0>(g, G, g_lo, dwT, taps, w, o0, Co - o0, dt_row);
    }
  }
  if (ddw_acc != nullptr) {
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ho = taps.ho_of_i[i];
      if (ho < 0) continue;
      const A* grow = G + (ho - g_lo) * g.Wo * Co;
      for (int64_t j = 0; j < g.kw; ++j) {
        A* dd = ddw_acc + (i * g.kw + j) * Co;
        const int64_t* wo_of_j = taps.wo_of + j * g.W;
        int64_t o0 = 0;
        for (; o0 + C <= Co; o0 += C) ddw_block<A, C>(g, grow, t_row, wo_of_j, o0, C, dd);
        if (o0 < Co) ddw_block<A, 0>(g, grow, t_row, wo_of_j, o0, Co - o0, dd);
      }
    }
  }
}

BSCONV_CPU_CLONES void dt_row(const Geometry& g, const float* G, int64_t g_lo, const float* dwT, TapRows taps,
                              float* dt_row, const float* t_row, float* ddw_acc) {
  dt_row_impl<float>(g, G, g_lo, dwT, taps, dt_row, t_row, ddw_acc);
}

BSCONV_CPU_CLONES void dt_row(const Geometry& g, const double* G, int64_t g_lo, const double* dwT, TapRows taps,
                              double* dt_row, const double* t_row, double* ddw_acc) {
  dt_row_impl<double>(g, G, g_lo, dwT, taps, dt_row, t_row, ddw_acc);
}

// grad_y rows [lo, hi) of one image into G ([rows][Wo][C_out]).
template <typename T, typename A>
void load_grad_rows(const Geometry& g, const T* img, Strides4 s, int64_t lo, int64_t hi, A* G) {
  const int64_t Co = g.C_out;
  if (s.c <= s.w) {
    for (int64_t ho = lo; ho < hi; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const T* src = img + ho * s.h + wo * s.w;
        A* d = G + ((ho - lo) * g.Wo + wo) * Co;
        for (int64_t o = 0; o < Co; ++o) d[o] = static_cast<A>(src[o * s.c]);
      }
  } else {
    for (int64_t ho = lo; ho < hi; ++ho)
      for (int64_t o = 0; o < Co; ++o) {
        const T* src = img + o * s.c + ho * s.h;
        A* d = G + (ho - lo) * g.Wo * Co + o;
        for (int64_t wo = 0; wo < g.Wo; ++wo) d[wo * Co] = static_cast<A>(src[wo * s.w]);
      }
  }
}

// d_bias[o] = sum of grad_y over (n, ho, wo). Blocks of channels in parallel; inside a block a fixed order (with
// 16 interleaved partial sums along NCHW rows, so the adds pipeline), hence deterministic.
template <typename T>
void bias_grad(const Geometry& g, const T* gy, Strides4 s, T* dbias) {
  using A = acc_t<T>;
  constexpr int64_t kBlock = 64, kLanes = 16;
  at::parallel_for(0, detail::ceil_div(g.C_out, kBlock), 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t o0 = blk * kBlock, o1 = std::min(g.C_out, o0 + kBlock), nb = o1 - o0;
      A acc[kBlock] = {};
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
          const T* row = gy + n * s.n + ho * s.h + o0 * s.c;
          if (s.c <= s.w) {  // channels innermost
            if (s.c == 1) {
              for (int64_t wo = 0; wo < g.Wo; ++wo) {
                const T* px = row + wo * s.w;
                for (int64_t o = 0; o < nb; ++o) acc[o] += static_cast<A>(px[o]);
              }
            } else {
              for (int64_t wo = 0; wo < g.Wo; ++wo)
                for (int64_t o = 0; o < nb; ++o) acc[o] += static_cast<A>(row[wo * s.w + o * s.c]);
            }
          } else {
            for (int64_t o = 0; o < nb; ++o) {
              const T* r = row + o * s.c;
              A part[kLanes] = {};
              int64_t wo = 0;
              if (s.w == 1) {
                for (; wo + kLanes <= g.Wo; wo += kLanes)
                  for (int64_t l = 0; l < kLanes; ++l) part[l] += static_cast<A>(r[wo + l]);
              }
              for (; wo < g.Wo; ++wo) part[wo % kLanes] += static_cast<A>(r[wo * s.w]);
              A sum = A(0);
              for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
              acc[o] += sum;
            }
          }
        }
      for (int64_t o = 0; o < nb; ++o) dbias[o0 + o] = static_cast<T>(acc[o]);
    }
  });
}

template <typename T, typename A>
void scatter_rows(const Geometry& g, const A* buf, bool pixel_major, int64_t P, T* img, Strides4 s, int64_t h0,
                  int64_t h1) {
  const int64_t Ci = g.C_in;
  if (pixel_major) {
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = 0; w < g.W; ++w) {
        const A* src = buf + ((h - h0) * g.W + w) * Ci;
        T* d = img + h * s.h + w * s.w;
        for (int64_t c = 0; c < Ci; ++c) d[c * s.c] = static_cast<T>(src[c]);
      }
  } else {
    for (int64_t c = 0; c < Ci; ++c)
      for (int64_t h = h0; h < h1; ++h) {
        const A* src = buf + c * P + (h - h0) * g.W;
        T* d = img + c * s.c + h * s.h;
        for (int64_t w = 0; w < g.W; ++w) d[w * s.w] = static_cast<T>(src[w]);
      }
  }
}

template <typename T>
void zero_rows(const Geometry& g, T* img, Strides4 s, int64_t h0, int64_t h1) {
  for (int64_t c = 0; c < g.C_in; ++c)
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = 0; w < g.W; ++w) img[c * s.c + h * s.h + w * s.w] = T(0);
}

// dx rows [h0, h1) = dt pw: straight into dx when it has the buffer's layout and type, else through dxbuf.
template <typename T, typename A>
void dx_rows(const Geometry& g, const A* dt, const A* pwA, T* dx_img, Strides4 s, int64_t h0, int64_t h1,
             detail::Buffer<A>& dxbuf) {
  const int64_t P = (h1 - h0) * g.W, Ci = g.C_in, Co = g.C_out;
  const bool pixel_major = s.c <= s.w;
  A* dst = nullptr;
  int64_t ld = 0;
  bool direct = false;
  if constexpr (std::is_same<T, A>::value) {
    const bool even_rows = (s.h == g.W * s.w) || (h1 - h0 == 1);
    if (even_rows && pixel_major && s.c == 1 && s.w >= Ci) {
      dst = dx_img + h0 * s.h, ld = s.w, direct = true;
    } else if (even_rows && !pixel_major && s.w == 1 && s.c >= P) {
      dst = dx_img + h0 * s.h, ld = s.c, direct = true;
    }
  }
  if (!direct) {
    if (static_cast<int64_t>(dxbuf.size()) < P * Ci) dxbuf.resize(P * Ci);
    dst = dxbuf.data();
    ld = pixel_major ? Ci : P;
  }
  // dx (P x C_in) = dt (P x C_out) pw (C_out x C_in)
  detail::matmul<A>(P, Ci, Co, dt, Co, 1, pwA, Ci, 1, dst, pixel_major ? ld : 1, pixel_major ? 1 : ld, false);
  if (!direct) scatter_rows<T, A>(g, dst, pixel_major, P, dx_img, s, h0, h1);
}

}  // namespace

template <typename T>
void backward(const Geometry& g, const T* grad_y, Strides4 gys, const T* x, Strides4 xs, const T* pw, const T* dw,
              const T* mid_bias, T* dx, Strides4 dxs, T* dpw, T* ddw, T* dbias, T* dmid) {
  using A = acc_t<T>;
  if (dbias != nullptr) bias_grad<T>(g, grad_y, gys, dbias);
  const bool need_dt = dx != nullptr || dpw != nullptr || dmid != nullptr;
  const bool need_t = ddw != nullptr;
  if (!need_dt && !need_t) return;

  const detail::PackedWeights<T, A> wts(g, pw, dw, nullptr, mid_bias);
  const int64_t Co = g.C_out, Ci = g.C_in, K = g.kh * g.kw;

  // t rows per strip, within the cache budget: dt and t ([W][C_out] each), x and dx ([W][C_in]), grad_y rows.
  // Every strip streams the pointwise weight through three GEMMs (t, d_pw, dx), so where the weight outweighs the
  // cache budget the strips grow to the weight's size: a strip of a few pixels would make those GEMMs re-read (or
  // re-write) C_out x C_in values for a handful of rows each.
  // Strips are balanced: a last strip of one row would pay the same weight traffic for a fraction of the work.
  const int64_t per_row = g.W * (2 * Co + 2 * Ci) + detail::ceil_div(g.Wo * Co, g.stride_h);
  const int64_t budget = std::max<int64_t>(detail::kStripBytes, 2 * Co * Ci * static_cast<int64_t>(sizeof(A)));
  int64_t Rb = std::max<int64_t>(1, budget / (per_row * static_cast<int64_t>(sizeof(A))));
  Rb = std::min(Rb, g.H);
  Rb = detail::ceil_div(g.H, detail::ceil_div(g.H, Rb));
  const int64_t strips = detail::ceil_div(g.H, Rb), tasks = g.N * strips;

  // Slot layout of the weight-gradient partial sums: [d_pw (C_out x C_in) | d_dw (tap-major) | d_mid_bias].
  // One slot per thread: a slot costs a pass over its sums, and d_pw is the size of the pointwise weight. At most
  // 64 MiB of slots: wide layers on many cores get fewer slots, and as many threads at work.
  const int64_t off_ddw = dpw != nullptr ? Co * Ci : 0;
  const int64_t off_dmid = off_ddw + (ddw != nullptr ? K * Co : 0);
  const int64_t partial = off_dmid + (dmid != nullptr ? Co : 0);
  constexpr int64_t kPartialBudget = int64_t(64) << 20;
  const int64_t slot_cap = partial > 0 ? kPartialBudget / (partial * static_cast<int64_t>(sizeof(A))) : tasks;
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>({tasks, at::get_num_threads(), slot_cap}));
  // Each slot's sums start on a 64-byte boundary, like every other BLAS operand (see detail::AlignedAllocator).
  const int64_t stride = detail::ceil_div(partial, 64 / static_cast<int64_t>(sizeof(A))) * (64 / sizeof(A));
  // Kept by the calling thread across calls: fresh megabytes per call cost page faults on every call.
  detail::Scratch<A, 5> partials_s;
  A* const partials = partials_s.data(slots * stride);
  // With one slot of the output's type, d_pw is accumulated in place.
  const bool dpw_in_place = dpw != nullptr && slots == 1 && std::is_same<T, A>::value;

  // wo_of[j * W + w]: the output column whose tap j lands on input column w, or -1.
  std::vector<int64_t> wo_of(static_cast<size_t>(g.kw * g.W));
  for (int64_t j = 0; j < g.kw; ++j)
    for (int64_t w = 0; w < g.W; ++w) {
      const int64_t num_w = w + g.pad_w - j * g.dil_w;
      const bool valid = num_w >= 0 && num_w % g.stride_w == 0 && num_w / g.stride_w < g.Wo;
      wo_of[j * g.W + w] = valid ? num_w / g.stride_w : -1;
    }

  at::parallel_for(0, slots, 1, [&](int64_t sbegin, int64_t send) {
    detail::Scratch<A, 0> G_s;
    detail::Scratch<A, 1> xbuf_s;
    detail::Scratch<A, 2> tbuf_s;
    detail::Scratch<A, 3> dtbuf_s;
    detail::Scratch<A, 4> dxbuf_s;
    detail::Buffer<A>&G = G_s.get(), &xbuf = xbuf_s.get(), &tbuf = tbuf_s.get(), &dtbuf = dtbuf_s.get(),
                     &dxbuf = dxbuf_s.get();
    std::vector<int64_t> ho_of_i(static_cast<size_t>(g.kh));
    for (int64_t slot = sbegin; slot < send; ++slot) {
      A* part = partials + slot * stride;
      A* const part_dpw = dpw_in_place ? reinterpret_cast<A*>(dpw) : part;
      // d_pw is written by the slot's first GEMM (no zero fill of C_out x C_in sums); the small sums are zeroed.
      bool dpw_started = false;
      std::fill(part + off_ddw, part + partial, A(0));
      const int64_t t_begin = slot * tasks / slots, t_end = (slot + 1) * tasks / slots;
      for (int64_t task = t_begin; task < t_end; ++task) {
        const int64_t n = task / strips;
        const int64_t h0 = (task % strips) * Rb, h1 = std::min(g.H, h0 + Rb);
        const int64_t P = (h1 - h0) * g.W;
        // grad_y rows whose taps land in [h0, h1).
        const int64_t g_lo = std::max<int64_t>(0, detail::ceil_div(h0 + g.pad_h - (g.kh - 1) * g.dil_h, g.stride_h));
        const int64_t g_hi = std::min(g.Ho, detail::floor_div(h1 - 1 + g.pad_h, g.stride_h) + 1);
        if (g_lo >= g_hi) {  // no output reads these rows: dt is zero there
          if (dx != nullptr) zero_rows<T>(g, dx + n * dxs.n, dxs, h0, h1);
          continue;
        }
        if (static_cast<int64_t>(G.size()) < (g_hi - g_lo) * g.Wo * Co) G.resize((g_hi - g_lo) * g.Wo * Co);
        load_grad_rows<T, A>(g, grad_y + n * gys.n, gys, g_lo, g_hi, G.data());

        detail::RowsMatrix<A> X{nullptr, 0, true};
        if (need_t || dpw != nullptr) X = detail::rows_matrix<T, A>(x + n * xs.n, xs, h0, h1, g.W, Ci, xbuf);
        if (need_t) {
          if (static_cast<int64_t>(tbuf.size()) < P * Co) tbuf.resize(P * Co);
          detail::pointwise<A>(g, X, P, Co, wts.pw.data(), wts.mid_ptr(), tbuf.data());
        }
        if (need_dt && static_cast<int64_t>(dtbuf.size()) < P * Co) dtbuf.resize(P * Co);
        A* ddw_acc = ddw != nullptr ? part + off_ddw : nullptr;
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t num_h = h + g.pad_h - i * g.dil_h;  // = ho * stride_h for the row tap i came from
            const bool valid = num_h >= 0 && num_h % g.stride_h == 0 && num_h / g.stride_h < g.Ho;
            ho_of_i[i] = valid ? num_h / g.stride_h : -1;
          }
          const int64_t row = (h - h0) * g.W * Co;
          dt_row(g, G.data(), g_lo, wts.dwT.data(), TapRows{ho_of_i.data(), wo_of.data()},
                 need_dt ? dtbuf.data() + row : nullptr, need_t ? tbuf.data() + row : nullptr, ddw_acc);
        }
        if (!need_dt) continue;
        const A* dt = dtbuf.data();
        if (dmid != nullptr) {
          A* acc = part + off_dmid;
          for (int64_t p = 0; p < P; ++p)
            for (int64_t o = 0; o < Co; ++o) acc[o] += dt[p * Co + o];
        }
        if (dpw != nullptr) {
          // d_pw (C_out x C_in) += dt^T (C_out x P) X (P x C_in)
          const int64_t x_rs = X.pixel_major ? X.ld : 1, x_cs = X.pixel_major ? 1 : X.ld;
          detail::matmul<A>(Co, Ci, P, dt, 1, Co, X.data, x_rs, x_cs, part_dpw, Ci, 1, dpw_started);
          dpw_started = true;
        }
        if (dx != nullptr) dx_rows<T, A>(g, dt, wts.pw.data(), dx + n * dxs.n, dxs, h0, h1, dxbuf);
      }
      if (dpw != nullptr && !dpw_started) std::fill(part_dpw, part_dpw + Co * Ci, A(0));  // no grad_y reached it
    }
  });

  // Sum the slots into slot 0 in order (parallel over elements, so the order per element is fixed).
  if (slots > 1)
    at::parallel_for(0, partial, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        A sum = partials[e];
        for (int64_t s = 1; s < slots; ++s) sum += partials[s * stride + e];
        partials[e] = sum;
      }
    });
  const A* total = partials;
  if (dpw != nullptr && !dpw_in_place)
    for (int64_t e = 0; e < Co * Ci; ++e) dpw[e] = static_cast<T>(total[e]);
  if (ddw != nullptr)
    for (int64_t o = 0; o < Co; ++o)
      for (int64_t k = 0; k < K; ++k) ddw[o * K + k] = static_cast<T>(total[off_ddw + k * Co + o]);
  if (dmid != nullptr)
    for (int64_t o = 0; o < Co; ++o) dmid[o] = static_cast<T>(total[off_dmid + o]);
}

#define BSCONV_INSTANTIATE_BACKWARD(T)                                                                         \
  template void backward<T>(const Geometry&, const T*, Strides4, const T*, Strides4, const T*, const T*, const T*, \
                            T*, Strides4, T*, T*, T*, T*);
BSCONV_INSTANTIATE_BACKWARD(float)
BSCONV_INSTANTIATE_BACKWARD(double)
BSCONV_INSTANTIATE_BACKWARD(c10::BFloat16)
BSCONV_INSTANTIATE_BACKWARD(c10::Half)
#undef BSCONV_INSTANTIATE_BACKWARD

}  // namespace cpu
}  // namespace bsconv_fused
