"""The network benchmark's models (MobileNetV1-BSConvU, CIFAR ResNet-BSConvU): structure, agreement with the
reference package's get_model, and the fused path through a whole network. The rest of the zoo: tests/test_zoo.py."""
from __future__ import annotations

import pytest
import torch

from bsconv_fused import BSConvU
from bsconv_fused.models import cifar_resnet_bsconvu, get_model, mobilenetv1_bsconvu, set_backend

NAMES = [("mobilenetv1_w1_bsconvu", 1000, 224, 4230990, 13), ("cifar_resnet110_bsconvu", 100, 32, 244810, 109),
         ("cifar_mobilenetv1_w1d2_bsconvu", 10, 32, None, 13), ("cifar_resnet20_bsconvu", 10, 32, None, 19)]


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,classes,size,params,n_bsconv", NAMES)
def test_structure(name, classes, size, params, n_bsconv):
    m = get_model(name, classes, backend="torch")
    if params is not None:  # the counts the reference README quotes (ResNet-110-BSConvU: 0.24M)
        assert _count(m) == params
    layers = [x for x in m.modules() if isinstance(x, BSConvU)]
    assert len(layers) == n_bsconv and all(x.backend == "torch" for x in layers)
    set_backend(m, "auto")
    assert all(x.backend == "auto" for x in layers)


@pytest.mark.parametrize("name,classes,size,params,n_bsconv", NAMES)
def test_matches_reference_get_model(name, classes, size, params, n_bsconv):
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    ref = ref_pkg.get_model(name, num_classes=classes)
    ours = get_model(name, classes, backend="torch")
    assert _count(ours) == _count(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), ours.eval()
    x = torch.randn(1, 3, min(size, 64), min(size, 64))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_builders_match_get_model():
    a, b = cifar_resnet_bsconvu(20, 10, backend="triton"), get_model("cifar_resnet20_bsconvu", 10)
    assert list(a.state_dict()) == list(b.state_dict()) and _count(a) == _count(b)
    assert all(x.backend == "triton" for x in a.modules() if isinstance(x, BSConvU))
    c, d = mobilenetv1_bsconvu(10, 0.25, cifar=True), get_model("cifar_mobilenetv1_w1d4_bsconvu", 10)
    assert list(c.state_dict()) == list(d.state_dict()) and _count(c) == _count(d)


def test_fused_backend_runs_the_same_network(triton_device):
    # The smallest BSConv-U network of the zoo (13 BSConvU layers); 8x8 keeps the interpreter quick.
    ours = get_model("cifar_wrn16_1_bsconvu", 10, backend="torch").eval()
    fused = get_model("cifar_wrn16_1_bsconvu", 10, backend="triton").eval()
    fused.load_state_dict(ours.state_dict())
    ours, fused = ours.to(triton_device), fused.to(triton_device)
    seen = []
    layer = fused.backbone.stage2.unit1.conv1.conv
    layer.register_forward_hook(lambda m, i, o: seen.append(o.grad_fn.name()))
    x = torch.randn(2, 3, 8, 8, device=triton_device)
    got = fused(x)
    assert "triton_forward" in seen[0]
    with torch.no_grad():
        want = ours(x)
    # fp32 through 13 BSConv layers: the fused kernel sums the pointwise products in another order
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-4)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="name"):
        get_model("resnet18_bsconvq", 10)
    with pytest.raises(ValueError, match="depth"):
        get_model("cifar_resnet21_bsconvu", 10)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("cifar_resnet20_bsconvu", 0)
