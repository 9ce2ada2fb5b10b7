"""BSConvS specifics: mid width, the merged pointwise path and its gradients, the orthonormality regulariser.

Oracles: the module's own submodules run one after the other (nn.Sequential.forward) for outputs and gradients,
a direct float64 computation of ||W W^T - I||_F for the loss, and the reference package when installed.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bsconv_fused.modules import BSConvS, BSConvS_ModelRegLossMixin, BSConvU, bsconvs_mid_channels, reg_loss

# float64, the merged path reassociates pw2 @ (pw1 @ x) into (pw2 @ pw1) @ x: a few ulps.
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c_in,p,min_mid,expected", [
    (64, 0.25, 4, 16), (16, 0.25, 4, 4), (3, 0.25, 4, 3), (10, 0.25, 4, 4), (10, 0.5, 4, 5),
    (10, 1.0, 4, 10), (10, 0.0, 4, 4), (10, 0.0, 1, 1), (7, 1 / 6, 1, 2),
])
def test_mid_channels(c_in, p, min_mid, expected):
    assert bsconvs_mid_channels(c_in, p, min_mid) == expected
    m = BSConvS(c_in, 5, 3, p=p, min_mid_channels=min_mid)
    assert m.mid_channels == expected
    assert m.pw1.weight.shape == (expected, c_in, 1, 1)
    assert m.pw2.weight.shape == (5, expected, 1, 1)


def test_mid_channels_match_reference_package():
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    for c_in in (1, 3, 5, 16, 33, 64):
        for p in (0.0, 1 / 6, 0.25, 0.5, 1.0):
            ref = ref_pkg.BSConvS(c_in, 8, 3, p=p)
            assert BSConvS(c_in, 8, 3, p=p).mid_channels == ref.pw1.out_channels


@pytest.mark.parametrize("stride,padding,dilation,bias", [(1, 1, 1, True), (2, 0, 1, False), (1, 2, 2, True)])
def test_merged_path_output_and_gradients_match_two_layer(stride, padding, dilation, bias):
    torch.manual_seed(0)
    m = BSConvS(12, 7, 3, stride=stride, padding=padding, dilation=dilation, bias=bias, p=0.5,
                backend="torch").double()
    assert m.fused_path_reason() is None
    x = torch.randn(2, 12, 8, 7, dtype=torch.float64, requires_grad=True)
    y_ref = nn.Sequential.forward(m, x)
    grad_out = torch.randn_like(y_ref)

    def run(fn):
        m.zero_grad(set_to_none=True)
        x.grad = None
        y = fn(x)
        (y * grad_out).sum().backward()
        return y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters()}

    y_f, gx_f, gp_f = run(m)
    y_r, gx_r, gp_r = run(lambda t: nn.Sequential.forward(m, t))
    torch.testing.assert_close(y_f, y_r, **TOL)
    torch.testing.assert_close(gx_f, gx_r, **TOL)
    assert set(gp_f) == {"pw1.weight", "pw2.weight", "dw.weight"} | ({"dw.bias"} if bias else set())
    for name in gp_r:
        torch.testing.assert_close(gp_f[name], gp_r[name], **TOL, msg=lambda s, n=name: f"{n}: {s}")
        assert gp_f[name].abs().max() > 0  # both pointwise weights really receive a gradient


def test_merged_pointwise_is_the_matrix_product():
    m = BSConvS(9, 6, 3, p=0.5).double()
    pw, mid_bias = m._fused_pointwise()
    assert mid_bias is None
    torch.testing.assert_close(pw[:, :, 0, 0], m.pw2.weight[:, :, 0, 0] @ m.pw1.weight[:, :, 0, 0], **TOL)
    assert pw.requires_grad and pw.grad_fn is not None  # inside the autograd graph, not a detached cache


def direct_reg_loss(w1: torch.Tensor) -> torch.Tensor:
    w = w1[:, :, 0, 0].double()
    d = w @ w.T - torch.eye(w.shape[0], dtype=torch.float64)
    return torch.sqrt((d * d).sum())  # unsquared Frobenius norm, written out


@pytest.mark.parametrize("c_in,p", [(16, 0.25), (8, 1.0), (30, 0.2)])
def test_reg_loss_value(c_in, p):
    torch.manual_seed(c_in)
    m = BSConvS(c_in, 8, 3, p=p).double()
    torch.testing.assert_close(m._reg_loss(), direct_reg_loss(m.pw1.weight), rtol=1e-12, atol=0)
    # Orthonormal rows (mid <= in) give zero loss: W W^T = I.
    q, _ = torch.linalg.qr(torch.randn(c_in, m.mid_channels, dtype=torch.float64))
    with torch.no_grad():
        m.pw1.weight.copy_(q.T[:, :, None, None])
    assert m._reg_loss().item() < 1e-12
    # A scaled orthonormal W gives ||(s^2 - 1) I||_F = |s^2 - 1| * sqrt(mid).
    with torch.no_grad():
        m.pw1.weight.mul_(2.0)
    torch.testing.assert_close(m._reg_loss().item(), 3.0 * math.sqrt(m.mid_channels), rtol=1e-12, atol=0)


def test_reg_loss_gradient_reaches_pw1_only():
    m = BSConvS(16, 8, 3)
    m._reg_loss().backward()
    assert m.pw1.weight.grad is not None and m.pw1.weight.grad.abs().max() > 0
    assert m.pw2.weight.grad is None and m.dw.weight.grad is None


def test_reg_loss_float32_module_returns_float32():
    m = BSConvS(16, 8, 3)
    loss = m._reg_loss()
    assert loss.dtype == torch.float32 and loss.dim() == 0


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = BSConvS(16, 8, 3, padding=1)
        self.b = nn.Sequential(nn.ReLU(), BSConvS(8, 12, 3, p=0.5, with_bn=True))
        self.c = BSConvU(12, 4, 3)  # no _reg_loss: not counted


class _MixedNet(BSConvS_ModelRegLossMixin, _Net):
    pass


@pytest.mark.parametrize("alpha", [0.1, 1.0, 0.0, 2.5])
def test_model_reg_loss_sums_and_scales(alpha):
    torch.manual_seed(1)
    net = _Net()
    expected = alpha * (direct_reg_loss(net.a.pw1.weight) + direct_reg_loss(net.b[1].pw1.weight))
    torch.testing.assert_close(reg_loss(net, alpha=alpha).double(), expected, rtol=1e-5, atol=1e-6)


def test_model_reg_loss_default_alpha_and_mixin():
    torch.manual_seed(2)
    net = _MixedNet()
    total = net.a._reg_loss() + net.b[1]._reg_loss()
    torch.testing.assert_close(net.reg_loss(), 0.1 * total)
    torch.testing.assert_close(reg_loss(net), 0.1 * total)
    torch.testing.assert_close(net.reg_loss(alpha=0.5), 0.5 * total)
    # the loss trains: its gradient reaches every BSConvS's pw1
    net.reg_loss().backward()
    assert net.a.pw1.weight.grad is not None and net.b[1].pw1.weight.grad is not None


def test_model_reg_loss_without_bsconvs_is_zero():
    loss = reg_loss(nn.Sequential(nn.Conv2d(3, 4, 3), BSConvU(4, 4, 3)), alpha=0.3)
    assert isinstance(loss, torch.Tensor) and float(loss) == 0.0


def test_model_reg_loss_counts_reference_layers_too():
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    torch.manual_seed(3)
    net = nn.Sequential(BSConvS(16, 8, 3), ref_pkg.BSConvS(8, 8, 3))
    expected = 0.1 * (net[0]._reg_loss() + net[1]._reg_loss())
    torch.testing.assert_close(reg_loss(net), expected)
    # and the reference's own mixin method gives the same number on our layers
    torch.testing.assert_close(ref_pkg.BSConvS_ModelRegLossMixin.reg_loss(net), expected)
