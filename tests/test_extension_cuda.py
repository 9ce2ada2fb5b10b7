"""The compiled extension's ops on CUDA tensors: the CUDA kernels behind the glue in csrc/glue/cuda_impl.cpp.

Parity of outputs and all five gradients with the float64 reference (tolerances of tests/parity.py), plus what the
glue adds: a device guard (tensors on cuda:1), the current stream, the deterministic mode, weight gradients in the
weight dtype, opcheck. Skips without a GPU or without CUDA kernels in the build.
"""
from __future__ import annotations

import functools

import pytest
import torch

from bsconv_fused import _ext, bsconv_u, cpp_ops
from parity import Case, KERNELS, STRIDE_PADDING_DILATION, check, make_inputs

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not _ext.has_cuda_kernels(), reason=f"no CUDA kernels in the extension: {_ext.cuda_reason()}"),
]

fused = functools.partial(bsconv_u, backend="cuda")


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: f"k{k[0]}x{k[1]}")
def test_kernel_sizes(k):
    check(Case(k=k, padding=(k[0] // 2, k[1] // 2), H=8, W=9), fused, "cuda")


@pytest.mark.parametrize("stride,padding,dilation", STRIDE_PADDING_DILATION, ids=str)
def test_stride_padding_dilation(stride, padding, dilation):
    check(Case(stride=stride, padding=padding, dilation=dilation, H=11, W=10), fused, "cuda")


@pytest.mark.parametrize("bias,mid", [(False, False), (True, False), (False, True), (True, True)])
def test_bias_and_mid_bias(bias, mid):
    check(Case(bias=bias, mid=mid), fused, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_dtypes_and_layouts(dtype, layout):
    check(Case(dtype=dtype, layout=layout, C_in=6, C_out=18, H=7, W=9), fused, "cuda")


@pytest.mark.parametrize("grad_layout", ["transposed", "expanded"])
def test_non_contiguous_grad_output(grad_layout):
    check(Case(grad_layout=grad_layout), fused, "cuda")


@pytest.mark.parametrize("shape", [
    dict(N=1, C_in=3, C_out=16, H=13, W=7),
    dict(N=3, C_in=70, C_out=40, H=5, W=6),
    dict(N=2, C_in=17, C_out=9, H=1, W=12, k=(1, 3), padding=(0, 1)),
    dict(N=2, C_in=32, C_out=64, H=56, W=56, dtype=torch.float16),
], ids=["cin3", "multiblock", "one_row", "real_layer"])
def test_odd_shapes(shape):
    check(Case(**shape), fused, "cuda")


@pytest.mark.parametrize("requires", [
    (True, False, False, False, False),
    (False, True, False, False, False),
    (False, False, True, False, False),
    (False, False, False, True, True),
], ids=["dx", "dpw", "ddw", "biases"])
def test_partial_gradients(requires):
    check(Case(requires=requires), fused, "cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    check(Case(dtype=torch.float16), fused, "cuda:1")


def test_current_stream():
    c = Case(N=2, C_in=16, C_out=32, H=24, W=24, dtype=torch.float16)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    expected = cpp_ops.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = cpp_ops.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_deterministic_backward(monkeypatch):
    monkeypatch.setenv("BSCONV_FUSED_DETERMINISTIC", "1")
    c = Case(N=4, C_in=32, C_out=64, H=40, W=40, dtype=torch.float32)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    y = cpp_ops.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    gy = torch.randn_like(y)
    runs = [cpp_ops.backward_op()(gy, x, pw, dw, mid, [1, 1], [1, 1], [1, 1], [True] * 5) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_weight_grads_in_weight_dtype():
    c = Case(dtype=torch.bfloat16)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    y = cpp_ops.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    grads = cpp_ops.backward_op()(torch.randn_like(y), x, pw, dw, mid, [1, 1], [1, 1], [1, 1], [True] * 5)
    for g, ref in zip(grads, (x, pw, dw, mid, mid)):
        assert g.dtype == torch.bfloat16 and g.shape == ref.shape and g.is_contiguous()


def test_opcheck():
    c = Case(C_in=6, C_out=12, H=7, W=8, dtype=torch.float32)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    torch.library.opcheck(cpp_ops.forward_op(), (x, pw, dw, bias, mid, [2, 1], [1, 2], [1, 2]))
    y = cpp_ops.forward_op()(x, pw, dw, bias, mid, [2, 1], [1, 2], [1, 2])
    torch.library.opcheck(cpp_ops.backward_op(),
                          (torch.randn_like(y), x, pw, dw, mid, [2, 1], [1, 2], [1, 2], [True] * 5))


def test_float64_is_rejected_with_reason():
    x, pw, dw = torch.randn(1, 3, 5, 5, device="cuda", dtype=torch.float64), \
        torch.randn(4, 3, device="cuda", dtype=torch.float64), torch.randn(4, 1, 3, 3, device="cuda",
                                                                           dtype=torch.float64)
    with pytest.raises(TypeError, match="CUDA kernels support float32, float16 and bfloat16"):
        cpp_ops.forward_op()(x, pw, dw, None, None, [1, 1], [1, 1], [1, 1])
