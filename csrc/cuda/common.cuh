// Device helpers shared by the forward and backward kernels: element conversion and a block-wide GEMM on a shared
// memory tile (tensor cores through WMMA for fp16/bf16/TF32, FMA for strict fp32).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "bsconv_cuda.h"

// Kernel bodies are compiled for sm_80 and newer only (bf16 and TF32 WMMA). Device passes for older architectures
// see empty bodies, so a build whose arch list includes 7.x still compiles; the host entry points refuse such
// devices before any launch (device_refusal in device.cuh). The host pass and the CPU emulation see everything.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define BSCONV_ARCH_OK 1
#else
#define BSCONV_ARCH_OK 0
#endif

namespace bsconv_fused {
namespace cuda {
namespace detail {

// Every kernel runs 8 warps: enough to hide shared-memory latency, few enough that two or three blocks share an SM.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// K depth of one staged GEMM step (channels in the forward, output channels / pixels in the backward). 32 is two
// fp16 MMA k-steps and one warp-wide coalesced row.
constexpr int kKC = 32;
// Rows (M) of one register-resident accumulator pass: 128 x 64 or 256 x 32 fp32 accumulators per block keep the
// per-thread accumulators at 32 registers, so two blocks fit an SM without spills; larger M takes several passes.
__host__ __device__ constexpr int pass_rows(int BN) { return BN >= 64 ? 128 : 256; }

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__host__ __device__ __forceinline__ int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ __forceinline__ size_t align_up(size_t a, size_t b) { return (a + b - 1) / b * b; }

// Lays consecutive regions out in one buffer (dynamic shared memory, a workspace), each start aligned to `align`
// bytes; `size` is the bytes used so far. Host-side planning only.
struct RegionCarver {
  size_t align;
  size_t size = 0;
  explicit RegionCarver(size_t alignment) : align(alignment) {}
  size_t take(size_t bytes) {
    const size_t at = size;
    size = align_up(size + bytes, align);
    return at;
  }
};

// Sum over the 32 lanes of a warp in a fixed order (every lane gets the result).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffffu, v, s);
  return v;
}

#if BSCONV_ARCH_OK
// WMMA fragment load from shared memory. nvcc emits wmma.load with the .shared state space for fp16 (ptxas then
// uses LDSM) but not for bf16 and TF32, whose fragments then load through generic 32-bit LD.E. For those the same
// instruction is issued with .shared spelled out: identical semantics and fragment layout, only the address space is
// stated (bf16 then gets LDSM, TF32 shared LDS). The CPU emulation takes the wmma::load_matrix_sync path.
template <bool IS_A, bool ROW, typename Elem, typename Frag, typename T>
__device__ __forceinline__ void load_fragment_shared(Frag& f, const T* p, unsigned ldm) {
#if defined(__CUDA_ARCH__)
  constexpr bool bf16 = std::is_same<Elem, __nv_bfloat16>::value;
  constexpr bool tf32 = std::is_same<Elem, nvcuda::wmma::precision::tf32>::value;
  if constexpr (bf16 || tf32) {
    unsigned* r = reinterpret_cast<unsigned*>(f.x);  // 4 registers: 8 bf16 or 4 tf32 elements
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
#define BSCONV_WMMA_LD(use, layout, shape, type)                                                                \
  asm volatile("wmma.load." use ".sync.aligned." layout "." shape ".shared." type " {%0,%1,%2,%3}, [%4], %5;" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                                              \
               : "r"(addr), "r"(ldm)                                                                        \
               : "memory")
    if constexpr (bf16) {
      if constexpr (IS_A && ROW) BSCONV_WMMA_LD("a", "row", "m16n16k16", "bf16");
      else if constexpr (IS_A) BSCONV_WMMA_LD("a", "col", "m16n16k16", "bf16");
      else if constexpr (ROW) BSCONV_WMMA_LD("b", "row", "m16n16k16", "bf16");
      else BSCONV_WMMA_LD("b", "col", "m16n16k16", "bf16");
    } else {
      if constexpr (IS_A && ROW) BSCONV_WMMA_LD("a", "row", "m16n16k8", "tf32");
      else if constexpr (IS_A) BSCONV_WMMA_LD("a", "col", "m16n16k8", "tf32");
      else if constexpr (ROW) BSCONV_WMMA_LD("b", "row", "m16n16k8", "tf32");
      else BSCONV_WMMA_LD("b", "col", "m16n16k8", "tf32");
    }
#undef BSCONV_WMMA_LD
    return;
  }
#endif
  nvcuda::wmma::load_matrix_sync(f, p, ldm);
}

// Accumulator store to shared memory, for the same reason: nvcc states .shared for the m16n16k16 shapes but not for
// the TF32 m16n16k8 one (KS = 8), whose stores would otherwise be generic ST.E.
template <int KS, bool COL, typename Frag>
__device__ __forceinline__ void store_accumulator_shared(float* p, const Frag& f, unsigned ldm) {
#if defined(__CUDA_ARCH__)
  if constexpr (KS == 8) {
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
#define BSCONV_WMMA_ST(layout)                                                                                  \
  asm volatile("wmma.store.d.sync.aligned." layout ".m16n16k8.shared.f32 [%0], {%1,%2,%3,%4,%5,%6,%7,%8}, %9;" \
               :                                                                                               \
               : "r"(addr), "f"(f.x[0]), "f"(f.x[1]), "f"(f.x[2]), "f"(f.x[3]), "f"(f.x[4]), "f"(f.x[5]),      \
                 "f"(f.x[6]), "f"(f.x[7]), "r"(ldm)                                                            \
               : "memory")
    if constexpr (COL) BSCONV_WMMA_ST("col");
    else BSCONV_WMMA_ST("row");
#undef BSCONV_WMMA_ST
    return;
  }
#endif
  nvcuda::wmma::store_matrix_sync(p, f, ldm, COL ? nvcuda::wmma::mem_col_major : nvcuda::wmma::mem_row_major);
}
#endif  // BSCONV_ARCH_OK

// C[M x BN] (+)= A[M x kKC] * B[kKC x BN] for one staged K chunk, accumulated in registers over many chunks.
// A and B live in shared memory; A_ROW / B_ROW select their layouts: A(m,k) = A_ROW ? A[m*lda+k] : A[k*lda+m],
// B(k,n) = B_ROW ? B[k*ldb+n] : B[n*ldb+k]. M = 16 * mt_count rows (16 * mt_count <= ROWS, block-uniform).
// Requirements of the WMMA path (met by every caller): lda/ldb multiples of 8 elements, ldc a multiple of 4, all
// tile pointers 32-byte aligned, zero-filled padding rows/columns.
template <typename T, int BN, bool A_ROW, bool B_ROW, bool TC, int ROWS = pass_rows(BN)>
struct BlockMma;

#if BSCONV_ARCH_OK
// WMMA fragment element type and k-step per storage type. fp32 storage on tensor cores means TF32 (k = 8).
template <typename T>
struct WmmaTypes;
template <>
struct WmmaTypes<__half> {
  using Elem = __half;
  static constexpr int KS = 16;
};
template <>
struct WmmaTypes<__nv_bfloat16> {
  using Elem = __nv_bfloat16;
  static constexpr int KS = 16;
};
template <>
struct WmmaTypes<float> {
  using Elem = nvcuda::wmma::precision::tf32;
  static constexpr int KS = 8;
};

// Tensor-core path. Warps tile BN in WN columns of 16 and walk the m-tiles in WM interleaved groups.
template <typename T, int BN, bool A_ROW, bool B_ROW, int ROWS>
struct BlockMma<T, BN, A_ROW, B_ROW, true, ROWS> {
  static_assert(BN % 16 == 0 && BN <= 16 * kWarps, "BN must be 16, 32 or 64");
  using Elem = typename WmmaTypes<T>::Elem;
  static constexpr int KS = WmmaTypes<T>::KS;
  static constexpr int WN = BN / 16;
  static constexpr int WM = kWarps / WN;
  static constexpr int MAXF = ROWS / 16 / WM;
  using LA = typename std::conditional<A_ROW, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type;
  using LB = typename std::conditional<B_ROW, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type;

  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, KS, float> acc[MAXF];
  int wm, wn;

  __device__ BlockMma() {
    const int w = threadIdx.x / 32;
    wn = w % WN;
    wm = w / WN;
    zero();
  }
  __device__ void zero() {
#pragma unroll
    for (int f = 0; f < MAXF; ++f) nvcuda::wmma::fill_fragment(acc[f], 0.0f);
  }
  __device__ void step(const T* A, int lda, const T* B, int ldb, int mt_count) {
    using namespace nvcuda;
#pragma unroll
    for (int ks = 0; ks < kKC; ks += KS) {
      wmma::fragment<wmma::matrix_b, 16, 16, KS, Elem, LB> b;
      load_fragment_shared<false, B_ROW, Elem>(b, B + (B_ROW ? ks * ldb + wn * 16 : wn * 16 * ldb + ks), ldb);
      if constexpr (std::is_same<T, float>::value) {
#pragma unroll
        for (int e = 0; e < b.num_elements; ++e) b.x[e] = wmma::__float_to_tf32(b.x[e]);
      }
#pragma unroll
      for (int f = 0; f < MAXF; ++f) {
        const int mt = wm + WM * f;
        if (mt < mt_count) {
          wmma::fragment<wmma::matrix_a, 16, 16, KS, Elem, LA> a;
          load_fragment_shared<true, A_ROW, Elem>(a, A + (A_ROW ? mt * 16 * lda + ks : ks * lda + mt * 16), lda);
          if constexpr (std::is_same<T, float>::value) {
#pragma unroll
            for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(a.x[e]);
          }
          wmma::mma_sync(acc[f], a, b, acc[f]);
        }
      }
    }
  }
  // C(m,n) goes to C_COL ? C[n*ldc+m] : C[m*ldc+n] (fp32 shared memory).
  template <bool C_COL>
  __device__ void store(float* C, int ldc, int mt_count) {
    using namespace nvcuda;
#pragma unroll
    for (int f = 0; f < MAXF; ++f) {
      const int mt = wm + WM * f;
      if (mt < mt_count) {
        if constexpr (C_COL) {
          store_accumulator_shared<KS, true>(C + wn * 16 * ldc + mt * 16, acc[f], ldc);
        } else {
          store_accumulator_shared<KS, false>(C + mt * 16 * ldc + wn * 16, acc[f], ldc);
        }
      }
    }
  }
};

#endif  // BSCONV_ARCH_OK

// Strict fp32 path (allow_tf32 = false): each thread owns rows tm + 64*i and BN/4 consecutive columns; a warp
// shares its columns, so B reads are broadcasts and A reads are consecutive.
template <int BN, bool A_ROW, bool B_ROW, int ROWS>
struct BlockMma<float, BN, A_ROW, B_ROW, false, ROWS> {
  static constexpr int MI = ROWS / 64;
  static constexpr int NJ = BN / 4;
  float acc[MI][NJ];
  int tm, tn;

  __device__ BlockMma() {
    tm = threadIdx.x % 64;
    tn = threadIdx.x / 64;
    zero();
  }
  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) acc[i][j] = 0.0f;
  }
  __device__ void step(const float* A, int lda, const float* B, int ldb, int mt_count) {
    const int m_count = mt_count * 16;
#pragma unroll 4
    for (int k = 0; k < kKC; ++k) {
      float bv[NJ];
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int n = tn * NJ + j;
        bv[j] = B_ROW ? B[k * ldb + n] : B[n * ldb + k];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int m = tm + 64 * i;
        if (m < m_count) {
          const float av = A_ROW ? A[m * lda + k] : A[k * lda + m];
#pragma unroll
          for (int j = 0; j < NJ; ++j) acc[i][j] = fmaf(av, bv[j], acc[i][j]);
        }
      }
    }
  }
  template <bool C_COL>
  __device__ void store(float* C, int ldc, int mt_count) {
    const int m_count = mt_count * 16;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
      const int m = tm + 64 * i;
      if (m < m_count) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          const int n = tn * NJ + j;
          if (C_COL) {
            C[n * ldc + m] = acc[i][j];
          } else {
            C[m * ldc + n] = acc[i][j];
          }
        }
      }
    }
  }
};

// One output-channel block width per channel count: 16/32 avoid wasting MMA columns on narrow layers.
inline int pick_block_n(int64_t channels) { return channels <= 16 ? 16 : (channels <= 32 ? 32 : 64); }

}  // namespace detail
}  // namespace cuda
}  // namespace bsconv_fused
