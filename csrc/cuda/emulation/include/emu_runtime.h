// Host emulation of the CUDA execution model for the torch-free kernels: every block runs its 256 threads as host
// threads with a barrier for __syncthreads(), blocks one after another (so __shared__ statics are block-private).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <type_traits>
#include <vector>

struct EmuDim3 {
  unsigned x, y, z;
};
extern thread_local EmuDim3 emu_threadIdx;
extern thread_local EmuDim3 emu_blockIdx;

void emu_syncthreads();
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
unsigned char* emu_block_smem();
void emu_run(unsigned blocks, unsigned threads, size_t smem, const std::function<void()>& body);

inline float emu_to_float(float v) { return v; }
inline float emu_to_float(__half v) { return __half2float(v); }
inline float emu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline void emu_check_align(const void* p, size_t a) {
  if (reinterpret_cast<uintptr_t>(p) % a != 0) {
    std::fprintf(stderr, "WMMA pointer %p not %zu-byte aligned\n", p, a);
    std::abort();
  }
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
using std::max;
using std::min;

template <typename... KArgs, typename... Args>
void emu_launch(void (*kernel)(KArgs...), unsigned blocks, unsigned threads, size_t smem, cudaStream_t,
                Args&&... args) {
  emu_run(blocks, threads, smem, [&] { kernel(args...); });
}
