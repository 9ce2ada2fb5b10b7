"""Eval-mode BatchNorm folding in BSConvU / BSConvS: exact, border-correct, differentiable, never stale.

Oracle: the same module's submodules run one after the other (nn.Sequential.forward), i.e. the reference
computation with BN applied to the intermediate before the depthwise conv's zero padding. float64 on the CPU with
backend="torch", so the only difference is the reassociation of the fold (a few ulps); tolerances are set there.
A fold that added the shift before padding (the classic mistake) would be off by |shift * dw| at every border pixel,
which padding > 0 and non-zero running stats make visible.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bsconv_fused.modules import BSConvS, BSConvU
from module_helpers import randomize as _randomize

TOL = dict(rtol=1e-10, atol=1e-12)


def randomize(module: nn.Module, seed: int) -> nn.Module:
    # wider statistics than the state_dict tests: the fold must hold far from the identity
    return _randomize(module, seed, mean_scale=2.0, var_scale=3.0, var_floor=0.2)


def two_layer(module: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return nn.Sequential.forward(module, x)


def make(kind, c_in, c_out, k, affine, **kw):
    bn_kwargs = dict(affine=affine, eps=1e-3)
    if kind == "U":
        m = BSConvU(c_in, c_out, k, with_bn=True, bn_kwargs=bn_kwargs, backend="torch", **kw)
    else:
        m = BSConvS(c_in, c_out, k, with_bn=True, bn_kwargs=bn_kwargs, backend="torch", **kw)
    return randomize(m.double(), seed=c_in * 31 + c_out).eval()


GEOMETRIES = [
    dict(k=3, padding=1),
    dict(k=3, padding=2, dilation=2, stride=2),
    dict(k=(2, 5), padding=(1, 3)),  # even kernel, padding beyond the kernel's reach: whole border rows of padding
    dict(k=4, padding="same"),  # even kernel and 'same': asymmetric, the module falls back; must still be exact
    dict(k=3, padding="same", dilation=2),
    dict(k=1, padding=1),  # a 1x1 depthwise with padding: the border ring is pure dw.bias, no BN shift
]


@pytest.mark.parametrize("kind", ["U", "S"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "-".join(f"{k}{v}" for k, v in g.items()))
def test_fold_exact_at_borders(kind, affine, geom):
    geom = dict(geom)
    k = geom.pop("k")
    m = make(kind, 12, 7, k, affine, **geom)
    x = torch.randn(2, 12, 6, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = two_layer(m, x)
        got = m(x)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("kind", ["U", "S"])
def test_fold_is_taken_in_eval_and_the_shift_matters(kind):
    m = make(kind, 8, 6, 3, True, padding=1)
    assert m.fused_path_reason() is None
    pw, mid_bias = m._fused_pointwise()
    assert mid_bias is not None and mid_bias.abs().max() > 0.1  # the test data really exercises the shift
    # The classic wrong fold pushes the shift through the depthwise conv into its bias (shift * sum of taps), as if
    # the padding were filled with the shift too: right in the interior, wrong on the border ring.
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        wrong_bias = m.dw.bias + mid_bias * m.dw.weight.sum(dim=(1, 2, 3))
        wrong = nn.functional.conv2d(nn.functional.conv2d(x, pw), m.dw.weight, wrong_bias, padding=1, groups=6)
        right = m(x)
    torch.testing.assert_close(right[:, :, 1:-1, 1:-1], wrong[:, :, 1:-1, 1:-1], **TOL)
    border = torch.ones(5, 5, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert (right - wrong)[:, :, border].abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["U", "S"])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_gradients_match_two_layer(kind, affine):
    """In eval mode the fused path must give every parameter (conv weights, BN affine) and x the same gradient."""
    m = make(kind, 10, 6, 3, affine, padding=1, stride=2)
    x = torch.randn(2, 10, 7, 6, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn_like(two_layer(m, x))

    def grads(fn):
        m.zero_grad(set_to_none=True)
        x.grad = None
        (fn(x) * grad_out).sum().backward()
        return [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]

    fused = grads(m)
    ref = grads(lambda t: two_layer(m, t))
    names = ["x"] + [n for n, _ in m.named_parameters()]
    assert len(fused) == len(ref) == len(names)
    for name, a, b in zip(names, fused, ref):
        torch.testing.assert_close(a, b, **TOL, msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("kind", ["U", "S"])
def test_fold_follows_parameter_and_stat_updates(kind):
    """No cached fold: changing weights, BN affine or running stats in place changes the next output."""
    m = make(kind, 8, 6, 3, True, padding=1)
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        before = m(x)
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.running_mean.add_(0.5)
            bn.running_var.mul_(1.7)
            bn.weight.mul_(-1.3)
        first_pw = m[0]
        first_pw.weight.mul_(0.9)
        after = m(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, two_layer(m, x).detach(), **TOL)
    # and through an optimizer step
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(m(x), two_layer(m, x), **TOL)


@pytest.mark.parametrize("kind", ["U", "S"])
def test_fold_in_float32_close_to_float64(kind):
    """The fold of fp32 parameters is computed in fp32: compare fused fp32 with the float64 two-layer result."""
    m64 = make(kind, 16, 12, 3, True, padding=1)
    m32 = make(kind, 16, 12, 3, True, padding=1).float()
    m32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in m64.state_dict().items()})
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = two_layer(m64, x)
        got = m32(x.float()).double()
    # fp32 eps 1.2e-7; reductions of length 16 (pw) + 9 (dw) with O(1) data and a BN scale up to ~1/sqrt(0.2):
    # 1e-4 relative is generous for rounding and far below a wrong fold.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_bsconvs_fold_formula():
    """pw = diag(s2) W2 diag(s1) W1 and mid_bias = s2 * (W2 h1) + h2, derived by hand from BN's definition."""
    m = make("S", 12, 5, 3, True, padding=1)
    w1 = m.pw1.weight[:, :, 0, 0]
    w2 = m.pw2.weight[:, :, 0, 0]

    def affine(bn):
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return s, bn.bias - bn.running_mean * s

    s1, h1 = affine(m.bn1)
    s2, h2 = affine(m.bn2)
    pw, mid_bias = m._fused_pointwise()
    torch.testing.assert_close(pw[:, :, 0, 0], torch.diag(s2) @ w2 @ torch.diag(s1) @ w1, **TOL)
    torch.testing.assert_close(mid_bias, s2 * (w2 @ h1) + h2, **TOL)


@pytest.mark.parametrize("kind", ["U", "S"])
def test_track_running_stats_false_uses_batch_stats_even_in_eval(kind, recwarn):
    """No running statistics: BN normalises with batch statistics in eval mode too; the fused path folds them
    (bsconv_fused.bn_stats, tested in depth in test_bn_train.py)."""
    cls = BSConvU if kind == "U" else BSConvS
    m = cls(8, 6, 3, padding=1, with_bn=True, bn_kwargs=dict(track_running_stats=False), backend="torch").double()
    m.eval()
    assert m.fused_path_reason() is None
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(m(x), two_layer(m, x), **TOL)
    assert not [w for w in recwarn if "BSConv" in str(w.message)]


@pytest.mark.parametrize("kind", ["U", "S"])
def test_train_mode_is_fused_and_updates_running_stats(kind):
    cls = BSConvU if kind == "U" else BSConvS
    m = cls(8, 6, 3, padding=1, with_bn=True, backend="torch").double().train()
    assert m.fused_path_reason() is None
    bn = m[1]
    before = bn.running_mean.clone()
    m(torch.randn(2, 8, 5, 5, dtype=torch.float64) + 2)
    assert not torch.equal(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 1
