// Host side: what the planners and launchers need to know about the current device, read once per device, and the
// rules under which the kernels refuse a device or a geometry (the reasons bsconv_fused::cuda_refusal reports).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "bsconv_cuda.h"

namespace bsconv_fused {
namespace cuda {
namespace detail {

// The kernels use bf16 and TF32 WMMA (sm_80+). Device passes for older archs compile empty kernel bodies (see
// BSCONV_ARCH_OK in common.cuh) so that a fat binary listing them still builds; such devices are refused here.
constexpr int kMinComputeCapability = 80;

// Pixel spans (padded input, dilated kernel) up to which the kernels' int32 tap and tile arithmetic cannot overflow.
constexpr int64_t kMaxSpan = int64_t(1) << 30;

struct DeviceLimits {
  bool ok = false;  // every attribute query succeeded
  int index = -1;
  int cc = 0;  // compute capability as 10 * major + minor
  int sm_count = 0;
  int smem_optin = 0;   // opt-in maximum of dynamic shared memory per block
  int smem_per_sm = 0;  // shared memory per SM (two blocks per SM share it)
};

constexpr int kMaxDevices = 64;

// The current device's limits, queried once per device (a handful of cudaDeviceGetAttribute calls per launch cost
// microseconds, which matters for the 7x7 / 14x14 layers whose kernels run ~10 us). Thread-safe.
inline const DeviceLimits& current_device_limits() {
  static DeviceLimits cache[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  static const DeviceLimits unknown{};
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();  // do not leave this error for the launchers' cudaGetLastError()
    return unknown;
  }
  std::call_once(once[dev], [dev] {
    DeviceLimits d;
    d.index = dev;
    int major = 0, minor = 0;
    d.ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) == cudaSuccess &&
           d.sm_count > 0 && d.smem_optin > 0;
    if (!d.ok) cudaGetLastError();
    d.cc = 10 * major + minor;
    cache[dev] = d;
  });
  return cache[dev];
}

inline std::string cc_name(int cc) { return "sm_" + std::to_string(cc); }

// Why the kernels cannot run on this device at all (empty: they can).
inline std::string device_refusal(const DeviceLimits& d) {
  if (!d.ok) return "the current CUDA device's attributes could not be queried";
  if (d.cc < kMinComputeCapability) {
    return "the CUDA kernels need compute capability 8.0 or newer (bf16 and TF32 tensor cores); cuda:" +
           std::to_string(d.index) + " is " + cc_name(d.cc);
  }
  return {};
}

// Readies one kernel for launches on this device, once per (kernel, device): checks that the build holds an image
// for the device and sets the dynamic shared-memory ceiling to the device's opt-in maximum. The attribute is a
// ceiling (occupancy follows each launch's own size), so one constant value serves every layer, and no host thread
// can lower it between another thread's set and launch (setting each call's size would allow exactly that).
// Returns cudaErrorNoKernelImageForDevice when the build lacks the device's architecture.
inline cudaError_t prepare_kernel(const void* kernel, const DeviceLimits& d) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> ready;
  std::lock_guard<std::mutex> lock(mu);
  if (ready.count({kernel, d.index}) != 0) return cudaSuccess;
  cudaFuncAttributes attr{};
  cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky; keep it out of the launchers' cudaGetLastError()
    return (err == cudaErrorInvalidDeviceFunction || err == cudaErrorNoKernelImageForDevice)
               ? cudaErrorNoKernelImageForDevice
               : err;
  }
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             d.smem_optin - static_cast<int>(attr.sharedSizeBytes));
  if (err != cudaSuccess) return err;
  ready.insert({kernel, d.index});
  return cudaSuccess;
}

// Why this build cannot run `kernel` (a representative of its translation unit) on the device; empty: it can.
inline std::string image_refusal(const void* kernel, const DeviceLimits& d) {
  const cudaError_t err = prepare_kernel(kernel, d);
  if (err == cudaSuccess) return {};
  if (err == cudaErrorNoKernelImageForDevice) {
    return "this build of bsconv_fused._C has no kernel image for cuda:" + std::to_string(d.index) + " (" +
           cc_name(d.cc) + "); rebuild with TORCH_CUDA_ARCH_LIST including " + std::to_string(d.cc / 10) + "." +
           std::to_string(d.cc % 10);
  }
  return std::string("preparing the kernels failed: ") + cudaGetErrorString(err);
}

// Geometry limits of the kernels' 32-bit arithmetic (sizes and offsets themselves are 64-bit).
inline std::string geometry_refusal(const Geometry& g) {
  const int64_t span_h = g.H + 2 * int64_t(g.pad_h) + int64_t(g.kh - 1) * g.dil_h + g.stride_h;
  const int64_t span_w = g.W + 2 * int64_t(g.pad_w) + int64_t(g.kw - 1) * g.dil_w + g.stride_w;
  if (span_h > kMaxSpan || span_w > kMaxSpan) {
    return "the padded input plus the dilated kernel and stride span " + std::to_string(span_h) + " x " +
           std::to_string(span_w) + " pixels; the CUDA kernels' tap arithmetic takes at most 2^30 per axis";
  }
  return {};
}

}  // namespace detail
}  // namespace cuda
}  // namespace bsconv_fused
