"""The compiled extension's ops on CUDA tensors: the CUDA kernels behind the glue in csrc/glue/cuda_impl.cpp.

Parity with the float64 reference is in tests/test_parity.py (backend "cuda"); here is what the glue adds: a device guard (tensors on cuda:1), the current stream, the deterministic mode, weight gradients in the
weight dtype, opcheck. Skips without a GPU or without CUDA kernels in the build.
"""
from __future__ import annotations

import functools

import pytest
import torch

from bsconv_fused import _ext
from bsconv_fused.testing import Case, make_inputs

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not _ext.has_cuda_kernels(), reason=f"no CUDA kernels in the extension: {_ext.cuda_reason()}"),
]


def test_current_stream():
    c = Case(N=2, C_in=16, C_out=32, H=24, W=24, dtype=torch.float16)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    expected = _ext.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = _ext.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_deterministic_backward(monkeypatch):
    monkeypatch.setenv("BSCONV_FUSED_DETERMINISTIC", "1")
    c = Case(N=4, C_in=32, C_out=64, H=40, W=40, dtype=torch.float32)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    y = _ext.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    gy = torch.randn_like(y)
    runs = [_ext.backward_op()(gy, x, pw, dw, mid, [1, 1], [1, 1], [1, 1], [True] * 5) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_weight_grads_in_weight_dtype():
    c = Case(dtype=torch.bfloat16)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    y = _ext.forward_op()(x, pw, dw, bias, mid, [1, 1], [1, 1], [1, 1])
    grads = _ext.backward_op()(torch.randn_like(y), x, pw, dw, mid, [1, 1], [1, 1], [1, 1], [True] * 5)
    for g, ref in zip(grads, (x, pw, dw, mid, mid)):
        assert g.dtype == torch.bfloat16 and g.shape == ref.shape and g.is_contiguous()


def test_opcheck():
    c = Case(C_in=6, C_out=12, H=7, W=8, dtype=torch.float32)
    x, pw, dw, bias, mid = (t.detach() for t in make_inputs(c, "cuda"))
    pw = pw.reshape(pw.shape[0], -1)
    torch.library.opcheck(_ext.forward_op(), (x, pw, dw, bias, mid, [2, 1], [1, 2], [1, 2]))
    y = _ext.forward_op()(x, pw, dw, bias, mid, [2, 1], [1, 2], [1, 2])
    torch.library.opcheck(_ext.backward_op(),
                          (torch.randn_like(y), x, pw, dw, mid, [2, 1], [1, 2], [1, 2], [True] * 5))


def test_float64_is_rejected_with_reason():
    x, pw, dw = torch.randn(1, 3, 5, 5, device="cuda", dtype=torch.float64), \
        torch.randn(4, 3, device="cuda", dtype=torch.float64), torch.randn(4, 1, 3, 3, device="cuda",
                                                                           dtype=torch.float64)
    with pytest.raises(TypeError, match="CUDA kernels support float32, float16 and bfloat16"):
        _ext.forward_op()(x, pw, dw, None, None, [1, 1], [1, 1], [1, 1])
