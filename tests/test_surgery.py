"""replace_conv2d with init="pretrained" (rank-1 per filter, rank-mid pointwise split), its per-layer error report,
BSConvU.from_sequential and convert_reference. Oracles: numpy's SVD (Eckart-Young), F.conv2d with the dense kernel
the new layer should compute, and the source modules themselves."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bsconv_fused import BSConvS, BSConvU, Surgery, convert_reference, replace_conv2d
from bsconv_fused.convert import LayerReport


def _dense(layer) -> torch.Tensor:
    """The dense kernel a BSConvU / BSConvS without BN computes: (pw2 @ pw1 or pw)[o, i] * dw[o]."""
    if isinstance(layer, BSConvS):
        pw = layer.pw2.weight[:, :, 0, 0] @ layer.pw1.weight[:, :, 0, 0]
    else:
        pw = layer.pw.weight[:, :, 0, 0]
    return pw[:, :, None, None] * layer.dw.weight


def _best_rank1(w: torch.Tensor) -> np.ndarray:
    """Eckart-Young with numpy: each filter's leading SVD term."""
    a = w.detach().double().numpy().reshape(w.shape[0], w.shape[1], -1)
    out = np.empty_like(a)
    for o in range(a.shape[0]):
        u, s, vh = np.linalg.svd(a[o], full_matrices=False)
        out[o] = s[0] * np.outer(u[:, 0], vh[0])
    return out.reshape(w.shape)


def _rank1_conv(cin, cout, k, dtype, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, **kw).to(dtype)
    with torch.no_grad():
        a, v = torch.randn(cout, cin, dtype=dtype), torch.randn(cout, k, k, dtype=dtype)
        conv.weight.copy_(a[:, :, None, None] * v[:, None])
    return conv


# fp64: SVD residual ~1e-15; fp32: the weights are rounded to fp32 after the float64 factorisation
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["u", "s"])
def test_rank1_filters_convert_exactly(dtype, kind):
    conv = _rank1_conv(6, 5, 3, dtype, stride=2, padding=1, dilation=1)
    x = torch.randn(2, 6, 9, 7, dtype=dtype)
    want = conv(x)
    # p=1: mid = in = 6 >= rank of the 5 x 6 pointwise matrix, so BSConvS is exact too
    model, layers = replace_conv2d(nn.Sequential(conv), kind=kind, p=1.0, init="pretrained", backend="torch")
    assert isinstance(model[0], BSConvU if kind == "u" else BSConvS)
    assert layers[0].rel_error < 1e-6 and layers[0].worst_filter_error < 1e-6
    torch.testing.assert_close(_dense(model[0]), conv.weight, **TOL[dtype])
    torch.testing.assert_close(model(x), want, **TOL[dtype])


def test_general_filters_get_their_best_rank1_approximation():
    conv = nn.Conv2d(7, 4, (3, 5), padding=(1, 2), bias=True).double()
    x = torch.randn(1, 7, 6, 8, dtype=torch.float64)
    surgery = replace_conv2d(copy.deepcopy(nn.Sequential(conv)), init="pretrained", kernel_sizes=[(3, 5)],
                             backend="torch")
    new = surgery.model[0]
    best = torch.from_numpy(_best_rank1(conv.weight))
    torch.testing.assert_close(_dense(new), best, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(new.dw.bias, conv.bias, rtol=0, atol=0)
    # the layer computes the dense conv with the best rank-1 kernel
    torch.testing.assert_close(new(x), F.conv2d(x, best, conv.bias, padding=(1, 2)), rtol=1e-10, atol=1e-10)
    w = conv.weight.detach()
    rel = float((w - best).norm() / w.norm())
    worst = max(float((w[o] - best[o]).norm() / w[o].norm()) for o in range(4))
    assert surgery.layers[0].rel_error == pytest.approx(rel, rel=1e-9)
    assert surgery.layers[0].worst_filter_error == pytest.approx(worst, rel=1e-9)
    assert 0 < rel < 1


def test_bsconvs_pretrained_is_the_best_rank_mid_split_with_orthonormal_pw1():
    conv = nn.Conv2d(16, 12, 3, padding=1, bias=False).double()
    new = replace_conv2d(nn.Sequential(conv), kind="s", p=0.25, init="pretrained", backend="torch").model[0]
    assert new.mid_channels == 4
    pw1 = new.pw1.weight[:, :, 0, 0]
    torch.testing.assert_close(pw1 @ pw1.t(), torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    assert new._reg_loss().item() < 1e-12  # the BSConv-S regulariser starts at its minimum
    # oracle: rank-1 per filter (numpy), then numpy's best rank-4 approximation of the pointwise matrix
    u_ref = replace_conv2d(nn.Sequential(copy.deepcopy(conv)), init="pretrained", backend="torch").model[0]
    p = u_ref.pw.weight[:, :, 0, 0].detach().numpy()
    uu, ss, vh = np.linalg.svd(p)
    p4 = torch.from_numpy((uu[:, :4] * ss[:4]) @ vh[:4])
    torch.testing.assert_close(new.pw2.weight[:, :, 0, 0] @ pw1, p4, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["u", "s"])
def test_batchnorm_inside_starts_as_the_identity_in_eval_mode(kind):
    conv = nn.Conv2d(5, 6, 3, padding=1).double()
    a = replace_conv2d(nn.Sequential(copy.deepcopy(conv)), kind=kind, p=1.0, init="pretrained",
                       backend="torch").model.eval()
    b = replace_conv2d(nn.Sequential(copy.deepcopy(conv)), kind=kind, p=1.0, with_bn=True, init="pretrained",
                       bn_kwargs={"eps": 1e-3}, backend="torch").model.eval()
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(b(x), a(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="track_running_stats"):
        replace_conv2d(nn.Sequential(conv), with_bn=True, init="pretrained",
                       bn_kwargs={"track_running_stats": False})


def test_pretrained_network_keeps_most_of_its_function():
    # Filters of rank 1 plus 5% noise: the network's output moves by about as much as its kernels do.
    torch.manual_seed(1)
    net = nn.Sequential(_rank1_conv(3, 8, 3, torch.float64, padding=1), nn.ReLU(),
                        _rank1_conv(8, 8, 5, torch.float64, padding=2), nn.AdaptiveAvgPool2d(1)).double()
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.add_(0.05 * m.weight.std() * torch.randn_like(m.weight))
    x = torch.randn(4, 3, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        want = net(x)
    surgery = replace_conv2d(copy.deepcopy(net), init="pretrained", backend="torch")
    random = replace_conv2d(copy.deepcopy(net), init="random", backend="torch")
    assert [r.name for r in surgery.layers] == ["0", "2"] and all(r.rel_error < 0.1 for r in surgery.layers)
    assert all(r.rel_error is None for r in random.layers)
    with torch.no_grad():
        err = float((surgery.model(x) - want).norm() / want.norm())
        err_random = float((random.model(x) - want).norm() / want.norm())
    assert err < 0.1 < err_random


def test_fused_path_runs_the_converted_layer(triton_device):
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    layer = replace_conv2d(nn.Sequential(conv), init="pretrained", backend="triton").model[0].to(triton_device)
    x = torch.randn(1, 4, 5, 6, device=triton_device)
    got = layer(x)
    assert "triton_forward" in got.grad_fn.name()
    best = torch.from_numpy(_best_rank1(conv.weight)).float().to(triton_device)
    torch.testing.assert_close(got, F.conv2d(x, best, conv.bias.to(triton_device), padding=1), rtol=1e-4,
                               atol=1e-5)


def test_report_and_arguments():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 5)), nn.Conv2d(4, 4, 1))
    result = replace_conv2d(net, kind="s", init="pretrained", verbosity=0)
    assert isinstance(result, Surgery) and result.model is net and hasattr(net, "reg_loss")
    assert sorted(r.name for r in result.layers) == ["0", "1.0"]
    r = next(r for r in result.layers if r.name == "1.0")
    assert isinstance(r, LayerReport) and (r.replaced, r.layer, r.kernel_size) == ("Conv2d", "BSConvS", (5, 5))
    table = result.format()
    assert "1.0" in table and "BSConvS" in table
    root = replace_conv2d(nn.Conv2d(2, 3, 3), init="pretrained")
    assert isinstance(root.model, BSConvU) and root.layers[0].name == ""
    with pytest.raises(ValueError, match="kind"):
        replace_conv2d(nn.Conv2d(2, 3, 3), kind="x")
    with pytest.raises(ValueError, match="init"):
        replace_conv2d(nn.Conv2d(2, 3, 3), init="svd")
    with pytest.raises(TypeError, match="with_bn"):
        replace_conv2d(nn.Conv2d(2, 3, 3), with_bn=1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        replace_conv2d(nn.Conv2d(2, 3, 3), kind="s", p=1.5)
    with pytest.raises(TypeError, match="kernel_sizes"):
        replace_conv2d(nn.Conv2d(2, 3, 3), kernel_sizes=3)
    with pytest.raises(ValueError, match="backend"):
        replace_conv2d(nn.Conv2d(2, 3, 3), backend="gpu")


def test_verbosity_prints_the_table(capsys):
    replace_conv2d(nn.Sequential(nn.Conv2d(3, 4, 3)), init="pretrained", verbosity=2)
    out = capsys.readouterr().out
    assert "replaced 1 module" in out and "rel.err" in out


# ------------------------------------------------------------------------------------------- from_sequential
def _block(bn: bool, pw_bias: bool = False, dtype=torch.float64) -> nn.Sequential:
    layers = [nn.Conv2d(5, 6, 1, bias=pw_bias)]
    if bn:
        layers.append(nn.BatchNorm2d(6, eps=1e-3, momentum=0.2))
    layers.append(nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=6, bias=True))
    seq = nn.Sequential(*layers).to(dtype)
    if bn:
        with torch.no_grad():
            seq[1].running_mean.uniform_(-1, 1), seq[1].running_var.uniform_(0.5, 2)
            seq[1].weight.uniform_(0.5, 2), seq[1].bias.uniform_(-1, 1)
    return seq


@pytest.mark.parametrize("bn,pw_bias", [(False, False), (True, False), (True, True)])
def test_from_sequential_keeps_the_function(bn, pw_bias):
    seq = _block(bn, pw_bias)
    layer = BSConvU.from_sequential(seq, backend="torch")
    assert layer.pw.weight.dtype == torch.float64 and ("bn" in layer._modules) == bn
    assert layer.dw.dilation == (2, 2) and layer.dw.stride == (2, 2)
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    # training mode: the same two layers (BN with batch statistics), the same running-stat updates
    torch.testing.assert_close(layer(x), seq(x), rtol=1e-12, atol=1e-12)
    if bn:
        torch.testing.assert_close(layer.bn.running_mean, seq[1].running_mean - (seq[0].bias if pw_bias else 0))
        torch.testing.assert_close(layer.bn.running_var, seq[1].running_var)
        assert layer.bn.eps == 1e-3 and layer.bn.momentum == 0.2
    layer.eval(), seq.eval()
    with torch.no_grad():  # eval mode: the fused path (BN folded) against the two layers
        torch.testing.assert_close(layer(x), seq(x), rtol=1e-12, atol=1e-12)


def test_from_sequential_rejects_what_is_not_a_bsconv():
    bad = [
        (nn.Conv2d(3, 3, 1), "nn.Sequential"),
        (nn.Sequential(nn.Conv2d(3, 4, 1, bias=False)), "2 or 3 layers"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=4)), "1x1 conv"),
        (nn.Sequential(nn.Conv2d(3, 4, 1, stride=2, bias=False), nn.Conv2d(4, 4, 3, groups=4)), "stride 1"),
        (nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 8, 3, groups=4)), "depthwise"),
        (nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4)), "BatchNorm2d"),
        (nn.Sequential(nn.Conv2d(3, 4, 1, bias=True), nn.Conv2d(4, 4, 3, groups=4)), "has a bias"),
        (nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.ReLU()), "nn.Conv2d"),
    ]
    for seq, match in bad:
        with pytest.raises(ValueError, match=match):
            BSConvU.from_sequential(seq)


def test_convert_reference_turns_plain_blocks_into_ours():
    block = _block(bn=True)
    other = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())  # not a pw -> dw block: kept
    ours = BSConvU(6, 6, 3, padding=1)
    net = nn.Sequential(block, other, ours).eval()
    x = torch.randn(1, 5, 8, 8, dtype=torch.float64)
    net = net.double()
    with torch.no_grad():
        want = net(x)
    out = convert_reference(net, backend="torch")
    assert out is net and type(net[0]) is BSConvU and type(net[1]) is nn.Sequential and net[2] is ours
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=1e-12, atol=1e-12)
    assert isinstance(convert_reference(_block(bn=False), backend="torch"), BSConvU)  # the root itself


def test_convert_reference_takes_reference_layers():
    ref = pytest.importorskip("bsconv.pytorch")
    net = nn.Sequential(ref.BSConvU(3, 8, 3, padding=1, with_bn=True), nn.ReLU(),
                        ref.BSConvS(8, 12, 5, stride=2, padding=2, p=0.3, min_mid_channels=2, with_bn=True,
                                    bn_kwargs={"eps": 1e-4}),
                        ref.BSConvS(12, 6, 3, p=0.5, bias=False))
    net = ref.BSConvS_Replacer().apply(net)  # binds the reference's reg_loss onto the root
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        want = net(x)
    want_reg = net.reg_loss()
    keys = list(net.state_dict())
    convert_reference(net, backend="torch")
    assert [type(m) for m in (net[0], net[2], net[3])] == [BSConvU, BSConvS, BSConvS]
    assert net[2].mid_channels == 3 and net[2].bn1.eps == 1e-4 and net[3].mid_channels == 6
    assert list(net.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=1e-4, atol=1e-5)  # fp32; the BN fold reassociates
    torch.testing.assert_close(net.reg_loss(), want_reg)


@pytest.mark.parametrize("kind,suffix,extra", [("u", "bsconvu", {}), ("s", "bsconvs_p1d4", {"with_bn": True})])
def test_surgery_on_a_plain_zoo_network_gives_its_bsconv_variant(kind, suffix, extra):
    from bsconv_fused.models import get_model

    plain = get_model("cifar_preresnet20", 10)
    converted = replace_conv2d(plain, kind=kind, init="pretrained", **extra).model
    target = get_model(f"cifar_preresnet20_{suffix}", 10)
    assert {k: v.shape for k, v in converted.state_dict().items()} == \
        {k: v.shape for k, v in target.state_dict().items()}
