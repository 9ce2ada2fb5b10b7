"""Model surgery: which convs the replacers take, what they become, and agreement with the reference replacers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bsconv_fused.convert import BSConvS_Replacer, BSConvU_Replacer
from bsconv_fused.modules import BSConvS, BSConvU



class MyConv(nn.Conv2d):  # subclasses are replaced too
    pass


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),                      # replaced
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Sequential(
            nn.Conv2d(16, 32, 5, stride=2, padding=2, dilation=1),       # replaced
            nn.Conv2d(32, 32, 3, padding=1, groups=32),                  # depthwise: kept
            nn.Conv2d(32, 24, 1),                                        # 1x1: kept
        ),
        MyConv(24, 24, (3, 3), padding=2, dilation=2, padding_mode="reflect"),  # replaced
        nn.Conv2d(24, 8, 7, padding=3),                                  # 7x7 not in the default list: kept
        nn.AdaptiveAvgPool2d(1),
    )


def kinds(model):
    return {name: type(m).__name__ for name, m in model.named_modules() if name.count(".") <= 1}


# small_net's reflect-padded conv runs the two-layer path by design (only zero padding is fused): its
# FallbackWarning is expected here
@pytest.mark.filterwarnings("ignore::bsconv_fused.backends.FallbackWarning")
def test_bsconvu_replacer_picks_the_right_convs():
    net = BSConvU_Replacer().apply(small_net())
    assert isinstance(net[0], BSConvU) and isinstance(net[3][0], BSConvU) and isinstance(net[4], BSConvU)
    assert type(net[3][1]) is nn.Conv2d and type(net[3][2]) is nn.Conv2d and type(net[5]) is nn.Conv2d
    assert net[0].dw.bias is None and net[3][0].dw.bias is not None
    assert net[3][0].dw.stride == (2, 2) and net[3][0].dw.padding == (2, 2)
    assert net[4].dw.dilation == (2, 2) and net[4].dw.padding_mode == "reflect"
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 8, 1, 1)


def test_kernel_sizes_none_takes_every_size_and_replaced_layers_are_not_revisited():
    net = BSConvS_Replacer(kernel_sizes=None, with_bn=True).apply(small_net())
    # the 1x1 and 7x7 convs are replaced too; the new layers' own 1x1 convs are not
    assert isinstance(net[3][2], BSConvS) and isinstance(net[5], BSConvS)
    assert type(net[3][1]) is nn.Conv2d  # groups != 1
    assert type(net[0].pw1) is nn.Conv2d and [n for n, _ in net[0].named_children()] == ["pw1", "bn1", "pw2", "bn2",
                                                                                         "dw"]


def test_bsconvs_replacer_binds_reg_loss():
    net = BSConvS_Replacer(p=0.5).apply(small_net())
    layers = [m for m in net.modules() if isinstance(m, BSConvS)]
    assert len(layers) == 3
    torch.testing.assert_close(net.reg_loss(), 0.1 * sum(m._reg_loss() for m in layers))
    torch.testing.assert_close(net.reg_loss(alpha=1.0), sum(m._reg_loss() for m in layers))


def test_new_layers_take_device_dtype_mode_and_backend():
    net = small_net().double().eval()
    net = BSConvU_Replacer(with_bn=True, backend="torch").apply(net)
    assert net[0].pw.weight.dtype == torch.float64 and not net[0].training and net[0].backend == "torch"
    assert net[0].fused_path_reason() is None  # eval mode BN: the fused path


def test_root_conv_is_replaced():
    new = BSConvU_Replacer().apply(nn.Conv2d(4, 8, 3))
    assert isinstance(new, BSConvU) and new.pw.in_channels == 4 and new.dw.out_channels == 8


def test_existing_bsconv_layers_are_left_alone():
    layer = BSConvU(4, 1, 3)  # one output channel: its depthwise conv has groups == 1
    net = BSConvU_Replacer().apply(nn.Sequential(layer))
    assert net[0] is layer and type(layer.dw) is nn.Conv2d


def test_bad_replacer_arguments():
    with pytest.raises(ValueError, match="kernel_sizes"):
        BSConvU_Replacer(kernel_sizes=((0, 3),))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        BSConvS_Replacer(p=2.0)
    with pytest.raises(ValueError, match="backend"):
        BSConvU_Replacer(backend="nope")


# small_net's reflect-padded conv runs the two-layer path by design (only zero padding is fused): its
# FallbackWarning is expected here
@pytest.mark.filterwarnings("ignore::bsconv_fused.backends.FallbackWarning")
@pytest.mark.parametrize("which", ["U", "S"])
def test_same_result_as_reference_replacer(which):
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    if which == "U":
        ours, ref = BSConvU_Replacer(with_bn=True), ref_pkg.BSConvU_Replacer(with_bn=True)
    else:
        ours, ref = BSConvS_Replacer(p=0.5, with_bn=True), ref_pkg.BSConvS_Replacer(p=0.5, with_bn=True)
    a, b = ours.apply(small_net()), ref.apply(small_net())
    assert kinds(a) == kinds(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    # a checkpoint of the reference-converted model loads into ours and computes the same
    a.load_state_dict(sb, strict=True)
    a.eval()
    b.eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)  # fp32, BN fold reassociates
    if which == "S":
        torch.testing.assert_close(a.reg_loss(), b.reg_loss())


def test_verbosity_prints(capsys):
    BSConvU_Replacer(verbosity=2).apply(small_net())
    out = capsys.readouterr().out
    assert "replaced 0: Conv2d -> BSConvU" in out and "replaced 3 modules" in out
