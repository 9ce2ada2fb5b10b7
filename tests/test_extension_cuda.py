"""The compiled extension's ops on CUDA tensors: the CUDA kernels behind the glue in csrc/glue/cuda_impl.cpp.

Parity with the float64 reference is in tests/test_parity.py (backend "cuda"); here is what the glue adds: a device guard (tensors on cuda:1), the current stream, the deterministic mode, weight gradients in the
weight dtype, opcheck, and the refusal rule: bsconv_fused::cuda_refusal says before a call whether the kernels run
it, and a refused call raises NotImplementedError (no hidden fallback). Skips without CUDA kernels in the build; only
the cuda_refusal tests marked below run without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from bsconv_fused import _ext
from bsconv_fused.testing import Case, make_inputs

pytestmark = [
    pytest.mark.skipif(not _ext.has_cuda_kernels(), reason=f"no CUDA kernels in the extension: {_ext.cuda_reason()}"),
]

# Tests that need no GPU (the refusal query answers for a machine without one too).
NO_GPU_TESTS = {"test_refusal_without_device", "test_refusal_rejects_malformed_arguments"}


@pytest.fixture(autouse=True)
def _needs_gpu(request):
    name = request.node.originalname
    if name in NO_GPU_TESTS:
        return
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    if _pre_ampere() and name != "test_refusal_pre_ampere":
        pytest.skip("pre-sm_80 GPU: the kernels refuse it (test_refusal_pre_ampere checks how)")


def refusal(N=1, C_in=4, C_out=8, H=9, W=9, k=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
            dtype=torch.float16, device=0):
    return torch.ops.bsconv_fused.cuda_refusal(N, C_in, C_out, H, W, list(k), list(stride), list(padding),
                                               list(dilation), dtype, device)


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


def test_refusal_without_device():
    count = torch.cuda.device_count()
    assert refusal(device=count) == f"no CUDA device cuda:{count} ({count} visible)"
    assert refusal(device=-1).startswith("no CUDA device cuda:-1")
    assert "float32, float16 and bfloat16" in refusal(dtype=torch.float64)


def test_refusal_rejects_malformed_arguments():
    with pytest.raises(ValueError, match="kernel_size must have 2 entries"):
        refusal(k=(3,))
    with pytest.raises(ValueError, match="N, C_in, C_out, H and W must be >= 1"):
        refusal(C_in=0)
    with pytest.raises(ValueError, match="output would be empty"):
        refusal(H=2, W=2, padding=(0, 0))


def _pre_ampere() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] < 8


@pytest.mark.skipif(_pre_ampere(), reason="pre-sm_80 GPU: see test_refusal_pre_ampere")
def test_refusal_empty_for_runnable_calls():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert refusal(N=2, C_in=64, C_out=128, H=56, W=56, dtype=dtype) == ""


@pytest.mark.skipif(not _pre_ampere(), reason="needs a pre-sm_80 GPU")
def test_refusal_pre_ampere():
    assert "compute capability 8.0 or newer" in refusal()
    x, pw, dw = torch.randn(1, 3, 5, 5, device="cuda"), torch.randn(4, 3, device="cuda"), \
        torch.randn(4, 1, 3, 3, device="cuda")
    with pytest.raises(NotImplementedError, match="compute capability 8.0 or newer"):
        _ext.forward_op()(x, pw, dw, None, None, [1, 1], [1, 1], [1, 1])


@pytest.mark.skipif(_pre_ampere(), reason="pre-sm_80 GPU: every call is refused")
def test_refused_halo_raises_not_implemented():
    # 7x7 with dilation 400: the halo of a single output pixel (2401 x 2401 taps apart) cannot fit in shared memory.
    k, dil = 7, 400
    H = W = (k - 1) * dil + 1
    why = refusal(N=1, C_in=4, C_out=8, H=H, W=W, k=(k, k), padding=(0, 0), dilation=(dil, dil))
    assert "does not fit in shared memory" in why
    x = torch.randn(1, 4, H, W, device="cuda", dtype=torch.float16)
    pw = torch.randn(8, 4, device="cuda", dtype=torch.float16)
    dw = torch.randn(8, 1, k, k, device="cuda", dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="does not fit in shared memory"):
        _ext.forward_op()(x, pw, dw, None, None, [1, 1], [0, 0], [dil, dil])
    gy = torch.randn(1, 8, 1, 1, device="cuda", dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="does not fit in shared memory"):
        _ext.backward_op()(gy, x, pw, dw, None, [1, 1], [0, 0], [dil, dil], [False, False, True, False, False])
