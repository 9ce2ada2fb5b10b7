// Host emulation of the CUDA execution model (see include/emu_runtime.h) and of the runtime calls the launchers make.
#include "emu_runtime.h"

#include <cstring>
#include <memory>

thread_local EmuDim3 emu_threadIdx;
thread_local EmuDim3 emu_blockIdx;

namespace {
std::barrier<>* g_barrier = nullptr;
std::vector<unsigned char> g_smem;
unsigned char* g_smem_base = nullptr;
}  // namespace

void emu_syncthreads() { g_barrier->arrive_and_wait(); }

// Warp shuffles: every lane of the warp publishes its value, waits for the others, reads its partner's value and
// waits again before the slot can be reused. All 32 lanes must call it (the kernels only shuffle convergently).
namespace {
std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
std::vector<float> g_warp_slots;
}  // namespace

float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  const unsigned t = emu_threadIdx.x;
  std::barrier<>& wb = *g_warp_barriers[t / 32];
  g_warp_slots[t] = v;
  wb.arrive_and_wait();
  const float r = g_warp_slots[(t / 32) * 32 + ((t % 32) ^ unsigned(lane_mask))];
  wb.arrive_and_wait();
  return r;
}
unsigned char* emu_block_smem() { return g_smem_base; }

void emu_run(unsigned blocks, unsigned threads, size_t smem, const std::function<void()>& body) {
  std::barrier<> bar(threads);
  g_barrier = &bar;
  g_warp_barriers.clear();
  for (unsigned w = 0; w < (threads + 31) / 32; ++w) g_warp_barriers.emplace_back(new std::barrier<>(32));
  g_warp_slots.assign(threads, 0.0f);
  g_smem.assign(smem + 2048 + 256, 0);
  g_smem_base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(g_smem.data()) + 255) / 256 * 256);
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      emu_threadIdx = {t, 0, 0};
      for (unsigned b = 0; b < blocks; ++b) {
        emu_blockIdx = {b, 0, 0};
        if (t == 0) {
          // Poison shared memory so that reads of never-written shared memory show up as NaN.
          float nan = std::nanf("");
          for (size_t i = 0; i + 4 <= smem; i += 4) std::memcpy(g_smem_base + i, &nan, 4);
        }
        bar.arrive_and_wait();
        body();
        bar.arrive_and_wait();
      }
    });
  }
  for (auto& th : pool) th.join();
  g_barrier = nullptr;
}

// Runtime API used by the launchers. The emulated device is an H100 (227 KiB opt-in shared memory, 228 KiB per SM,
// 132 SMs); BSCONV_EMU_SMS overrides the SM count, so that small test problems exercise the large tiles too.
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  if (attr == cudaDevAttrComputeCapabilityMajor) *v = 9;
  else if (attr == cudaDevAttrComputeCapabilityMinor) *v = 0;
  else if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) *v = 232448;
  else if (attr == cudaDevAttrMaxSharedMemoryPerMultiprocessor) *v = 233472;
  else if (attr == cudaDevAttrMultiProcessorCount) *v = std::getenv("BSCONV_EMU_SMS") ? std::atoi(std::getenv("BSCONV_EMU_SMS")) : 132;
  else *v = 0;
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int v) {
  return v <= 232448 ? cudaSuccess : cudaErrorInvalidValue;
}
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void*) {
  *attr = cudaFuncAttributes{};  // the kernels use dynamic shared memory only
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
