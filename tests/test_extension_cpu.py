"""The compiled extension's ops (bsconv_fused::cpp_forward / cpp_backward) on CPU tensors: the OpenMP kernels.

The shared parity suite (tests/test_parity.py, backend "cpu") covers outputs and all five gradients; here: many
strips and reduction slots, low precision through the op, then the ops themselves: gradcheck, opcheck, torch.compile, the output
contract (memory format, empty gradients), determinism, and the errors for bad input.
Everything skips when bsconv_fused._C is not built (bsconv_fused._ext.reason() says why).
"""
from __future__ import annotations

import functools

import pytest
import torch

from bsconv_fused import _ext, bsconv_u
from bsconv_fused.reference import bsconv_u_reference
from bsconv_fused.testing import GRAD_NAMES, Case, check, make_grad, make_inputs

pytestmark = pytest.mark.skipif(not _ext.available(), reason=f"extension unavailable: {_ext.reason()}")

fused = functools.partial(bsconv_u, backend="cpu")
F64 = torch.float64



# ------------------------------------------------------------------------------- beyond the shared parity suite
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2)], ids=str)
def test_many_strips(layout, stride):
    # Large enough that the forward runs several strips per band (halo rows slid, not recomputed) and the backward
    # several strips per image and several reduction slots; 64 channels at W=64 is ~32 KiB per float64 row.
    check(Case(N=2, C_in=8, C_out=64, H=70, W=64, k=(3, 3), padding=(1, 1), stride=stride, layout=layout,
               dtype=F64), fused, "cpu", backend="cpu")


@pytest.fixture
def num_threads():
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [
    dict(N=1, C_in=5, C_out=70),  # 2 threads: channel blocks of 48 + 22; 3 threads: 32 + 32 + 6
    dict(N=2, C_in=4, C_out=36),  # 3 threads: 3 blocks per image (16 + 16 + 4)
    dict(N=1, C_in=3, C_out=20),  # blocks would be under 16 channels: bands of output rows instead
], ids=["cblocks", "cblocks_n2", "bands"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_thread_splits(num_threads, threads, shape, layout):
    # How an image is split over threads (channel blocks, bands, one slot of weight-gradient sums per thread)
    # depends on the thread count; every split must give the same function.
    num_threads(threads)
    check(Case(layout=layout, H=9, W=7, mid=True, dtype=F64, **shape), fused, "cpu", backend="cpu")


def test_weight_sized_strips():
    # A pointwise weight larger than the strip budget (320 x 160 float64 = 400 KiB): the backward's strips grow
    # towards the weight's size and are balanced (40 rows: 14 + 14 + 12), d_pw is written by each slot's first
    # GEMM and accumulated after.
    check(Case(N=2, C_in=160, C_out=320, H=40, W=5, stride=(3, 3), padding=(1, 1), dtype=F64), fused, "cpu", backend="cpu")


# Low precision: the kernels keep the intermediate and dt in fp32 and accumulate in fp32, so each result is rounded
# once to the output type. One rounding costs 2^-8 (bf16) / 2^-11 (fp16) relative to the value, and values are at
# most max|ref|: 2.5 ulp of max|ref| leaves room for the fp32 sums (about 1e-6 relative) and for the
# inputs of the reference being the already-rounded low-precision tensors.
LOW_TOL = {torch.bfloat16: 2.5 * 2.0**-8, torch.float16: 2.5 * 2.0**-11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_low_precision(dtype, layout):
    c = Case(layout=layout, C_in=12, C_out=24, H=9, W=10, k=(3, 3), padding=(1, 1), dtype=dtype)
    x, pw, dw, bias, mid = make_inputs(c, "cpu")
    # The op itself (not bsconv_u): the backend policy may route float16 on the CPU elsewhere, the kernels take it.
    y = _ext.forward_op()(x, pw.reshape(pw.shape[0], -1), dw, bias, mid, list(c.stride), list(c.padding),
                             list(c.dilation))
    leaves = (x, pw, dw, bias, mid)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rx, rpw, rdw, rb, rm = ref_leaves
    ref = bsconv_u_reference(rx, rpw, rdw, rb, c.stride, c.padding, c.dilation, mid_bias=rm)
    gy = make_grad(c, y)
    grads = torch.autograd.grad(y, leaves, gy)
    rgrads = torch.autograd.grad(ref, ref_leaves, gy.double())
    assert y.dtype == dtype
    for name, a, r in [("y", y, ref)] + list(zip(GRAD_NAMES, grads, rgrads)):
        assert a.dtype == dtype, name
        err = (a.double() - r).abs().max().item() / max(1.0, r.abs().max().item())
        assert err <= LOW_TOL[dtype], (name, err)


# ------------------------------------------------------------------------------------------------ the ops
OPS_ARGS = dict(stride=[2, 1], padding=[1, 2], dilation=[1, 2])


def _op_inputs(dtype=F64, requires_grad=False, channels_last=False, N=2, C_in=3, C_out=5, H=7, W=6, k=(3, 3)):
    x = torch.randn(N, C_in, H, W, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pw = torch.randn(C_out, C_in, dtype=dtype)
    dw = torch.randn(C_out, 1, *k, dtype=dtype)
    bias = torch.randn(C_out, dtype=dtype)
    mid = torch.randn(C_out, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (x, pw, dw, bias, mid)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck(channels_last):
    inputs = _op_inputs(requires_grad=True, channels_last=channels_last)
    op = _ext.forward_op()
    fn = lambda x, pw, dw, b, m: op(x, pw, dw, b, m, **OPS_ARGS)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_opcheck_forward():
    op = _ext.forward_op()
    for requires_grad in (False, True):
        x, pw, dw, b, m = _op_inputs(requires_grad=requires_grad)
        torch.library.opcheck(op, (x, pw, dw, b, m, [2, 1], [1, 2], [1, 2]))
        torch.library.opcheck(op, (x, pw, dw, None, None, [1, 1], [0, 0], [1, 1]))
    x, pw, dw, b, m = _op_inputs(channels_last=True)
    torch.library.opcheck(op, (x, pw, dw, b, m, [1, 1], [1, 1], [1, 1]))


def test_opcheck_backward():
    op = _ext.backward_op()
    x, pw, dw, b, m = _op_inputs()
    y = _ext.forward_op()(x, pw, dw, b, m, [2, 1], [1, 2], [1, 2])
    gy = torch.randn_like(y)
    for mask in ([True] * 5, [True, False, True, False, False], [False, False, False, True, True]):
        torch.library.opcheck(op, (gy, x, pw, dw, m, [2, 1], [1, 2], [1, 2], mask))
    torch.library.opcheck(op, (gy, x, pw, dw, None, [2, 1], [1, 2], [1, 2], [True] * 5))


def test_backward_output_contract():
    x, pw, dw, b, m = _op_inputs(dtype=torch.float32, channels_last=True)
    y = _ext.forward_op()(x, pw, dw, b, m, [1, 1], [1, 1], [1, 1])
    assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(y)
    grads = _ext.backward_op()(gy, x, pw, dw, m, [1, 1], [1, 1], [1, 1], [True, False, True, False, True])
    dx, dpw, ddw, dbias, dmid = grads
    assert dx.shape == x.shape and dx.is_contiguous(memory_format=torch.channels_last)
    assert dpw.shape == (0,) and dbias.shape == (0,)  # not requested: empty, custom ops cannot return None
    assert ddw.shape == dw.shape and ddw.is_contiguous() and ddw.dtype == dw.dtype
    assert dmid.shape == m.shape


def test_compile_fullgraph():
    c = Case(C_in=4, C_out=8, H=6, W=7, dtype=torch.float32)
    x, pw, dw, bias, mid = make_inputs(c, "cpu")

    def f(x, pw, dw, bias, mid):
        return fused(x, pw, dw, bias, 1, 1, mid_bias=mid).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, pw, dw, bias, mid)
    grads = torch.autograd.grad(out, (x, pw, dw, bias, mid))
    ref = f(x, pw, dw, bias, mid)
    ref_grads = torch.autograd.grad(ref, (x, pw, dw, bias, mid))
    torch.testing.assert_close(out, ref)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)


def test_compile_inductor():
    x, pw, dw, b, m = _op_inputs(dtype=torch.float32)
    op = _ext.forward_op()
    f = lambda x: op(x, pw, dw, b, m, [1, 1], [1, 1], [1, 1]).relu()  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))


def test_backward_is_deterministic():
    # Fixed reduction partition (by shape and thread count), fixed summation order, no atomics: repeated runs give
    # identical bits at a given thread count. Across thread counts the partition (one slot per thread) and the BLAS
    # kernels change, so there only closeness is checked: d_mid_bias sums 3 * 40 * 33 = 3960 fp32 terms, and a
    # different order moves such a sum by a few 1e-5 relative (bound n * 2^-24 = 2.4e-4).
    c = Case(N=3, C_in=8, C_out=32, H=40, W=33, dtype=torch.float32)
    x, pw, dw, b, m = (t.detach() for t in make_inputs(c, "cpu"))
    pw = pw.reshape(pw.shape[0], -1)
    gy = torch.randn(3, 32, 40, 33)
    args = (gy, x, pw, dw, m, [1, 1], [1, 1], [1, 1], [True] * 5)
    saved = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            first = _ext.backward_op()(*args)
            second = _ext.backward_op()(*args)
            for a, b2 in zip(first, second):
                assert torch.equal(a, b2), threads
            results[threads] = first
    finally:
        torch.set_num_threads(saved)
    for a, b2 in zip(results[1], results[2]):
        torch.testing.assert_close(a, b2, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- bad input
def _fwd(x=None, pw=None, dw=None, bias=None, mid=None, stride=(1, 1), padding=(1, 1), dilation=(1, 1)):
    x0, pw0, dw0, _, _ = _op_inputs(dtype=torch.float32)
    return _ext.forward_op()(x0 if x is None else x, pw0 if pw is None else pw, dw0 if dw is None else dw,
                                bias, mid, list(stride), list(padding), list(dilation))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.randn(3, 7, 6)), ValueError, r"x must be 4-D"),
    (dict(pw=torch.randn(5, 4)), ValueError, r"pw has 4 input channels but x has C_in=3"),
    (dict(pw=torch.randn(5, 3, 1, 1)), ValueError, r"pw must be the 2-D \(C_out, C_in\)"),
    (dict(dw=torch.randn(5, 2, 3, 3)), ValueError, r"dw must have shape \(C_out, 1, kh, kw\)"),
    (dict(dw=torch.randn(4, 1, 3, 3)), ValueError, r"dw has 4 channels but pw has C_out=5"),
    (dict(bias=torch.randn(4)), ValueError, r"bias must have shape \(C_out,\)"),
    (dict(mid=torch.randn(5, 1)), ValueError, r"mid_bias must have shape \(C_out,\)"),
    (dict(stride=(0, 1)), ValueError, r"stride must be >= 1"),
    (dict(stride=(1, 1, 1)), ValueError, r"stride must have 2 entries"),
    (dict(padding=(-1, 0)), ValueError, r"padding must be >= 0"),
    (dict(dilation=(1, 0)), ValueError, r"dilation must be >= 1"),
    (dict(padding=(0, 0), dilation=(4, 1)), ValueError, r"the output would be empty"),
    (dict(x=torch.randn(2, 3, 7, 6, dtype=torch.float64)), TypeError, r"same dtype"),
    (dict(x=torch.randint(0, 3, (2, 3, 7, 6))), TypeError, r"x must have a floating dtype"),
    (dict(x=torch.randn(0, 3, 7, 6)), ValueError, r"must be non-empty"),
], ids=["x_rank", "channels", "pw_rank", "dw_shape", "dw_channels", "bias", "mid_bias", "stride_zero",
        "stride_len", "padding", "dilation", "empty_output", "dtype_mix", "int_dtype", "empty_x"])
def test_forward_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _fwd(**kwargs)


def test_backward_errors():
    x, pw, dw, b, m = _op_inputs(dtype=torch.float32)
    op = _ext.backward_op()
    gy = torch.randn(2, 5, 7, 6)
    with pytest.raises(ValueError, match=r"grad_y must have the output shape \(2, 5, 7, 6\)"):
        op(gy[:, :, :5], x, pw, dw, m, [1, 1], [1, 1], [1, 1], [True] * 5)
    with pytest.raises(ValueError, match=r"output_mask must have 5 entries"):
        op(gy, x, pw, dw, m, [1, 1], [1, 1], [1, 1], [True] * 3)
    with pytest.raises(TypeError, match=r"grad_y must have x's dtype"):
        op(gy.double(), x, pw, dw, m, [1, 1], [1, 1], [1, 1], [True] * 5)


def test_cpu_dtype_error():
    x, pw, dw, b, m = (t.to(torch.complex64) for t in _op_inputs(dtype=torch.float32))
    with pytest.raises(TypeError, match=r"x must have a floating dtype"):
        _ext.forward_op()(x, pw, dw, b, m, [1, 1], [1, 1], [1, 1])


def test_ext_reports_loaded():
    assert _ext.load() is not None and _ext.reason() == ""
    assert isinstance(_ext.has_cuda_kernels(), bool)
