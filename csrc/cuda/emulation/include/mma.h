// Host stand-in for <mma.h> (WMMA), used only by the CPU emulation of the kernels (see ../README.md).
// Semantics follow the CUDA programming guide: matrix_a row_major holds (i,k) at p[i*ldm+k], col_major at p[k*ldm+i];
// matrix_b row_major holds (k,j) at p[k*ldm+j], col_major at p[j*ldm+k]. A fragment keeps the whole tile; only lane
// 0 of a warp does the work and the store (the kernels read stored tiles only after __syncthreads()).
#pragma once
#include <cstdint>
#include <cstring>

#include "emu_runtime.h"

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

inline float __float_to_tf32(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b = (b + 0x1000u) & ~0x1fffu;  // round to 10 mantissa bits
  std::memcpy(&v, &b, 4);
  return v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int R = std::is_same<Use, matrix_a>::value ? M : K;
  static constexpr int C = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = R * C;
  float x[R * C];  // (r, c) at x[r*C + c]
};
template <int M, int N, int K, typename T>
struct fragment<accumulator, M, N, K, T, void> {
  static constexpr int num_elements = M * N;
  float x[M * N];
};

inline bool emu_lane0() { return emu_threadIdx.x % 32 == 0; }

template <typename Use, int M, int N, int K, typename T, typename L, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  if (!emu_lane0()) return;
  emu_check_align(p, 32);
  for (int r = 0; r < F::R; ++r)
    for (int c = 0; c < F::C; ++c) {
      const P v = std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
      f.x[r * F::C + c] = emu_to_float(v);
    }
}

template <int M, int N, int K, typename T>
void fill_fragment(fragment<accumulator, M, N, K, T>& f, float v) {
  for (int i = 0; i < M * N; ++i) f.x[i] = v;
}

template <int M, int N, int K, typename T, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, T>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, T>& c) {
  if (!emu_lane0()) return;
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}

template <int M, int N, int K, typename T>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  if (!emu_lane0()) return;
  emu_check_align(p, 32);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) p[layout == mem_row_major ? i * ldm + j : j * ldm + i] = f.x[i * N + j];
}
}  // namespace wmma
}  // namespace nvcuda
