// Fused backward. Three kernels, none of which writes the intermediate t or its gradient dt to device memory:
//   dx_kernel     input-resolution tiles: dt = DW^T(grad_y) on chip per chunk of intermediate channels, then
//                 dx = dt . pw on tensor cores.
//   dpw_kernel    (output-channel block, input-channel block, pixel split): dpw += dt^T x over its pixels.
//   wgrad_kernel  output tiles as in the forward: recompute t on the halo, then ddw, dbias, dmid.
// Reductions over pixels go to per-block partial sums in the workspace (reduced in a fixed order: deterministic) or
// to fp32 atomics on zeroed outputs. See README.md.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "bsconv_cuda.h"
#include "common.cuh"
#include "device.cuh"
#include "out_tile.cuh"

namespace bsconv_fused {
namespace cuda {
namespace detail {
namespace {

// dt[n, o, qh, qw] = sum over taps (a, b) of dw[o, a, b] * grad_y[n, o, ph, pw] where ph * stride_h = qh + pad_h -
// a * dil_h (and likewise for w) lands on the output grid.
//
// Phase decomposition, so that the tap loop has no division and no bounds branch: along one axis the taps a that
// reach input position q are an arithmetic progression a = a0 + i * sa (sa = stride / gcd(stride, dil)), and their
// output index falls by dp = dil / gcd(stride, dil) per step. tap_run finds a0, its output index and the count
// once per pixel (a few divisions, in the pixel-table prologue); dt_value then walks the run.
struct TapSteps {
  int sa, dph;  // rows: tap step, output-row step
  int sb, dpw;  // columns
};

inline int gcd_int(int a, int b) {
  while (b != 0) {
    const int t = a % b;
    a = b;
    b = t;
  }
  return a;
}

inline TapSteps tap_steps(const Geometry& g) {
  const int gh = gcd_int(g.stride_h, g.dil_h);
  const int gw = gcd_int(g.stride_w, g.dil_w);
  return {g.stride_h / gh, g.dil_h / gh, g.stride_w / gw, g.dil_w / gw};
}

struct TapRun {
  int a0, p0, count;  // first tap, its output index, number of taps (0: none)
};

// Taps of one axis reaching input position q (kernel size k, padding, dilation, stride, output size out).
__device__ __forceinline__ TapRun tap_run(int q, int pad, int k, int dil, int stride, int out, int step, int dp) {
  TapRun t{0, 0, 0};
  const int r0 = q + pad;
  int a0 = 0;
  while (a0 < step && a0 < k && (r0 - a0 * dil) % stride != 0) ++a0;  // the residues repeat after `step` taps
  if (a0 >= step || a0 >= k || r0 - a0 * dil < 0) return t;
  int p0 = (r0 - a0 * dil) / stride;
  if (p0 >= out) {  // skip the taps whose output index lies past the grid
    const int skip = (p0 - out) / dp + 1;
    a0 += skip * step;
    p0 -= skip * dp;
  }
  if (a0 >= k || p0 < 0) return t;
  t.a0 = a0;
  t.p0 = p0;
  t.count = min((k - 1 - a0) / step + 1, p0 / dp + 1);
  return t;
}

// Per-pixel tap runs in shared memory: six int arrays of `len` entries each.
struct TapTable {
  int* ha;
  int* hp;
  int* hc;
  int* wa;
  int* wp;
  int* wc;
  __device__ __forceinline__ TapTable(int* base, int len)
      : ha(base), hp(base + len), hc(base + 2 * len), wa(base + 3 * len), wp(base + 4 * len), wc(base + 5 * len) {}
  // qh < 0: no taps (a padding pixel of the tile).
  __device__ __forceinline__ void set(int m, const Geometry& g, const TapSteps& st, int qh, int qw) const {
    const TapRun h = qh < 0 ? TapRun{0, 0, 0}
                            : tap_run(qh, g.pad_h, g.kh, g.dil_h, g.stride_h, static_cast<int>(g.Ho), st.sa, st.dph);
    const TapRun w = qh < 0 ? TapRun{0, 0, 0}
                            : tap_run(qw, g.pad_w, g.kw, g.dil_w, g.stride_w, static_cast<int>(g.Wo), st.sb, st.dpw);
    ha[m] = h.a0, hp[m] = h.p0, hc[m] = h.count;
    wa[m] = w.a0, wp[m] = w.p0, wc[m] = w.count;
  }
};

// dt at pixel m of a TapTable for one channel: gy(ph, pw) reads grad_y[n, o]; wrow is dw[o] in fp32.
template <typename GyAt>
__device__ __forceinline__ float dt_value(const Geometry& g, const TapSteps& st, const GyAt& gy, const float* wrow,
                                          const TapTable& tt, int m) {
  const int hc = tt.hc[m], wc = tt.wc[m], pw0 = tt.wp[m];
  const float* wr = wrow + tt.ha[m] * g.kw + tt.wa[m];
  const int wr_step = st.sa * g.kw;
  float acc = 0.0f;
#pragma unroll 1
  for (int i = 0, ph = tt.hp[m]; i < hc; ++i, ph -= st.dph, wr += wr_step) {
#pragma unroll 1
    for (int j = 0; j < wc; ++j) acc = fmaf(wr[j * st.sb], gy(ph, pw0 - j * st.dpw), acc);
  }
  return acc;
}

// grad_y[n, o] read from device memory.
template <typename T>
struct GyGlobal {
  const T* p;  // grad_y + n * gys.n + o * gys.c
  int64_t sh, sw;
  __device__ __forceinline__ float operator()(int ph, int pw) const { return to_f(p[ph * sh + pw * sw]); }
};

// grad_y[n, o] read from the block's staged window (rows ph0.., columns pw0.., row length ld).
struct GySmem {
  const float* p;
  int ph0, pw0, ld;
  __device__ __forceinline__ float operator()(int ph, int pw) const { return p[(ph - ph0) * ld + (pw - pw0)]; }
};

// ---------------------------------------------------------------------------------------------------------------
// dx
struct DxPlan {
  int BN;
  int TIH, TIW, MQ, MQ_pad;  // input tile and its pixel count (GEMM M)
  int LDQ, LDW, LDC;         // dt_s[kKC][LDQ], w_s[kKC][LDW], c_s[BN][LDC]
  int tiles_h, tiles_w, n_cib;
  int64_t blocks;
  // grad_y window of one tile: at most GHm x GWm output pixels feed its dt; staged in shared memory per chunk of
  // kKC channels when it fits (stage_gy), else read from device memory tap by tap.
  int GHm, GWm, GP;  // GP: channel plane stride of the window, odd so channel-fastest writes spread over banks
  bool stage_gy;
  TapSteps steps;
  int off_dt, off_w, off_c, off_dw, off_q, off_g;
  int smem;
};

// Budget for the staged grad_y window (fp32, kKC channels): 3x3 stride 1 on a 4x32 tile takes 26 KiB.
constexpr size_t kGyStageBytes = 48 * 1024;

// Rows of the dx tile: TF32 with BN = 32 holds 128 rows (256 would spill on sm_80 next to the dt stencil).
__host__ __device__ constexpr int dx_rows(int esz, int BN) { return esz == 4 && BN == 32 ? 128 : pass_rows(BN); }

inline DxPlan make_dx_plan(const Geometry& g, int esz, const DeviceLimits& d) {
  DxPlan p{};
  p.BN = pick_block_n(g.C_in);
  const int rows = dx_rows(esz, p.BN);
  p.TIW = static_cast<int>(std::min<int64_t>(g.W, 32));
  p.TIH = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(g.H, rows / p.TIW)));
  // Few blocks (small maps, N=1): thinner tiles so that the SMs have work.
  const int64_t slots = int64_t(d.sm_count) * 2;
  while (p.TIH > 1 && g.N * div_up(g.H, p.TIH) * div_up(g.W, p.TIW) * div_up(g.C_in, p.BN) < slots) p.TIH /= 2;
  p.MQ = p.TIH * p.TIW;
  p.MQ_pad = static_cast<int>(align_up(p.MQ, 16));
  p.LDQ = p.MQ_pad + 8;
  p.LDW = p.BN + 8;
  p.LDC = p.MQ_pad + 4;
  p.tiles_h = static_cast<int>(div_up(g.H, p.TIH));
  p.tiles_w = static_cast<int>(div_up(g.W, p.TIW));
  p.n_cib = static_cast<int>(div_up(g.C_in, p.BN));
  p.blocks = g.N * p.tiles_h * p.tiles_w * p.n_cib;
  const int KK = g.kh * g.kw;
  RegionCarver smem(128);
  auto take = [&smem](size_t bytes) { return static_cast<int>(smem.take(bytes)); };
  // The fp32 result tile c_s reuses the staging buffers once the last GEMM step is done.
  const size_t dt_bytes = align_up(size_t(kKC) * p.LDQ * esz, 128);
  const size_t w_bytes = size_t(kKC) * p.LDW * esz;
  const size_t c_bytes = size_t(p.BN) * p.LDC * 4;
  p.off_dt = take(std::max(dt_bytes + w_bytes, c_bytes));
  p.off_w = p.off_dt + static_cast<int>(dt_bytes);
  p.off_c = p.off_dt;
  p.off_dw = take(size_t(kKC) * KK * 4);
  p.steps = tap_steps(g);
  p.off_q = take(size_t(p.MQ_pad) * 8 * 4);  // qh, qw and the TapTable
  // 64-bit: a huge dilation makes the window huge (then it is simply not staged).
  const int64_t GHm = (p.TIH - 1 + int64_t(g.kh - 1) * g.dil_h) / g.stride_h + 1;
  const int64_t GWm = (p.TIW - 1 + int64_t(g.kw - 1) * g.dil_w) / g.stride_w + 1;
  const int64_t g_bytes = int64_t(kKC) * ((GHm * GWm) | 1) * 4;
  p.stage_gy = g_bytes <= int64_t(kGyStageBytes);
  p.GHm = p.stage_gy ? static_cast<int>(GHm) : 0;
  p.GWm = p.stage_gy ? static_cast<int>(GWm) : 0;
  p.GP = p.stage_gy ? (p.GHm * p.GWm) | 1 : 0;
  p.off_g = take(p.stage_gy ? size_t(g_bytes) : 0);
  p.smem = static_cast<int>(smem.size);
  return p;
}

// First and last output index (clipped to [0, out)) whose grad_y reaches input positions [q0, q0 + len) through
// some tap; empty when last < first.
__device__ __forceinline__ void gy_window(int q0, int len, int k, int pad, int dil, int stride, int out, int& first,
                                          int& last) {
  const int lo = q0 + pad - (k - 1) * dil;
  first = lo <= 0 ? 0 : (lo + stride - 1) / stride;
  last = min(out - 1, (q0 + len - 1 + pad) / stride);
}

template <typename T>
struct DxArgs {
  Geometry g;
  DxPlan p;
  const T* gy;
  Strides4 gys;
  const T* pw;
  const T* dw;
  T* dx;
  Strides4 dxs;
};

template <typename T, int BN, bool TC>
__global__ void __launch_bounds__(kThreads, 2) dx_kernel(const DxArgs<T> a) {
#if BSCONV_ARCH_OK
  extern __shared__ __align__(128) unsigned char smem[];
  const Geometry& g = a.g;
  const DxPlan& p = a.p;
  T* dt_s = reinterpret_cast<T*>(smem + p.off_dt);
  T* w_s = reinterpret_cast<T*>(smem + p.off_w);
  float* c_s = reinterpret_cast<float*>(smem + p.off_c);
  float* dw_s = reinterpret_cast<float*>(smem + p.off_dw);
  int* qh_s = reinterpret_cast<int*>(smem + p.off_q);
  int* qw_s = qh_s + p.MQ_pad;
  const TapTable taps(qw_s + p.MQ_pad, p.MQ_pad);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int KK = g.kh * g.kw;

  int64_t b = blockIdx.x;
  const int i0 = static_cast<int>(b % p.n_cib) * BN;
  b /= p.n_cib;
  const int tw = static_cast<int>(b % p.tiles_w);
  b /= p.tiles_w;
  const int th = static_cast<int>(b % p.tiles_h);
  const int64_t n = b / p.tiles_h;
  for (int m = threadIdx.x; m < p.MQ_pad; m += kThreads) {
    const int r = m / p.TIW;
    const int qh = th * p.TIH + r;
    const int qw = tw * p.TIW + (m - r * p.TIW);
    const bool valid = m < p.MQ && qh < g.H && qw < g.W;
    qh_s[m] = valid ? qh : -1;
    qw_s[m] = qw;
    taps.set(m, g, p.steps, valid ? qh : -1, qw);
  }
  const int mt_count = p.MQ_pad / 16;
  const bool gy_cl = a.gys.c < a.gys.w;
  float* g_s = reinterpret_cast<float*>(smem + p.off_g);
  int ph0, ph1, pw0, pw1;
  gy_window(th * p.TIH, p.TIH, g.kh, g.pad_h, g.dil_h, g.stride_h, static_cast<int>(g.Ho), ph0, ph1);
  gy_window(tw * p.TIW, p.TIW, g.kw, g.pad_w, g.dil_w, g.stride_w, static_cast<int>(g.Wo), pw0, pw1);
  const int gh = max(0, ph1 - ph0 + 1);
  const int gw = max(0, pw1 - pw0 + 1);
  const int g_plane = p.GP;
  BlockMma<T, BN, false, true, TC, dx_rows(sizeof(T), BN)> mma;
  for (int64_t oc0 = 0; oc0 < g.C_out; oc0 += kKC) {
    __syncthreads();  // previous chunk's GEMM is done with dt_s / w_s / dw_s
    {
      const int64_t first = oc0 * KK;
      const int64_t total = g.C_out * KK;
      for (int e = threadIdx.x; e < kKC * KK; e += kThreads) dw_s[e] = first + e < total ? to_f(a.dw[first + e]) : 0.0f;
    }
    for (int k = warp; k < kKC; k += kWarps) {
      const int64_t o = oc0 + k;
      for (int nn = lane; nn < BN; nn += 32) {
        const int64_t i = int64_t(i0) + nn;
        T v = from_f<T>(0.0f);
        if (o < g.C_out && i < g.C_in) v = a.pw[o * g.C_in + i];
        w_s[k * p.LDW + nn] = v;
      }
    }
    if (p.stage_gy) {
      if (gy_cl) {
        for (int e = warp; e < gh * gw; e += kWarps) {
          const int r = e / gw;
          const int64_t off = n * a.gys.n + int64_t(ph0 + r) * a.gys.h + int64_t(pw0 + e - r * gw) * a.gys.w;
          const int64_t o = oc0 + lane;  // kKC == 32
          g_s[lane * g_plane + e] = o < g.C_out ? to_f(a.gy[off + o * a.gys.c]) : 0.0f;
        }
      } else {
        for (int k = warp; k < kKC; k += kWarps) {
          const int64_t o = oc0 + k;
          if (o >= g.C_out) break;
          const T* gy = a.gy + n * a.gys.n + o * a.gys.c;
          for (int e = lane; e < gh * gw; e += 32) {
            const int r = e / gw;
            g_s[k * g_plane + e] = to_f(gy[int64_t(ph0 + r) * a.gys.h + int64_t(pw0 + e - r * gw) * a.gys.w]);
          }
        }
      }
    }
    __syncthreads();
    // dt for intermediate channel oc0 + k at tile pixel m, from the staged window or from device memory.
    auto dt_at = [&](int k, int m) -> float {
      if (oc0 + k >= g.C_out) return 0.0f;
      if (p.stage_gy) return dt_value(g, p.steps, GySmem{g_s + k * g_plane, ph0, pw0, gw}, dw_s + k * KK, taps, m);
      return dt_value(g, p.steps, GyGlobal<T>{a.gy + n * a.gys.n + (oc0 + k) * a.gys.c, a.gys.h, a.gys.w},
                      dw_s + k * KK, taps, m);
    };
    if (gy_cl && !p.stage_gy) {
      for (int m = warp; m < p.MQ_pad; m += kWarps) dt_s[lane * p.LDQ + m] = from_f<T>(dt_at(lane, m));
    } else {
      for (int k = warp; k < kKC; k += kWarps) {
        for (int m = lane; m < p.MQ_pad; m += 32) dt_s[k * p.LDQ + m] = from_f<T>(dt_at(k, m));
      }
    }
    __syncthreads();
    mma.step(dt_s, p.LDQ, w_s, p.LDW, mt_count);
  }
  __syncthreads();
  mma.template store<true>(c_s, p.LDC, mt_count);
  __syncthreads();
  if (a.dxs.c < a.dxs.w) {
    for (int m = warp; m < p.MQ; m += kWarps) {
      const int qh = qh_s[m];
      if (qh < 0) continue;
      const int64_t base = n * a.dxs.n + int64_t(qh) * a.dxs.h + int64_t(qw_s[m]) * a.dxs.w;
      for (int i = lane; i < BN; i += 32) {
        if (i0 + i < g.C_in) a.dx[base + (i0 + i) * a.dxs.c] = from_f<T>(c_s[i * p.LDC + m]);
      }
    }
  } else {
    for (int i = warp; i < BN; i += kWarps) {
      if (i0 + i >= g.C_in) break;
      const int64_t base = n * a.dxs.n + (i0 + i) * a.dxs.c;
      for (int m = lane; m < p.MQ; m += 32) {
        const int qh = qh_s[m];
        if (qh >= 0) a.dx[base + int64_t(qh) * a.dxs.h + int64_t(qw_s[m]) * a.dxs.w] = from_f<T>(c_s[i * p.LDC + m]);
      }
    }
  }
#endif  // BSCONV_ARCH_OK
}

// ---------------------------------------------------------------------------------------------------------------
// dpw
struct DpwPlan {
  int BN, BM;  // input-channel block (GEMM N, template), output-channel block (GEMM M, <= 64)
  int n_ob, n_ib;
  int64_t splits, chunks;  // pixel splits (blocks along K), kKC-pixel chunks in total
  int LDA, LDB, LDC;
  TapSteps steps;
  int off_a, off_b, off_c, off_dw, off_q;
  int smem;
};

constexpr int kDpwBM = 64;

inline DpwPlan make_dpw_plan(const Geometry& g, int esz) {
  DpwPlan p{};
  p.BN = pick_block_n(g.C_in);
  p.BM = static_cast<int>(std::min<int64_t>(kDpwBM, align_up(g.C_out, 16)));
  p.n_ob = static_cast<int>(div_up(g.C_out, p.BM));
  p.n_ib = static_cast<int>(div_up(g.C_in, p.BN));
  p.chunks = div_up(g.N * g.H * g.W, kKC);
  // About 1024 blocks: enough to fill any current GPU several times over, few enough that the deterministic
  // partials (splits x C_out x C_in fp32) stay small next to the activations.
  const int64_t tiles = int64_t(p.n_ob) * p.n_ib;
  p.splits = std::max<int64_t>(1, std::min<int64_t>(p.chunks, div_up(1024, tiles)));
  p.LDA = kKC + 8;
  p.LDB = kKC + 8;
  p.LDC = p.BN + 4;
  const int KK = g.kh * g.kw;
  RegionCarver smem(128);
  auto take = [&smem](size_t bytes) { return static_cast<int>(smem.take(bytes)); };
  const size_t a_bytes = align_up(size_t(kDpwBM) * p.LDA * esz, 128);
  const size_t b_bytes = size_t(p.BN) * p.LDB * esz;
  const size_t c_bytes = size_t(kDpwBM) * p.LDC * 4;
  p.off_a = take(std::max(a_bytes + b_bytes, c_bytes));
  p.off_b = p.off_a + static_cast<int>(a_bytes);
  p.off_c = p.off_a;
  p.off_dw = take(size_t(kDpwBM) * KK * 4);
  p.steps = tap_steps(g);
  p.off_q = take(size_t(kKC) * (8 + 4 + 4 + 6 * 4));  // n, qh, qw and the TapTable
  p.smem = static_cast<int>(smem.size);
  return p;
}

template <typename T>
struct DpwArgs {
  Geometry g;
  DpwPlan p;
  const T* gy;
  Strides4 gys;
  const T* x;
  Strides4 xs;
  const T* dw;
  float* out;  // deterministic: partials [splits][C_out][C_in]; else dpw itself (atomics)
  bool atomic;
};

template <typename T, int BN, bool TC>
__global__ void __launch_bounds__(kThreads, 2) dpw_kernel(const DpwArgs<T> a) {
#if BSCONV_ARCH_OK
  extern __shared__ __align__(128) unsigned char smem[];
  const Geometry& g = a.g;
  const DpwPlan& p = a.p;
  T* a_s = reinterpret_cast<T*>(smem + p.off_a);  // dt[o][q]
  T* b_s = reinterpret_cast<T*>(smem + p.off_b);  // x[i][q]
  float* c_s = reinterpret_cast<float*>(smem + p.off_c);
  float* dw_s = reinterpret_cast<float*>(smem + p.off_dw);
  int64_t* qn_s = reinterpret_cast<int64_t*>(smem + p.off_q);
  int* qh_s = reinterpret_cast<int*>(qn_s + kKC);
  int* qw_s = qh_s + kKC;
  const TapTable taps(qw_s + kKC, kKC);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int KK = g.kh * g.kw;

  int64_t b = blockIdx.x;
  const int i0 = static_cast<int>(b % p.n_ib) * BN;
  b /= p.n_ib;
  const int o0 = static_cast<int>(b % p.n_ob) * p.BM;
  const int64_t split = b / p.n_ob;
  const int64_t c_begin = split * p.chunks / p.splits;
  const int64_t c_end = (split + 1) * p.chunks / p.splits;
  {
    const int64_t first = int64_t(o0) * KK;
    const int64_t total = g.C_out * KK;
    for (int e = threadIdx.x; e < p.BM * KK; e += kThreads) dw_s[e] = first + e < total ? to_f(a.dw[first + e]) : 0.0f;
  }
  const int64_t HW = g.H * g.W;
  const int64_t NHW = g.N * HW;
  const int mt_count = p.BM / 16;
  const bool gy_cl = a.gys.c < a.gys.w;
  const bool x_cl = a.xs.c < a.xs.w;
  BlockMma<T, BN, true, false, TC> mma;
  for (int64_t ch = c_begin; ch < c_end; ++ch) {
    __syncthreads();  // previous chunk's GEMM is done with a_s / b_s / the pixel table
    if (threadIdx.x < kKC) {
      const int64_t L = ch * kKC + threadIdx.x;
      int64_t n = 0;
      int qh = -1, qw = 0;
      if (L < NHW) {
        n = L / HW;
        const int64_t rem = L - n * HW;
        qh = static_cast<int>(rem / g.W);
        qw = static_cast<int>(rem - int64_t(qh) * g.W);
      }
      qn_s[threadIdx.x] = n;
      qh_s[threadIdx.x] = qh;
      qw_s[threadIdx.x] = qw;
      taps.set(threadIdx.x, g, p.steps, qh, qw);
    }
    __syncthreads();
    if (gy_cl) {
      for (int q = warp; q < kKC; q += kWarps) {
        const int qh = qh_s[q];
        for (int o = lane; o < p.BM; o += 32) {
          const int64_t co = int64_t(o0) + o;
          float v = 0.0f;
          if (qh >= 0 && co < g.C_out)
            v = dt_value(g, p.steps, GyGlobal<T>{a.gy + qn_s[q] * a.gys.n + co * a.gys.c, a.gys.h, a.gys.w},
                         dw_s + o * KK, taps, q);
          a_s[o * p.LDA + q] = from_f<T>(v);
        }
      }
    } else {
      const int q = lane;  // kKC == 32
      const int qh = qh_s[q];
      for (int o = warp; o < p.BM; o += kWarps) {
        const int64_t co = int64_t(o0) + o;
        float v = 0.0f;
        if (qh >= 0 && co < g.C_out)
          v = dt_value(g, p.steps, GyGlobal<T>{a.gy + qn_s[q] * a.gys.n + co * a.gys.c, a.gys.h, a.gys.w},
                       dw_s + o * KK, taps, q);
        a_s[o * p.LDA + q] = from_f<T>(v);
      }
    }
    if (x_cl) {
      for (int q = warp; q < kKC; q += kWarps) {
        const int qh = qh_s[q];
        const int64_t base = qn_s[q] * a.xs.n + int64_t(qh) * a.xs.h + int64_t(qw_s[q]) * a.xs.w;
        for (int i = lane; i < BN; i += 32) {
          T v = from_f<T>(0.0f);
          if (qh >= 0 && i0 + i < g.C_in) v = a.x[base + (i0 + i) * a.xs.c];
          b_s[i * p.LDB + q] = v;
        }
      }
    } else {
      const int q = lane;
      const int qh = qh_s[q];
      const int64_t base = qn_s[q] * a.xs.n + int64_t(qh) * a.xs.h + int64_t(qw_s[q]) * a.xs.w;
      for (int i = warp; i < BN; i += kWarps) {
        T v = from_f<T>(0.0f);
        if (qh >= 0 && i0 + i < g.C_in) v = a.x[base + (i0 + i) * a.xs.c];
        b_s[i * p.LDB + q] = v;
      }
    }
    __syncthreads();
    mma.step(a_s, p.LDA, b_s, p.LDB, mt_count);
  }
  __syncthreads();
  mma.template store<false>(c_s, p.LDC, mt_count);
  __syncthreads();
  float* out = a.atomic ? a.out : a.out + split * g.C_out * g.C_in;
  for (int o = warp; o < p.BM; o += kWarps) {
    const int64_t co = int64_t(o0) + o;
    if (co >= g.C_out) break;
    for (int i = lane; i < BN; i += 32) {
      if (i0 + i >= g.C_in) break;
      const float v = c_s[o * p.LDC + i];
      if (a.atomic) {
        atomicAdd(out + co * g.C_in + i0 + i, v);
      } else {
        out[co * g.C_in + i0 + i] = v;
      }
    }
  }
#endif  // BSCONV_ARCH_OK
}

// ---------------------------------------------------------------------------------------------------------------
// ddw, dbias, dmid
template <typename T>
struct WgradArgs {
  Geometry g;
  OutTilePlan p;
  const T* gy;
  Strides4 gys;
  const T* x;
  Strides4 xs;
  const T* pw;
  const T* dw;
  const T* mid_bias;
  // deterministic: partials indexed by the spatial tile ([n_spatial][C_out*KK] / [n_spatial][C_out]); else the
  // outputs themselves (atomics). nullptr: not needed.
  float* ddw;
  float* dbias;
  float* dmid;
  bool atomic;
};

// ddw and the dmid tap sums of one output tile: for every (channel o, tap) the sums over the tile's outputs p of
// dy[p] * t[halo(p, tap)] and of dy[p] * [halo(p, tap) inside the image]; emit(o, tap, s_t, s_m) takes them.
// Any stride / dilation: one (o, tap) pair per thread.
template <typename Emit>
__device__ __forceinline__ void wgrad_generic(const Geometry& g, const OutTilePlan& p, const OutTileSmem& sm, int BN,
                                              bool need_ddw, bool need_dmid, const Emit& emit) {
  const int KK = g.kh * g.kw;
  for (int e = threadIdx.x; e < BN * KK; e += kThreads) {
    const int o = e / KK;
    const int tap = e - o * KK;
    const int ta = tap / g.kw;
    const int toff = ta * g.dil_h * p.IW + (tap - ta * g.kw) * g.dil_w;
    const float* dyr = sm.y + o * p.TOPIX;
    float s_t = 0.0f, s_m = 0.0f;
    if (need_ddw) {
      const float* tr = sm.t + o * p.LDT + toff;
      for (int j = 0; j < p.TOPIX; ++j) s_t = fmaf(dyr[j], tr[sm.base[j]], s_t);
    }
    if (need_dmid) {
      const int64_t* pr = sm.pix + toff;
      for (int j = 0; j < p.TOPIX; ++j) s_m += pr[sm.base[j]] >= 0 ? dyr[j] : 0.0f;
    }
    emit(o, tap, s_t, s_m);
  }
}

// Unit horizontal stride and dilation: a warp takes one channel and kernel row, its lanes take runs of kRun
// adjacent outputs, so kRun dy values and kRun + KW - 1 t values in registers serve kRun * KW products; the KW tap
// sums are then reduced across the warp (fixed order, deterministic). 7-wide kernels use runs of 2. Inlined on
// purpose: as a real call taking its arguments by reference it got a stack frame, and every shared-memory pointer
// of the kernel lost its address space (generic loads, no LDSM in the t recompute GEMM); inlined, the GEMM's
// accumulators are dead by the time it runs, so it adds no register pressure (tests/test_cuda_compile.py checks
// zero stack and LDSM).
template <int KW, typename Emit>
__device__ __forceinline__ void wgrad_runs(const Geometry& g, const OutTilePlan& p, const OutTileSmem& sm, int BN,
                                           bool need_ddw, bool need_dmid, const Emit& emit) {
  constexpr int kRun = KW >= 7 ? 2 : 4;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int runs_w = (p.TOW + kRun - 1) / kRun;
  const int units = p.TOH * runs_w;
  for (int o = warp; o < BN; o += kWarps) {
    const float* dyr = sm.y + o * p.TOPIX;
    const float* trow = sm.t + o * p.LDT;
    for (int ta = 0; ta < g.kh; ++ta) {
      float st[KW], sk[KW];
#pragma unroll
      for (int b = 0; b < KW; ++b) st[b] = sk[b] = 0.0f;
      for (int u = lane; u < units; u += 32) {
        const int ohl = u / runs_w;
        const int owl0 = (u - ohl * runs_w) * kRun;
        const int hrow = (ohl * g.stride_h + ta * g.dil_h) * p.IW + owl0;
        const int cols = p.IW - owl0;
        float d[kRun];
#pragma unroll
        for (int q = 0; q < kRun; ++q) d[q] = owl0 + q < p.TOW ? dyr[ohl * p.TOW + owl0 + q] : 0.0f;
        if (need_ddw) {
          float tv[kRun + KW - 1];
#pragma unroll
          for (int s = 0; s < kRun + KW - 1; ++s) tv[s] = s < cols ? trow[hrow + s] : 0.0f;
#pragma unroll
          for (int q = 0; q < kRun; ++q)
#pragma unroll
            for (int b = 0; b < KW; ++b) st[b] = fmaf(d[q], tv[q + b], st[b]);
        }
        if (need_dmid) {
          float mv[kRun + KW - 1];
#pragma unroll
          for (int s = 0; s < kRun + KW - 1; ++s) mv[s] = (s < cols && sm.pix[hrow + s] >= 0) ? 1.0f : 0.0f;
#pragma unroll
          for (int q = 0; q < kRun; ++q)
#pragma unroll
            for (int b = 0; b < KW; ++b) sk[b] = fmaf(d[q], mv[q + b], sk[b]);
        }
      }
#pragma unroll
      for (int b = 0; b < KW; ++b) {
        st[b] = warp_sum(st[b]);
        sk[b] = warp_sum(sk[b]);
      }
      if (lane == 0) {
#pragma unroll
        for (int b = 0; b < KW; ++b) emit(o, ta * KW + b, st[b], sk[b]);
      }
    }
  }
}

template <typename T, int BN, bool TC>
__global__ void __launch_bounds__(kThreads, 2) wgrad_kernel(const WgradArgs<T> a) {
#if BSCONV_ARCH_OK
  extern __shared__ __align__(128) unsigned char smem[];
  const Geometry& g = a.g;
  const OutTilePlan& p = a.p;
  const OutTileSmem sm = out_tile_smem(p, smem);
  const OutTileCoord c = out_tile_coord(p, g);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int KK = g.kh * g.kw;
  out_tile_prologue<T>(p, g, c, a.xs, a.dw, sm);
  if (p.gemm) {
    out_tile_intermediate<T, BN, TC>(p, g, c, a.x, a.xs, a.pw, a.mid_bias, sm);
  } else {
    __syncthreads();
  }
  // grad_y tile (zero outside the output and past C_out) and each output pixel's halo index.
  for (int j = threadIdx.x; j < p.TOPIX; j += kThreads) {
    const int ohl = j / p.TOW;
    sm.base[j] = ohl * g.stride_h * p.IW + (j - ohl * p.TOW) * g.stride_w;
  }
  if (a.gys.c < a.gys.w) {
    for (int j = warp; j < p.TOPIX; j += kWarps) {
      const int ohl = j / p.TOW;
      const int64_t oh = int64_t(c.oh0) + ohl;
      const int64_t ow = int64_t(c.ow0) + (j - ohl * p.TOW);
      const bool in = oh < g.Ho && ow < g.Wo;
      const int64_t base = c.n * a.gys.n + oh * a.gys.h + ow * a.gys.w;
      for (int o = lane; o < BN; o += 32) {
        const int64_t co = int64_t(c.o0) + o;
        sm.y[o * p.TOPIX + j] = (in && co < g.C_out) ? to_f(a.gy[base + co * a.gys.c]) : 0.0f;
      }
    }
  } else {
    for (int o = warp; o < BN; o += kWarps) {
      const int64_t co = int64_t(c.o0) + o;
      const int64_t base = c.n * a.gys.n + co * a.gys.c;
      for (int j = lane; j < p.TOPIX; j += 32) {
        const int ohl = j / p.TOW;
        const int64_t oh = int64_t(c.oh0) + ohl;
        const int64_t ow = int64_t(c.ow0) + (j - ohl * p.TOW);
        sm.y[o * p.TOPIX + j] =
            (oh < g.Ho && ow < g.Wo && co < g.C_out) ? to_f(a.gy[base + oh * a.gys.h + ow * a.gys.w]) : 0.0f;
      }
    }
  }
  __syncthreads();

  const int64_t slot = a.atomic ? 0 : c.s;
  const bool need_ddw = a.ddw != nullptr;
  const bool need_dmid = a.dmid != nullptr;
  // One (channel, tap) result: the ddw partial, and the tap's share of dmid (combined over taps below).
  auto emit = [&](int o, int tap, float s_t, float s_m) {
    const int e = o * KK + tap;
    if (need_dmid) sm.m[e] = s_m * sm.dw[e];
    const int64_t co = int64_t(c.o0) + o;
    if (need_ddw && co < g.C_out) {
      float* dst = a.ddw + slot * g.C_out * KK + co * KK + tap;
      if (a.atomic) {
        atomicAdd(dst, s_t);
      } else {
        *dst = s_t;
      }
    }
  };
  if (need_ddw || need_dmid) {
    bool done = false;
    if (g.stride_w == 1 && g.dil_w == 1) {
      done = true;
      switch (g.kw) {
        case 1: wgrad_runs<1>(g, p, sm, BN, need_ddw, need_dmid, emit); break;
        case 2: wgrad_runs<2>(g, p, sm, BN, need_ddw, need_dmid, emit); break;
        case 3: wgrad_runs<3>(g, p, sm, BN, need_ddw, need_dmid, emit); break;
        case 4: wgrad_runs<4>(g, p, sm, BN, need_ddw, need_dmid, emit); break;
        case 5: wgrad_runs<5>(g, p, sm, BN, need_ddw, need_dmid, emit); break;
        case 7: wgrad_runs<7>(g, p, sm, BN, need_ddw, need_dmid, emit); break;
        default: done = false;
      }
    }
    if (!done) wgrad_generic(g, p, sm, BN, need_ddw, need_dmid, emit);
  }
  if (a.dbias != nullptr) {
    for (int o = threadIdx.x; o < BN; o += kThreads) {
      const int64_t co = int64_t(c.o0) + o;
      if (co >= g.C_out) break;
      float s = 0.0f;
      for (int j = 0; j < p.TOPIX; ++j) s += sm.y[o * p.TOPIX + j];
      float* dst = a.dbias + slot * g.C_out + co;
      if (a.atomic) {
        atomicAdd(dst, s);
      } else {
        *dst = s;
      }
    }
  }
  if (need_dmid) {
    __syncthreads();
    for (int o = threadIdx.x; o < BN; o += kThreads) {
      const int64_t co = int64_t(c.o0) + o;
      if (co >= g.C_out) break;
      float s = 0.0f;
      for (int tap = 0; tap < KK; ++tap) s += sm.m[o * KK + tap];
      float* dst = a.dmid + slot * g.C_out + co;
      if (a.atomic) {
        atomicAdd(dst, s);
      } else {
        *dst = s;
      }
    }
  }
#endif  // BSCONV_ARCH_OK
}

// ---------------------------------------------------------------------------------------------------------------
// Fixed-order reduction of [rows][len] partials: 32 columns per block, 8 row groups combined in a fixed order.
__global__ void __launch_bounds__(kThreads) reduce_rows_kernel(const float* __restrict__ ws, int64_t rows, int64_t len,
                                                               float* __restrict__ out) {
  __shared__ float red[kWarps][33];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t col = int64_t(blockIdx.x) * 32 + lane;
  float s = 0.0f;
  if (col < len) {
    for (int64_t r = warp; r < rows; r += kWarps) s += ws[r * len + col];
  }
  red[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && col < len) {
    float t = 0.0f;
    for (int w = 0; w < kWarps; ++w) t += red[w][lane];
    out[col] = t;
  }
}

cudaError_t reduce_rows(const float* ws, int64_t rows, int64_t len, float* out, cudaStream_t stream) {
  const int64_t blocks = div_up(len, 32);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  reduce_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(ws, rows, len, out);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

struct WorkspaceLayout {
  size_t dpw = 0, ddw = 0, dbias = 0, dmid = 0, total = 0;  // byte offsets and size
  int64_t dpw_rows = 0, wgrad_rows = 0;
};

inline size_t esz_of(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

inline OutTileUse wgrad_use(bool need_ddw) {
  return need_ddw ? OutTileUse::kWeightGrad : OutTileUse::kWeightGradNoGemm;
}

WorkspaceLayout workspace_layout(const Geometry& g, DType dtype, bool need_dpw, bool need_ddw, bool need_dbias,
                                 bool need_dmid, bool deterministic, const DeviceLimits& d) {
  WorkspaceLayout w;
  if (!deterministic) return w;
  const int esz = static_cast<int>(esz_of(dtype));
  RegionCarver ws(256);
  auto take = [&ws](size_t bytes) { return ws.take(bytes); };
  if (need_dpw) {
    w.dpw_rows = make_dpw_plan(g, esz).splits;
    w.dpw = take(size_t(w.dpw_rows) * g.C_out * g.C_in * 4);
  }
  if (need_ddw || need_dbias || need_dmid) {
    w.wgrad_rows = pick_out_plan(g, esz, pick_block_n(g.C_out), wgrad_use(need_ddw), d).n_spatial;
    const size_t plane = size_t(w.wgrad_rows) * g.C_out * 4;
    if (need_ddw) w.ddw = take(plane * g.kh * g.kw);
    if (need_dbias) w.dbias = take(plane);
    if (need_dmid) w.dmid = take(plane);
  }
  w.total = ws.size;
  return w;
}

template <typename K, typename A>
cudaError_t launch(K kernel, const A& args, int64_t blocks, int smem, const DeviceLimits& d, cudaStream_t stream) {
  if (blocks <= 0) return cudaSuccess;
  const cudaError_t err = prepare_kernel(reinterpret_cast<const void*>(kernel), d);
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

// The plans of one backward call (those of gradients not requested are not used).
struct BackwardPlans {
  DxPlan dx;
  DpwPlan dpw;
  OutTilePlan wgrad;
};

BackwardPlans backward_plans(const Geometry& g, int esz, bool need_ddw, bool need_wgrad, const DeviceLimits& d) {
  BackwardPlans b;
  b.dx = make_dx_plan(g, esz, d);
  b.dpw = make_dpw_plan(g, esz);
  if (need_wgrad) b.wgrad = pick_out_plan(g, esz, pick_block_n(g.C_out), wgrad_use(need_ddw), d);
  return b;
}

// Why these plans cannot be launched for the requested gradients (empty: they can).
std::string backward_plan_refusal(const BackwardPlans& b, bool need_dx, bool need_dpw, bool need_wgrad,
                                  const DeviceLimits& d) {
  const std::string limit = " bytes of shared memory per block, the device allows " + std::to_string(d.smem_optin);
  if (need_dx && b.dx.smem > d.smem_optin) {
    return "the input-gradient kernel needs " + std::to_string(b.dx.smem) + limit + " (kernel size too large)";
  }
  if (need_dx && b.dx.blocks > 0x7fffffff) return "the input-gradient grid would exceed 2^31 - 1 blocks";
  if (need_dpw && b.dpw.smem > d.smem_optin) {
    return "the pointwise-weight-gradient kernel needs " + std::to_string(b.dpw.smem) + limit + " (kernel size too large)";
  }
  if (need_wgrad && b.wgrad.smem == 0) {
    return "the dilated kernel's input halo does not fit in shared memory even for a 1x1 output tile (the device "
           "allows " + std::to_string(d.smem_optin) + " bytes per block)";
  }
  if (need_wgrad && out_plan_blocks(b.wgrad) > 0x7fffffff) {
    return "the depthwise-weight-gradient grid would exceed 2^31 - 1 blocks";
  }
  return {};
}

// A kernel of this translation unit, whose image stands for all of them (they are built for the same archs).
inline const void* backward_representative() { return reinterpret_cast<const void*>(dx_kernel<__half, 64, true>); }

template <typename T, bool TC>
cudaError_t backward_typed(const Geometry& g, DType dtype, const void* grad_y, Strides4 gys, const void* x,
                           Strides4 xs, const void* pw, const void* dw, const void* mid_bias, void* dx,
                           Strides4 dxs, float* dpw, float* ddw, float* dbias, float* dmid, void* workspace,
                           size_t workspace_bytes, bool deterministic, cudaStream_t stream) {
  const int esz = sizeof(T);
  const bool need_wgrad = ddw != nullptr || dbias != nullptr || dmid != nullptr;
  // Every refusal is decided before the first launch, so that a refused call never leaves some gradients computed
  // and others not.
  const DeviceLimits& d = current_device_limits();
  if (!device_refusal(d).empty() || !geometry_refusal(g).empty()) return kRefused;
  cudaError_t err = prepare_kernel(backward_representative(), d);
  if (err == cudaErrorNoKernelImageForDevice) return kRefused;
  if (err != cudaSuccess) return err;
  const BackwardPlans plans = backward_plans(g, esz, ddw != nullptr, need_wgrad, d);
  if (!backward_plan_refusal(plans, dx != nullptr, dpw != nullptr, need_wgrad, d).empty()) return kRefused;
  const WorkspaceLayout wl = workspace_layout(g, dtype, dpw != nullptr, ddw != nullptr, dbias != nullptr,
                                              dmid != nullptr, deterministic, d);
  if (wl.total > 0 && (workspace == nullptr || workspace_bytes < wl.total)) return cudaErrorInvalidValue;
  char* ws = static_cast<char*>(workspace);
  const DxPlan& dx_plan = plans.dx;
  const DpwPlan& dpw_plan = plans.dpw;
  const OutTilePlan& wg_plan = plans.wgrad;

  if (dx != nullptr) {
    DxArgs<T> a{g, dx_plan, static_cast<const T*>(grad_y), gys, static_cast<const T*>(pw),
                static_cast<const T*>(dw), static_cast<T*>(dx), dxs};
    switch (a.p.BN) {
      case 16: err = launch(dx_kernel<T, 16, TC>, a, a.p.blocks, a.p.smem, d, stream); break;
      case 32: err = launch(dx_kernel<T, 32, TC>, a, a.p.blocks, a.p.smem, d, stream); break;
      default: err = launch(dx_kernel<T, 64, TC>, a, a.p.blocks, a.p.smem, d, stream); break;
    }
    if (err != cudaSuccess) return err;
  }

  if (dpw != nullptr) {
    DpwArgs<T> a{g, dpw_plan, static_cast<const T*>(grad_y), gys, static_cast<const T*>(x), xs,
                 static_cast<const T*>(dw), dpw, !deterministic};
    if (deterministic) {
      a.out = reinterpret_cast<float*>(ws + wl.dpw);
    } else {
      err = cudaMemsetAsync(dpw, 0, size_t(g.C_out) * g.C_in * 4, stream);
      if (err != cudaSuccess) return err;
    }
    const int64_t blocks = a.p.splits * a.p.n_ob * a.p.n_ib;
    switch (a.p.BN) {
      case 16: err = launch(dpw_kernel<T, 16, TC>, a, blocks, a.p.smem, d, stream); break;
      case 32: err = launch(dpw_kernel<T, 32, TC>, a, blocks, a.p.smem, d, stream); break;
      default: err = launch(dpw_kernel<T, 64, TC>, a, blocks, a.p.smem, d, stream); break;
    }
    if (err != cudaSuccess) return err;
    if (deterministic) {
      err = reduce_rows(a.out, a.p.splits, g.C_out * g.C_in, dpw, stream);
      if (err != cudaSuccess) return err;
    }
  }

  if (need_wgrad) {
    const int BN = pick_block_n(g.C_out);
    WgradArgs<T> a{g,
                   wg_plan,
                   static_cast<const T*>(grad_y),
                   gys,
                   static_cast<const T*>(x),
                   xs,
                   static_cast<const T*>(pw),
                   static_cast<const T*>(dw),
                   static_cast<const T*>(mid_bias),
                   ddw,
                   dbias,
                   dmid,
                   !deterministic};
    const int64_t KK = int64_t(g.kh) * g.kw;
    if (deterministic) {
      if (ddw != nullptr) a.ddw = reinterpret_cast<float*>(ws + wl.ddw);
      if (dbias != nullptr) a.dbias = reinterpret_cast<float*>(ws + wl.dbias);
      if (dmid != nullptr) a.dmid = reinterpret_cast<float*>(ws + wl.dmid);
    } else {
      if (ddw != nullptr && (err = cudaMemsetAsync(ddw, 0, size_t(g.C_out) * KK * 4, stream)) != cudaSuccess) return err;
      if (dbias != nullptr && (err = cudaMemsetAsync(dbias, 0, size_t(g.C_out) * 4, stream)) != cudaSuccess) return err;
      if (dmid != nullptr && (err = cudaMemsetAsync(dmid, 0, size_t(g.C_out) * 4, stream)) != cudaSuccess) return err;
    }
    const int64_t blocks = a.p.n_spatial * a.p.n_cob;
    switch (BN) {
      case 16: err = launch(wgrad_kernel<T, 16, TC>, a, blocks, a.p.smem, d, stream); break;
      case 32: err = launch(wgrad_kernel<T, 32, TC>, a, blocks, a.p.smem, d, stream); break;
      default: err = launch(wgrad_kernel<T, 64, TC>, a, blocks, a.p.smem, d, stream); break;
    }
    if (err != cudaSuccess) return err;
    if (deterministic) {
      const int64_t rows = a.p.n_spatial;
      if (ddw != nullptr && (err = reduce_rows(a.ddw, rows, g.C_out * KK, ddw, stream)) != cudaSuccess) return err;
      if (dbias != nullptr && (err = reduce_rows(a.dbias, rows, g.C_out, dbias, stream)) != cudaSuccess) return err;
      if (dmid != nullptr && (err = reduce_rows(a.dmid, rows, g.C_out, dmid, stream)) != cudaSuccess) return err;
    }
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace detail

size_t backward_workspace_bytes(const Geometry& g, DType dtype, bool need_dpw, bool need_ddw, bool need_dbias,
                                bool need_dmid, bool deterministic) {
  return detail::workspace_layout(g, dtype, need_dpw, need_ddw, need_dbias, need_dmid, deterministic,
                                  detail::current_device_limits())
      .total;
}

std::string backward_refusal(const Geometry& g, DType dtype) {
  using namespace detail;
  const DeviceLimits& d = current_device_limits();
  std::string why = device_refusal(d);
  if (why.empty()) why = image_refusal(backward_representative(), d);
  if (why.empty()) why = geometry_refusal(g);
  if (why.empty()) {
    // Every gradient requested: the depthwise-weight plan with the t recompute is the largest of the two.
    why = backward_plan_refusal(backward_plans(g, static_cast<int>(esz_of(dtype)), true, true, d), true, true, true, d);
  }
  return why;
}

cudaError_t backward(const Geometry& g, DType dtype, const void* grad_y, Strides4 gy_strides, const void* x,
                     Strides4 x_strides, const void* pw, const void* dw, const void* mid_bias, void* dx,
                     Strides4 dx_strides, float* dpw, float* ddw, float* dbias, float* dmid, void* workspace,
                     size_t workspace_bytes, bool deterministic, bool allow_tf32, cudaStream_t stream) {
  using namespace detail;
#define BSCONV_BACKWARD_ARGS                                                                                       \
  g, dtype, grad_y, gy_strides, x, x_strides, pw, dw, mid_bias, dx, dx_strides, dpw, ddw, dbias, dmid, workspace, \
      workspace_bytes, deterministic, stream
  switch (dtype) {
    case DType::kFloat16:
      return backward_typed<__half, true>(BSCONV_BACKWARD_ARGS);
    case DType::kBFloat16:
      return backward_typed<__nv_bfloat16, true>(BSCONV_BACKWARD_ARGS);
    case DType::kFloat32:
      if (allow_tf32) return backward_typed<float, true>(BSCONV_BACKWARD_ARGS);
      return backward_typed<float, false>(BSCONV_BACKWARD_ARGS);
  }
#undef BSCONV_BACKWARD_ARGS
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace bsconv_fused
