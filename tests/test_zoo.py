"""The model zoo: every family and variant builds, parameter counts match the reference README, and with the
reference package installed, parameter counts, state_dict keys (in order, with shapes), outputs and reg_loss match
its get_model. Fast: models are built and counted; forwards run on tiny inputs with backend="torch"."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bsconv_fused import BSConvS, BSConvU
from bsconv_fused.models import get_model, list_families, set_backend
from bsconv_fused.models.mobilenet import RegularizedBottleneck


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _layers(m: nn.Module, kind) -> list:
    return [x for x in m.modules() if isinstance(x, kind)]


# The parameter counts the reference README quotes (in millions, two decimals), with its class counts.
README_COUNTS = [
    ("cifar_resnet110_bsconvu", 100, 0.24),
    ("cifar_resnet20", 100, 0.28),
    ("cifar_wrn28_10_bsconvs_p1d4", 100, 2.42),
    ("cifar_wrn40_10_bsconvs_p1d4", 100, 3.56),
    ("cifar_wrn40_3", 100, 5.06),
    ("cifar_mobilenetv1_w1_bsconvu", 10, 3.22),
]


@pytest.mark.parametrize("name,classes,millions", README_COUNTS)
def test_parameter_counts_of_the_reference_readme(name, classes, millions):
    assert round(_count(get_model(name, classes, backend="torch")) / 1e6, 2) == millions


# A representative set: every family, plain / U / S variants, ImageNet and CIFAR layouts, several widths.
REPRESENTATIVE = [
    ("resnet18", 1000), ("resnet10_bsconvu", 1000), ("resnet34_bsconvs_p1d8", 1000), ("preresnet18_bsconvu", 1000),
    ("preresnet10_bsconvs_p1d4", 1000), ("cifar_resnet20_bsconvu", 10), ("cifar_resnet56_bsconvs_p1d4", 100),
    ("cifar_preresnet20_bsconvu", 10), ("cifar_preresnet20_bsconvs_p1d2", 100), ("cifar_wrn16_2_bsconvu", 100),
    ("cifar_wrn16_4_bsconvs_p1d4", 10), ("cifar_wrn28_10_bsconvs_p1d4", 100),
    ("mobilenetv1_w1_bsconvu", 1000), ("mobilenetv1_w3d4", 1000), ("cifar_mobilenetv1_w1d2_bsconvu", 10),
    ("mobilenetv2_w1_bsconvs_p1d6", 1000), ("cifar_mobilenetv2_w1d2_bsconvs_p1d6", 100), ("mobilenetv2_w3d2", 10),
    ("mobilenetv3_small_w1_bsconvs_p1d6", 1000), ("cifar_mobilenetv3_small_w7d20_bsconvs_p1d6", 10),
    ("mobilenetv3_large_w3d4", 1000), ("cifar_mobilenetv3_large_w1_bsconvs_p1d6", 100),
    ("mobilenetv3_small_w3d2_bsconvs_p1d6", 10),
]


@pytest.mark.parametrize("name,classes", REPRESENTATIVE)
def test_counts_and_state_dict_keys_match_reference(name, classes):
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    ours, ref = get_model(name, classes, backend="torch"), ref_pkg.get_model(name, num_classes=classes)
    assert _count(ours) == _count(ref)
    so, sr = ours.state_dict(), ref.state_dict()
    assert list(so) == list(sr)
    assert all(so[k].shape == sr[k].shape for k in so)


# (name, input size): small enough for a quick CPU forward of the two-layer path
OUTPUT_CASES = [("cifar_resnet20_bsconvu", 16), ("cifar_preresnet20_bsconvs_p1d2", 16), ("cifar_wrn16_2_bsconvu", 16),
                ("resnet10_bsconvs_p1d4", 32), ("cifar_mobilenetv1_w1d4_bsconvu", 16),
                ("cifar_mobilenetv2_w1d2_bsconvs_p1d6", 16), ("cifar_mobilenetv3_small_w1_bsconvs_p1d6", 16),
                ("mobilenetv3_large_w1d2", 32)]


@pytest.mark.parametrize("name,size", OUTPUT_CASES)
def test_reference_checkpoint_loads_and_computes_the_same(name, size):
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    ref = ref_pkg.get_model(name, num_classes=10)
    ours = get_model(name, 10, backend="torch")
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        # fp32; eval-mode BSConv-S layers fold their BNs into one pointwise weight (reassociation, ~1e-6), and
        # torch's Hardswish rounds like the reference's x * relu6(x + 3) / 6 up to an ulp
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    if hasattr(ref, "reg_loss"):  # the reference binds it on BSConv-S networks only
        torch.testing.assert_close(ours.reg_loss(), ref.reg_loss())
        torch.testing.assert_close(ours.reg_loss(alpha=1.0), ref.reg_loss(alpha=1.0))


def test_variants_make_the_right_layers():
    u = get_model("resnet18_bsconvu", 10, backend="torch")
    assert len(_layers(u, BSConvU)) == 16 and not _layers(u, BSConvS)
    assert type(u.backbone.init_unit.conv.conv) is nn.Conv2d and u.backbone.init_unit.conv.conv.kernel_size == (7, 7)
    assert type(u.backbone.stage2.unit1.projection.conv) is nn.Conv2d  # 1x1 convs stay plain
    assert float(u.reg_loss()) == 0.0

    s = get_model("cifar_wrn16_4_bsconvs_p1d4", 10, backend="triton")
    layers = _layers(s, BSConvS)
    assert len(layers) == 13 and all(x.backend == "triton" and "bn1" in x._modules for x in layers)
    assert s.backbone.stage3.unit1.conv1.conv.mid_channels == 32  # ceil(128 / 4) of the 128-channel input
    assert s.backbone.init_unit.conv.conv.mid_channels == 3  # min(in, max(4, ceil(3 / 4)))
    torch.testing.assert_close(s.reg_loss(), 0.1 * sum(x._reg_loss() for x in layers))

    plain = get_model("cifar_resnet20", 10)
    assert not _layers(plain, (BSConvU, BSConvS))

    v2 = get_model("cifar_mobilenetv2_w1d2_bsconvs_p1d6", 10)
    assert len(_layers(v2, RegularizedBottleneck)) == 17 and not _layers(v2, (BSConvU, BSConvS))
    assert v2.reg_loss().item() > 0.0
    assert not _layers(get_model("mobilenetv2_w1", 10), RegularizedBottleneck)

    set_backend(s, "torch")
    assert all(x.backend == "torch" for x in layers)


def test_names_are_case_insensitive_and_layouts_differ():
    a = get_model("CIFAR_ResNet20_BSConvU", 10)
    assert a.in_size == (32, 32) and get_model("resnet10", 10).in_size == (224, 224)
    assert get_model("mobilenetv1_w1d4_bsconvu", 10).backbone.init_conv.conv.stride == (2, 2)
    assert get_model("cifar_mobilenetv1_w1d4_bsconvu", 10).backbone.init_conv.conv.stride == (1, 1)


@pytest.mark.parametrize("name,match", [
    ("resnet19", "depth"), ("cifar_resnet21_bsconvu", "depth"), ("cifar_wrn22_4", "depth"),
    ("vgg16", "name must match"), ("resnet18_bsconvx", "name must match"), ("cifar_resnet20_bsconvs_p1d0", "p1d0"),
    ("cifar_resnet20_bsconvs_p3d2", r"p must be in \[0, 1\]"), ("mobilenetv1_w1_bsconvs_p1d6", "BSConv-U variant"),
    ("mobilenetv2_w1_bsconvu", r"BSConv-S \(p=1/6\) variant only"),
    ("mobilenetv3_small_w1_bsconvs_p1d4", "p=1/6 only"), ("mobilenetv1_w1d0", "w1d0"), ("mobilenetv1_w0", "width"),
])
def test_bad_names(name, match):
    with pytest.raises(ValueError, match=match):
        get_model(name, 10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        get_model("cifar_resnet20_bsconvu", 0)
    with pytest.raises(ValueError, match="backend"):
        get_model("cifar_resnet20_bsconvu", 10, backend="gpu")
    with pytest.raises(TypeError, match="name"):
        get_model(20, 10)
    assert len(list_families()) == 6
