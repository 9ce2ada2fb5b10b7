"""The network suite's models: built from the public BSConvU layer, same parameter counts, state_dict keys and
outputs as the reference package's get_model (when it is installed)."""
from __future__ import annotations

import warnings

import pytest
import torch

from bsconv_fused import BSConvU
from bsconv_fused.models import get_model, set_backend

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


def test_fused_backend_runs_the_same_network():
    ours = get_model("cifar_resnet20_bsconvu", 10, backend="torch").eval()
    fused = get_model("cifar_resnet20_bsconvu", 10, backend="auto").eval()
    fused.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = ours(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "auto" may fall back to the two-layer path here, with a warning
        with torch.no_grad():
            got = fused(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="name"):
        get_model("resnet18", 10)
    with pytest.raises(ValueError, match="depth"):
        get_model("cifar_resnet21_bsconvu", 10)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("cifar_resnet20_bsconvu", 0)
