// Emulated end-to-end check of forward() and backward() against a float64 reference on the host (see README.md).
// Usage: emu_test [case-filter]. Exit status 1 when any comparison fails.
#include <cstdio>
#include <cstdlib>
#include <new>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../activation.h"
#include "bsconv_cuda.h"
#include "emu_runtime.h"
#include "out_tile.cuh"

using namespace bsconv_fused::cuda;

namespace {

struct Case {
  const char* name;
  int N, C_in, C_out, H, W, kh, kw, sh, sw, ph, pw, dh, dw;
  bool bias, mid;
  int x_layout, y_layout;  // 0 NCHW, 1 channels_last, 2 strided view into a larger NCHW buffer, 3 images 2^30+64
                           // elements apart (image 2 starts past 2^31: 64-bit offsets), in lazily committed memory
};

template <typename T>
float tof(T v) {
  return emu_to_float(v);
}
template <typename T>
T fromf(float v);
template <>
float fromf<float>(float v) { return v; }
template <>
__half fromf<__half>(float v) { return __float2half_rn(v); }
template <>
__nv_bfloat16 fromf<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// A 4-D tensor living in a buffer with arbitrary element strides.
template <typename T>
struct Tensor {
  int64_t n, c, h, w;
  Strides4 s;
  std::vector<T> buf;
  T* big = nullptr;  // layout 3: calloc'ed, so only the pages of the images (and what the kernels touch) are committed
  int64_t off0 = 0;
  Tensor(const Tensor&) = delete;
  ~Tensor() { std::free(big); }
  Tensor(int64_t n_, int64_t c_, int64_t h_, int64_t w_, int layout) : n(n_), c(c_), h(h_), w(w_) {
    if (layout == 3) {
      s = {(int64_t(1) << 30) + 64, h * w, w, 1};
      big = static_cast<T*>(std::calloc(size_t((n - 1) * s.n + c * h * w), sizeof(T)));
      if (big == nullptr) throw std::bad_alloc();
    } else if (layout == 0) {
      s = {c * h * w, h * w, w, 1};
      buf.assign(n * c * h * w, fromf<T>(0));
    } else if (layout == 1) {
      s = {c * h * w, 1, w * c, c};
      buf.assign(n * c * h * w, fromf<T>(0));
    } else {  // a view x[:, 1:1+c, 0:h, 2:2+w] of an (n, c+2, h+1, w+3) buffer
      const int64_t C = c + 2, Hh = h + 1, Ww = w + 3;
      s = {C * Hh * Ww, Hh * Ww, Ww, 1};
      off0 = s.c + 2;
      buf.assign(n * C * Hh * Ww, fromf<T>(1e4f));  // a poisoned gap: reading it breaks the comparison
    }
  }
  T* data() { return (big ? big : buf.data()) + off0; }
  T& at(int64_t a, int64_t b, int64_t cc, int64_t d) { return data()[a * s.n + b * s.c + cc * s.h + d * s.w]; }
};

struct Ref {
  std::vector<double> y, dx, dpw, ddw, dbias, dmid;
};

Ref reference(const Case& k, int64_t Ho, int64_t Wo, const std::vector<double>& x, const std::vector<double>& pw,
              const std::vector<double>& dw, const std::vector<double>& bias, const std::vector<double>& mid,
              const std::vector<double>& gy) {
  const int N = k.N, Ci = k.C_in, Co = k.C_out, H = k.H, W = k.W, KK = k.kh * k.kw;
  std::vector<double> t(size_t(N) * Co * H * W);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < Co; ++o)
      for (int p = 0; p < H * W; ++p) {
        double s = k.mid ? mid[o] : 0.0;
        for (int i = 0; i < Ci; ++i) s += pw[o * Ci + i] * x[(size_t(n) * Ci + i) * H * W + p];
        t[(size_t(n) * Co + o) * H * W + p] = s;
      }
  Ref r;
  r.y.assign(size_t(N) * Co * Ho * Wo, 0.0);
  r.dx.assign(size_t(N) * Ci * H * W, 0.0);
  r.dpw.assign(size_t(Co) * Ci, 0.0);
  r.ddw.assign(size_t(Co) * KK, 0.0);
  r.dbias.assign(Co, 0.0);
  r.dmid.assign(Co, 0.0);
  std::vector<double> dt(t.size(), 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < Co; ++o)
      for (int oh = 0; oh < Ho; ++oh)
        for (int ow = 0; ow < Wo; ++ow) {
          const size_t yi = ((size_t(n) * Co + o) * Ho + oh) * Wo + ow;
          double s = k.bias ? bias[o] : 0.0;
          const double g = gy[yi];
          r.dbias[o] += g;
          for (int a = 0; a < k.kh; ++a)
            for (int b = 0; b < k.kw; ++b) {
              const int ih = oh * k.sh - k.ph + a * k.dh, iw = ow * k.sw - k.pw + b * k.dw;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              const size_t ti = ((size_t(n) * Co + o) * H + ih) * W + iw;
              s += dw[o * KK + a * k.kw + b] * t[ti];
              dt[ti] += dw[o * KK + a * k.kw + b] * g;
              r.ddw[o * KK + a * k.kw + b] += g * t[ti];
            }
          r.y[yi] = s;
        }
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < Co; ++o)
      for (int p = 0; p < H * W; ++p) {
        const double d = dt[(size_t(n) * Co + o) * H * W + p];
        r.dmid[o] += d;
        for (int i = 0; i < Ci; ++i) {
          r.dx[(size_t(n) * Ci + i) * H * W + p] += pw[o * Ci + i] * d;
          r.dpw[o * Ci + i] += d * x[(size_t(n) * Ci + i) * H * W + p];
        }
      }
  return r;
}

// Max abs error relative to the largest reference magnitude.
bool check(const char* what, const std::vector<double>& ref, const std::vector<double>& got, double tol,
           const std::string& tag) {
  double m = 0, e = 0;
  size_t worst = 0;
  bool nan = false;
  for (size_t i = 0; i < ref.size(); ++i) {
    m = std::max(m, std::fabs(ref[i]));
    if (!std::isfinite(got[i])) nan = true;
    const double d = std::fabs(ref[i] - got[i]);
    if (d > e) {
      e = d;
      worst = i;
    }
  }
  const double rel = e / (m + 1e-12);
  const bool ok = !nan && rel <= tol;
  if (!ok)
    std::printf("FAIL %s %s: rel err %.3g (tol %.1g) at %zu ref %.6g got %.6g%s\n", tag.c_str(), what, rel, tol, worst,
                ref[worst], got[worst], nan ? " (non-finite)" : "");
  return ok;
}

const char* const kActNames[] = {"", " relu", " relu6", " hardswish", " silu"};

// act: the forward's activation epilogue (csrc/activation.h), checked against act applied in float64 to the
// reference y; the gradients are those of the op without it (the epilogue is inference-only), checked as always.
template <typename T>
bool run_case(const Case& k, DType dt, bool tf32, bool deterministic, double tol, uint32_t seed, int act = 0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  Geometry g{};
  g.N = k.N; g.C_in = k.C_in; g.C_out = k.C_out; g.H = k.H; g.W = k.W;
  g.kh = k.kh; g.kw = k.kw; g.stride_h = k.sh; g.stride_w = k.sw; g.pad_h = k.ph; g.pad_w = k.pw;
  g.dil_h = k.dh; g.dil_w = k.dw;
  g.Ho = (k.H + 2 * k.ph - k.dh * (k.kh - 1) - 1) / k.sh + 1;
  g.Wo = (k.W + 2 * k.pw - k.dw * (k.kw - 1) - 1) / k.sw + 1;
  const int KK = k.kh * k.kw;
  Tensor<T> x(k.N, k.C_in, k.H, k.W, k.x_layout), y(k.N, k.C_out, g.Ho, g.Wo, k.y_layout);
  Tensor<T> gy(k.N, k.C_out, g.Ho, g.Wo, k.y_layout == 1 ? 0 : 1), dx(k.N, k.C_in, k.H, k.W, k.x_layout);
  std::vector<T> pw(size_t(k.C_out) * k.C_in), dw(size_t(k.C_out) * KK), bias(k.C_out), mid(k.C_out);
  std::vector<double> xd(size_t(k.N) * k.C_in * k.H * k.W), gyd(size_t(k.N) * k.C_out * g.Ho * g.Wo);
  std::vector<double> pwd(pw.size()), dwd(dw.size()), bd(k.C_out), md(k.C_out);
  auto fill = [&](std::vector<T>& v, std::vector<double>& d, float scale) {
    for (size_t i = 0; i < v.size(); ++i) {
      v[i] = fromf<T>(U(rng) * scale);
      d[i] = tof(v[i]);
    }
  };
  fill(pw, pwd, 1.0f / std::sqrt(float(k.C_in)));
  fill(dw, dwd, 1.0f / k.kh);
  fill(bias, bd, act != 0 ? 8.0f : 1.0f);  // with an activation: outputs beyond -3 and 6, every clamp bites
  fill(mid, md, 1.0f);
  for (int n = 0; n < k.N; ++n)
    for (int c = 0; c < k.C_in; ++c)
      for (int h = 0; h < k.H; ++h)
        for (int w = 0; w < k.W; ++w) {
          T v = fromf<T>(U(rng));
          x.at(n, c, h, w) = v;
          xd[((size_t(n) * k.C_in + c) * k.H + h) * k.W + w] = tof(v);
        }
  for (int n = 0; n < k.N; ++n)
    for (int c = 0; c < k.C_out; ++c)
      for (int h = 0; h < g.Ho; ++h)
        for (int w = 0; w < g.Wo; ++w) {
          T v = fromf<T>(U(rng));
          gy.at(n, c, h, w) = v;
          gyd[((size_t(n) * k.C_out + c) * g.Ho + h) * g.Wo + w] = tof(v);
        }
  Ref r = reference(k, g.Ho, g.Wo, xd, pwd, dwd, bd, md, gyd);
  std::vector<double> y_ref = r.y;
  for (double& v : y_ref) v = bsconv_fused::activation::apply(v, act);

  cudaError_t e = forward(g, dt, x.data(), x.s, pw.data(), dw.data(), k.bias ? bias.data() : nullptr,
                          k.mid ? mid.data() : nullptr, y.data(), y.s, act, tf32, nullptr);
  if (e != cudaSuccess) {
    std::printf("FAIL %s forward returned %d\n", k.name, int(e));
    return false;
  }
  std::vector<float> dpw(pw.size(), 7.f), ddw(dw.size(), 7.f), db(k.C_out, 7.f), dm(k.C_out, 7.f);
  const size_t wsb = backward_workspace_bytes(g, dt, true, true, true, k.mid, deterministic);
  std::vector<unsigned char> ws(wsb + 256);
  e = backward(g, dt, gy.data(), gy.s, x.data(), x.s, pw.data(), dw.data(), k.mid ? mid.data() : nullptr, dx.data(),
               dx.s, dpw.data(), ddw.data(), db.data(), k.mid ? dm.data() : nullptr, wsb ? ws.data() : nullptr, wsb,
               deterministic, tf32, nullptr);
  if (e != cudaSuccess) {
    std::printf("FAIL %s backward returned %d\n", k.name, int(e));
    return false;
  }
  std::vector<double> yg(r.y.size()), dxg(r.dx.size());
  for (int n = 0; n < k.N; ++n)
    for (int c = 0; c < k.C_out; ++c)
      for (int h = 0; h < g.Ho; ++h)
        for (int w = 0; w < g.Wo; ++w) yg[((size_t(n) * k.C_out + c) * g.Ho + h) * g.Wo + w] = tof(y.at(n, c, h, w));
  for (int n = 0; n < k.N; ++n)
    for (int c = 0; c < k.C_in; ++c)
      for (int h = 0; h < k.H; ++h)
        for (int w = 0; w < k.W; ++w) dxg[((size_t(n) * k.C_in + c) * k.H + h) * k.W + w] = tof(dx.at(n, c, h, w));
  // Outputs written through a strided view must leave the rest of their buffer alone.
  auto gap_untouched = [](Tensor<T>& t) {
    std::vector<char> inside(t.buf.size(), 0);
    for (int64_t a = 0; a < t.n; ++a)
      for (int64_t b = 0; b < t.c; ++b)
        for (int64_t c = 0; c < t.h; ++c)
          for (int64_t d = 0; d < t.w; ++d) inside[t.off0 + a * t.s.n + b * t.s.c + c * t.s.h + d * t.s.w] = 1;
    for (size_t i = 0; i < t.buf.size(); ++i)
      if (!inside[i] && tof(t.buf[i]) != tof(fromf<T>(1e4f))) return false;
    return true;
  };
  auto tod = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  const std::string tag = std::string(k.name) + (dt == DType::kFloat16 ? " fp16" : dt == DType::kBFloat16 ? " bf16" : tf32 ? " tf32" : " fp32") +
                          (deterministic ? " det" : " atomic") + kActNames[act];
  bool ok = true;
  ok &= check("y", y_ref, yg, tol, tag);
  ok &= check("dx", r.dx, dxg, tol, tag);
  ok &= check("dpw", r.dpw, tod(dpw), tol, tag);
  ok &= check("ddw", r.ddw, tod(ddw), tol, tag);
  ok &= check("dbias", r.dbias, tod(db), tol, tag);
  if (k.mid) ok &= check("dmid", r.dmid, tod(dm), tol, tag);
  if (k.x_layout == 2 && !gap_untouched(dx)) {
    std::printf("FAIL %s: dx written outside its view\n", tag.c_str());
    ok = false;
  }
  if (k.y_layout == 2 && !gap_untouched(y)) {
    std::printf("FAIL %s: y written outside its view\n", tag.c_str());
    ok = false;
  }
  const auto plan = bsconv_fused::cuda::detail::pick_out_plan(g, sizeof(T), bsconv_fused::cuda::detail::pick_block_n(g.C_out),
                                                              bsconv_fused::cuda::detail::OutTileUse::kForward,
                                                              bsconv_fused::cuda::detail::current_device_limits());
  if (ok)
    std::printf("ok   %s (forward tile %dx%d, halo %d px, BN %d, smem %d)\n", tag.c_str(), plan.TOH, plan.TOW, plan.P,
                plan.BN, plan.smem);
  return ok;
}

}  // namespace

// The forward tiles the planner picks for the benchmark layers of performance.md (N=64, 3x3, fp16, H100).
void print_plans() {
  const int layers[][3] = {{32, 64, 112}, {64, 128, 56}, {128, 128, 56}, {128, 256, 28}, {256, 256, 28},
                           {256, 512, 14}, {512, 512, 14}, {512, 1024, 7}, {1024, 1024, 7}};
  for (int stride = 1; stride <= 2; ++stride)
    for (const auto& l : layers) {
      Geometry g{};
      g.N = 64; g.C_in = l[0]; g.C_out = l[1]; g.H = g.W = l[2]; g.kh = g.kw = 3;
      g.stride_h = g.stride_w = stride; g.pad_h = g.pad_w = 1; g.dil_h = g.dil_w = 1;
      g.Ho = g.Wo = (l[2] - 1) / stride + 1;
      using namespace bsconv_fused::cuda::detail;
      const int BN = pick_block_n(g.C_out);
      const OutTilePlan p = pick_out_plan(g, 2, BN, OutTileUse::kForward, current_device_limits());
      std::printf("%4d->%4d @%3d s%d: tile %2dx%2d halo %3d px (x%.2f), BN %d, %lld blocks, smem %d\n", l[0], l[1], l[2],
                  stride, p.TOH, p.TOW, p.P, double(p.P) / (p.TOPIX * stride * stride), BN,
                  (long long)(p.n_spatial * p.n_cob), p.smem);
    }
}

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  if (filter == "plans") {
    print_plans();
    // A halo that cannot fit in shared memory must be refused before anything is launched (kRefused, with the
    // reason that bsconv_fused::cuda_refusal reports), and so must spans beyond the 32-bit tap arithmetic.
    Geometry g{};
    g.N = 1; g.C_in = 8; g.C_out = 8; g.H = g.W = 250; g.kh = g.kw = 7; g.stride_h = g.stride_w = 1;
    g.pad_h = g.pad_w = 0; g.dil_h = g.dil_w = 40; g.Ho = g.Wo = 250 - 240;
    const Strides4 s{0, 0, 0, 0};
    const cudaError_t f = forward(g, DType::kFloat16, nullptr, s, nullptr, nullptr, nullptr, nullptr, nullptr, s, 0,
                                  false, nullptr);
    float dummy = 0;
    const cudaError_t b = backward(g, DType::kFloat16, nullptr, s, nullptr, s, nullptr, nullptr, nullptr, nullptr, s,
                                   nullptr, &dummy, nullptr, nullptr, nullptr, 0, false, false, nullptr);
    const std::string fr = forward_refusal(g, DType::kFloat16), br = backward_refusal(g, DType::kFloat16);
    std::printf("too-large halo: forward -> %d, backward (ddw) -> %d (kRefused = %d)\n  forward: %s\n  backward: %s\n",
                int(f), int(b), int(kRefused), fr.c_str(), br.c_str());
    bool ok = f == kRefused && b == kRefused && !fr.empty() && !br.empty();
    // int32 overflow case of the static review (L1): H=W=1, 7x7, dilation 10000, padding 30000 (output 1x1).
    Geometry h{};
    h.N = 1; h.C_in = 8; h.C_out = 8; h.H = h.W = 1; h.kh = h.kw = 7; h.stride_h = h.stride_w = 1;
    h.pad_h = h.pad_w = 30000; h.dil_h = h.dil_w = 10000; h.Ho = h.Wo = 1;
    const std::string hr = forward_refusal(h, DType::kFloat16);
    std::printf("dilation 10000, padding 30000: forward -> %d: %s\n",
                int(forward(h, DType::kFloat16, nullptr, s, nullptr, nullptr, nullptr, nullptr, nullptr, s, 0,
                            false, nullptr)),
                hr.c_str());
    ok = ok && !hr.empty();
    // Spans beyond 2^30 pixels.
    h.pad_h = 600000000;
    h.Ho = 1 + 2 * int64_t(h.pad_h) - 6 * int64_t(h.dil_h);
    const std::string sr = backward_refusal(h, DType::kFloat32);
    std::printf("padding 6e8: backward refusal: %s\n", sr.c_str());
    ok = ok && !sr.empty();
    // A geometry the kernels run: no reason.
    Geometry r{};
    r.N = 2; r.C_in = 64; r.C_out = 128; r.H = r.W = 56; r.kh = r.kw = 3; r.stride_h = r.stride_w = 1;
    r.pad_h = r.pad_w = 1; r.dil_h = r.dil_w = 1; r.Ho = r.Wo = 56;
    ok = ok && forward_refusal(r, DType::kBFloat16).empty() && backward_refusal(r, DType::kBFloat16).empty();
    std::printf("refusals %s\n", ok ? "ok" : "FAIL");
    return ok ? 0 : 1;
  }
  // name, N, Ci, Co, H, W, kh, kw, sh, sw, ph, pw, dh, dw, bias, mid, x_layout, y_layout
  const Case cases[] = {
      {"k3s1p1", 2, 8, 24, 9, 11, 3, 3, 1, 1, 1, 1, 1, 1, true, true, 0, 0},
      {"cin3_k5s2", 1, 3, 17, 13, 10, 5, 5, 2, 2, 2, 2, 1, 1, false, true, 0, 0},
      {"rect_dil", 1, 5, 40, 12, 9, 3, 2, 1, 2, 2, 0, 2, 1, true, false, 1, 1},
      {"cl_k7", 2, 33, 70, 8, 8, 7, 7, 1, 1, 3, 3, 1, 1, true, true, 1, 1},
      {"view_k1", 1, 20, 9, 5, 7, 1, 1, 1, 1, 0, 0, 1, 1, false, false, 2, 2},
      {"s3_pad0", 1, 12, 16, 11, 14, 4, 3, 3, 2, 0, 1, 1, 2, true, true, 2, 1},
      {"bigC", 1, 70, 130, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, true, true, 0, 1},
      {"wide", 1, 16, 32, 20, 37, 3, 3, 1, 1, 1, 1, 1, 1, true, true, 0, 0},
      {"dil3_k7", 1, 4, 20, 23, 21, 7, 7, 1, 1, 9, 8, 3, 3, true, true, 0, 2},
      {"c1", 3, 1, 1, 6, 5, 2, 3, 1, 1, 1, 0, 1, 1, true, true, 1, 0},
      {"k2even_s2", 2, 24, 48, 10, 10, 2, 2, 2, 2, 0, 0, 1, 1, false, true, 2, 0},
      {"k4x5_hs2", 1, 6, 10, 9, 13, 4, 5, 2, 1, 2, 2, 2, 1, true, true, 1, 0},
  };
  int fails = 0;
  uint32_t seed = 1;
  for (const Case& k : cases) {
    if (!filter.empty() && std::string(k.name).find(filter) == std::string::npos) continue;
    // Tolerances: relative to the largest reference value. fp32 strict: rounding of fp32 sums; TF32 / fp16: 10-bit
    // mantissas (inputs, dt and outputs rounded); bf16: 7-bit mantissa.
    fails += !run_case<float>(k, DType::kFloat32, false, true, 1e-5, seed++);
    fails += !run_case<float>(k, DType::kFloat32, true, false, 5e-3, seed++);
    fails += !run_case<__half>(k, DType::kFloat16, true, false, 5e-3, seed++);
    fails += !run_case<__nv_bfloat16>(k, DType::kBFloat16, true, true, 3e-2, seed++);
  }
  // The activation epilogue: every code through both store paths (direct NCHW / view stores and the
  // channels_last staging tile), the unit-stride run stencil and the generic one (stride 2), in strict fp32 (the
  // epilogue's own error shows) and bf16 (rounded after the activation).
  const Case act_cases[] = {
      {"act_nchw", 1, 8, 24, 9, 11, 3, 3, 1, 1, 1, 1, 1, 1, true, true, 0, 0},
      {"act_cl_s2", 1, 12, 40, 11, 9, 3, 3, 2, 2, 1, 1, 1, 1, true, true, 1, 1},
      {"act_view", 1, 6, 10, 7, 8, 3, 3, 1, 1, 1, 1, 1, 1, true, false, 2, 2},
  };
  for (const Case& k : act_cases) {
    if (!filter.empty() && std::string(k.name).find(filter) == std::string::npos) continue;
    for (int act = 1; act < bsconv_fused::activation::kCount; ++act) {
      fails += !run_case<float>(k, DType::kFloat32, false, true, 1e-5, seed++, act);
      fails += !run_case<__nv_bfloat16>(k, DType::kBFloat16, true, true, 3e-2, seed++, act);
    }
  }
  // 64-bit offsets: x, dx and y with images 2^30+64 elements apart (N=3: the third image starts past 2^31), fp16.
  const Case big = {"offsets64", 3, 4, 16, 3, 5, 3, 3, 1, 1, 1, 1, 1, 1, true, true, 3, 3};
  if (filter.empty() || std::string(big.name).find(filter) != std::string::npos)
    fails += !run_case<__half>(big, DType::kFloat16, true, false, 5e-3, seed++);
  std::printf("%d failures\n", fails);
  return fails != 0;
}
