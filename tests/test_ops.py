"""The custom ops: torch.library.opcheck (schema, fake kernels, autograd registration) and torch.compile with
fullgraph=True over the functional API, forward and backward."""
import pytest
import torch

from bsconv_fused import bsconv_u, ops

pytest.importorskip("triton")


def _args(device, dtype=torch.float32, mid=True, bias=True, channels_last=False):
    x = torch.randn(2, 5, 6, 7, dtype=dtype, device=device, requires_grad=True)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    pw = torch.randn(18, 5, dtype=dtype, device=device, requires_grad=True)
    dw = torch.randn(18, 1, 3, 3, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(18, dtype=dtype, device=device, requires_grad=True) if bias else None
    m = torch.randn(18, dtype=dtype, device=device, requires_grad=True) if mid else None
    return x, pw, dw, b, m


@pytest.mark.parametrize("mid,bias,channels_last", [(True, True, False), (False, False, True)])
def test_opcheck_forward(mid, bias, channels_last, triton_device):
    x, pw, dw, b, m = _args(triton_device, mid=mid, bias=bias, channels_last=channels_last)
    torch.library.opcheck(ops.triton_forward, (x, pw, dw, b, m, [1, 2], [1, 0], [1, 1]))


def test_opcheck_backward(triton_device):
    x, pw, dw, b, m = _args(triton_device)
    gy = torch.randn(2, 18, 6, 7, device=triton_device)
    for mask in ([True, True, True, True, True], [False, True, False, False, True]):
        torch.library.opcheck(ops.triton_backward, (gy, x.detach(), pw.detach(), dw.detach(), m.detach(),
                                                    [1, 1], [1, 1], [1, 1], mask))


def _block(x, pw, dw, b, m):
    return bsconv_u(x, pw, dw, b, 1, 1, mid_bias=m, backend="triton").relu().sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_and_backward(backend, triton_device):
    """No graph break anywhere (fullgraph=True raises on one), and the compiled gradients equal eager ones."""
    torch._dynamo.reset()
    args = _args(triton_device)
    eager = _block(*args)
    g_eager = torch.autograd.grad(eager, [a for a in args if a is not None])
    compiled = torch.compile(_block, fullgraph=True, backend=backend)
    out = compiled(*args)
    g_comp = torch.autograd.grad(out, [a for a in args if a is not None])
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-4)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_fake_kernels_match_real_metadata(triton_device):
    """The fake kernels promise shapes, dtypes and strides; the real kernels must deliver exactly those."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, pw, dw, b, m = (t.detach() if t is not None else None for t in _args(triton_device, channels_last=True))
    real = ops.triton_forward(x, pw, dw, b, m, [2, 1], [1, 1], [1, 2])
    with FakeTensorMode() as mode:
        fx, fpw, fdw, fb, fm = (mode.from_tensor(t) for t in (x, pw, dw, b, m))
        fake = ops.triton_forward(fx, fpw, fdw, fb, fm, [2, 1], [1, 1], [1, 2])
    assert fake.shape == real.shape and fake.stride() == real.stride() and fake.dtype == real.dtype
