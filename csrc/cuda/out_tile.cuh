// The output-tile scheme shared by the forward kernel and the backward's depthwise-weight kernel: one block owns
// image n, an output tile TOH x TOW and BN intermediate channels; it recomputes the intermediate t = PW(x) + mid_bias
// on the tile's input halo (IH x IW pixels) into fp32 shared memory, then reads the depthwise stencil from there.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <mutex>

#include "common.cuh"
#include "device.cuh"

namespace bsconv_fused {
namespace cuda {
namespace detail {

enum class OutTileUse : int { kForward = 0, kForwardStaged = 1, kWeightGrad = 2, kWeightGradNoGemm = 3 };

// Host-computed tiling and shared-memory layout (byte offsets into the dynamic shared memory).
struct OutTilePlan {
  int BN;
  int TOH, TOW, TOPIX;   // output tile
  int IH, IW, P, P_pad;  // input halo of the tile, P = IH*IW pixels, P_pad = P rounded up to 16
  int LDT;               // row length of the fp32 intermediate t_s[BN][LDT]
  int MCH, LDX, LDK;     // GEMM staging: rows per pass, x_s[kKC][LDX], w_s[BN][LDK]
  int tiles_h, tiles_w, n_cob;
  int64_t n_spatial;  // N * tiles_h * tiles_w
  int off_T, off_pix, off_dw, off_X, off_W, off_Y, off_base, off_M;
  int smem;
  bool gemm;
};

// Halo pixels beyond which a plan cannot fit any device's shared memory (the pixel table alone takes 8 bytes each);
// checked in 64-bit before anything is narrowed to int, so absurd dilation / padding cannot wrap around.
constexpr int64_t kMaxHaloPixels = int64_t(1) << 20;

// A plan whose smem is kNoFit does not fit (see pick_out_plan).
constexpr int kNoFit = 0x7fffffff;

inline OutTilePlan make_out_plan(const Geometry& g, int esz, int BN, OutTileUse use, int TOH, int TOW) {
  OutTilePlan p{};
  p.BN = BN;
  p.TOH = TOH;
  p.TOW = TOW;
  p.TOPIX = TOH * TOW;
  const int64_t IH = int64_t(TOH - 1) * g.stride_h + int64_t(g.kh - 1) * g.dil_h + 1;
  const int64_t IW = int64_t(TOW - 1) * g.stride_w + int64_t(g.kw - 1) * g.dil_w + 1;
  if (IH * IW > kMaxHaloPixels) {
    p.smem = kNoFit;
    return p;
  }
  p.IH = static_cast<int>(IH);
  p.IW = static_cast<int>(IW);
  p.P = p.IH * p.IW;
  p.P_pad = static_cast<int>(align_up(p.P, 16));
  p.LDT = p.P_pad + 4;  // a multiple of 4 (WMMA store) that shifts consecutive channel rows across banks
  p.MCH = std::min(p.P_pad, pass_rows(BN));
  p.LDX = p.MCH + 8;
  p.LDK = kKC + 8;
  p.tiles_h = static_cast<int>(div_up(g.Ho, TOH));
  p.tiles_w = static_cast<int>(div_up(g.Wo, TOW));
  p.n_cob = static_cast<int>(div_up(g.C_out, BN));
  p.n_spatial = g.N * p.tiles_h * p.tiles_w;
  p.gemm = use != OutTileUse::kWeightGradNoGemm;
  const int KK = g.kh * g.kw;
  RegionCarver smem(128);
  auto take = [&smem](size_t bytes) { return static_cast<int>(smem.take(bytes)); };
  p.off_T = take(p.gemm ? size_t(BN) * p.LDT * 4 : 0);
  p.off_pix = take(size_t(p.P) * 8);
  p.off_dw = take(size_t(BN) * KK * 4);
  // The GEMM staging buffers are dead once t_s is complete, so the output / grad_y staging reuses them.
  const size_t x_bytes = p.gemm ? align_up(size_t(kKC) * p.LDX * esz, 128) : 0;
  const size_t w_bytes = p.gemm ? size_t(BN) * p.LDK * esz : 0;
  size_t y_bytes = 0;
  if (use == OutTileUse::kForwardStaged) y_bytes = size_t(BN) * (p.TOPIX + 1) * 4;
  if (use == OutTileUse::kWeightGrad || use == OutTileUse::kWeightGradNoGemm) y_bytes = size_t(BN) * p.TOPIX * 4;
  const size_t region = std::max(x_bytes + w_bytes, y_bytes);
  p.off_X = take(region);
  p.off_W = p.off_X + static_cast<int>(x_bytes);
  p.off_Y = p.off_X;
  const bool wgrad = use == OutTileUse::kWeightGrad || use == OutTileUse::kWeightGradNoGemm;
  p.off_base = take(wgrad ? size_t(p.TOPIX) * 4 : 0);
  p.off_M = take(wgrad ? size_t(BN) * KK * 4 : 0);
  p.smem = static_cast<int>(smem.size);
  return p;
}

inline OutTilePlan pick_out_plan_within(const Geometry& g, int esz, int BN, OutTileUse use, int smem_limit,
                                        const DeviceLimits& d) {
  const int64_t slots = std::max<int64_t>(1, int64_t(d.sm_count) * 2);  // >= 1 even for an unqueryable device
  const int cand_h[] = {1, 2, 4, 8, 16, 32};
  const int cand_w[] = {1, 2, 4, 8, 16, 32, 64};
  OutTilePlan best{};
  double best_cost = -1.0;
  auto consider = [&](int th, int tw) {
    th = static_cast<int>(std::min<int64_t>(th, g.Ho));
    tw = static_cast<int>(std::min<int64_t>(tw, g.Wo));
    if (th * tw > 1024) return;
    OutTilePlan p = make_out_plan(g, esz, BN, use, th, tw);
    if (p.smem > smem_limit) return;
    const int64_t blocks = p.n_spatial * p.n_cob;
    const double waves = double(div_up(blocks, slots));
    const double passes = double(div_up(p.P_pad, pass_rows(BN)));
    const double cost = waves * (double(p.P_pad) + 64.0 * passes + 0.25 * p.TOPIX);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = p;
    }
  };
  for (int th : cand_h)
    for (int tw : cand_w) consider(th, tw);
  // Small maps: the whole plane (or its width) in one tile, the halo being just the padding.
  if (g.Ho <= 32) consider(static_cast<int>(g.Ho), 16);
  if (g.Wo <= 64) {
    consider(1, static_cast<int>(g.Wo));
    consider(4, static_cast<int>(g.Wo));
    consider(8, static_cast<int>(g.Wo));
  }
  if (best_cost < 0) best.smem = 0;
  return best;
}

// Pick the output tile minimising a simple time model: waves of blocks (two resident per SM) times the per-block
// GEMM rows (halo pixels plus a fixed overhead). Halo recompute favours big tiles, small maps and N=1 favour more
// blocks. Tiles that let two blocks share an SM are preferred; a larger one is taken only when nothing else fits.
// Returns a plan with smem = 0 if nothing fits in shared memory at all (absurd dilations).
inline OutTilePlan pick_out_plan_uncached(const Geometry& g, int esz, int BN, OutTileUse use, const DeviceLimits& d) {
  const int two_per_sm = std::min(d.smem_optin, d.smem_per_sm / 2 - 1024);
  const OutTilePlan two = pick_out_plan_within(g, esz, BN, use, two_per_sm, d);
  return two.smem != 0 ? two : pick_out_plan_within(g, esz, BN, use, d.smem_optin, d);
}

// Plans are cached per (geometry, element size, channel block, use, device): picking one evaluates ~50 candidate
// tiles, and a training step asks for the same few layers over and over (forward, workspace size, backward).
inline OutTilePlan pick_out_plan(const Geometry& g, int esz, int BN, OutTileUse use, const DeviceLimits& d) {
  using Key = std::array<int64_t, 19>;
  static std::mutex mu;
  static std::map<Key, OutTilePlan> cache;
  const Key key{g.N,        g.C_in,     g.C_out,  g.H,      g.W,     g.Ho, g.Wo, g.kh,          g.kw,   g.stride_h,
                g.stride_w, g.pad_h,    g.pad_w,  g.dil_h,  g.dil_w, esz,  BN,   int64_t(use), d.index};
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const OutTilePlan p = pick_out_plan_uncached(g, esz, BN, use, d);
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() >= 4096) cache.clear();  // bounded: a sweep over many shapes must not grow it forever
  cache.emplace(key, p);
  return p;
}

// Grid size of an output-tile plan; the launchers refuse more than 2^31 - 1 blocks.
inline int64_t out_plan_blocks(const OutTilePlan& p) { return p.n_spatial * p.n_cob; }

// Per-block view of the plan's shared memory.
struct OutTileSmem {
  float* t;         // [BN][LDT] fp32 intermediate on the halo
  int64_t* pix;     // [P] element offset of halo pixel p in x for image n (channel 0), or -1 outside the image
  float* dw;        // [BN][KK]
  void* x;          // [kKC][LDX] staged x chunk (A, column-major: pixel fastest)
  void* w;          // [BN][LDK] staged pw chunk (B, column-major: input channel fastest)
  float* y;         // staging for y (forward) or grad_y (weight grad)
  int* base;        // [TOPIX] halo index of each output pixel's top-left tap (weight grad)
  float* m;         // [BN][KK] scratch (weight grad)
};

__device__ __forceinline__ OutTileSmem out_tile_smem(const OutTilePlan& p, unsigned char* s) {
  OutTileSmem r;
  r.t = reinterpret_cast<float*>(s + p.off_T);
  r.pix = reinterpret_cast<int64_t*>(s + p.off_pix);
  r.dw = reinterpret_cast<float*>(s + p.off_dw);
  r.x = s + p.off_X;
  r.w = s + p.off_W;
  r.y = reinterpret_cast<float*>(s + p.off_Y);
  r.base = reinterpret_cast<int*>(s + p.off_base);
  r.m = reinterpret_cast<float*>(s + p.off_M);
  return r;
}

// Block coordinates: the channel block varies fastest so that the blocks sharing one x halo run together (L2 reuse).
struct OutTileCoord {
  int64_t n, s;  // image, spatial tile index (0 .. n_spatial-1)
  int oh0, ow0, ih0, iw0, o0;
};

__device__ __forceinline__ OutTileCoord out_tile_coord(const OutTilePlan& p, const Geometry& g) {
  OutTileCoord c;
  const int64_t b = blockIdx.x;
  c.o0 = static_cast<int>(b % p.n_cob) * p.BN;
  c.s = b / p.n_cob;
  const int tw = static_cast<int>(c.s % p.tiles_w);
  const int64_t r = c.s / p.tiles_w;
  const int th = static_cast<int>(r % p.tiles_h);
  c.n = r / p.tiles_h;
  c.oh0 = th * p.TOH;
  c.ow0 = tw * p.TOW;
  c.ih0 = c.oh0 * g.stride_h - g.pad_h;
  c.iw0 = c.ow0 * g.stride_w - g.pad_w;
  return c;
}

// Fills sm.pix and sm.dw (the depthwise weights of this channel block, fp32, zero past C_out).
template <typename T>
__device__ void out_tile_prologue(const OutTilePlan& p, const Geometry& g, const OutTileCoord& c, Strides4 xs,
                                  const T* __restrict__ dw, const OutTileSmem& sm) {
  for (int q = threadIdx.x; q < p.P; q += kThreads) {
    const int r = q / p.IW;
    const int64_t ih = int64_t(c.ih0) + r;
    const int64_t iw = int64_t(c.iw0) + (q - r * p.IW);
    const bool in = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
    sm.pix[q] = in ? c.n * xs.n + ih * xs.h + iw * xs.w : int64_t(-1);
  }
  const int KK = g.kh * g.kw;
  const int64_t first = int64_t(c.o0) * KK;
  const int64_t total = g.C_out * KK;
  for (int e = threadIdx.x; e < p.BN * KK; e += kThreads) {
    sm.dw[e] = first + e < total ? to_f(dw[first + e]) : 0.0f;
  }
}

// Pixels per warp and batch of the channels_last x staging: kStageBatch loads in flight per thread.
constexpr int kStageBatch = 8;

// t_s[o][q] = sum_i pw[o0+o, i] * x[n, i, halo q] (+ mid_bias[o0+o] where q is inside the image). Needs sm.pix.
// Ends with a __syncthreads(), so t_s is ready for every thread.
template <typename T, int BN, bool TC>
__device__ void out_tile_intermediate(const OutTilePlan& p, const Geometry& g, const OutTileCoord& c,
                                      const T* __restrict__ x, Strides4 xs, const T* __restrict__ pw,
                                      const T* __restrict__ mid_bias, const OutTileSmem& sm) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  T* xsm = static_cast<T*>(sm.x);
  T* wsm = static_cast<T*>(sm.w);
  // channels_last (channel stride below the pixel stride): a warp reads 32 consecutive channels of one pixel;
  // otherwise a warp reads consecutive pixels of one channel.
  const bool x_cl = xs.c < xs.w;
  // Halo rows above or below the image hold zeros (the depthwise padding): the GEMM runs only over the 16-aligned
  // pixel range of the rows that intersect the image (a 7x7 plane with padding 1: 80 of 96 rows) and the rest of
  // t_s is zero-filled.
  const int r_lo = c.ih0 < 0 ? -c.ih0 : 0;
  const int64_t rows_left = g.H - c.ih0;
  const int r_hi = rows_left < p.IH ? static_cast<int>(rows_left) : p.IH;
  const int m_begin = r_hi > r_lo ? (r_lo * p.IW) / 16 * 16 : 0;
  const int m_end = r_hi > r_lo ? min(p.P_pad, (r_hi * p.IW + 15) / 16 * 16) : 0;
  for (int o = warp; o < BN; o += kWarps) {
    for (int q = lane; q < p.P; q += 32) {
      if (q < m_begin || q >= m_end) sm.t[o * p.LDT + q] = 0.0f;
    }
  }
  for (int m0 = m_begin; m0 < m_end; m0 += pass_rows(BN)) {
    const int mc = min(pass_rows(BN), m_end - m0);
    const int mt_count = mc / 16;
    BlockMma<T, BN, false, false, TC> mma;
    for (int64_t k0 = 0; k0 < g.C_in; k0 += kKC) {
      __syncthreads();  // the previous chunk's readers are done with x_s / w_s
      // Loads first, stores after: every load of a batch is in flight at once (a load -> store chain per element
      // would leave one load per warp in flight; static review P1). Out-of-range elements load nothing and stage 0.
      if (x_cl) {
        const int64_t ci = k0 + lane;  // kKC == 32 == warp size
        const bool ci_ok = ci < g.C_in;
        for (int mb = 0; mb < mc; mb += kWarps * kStageBatch) {
          T v[kStageBatch];
#pragma unroll
          for (int j = 0; j < kStageBatch; ++j) {
            const int mm = mb + warp + kWarps * j;
            const int q = m0 + mm;
            const int64_t off = (mm < mc && q < p.P && ci_ok) ? sm.pix[q] : int64_t(-1);
            v[j] = off >= 0 ? x[off + ci * xs.c] : from_f<T>(0.0f);
          }
#pragma unroll
          for (int j = 0; j < kStageBatch; ++j) {
            const int mm = mb + warp + kWarps * j;
            if (mm < mc) xsm[lane * p.LDX + mm] = v[j];
          }
        }
      } else {
        // A warp covers pass_rows(BN) / 32 pixel groups of 32 for each of its kKC / kWarps channels.
        constexpr int kRowIters = pass_rows(BN) / 32;
        constexpr int kChanIters = kKC / kWarps;
#pragma unroll
        for (int i = 0; i < kChanIters; ++i) {
          const int kk = warp + kWarps * i;
          const int64_t ci = k0 + kk;
          const int64_t coff = ci * xs.c;
          T v[kRowIters];
#pragma unroll
          for (int j = 0; j < kRowIters; ++j) {
            const int mm = lane + 32 * j;
            const int q = m0 + mm;
            const int64_t off = (mm < mc && q < p.P && ci < g.C_in) ? sm.pix[q] : int64_t(-1);
            v[j] = off >= 0 ? x[off + coff] : from_f<T>(0.0f);
          }
#pragma unroll
          for (int j = 0; j < kRowIters; ++j) {
            const int mm = lane + 32 * j;
            if (mm < mc) xsm[kk * p.LDX + mm] = v[j];
          }
        }
      }
      for (int o = warp; o < BN; o += kWarps) {
        const int64_t co = int64_t(c.o0) + o;
        const int64_t ci = k0 + lane;
        T v = from_f<T>(0.0f);
        if (co < g.C_out && ci < g.C_in) v = pw[co * g.C_in + ci];
        wsm[o * p.LDK + lane] = v;
      }
      __syncthreads();
      mma.step(xsm, p.LDX, wsm, p.LDK, mt_count);
    }
    mma.template store<true>(sm.t + m0, p.LDT, mt_count);
  }
  __syncthreads();
  if (mid_bias != nullptr) {
    for (int o = warp; o < BN; o += kWarps) {
      const int64_t co = int64_t(c.o0) + o;
      const float mb = co < g.C_out ? to_f(mid_bias[co]) : 0.0f;
      for (int q = lane; q < p.P; q += 32) {
        if (sm.pix[q] >= 0) sm.t[o * p.LDT + q] += mb;
      }
    }
    __syncthreads();
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace bsconv_fused
