// Fused forward: y = act(DW(PW(x) + mid_bias) + bias) in one launch. See README.md for the tiling.
#include <cuda_runtime.h>

#include <string>

#include "../activation.h"
#include "bsconv_cuda.h"
#include "common.cuh"
#include "device.cuh"
#include "out_tile.cuh"

namespace bsconv_fused {
namespace cuda {
namespace detail {
namespace {

template <typename T>
struct FwdArgs {
  Geometry g;
  OutTilePlan p;
  const T* x;
  Strides4 xs;
  const T* pw;
  const T* dw;
  const T* bias;
  const T* mid_bias;
  T* y;
  Strides4 ys;
  int act;  // activation code (csrc/activation.h)
};

// Takes one depthwise result (bias included), applies the activation epilogue in fp32 and puts it into the staging
// tile (channels_last output) or straight to y. act is uniform over the grid: the switch never diverges.
template <typename T>
struct DwSink {
  const Geometry* g;
  const OutTilePlan* p;
  const OutTileCoord* c;
  T* y;
  Strides4 ys;
  float* stage;
  bool staged;
  int act;
  __device__ __forceinline__ void operator()(int o, int ohl, int owl, float v) const {
    v = activation::apply(v, act);
    if (staged) {
      stage[o * (p->TOPIX + 1) + ohl * p->TOW + owl] = v;
      return;
    }
    const int64_t co = int64_t(c->o0) + o;
    const int64_t oh = int64_t(c->oh0) + ohl;
    const int64_t ow = int64_t(c->ow0) + owl;
    if (co < g->C_out && oh < g->Ho && ow < g->Wo) y[c->n * ys.n + co * ys.c + oh * ys.h + ow * ys.w] = from_f<T>(v);
  }
};

template <typename T>
__device__ __forceinline__ float bias_of(const T* bias, const Geometry& g, int64_t co) {
  return (bias != nullptr && co < g.C_out) ? to_f(bias[co]) : 0.0f;
}

// Any kernel size, stride and dilation: one output per thread and tap loop, a warp on consecutive outputs of one
// channel (conflict-free t_s reads for stride 1, broadcast weight reads).
template <typename T, typename Sink>
__device__ void depthwise_generic(const Geometry& g, const OutTilePlan& p, const OutTileSmem& sm, int BN, int o0,
                                  const T* bias, const Sink& sink) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int KK = g.kh * g.kw;
  const int step_h = g.dil_h * p.IW;
  for (int o = warp; o < BN; o += kWarps) {
    const float b = bias_of(bias, g, int64_t(o0) + o);
    const float* trow = sm.t + o * p.LDT;
    const float* wrow = sm.dw + o * KK;
    for (int j = lane; j < p.TOPIX; j += 32) {
      const int ohl = j / p.TOW;
      const int owl = j - ohl * p.TOW;
      const float* t0 = trow + ohl * g.stride_h * p.IW + owl * g.stride_w;
      float acc = b;
      for (int r = 0; r < g.kh; ++r) {
        const float* tr = t0 + r * step_h;
        const float* wr = wrow + r * g.kw;
        for (int s = 0; s < g.kw; ++s) acc = fmaf(wr[s], tr[s * g.dil_w], acc);
      }
      sink(o, ohl, owl, acc);
    }
  }
}

// Unit horizontal stride and dilation (the common case): a thread makes kRun adjacent outputs of one row, so per
// kernel row kRun + KW - 1 intermediate values and KW weights loaded into registers serve kRun * KW taps (about
// 3x fewer shared-memory loads than one output per thread for 3x3).
constexpr int kRun = 4;

template <int KW, typename T, typename Sink>
__device__ void depthwise_runs(const Geometry& g, const OutTilePlan& p, const OutTileSmem& sm, int BN, int o0,
                               const T* bias, const Sink& sink) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int KK = g.kh * KW;
  const int step_h = g.dil_h * p.IW;
  const int runs_w = (p.TOW + kRun - 1) / kRun;
  const int units = p.TOH * runs_w;
  for (int o = warp; o < BN; o += kWarps) {
    const float b = bias_of(bias, g, int64_t(o0) + o);
    const float* trow = sm.t + o * p.LDT;
    const float* wrow = sm.dw + o * KK;
    for (int u = lane; u < units; u += 32) {
      const int ohl = u / runs_w;
      const int owl0 = (u - ohl * runs_w) * kRun;
      const int cols = p.IW - owl0;  // halo columns left in this row; a run past TOW reads no further
      const float* t0 = trow + ohl * g.stride_h * p.IW + owl0;
      float acc[kRun];
#pragma unroll
      for (int r = 0; r < kRun; ++r) acc[r] = b;
      for (int r = 0; r < g.kh; ++r) {
        const float* tr = t0 + r * step_h;
        const float* wr = wrow + r * KW;
        float wv[KW];
        float tv[kRun + KW - 1];
#pragma unroll
        for (int s = 0; s < KW; ++s) wv[s] = wr[s];
#pragma unroll
        for (int s = 0; s < kRun + KW - 1; ++s) tv[s] = s < cols ? tr[s] : 0.0f;
#pragma unroll
        for (int q = 0; q < kRun; ++q)
#pragma unroll
          for (int s = 0; s < KW; ++s) acc[q] = fmaf(wv[s], tv[q + s], acc[q]);
      }
#pragma unroll
      for (int q = 0; q < kRun; ++q)
        if (owl0 + q < p.TOW) sink(o, ohl, owl0 + q, acc[q]);
    }
  }
}

template <typename T, int BN, bool TC>
__global__ void __launch_bounds__(kThreads, 2) forward_kernel(const FwdArgs<T> a) {
#if BSCONV_ARCH_OK
  extern __shared__ __align__(128) unsigned char smem[];
  const Geometry& g = a.g;
  const OutTilePlan& p = a.p;
  const OutTileSmem sm = out_tile_smem(p, smem);
  const OutTileCoord c = out_tile_coord(p, g);
  out_tile_prologue<T>(p, g, c, a.xs, a.dw, sm);
  out_tile_intermediate<T, BN, TC>(p, g, c, a.x, a.xs, a.pw, a.mid_bias, sm);

  // channels_last output: stage the tile in shared memory and store channel-fastest; otherwise store directly,
  // a warp writing consecutive output columns.
  const bool staged = a.ys.c < a.ys.w;
  const DwSink<T> sink{&g, &p, &c, a.y, a.ys, sm.y, staged, a.act};
  bool done = false;
  if (g.stride_w == 1 && g.dil_w == 1) {
    done = true;
    switch (g.kw) {
      case 1: depthwise_runs<1>(g, p, sm, BN, c.o0, a.bias, sink); break;
      case 2: depthwise_runs<2>(g, p, sm, BN, c.o0, a.bias, sink); break;
      case 3: depthwise_runs<3>(g, p, sm, BN, c.o0, a.bias, sink); break;
      case 4: depthwise_runs<4>(g, p, sm, BN, c.o0, a.bias, sink); break;
      case 5: depthwise_runs<5>(g, p, sm, BN, c.o0, a.bias, sink); break;
      case 7: depthwise_runs<7>(g, p, sm, BN, c.o0, a.bias, sink); break;
      default: done = false;
    }
  }
  if (!done) depthwise_generic(g, p, sm, BN, c.o0, a.bias, sink);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (staged) {
    __syncthreads();
    for (int j = warp; j < p.TOPIX; j += kWarps) {
      const int ohl = j / p.TOW;
      const int64_t oh = int64_t(c.oh0) + ohl;
      const int64_t ow = int64_t(c.ow0) + (j - ohl * p.TOW);
      if (oh >= g.Ho || ow >= g.Wo) continue;
      const int64_t base = c.n * a.ys.n + oh * a.ys.h + ow * a.ys.w;
      for (int o = lane; o < BN; o += 32) {
        const int64_t co = int64_t(c.o0) + o;
        if (co < g.C_out) a.y[base + co * a.ys.c] = from_f<T>(sm.y[o * (p.TOPIX + 1) + j]);
      }
    }
  }
#endif  // BSCONV_ARCH_OK
}

template <typename T, int BN, bool TC>
cudaError_t launch_forward(const FwdArgs<T>& a, const DeviceLimits& d, cudaStream_t stream) {
  auto kernel = forward_kernel<T, BN, TC>;
  const cudaError_t err = prepare_kernel(reinterpret_cast<const void*>(kernel), d);
  if (err == cudaErrorNoKernelImageForDevice) return kRefused;
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(out_plan_blocks(a.p)), kThreads, a.p.smem, stream>>>(a);
  return cudaGetLastError();
}

inline OutTileUse forward_use(bool staged) { return staged ? OutTileUse::kForwardStaged : OutTileUse::kForward; }

// Why a plan cannot be launched (empty: it can).
std::string forward_plan_refusal(const OutTilePlan& p, const DeviceLimits& d) {
  if (p.smem == 0) {
    return "the dilated kernel's input halo does not fit in shared memory even for a 1x1 output tile (the device "
           "allows " + std::to_string(d.smem_optin) + " bytes per block)";
  }
  if (out_plan_blocks(p) > 0x7fffffff) return "the forward grid would exceed 2^31 - 1 blocks";
  return {};
}

template <typename T, bool TC>
cudaError_t forward_typed(const Geometry& g, const void* x, Strides4 xs, const void* pw, const void* dw,
                          const void* bias, const void* mid_bias, void* y, Strides4 ys, int act,
                          cudaStream_t stream) {
  const DeviceLimits& d = current_device_limits();
  if (!device_refusal(d).empty() || !geometry_refusal(g).empty()) return kRefused;
  const int BN = pick_block_n(g.C_out);
  FwdArgs<T> a{g,
               pick_out_plan(g, sizeof(T), BN, forward_use(ys.c < ys.w), d),
               static_cast<const T*>(x),
               xs,
               static_cast<const T*>(pw),
               static_cast<const T*>(dw),
               static_cast<const T*>(bias),
               static_cast<const T*>(mid_bias),
               static_cast<T*>(y),
               ys,
               act};
  if (!forward_plan_refusal(a.p, d).empty()) return kRefused;
  switch (BN) {
    case 16:
      return launch_forward<T, 16, TC>(a, d, stream);
    case 32:
      return launch_forward<T, 32, TC>(a, d, stream);
    default:
      return launch_forward<T, 64, TC>(a, d, stream);
  }
}

}  // namespace
}  // namespace detail

std::string forward_refusal(const Geometry& g, DType dtype) {
  using namespace detail;
  const DeviceLimits& d = current_device_limits();
  std::string why = device_refusal(d);
  if (why.empty()) why = image_refusal(reinterpret_cast<const void*>(forward_kernel<__half, 64, true>), d);
  if (why.empty()) why = geometry_refusal(g);
  const int esz = dtype == DType::kFloat32 ? 4 : 2;
  for (const bool staged : {false, true}) {
    if (why.empty()) why = forward_plan_refusal(pick_out_plan(g, esz, pick_block_n(g.C_out), forward_use(staged), d), d);
  }
  return why;
}

cudaError_t forward(const Geometry& g, DType dtype, const void* x, Strides4 x_strides, const void* pw,
                    const void* dw, const void* bias, const void* mid_bias, void* y, Strides4 y_strides,
                    int activation, bool allow_tf32, cudaStream_t stream) {
  using namespace detail;
  if (activation < 0 || activation >= bsconv_fused::activation::kCount) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat16:
      return forward_typed<__half, true>(g, x, x_strides, pw, dw, bias, mid_bias, y, y_strides, activation, stream);
    case DType::kBFloat16:
      return forward_typed<__nv_bfloat16, true>(g, x, x_strides, pw, dw, bias, mid_bias, y, y_strides, activation,
                                                stream);
    case DType::kFloat32:
      if (allow_tf32) {
        return forward_typed<float, true>(g, x, x_strides, pw, dw, bias, mid_bias, y, y_strides, activation,
                                          stream);
      }
      return forward_typed<float, false>(g, x, x_strides, pw, dw, bias, mid_bias, y, y_strides, activation, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace bsconv_fused
