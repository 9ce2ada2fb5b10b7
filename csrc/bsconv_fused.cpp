// bsconv_fused._C: declares the extension's ops once (TORCH_LIBRARY) and implements them for CPU tensors.
// The CUDA implementation is registered from csrc/glue/cuda_impl.cpp, compiled only in the CUDA build.
// Fake kernels and autograd are registered from Python (bsconv_fused/_ext.py through ops.register_pair), and the
// Python-defined Triton ops share the namespace as a FRAGMENT, so import order does not matter.
//
// Light headers on purpose: <torch/extension.h> costs ~1 min per file on the 2-core build machines.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/bsconv_cpu.h"
#include "glue/checks.h"
#include "glue/cuda_refusal.h"

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#elif __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

namespace bsconv_fused {
namespace {

cpu::Geometry cpu_geometry(const glue::ConvShape& s) {
  return {s.N,          s.C_in,       s.C_out,      s.H,           s.W,           s.Ho,         s.Wo, s.kh, s.kw,
          s.stride[0],  s.stride[1],  s.padding[0], s.padding[1],  s.dilation[0], s.dilation[1]};
}

cpu::Strides4 cpu_strides(const at::Tensor& t) {
  const glue::Strides s = glue::strides_of(t);
  return {s.n, s.c, s.h, s.w};
}

template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

template <typename T>
T* ptr_if(bool cond, at::Tensor& t) {
  return cond ? t.mutable_data_ptr<T>() : nullptr;
}

std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return t->contiguous();
}

void check_cpu_dtype(const char* op, const at::Tensor& x) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, op,
                   ": the CPU kernels support float32, float64, bfloat16 and float16, got ", st);
}

// Calls fn.template operator()<scalar_t>() for the dtypes the CPU kernels are instantiated for.
template <typename Fn>
void dispatch_cpu(at::ScalarType st, Fn&& fn) {
  switch (st) {
    case at::kFloat: fn(float{}); break;
    case at::kDouble: fn(double{}); break;
    case at::kBFloat16: fn(c10::BFloat16{}); break;
    case at::kHalf: fn(c10::Half{}); break;
    default: TORCH_CHECK_TYPE(false, "bsconv_fused: unsupported dtype ", st);
  }
}

at::Tensor forward_cpu(const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
                       const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mid_bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t activation) {
  constexpr const char* op = "bsconv_fused::cpp_forward";
  const glue::ConvShape s = glue::check_conv_args(op, x, pw, dw, bias, mid_bias, stride, padding, dilation);
  glue::check_activation(op, activation);
  check_cpu_dtype(op, x);
  at::Tensor y = at::empty({s.N, s.C_out, s.Ho, s.Wo},
                           x.options().memory_format(glue::output_memory_format(x)));
  const at::Tensor pwc = pw.contiguous(), dwc = dw.contiguous();
  const auto biasc = contiguous_opt(bias), midc = contiguous_opt(mid_bias);
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::forward<T>(cpu_geometry(s), x.const_data_ptr<T>(), cpu_strides(x), pwc.const_data_ptr<T>(),
                    dwc.const_data_ptr<T>(), ptr_or_null<T>(biasc), ptr_or_null<T>(midc), y.mutable_data_ptr<T>(),
                    cpu_strides(y), static_cast<int>(activation));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pw, const at::Tensor& dw,
    const std::optional<at::Tensor>& mid_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, const c10::List<bool>& output_mask) {
  constexpr const char* op = "bsconv_fused::cpp_backward";
  const glue::ConvShape s =
      glue::check_backward_args(op, grad_y, x, pw, dw, mid_bias, stride, padding, dilation, output_mask);
  check_cpu_dtype(op, x);
  const bool need[5] = {output_mask[0], output_mask[1], output_mask[2], output_mask[3], output_mask[4]};
  // Gradients not requested come back as empty (0,) tensors: custom ops cannot return None.
  auto empty_grad = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = need[0] ? at::empty(x.sizes(), x.options().memory_format(glue::output_memory_format(x)))
                          : empty_grad();
  at::Tensor dpw = need[1] ? at::empty(pw.sizes(), pw.options()) : empty_grad();
  at::Tensor ddw = need[2] ? at::empty(dw.sizes(), dw.options()) : empty_grad();
  at::Tensor dbias = need[3] ? at::empty({s.C_out}, pw.options()) : empty_grad();
  at::Tensor dmid = need[4] ? at::empty({s.C_out}, pw.options()) : empty_grad();
  if (!(need[0] || need[1] || need[2] || need[3] || need[4])) return {dx, dpw, ddw, dbias, dmid};
  const at::Tensor pwc = pw.contiguous(), dwc = dw.contiguous();
  const auto midc = contiguous_opt(mid_bias);
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::backward<T>(cpu_geometry(s), grad_y.const_data_ptr<T>(), cpu_strides(grad_y), x.const_data_ptr<T>(),
                     cpu_strides(x), pwc.const_data_ptr<T>(), dwc.const_data_ptr<T>(), ptr_or_null<T>(midc),
                     ptr_if<T>(need[0], dx), need[0] ? cpu_strides(dx) : cpu::Strides4{0, 0, 0, 0},
                     ptr_if<T>(need[1], dpw), ptr_if<T>(need[2], ddw), ptr_if<T>(need[3], dbias),
                     ptr_if<T>(need[4], dmid));
  });
  return {dx, dpw, ddw, dbias, dmid};
}

}  // namespace

#ifndef BSCONV_FUSED_WITH_CUDA
// CPU-only build: the query exists so that Python need not know how the extension was built.
std::string cuda_refusal(int64_t, int64_t, int64_t, int64_t, int64_t, at::IntArrayRef, at::IntArrayRef,
                         at::IntArrayRef, at::IntArrayRef, at::ScalarType, int64_t) {
  return "this build of bsconv_fused._C has no CUDA kernels (built without nvcc or with BSCONV_FUSED_CPU_ONLY=1)";
}
#endif

}  // namespace bsconv_fused

TORCH_LIBRARY(bsconv_fused, m) {
  m.def(
      "cpp_forward(Tensor x, Tensor pw, Tensor dw, Tensor? bias, Tensor? mid_bias, int[] stride, int[] padding, "
      "int[] dilation, int activation=0) -> Tensor");
  m.def(
      "cpp_backward(Tensor grad_y, Tensor x, Tensor pw, Tensor dw, Tensor? mid_bias, int[] stride, int[] padding, "
      "int[] dilation, bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // No tensor arguments: a catch-all kernel (csrc/glue/cuda_refusal.h documents the contract).
  m.def(bsconv_fused::kCudaRefusalSchema, &bsconv_fused::cuda_refusal);
}

TORCH_LIBRARY_IMPL(bsconv_fused, CPU, m) {
  m.impl("cpp_forward", &bsconv_fused::forward_cpu);
  m.impl("cpp_backward", &bsconv_fused::backward_cpu);
}

#define BSCONV_STR2(x) #x
#define BSCONV_STR(x) BSCONV_STR2(x)

// A plain extension module (no pybind11): importing it runs the registrations above. Its attributes tell
// bsconv_fused/_ext.py what this build contains.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "bsconv_fused compiled ops (registered in torch.ops.bsconv_fused)", -1,
                                          nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef BSCONV_FUSED_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
#if defined(TORCH_VERSION_MAJOR)
  const char* torch_version =
      BSCONV_STR(TORCH_VERSION_MAJOR) "." BSCONV_STR(TORCH_VERSION_MINOR) "." BSCONV_STR(TORCH_VERSION_PATCH);
#else
  const char* torch_version = "unknown";
#endif
  if (PyModule_AddIntConstant(m, "WITH_CUDA", with_cuda) < 0 ||
      PyModule_AddStringConstant(m, "BUILT_WITH_TORCH", torch_version) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
