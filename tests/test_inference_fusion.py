"""fuse_for_inference: folded BNs (inside and after the layer), merged BSConvS pointwise convs, absorbed activations.

Oracle: the unfused eval-mode model on the same input in float64 (its BSConv layers run the two-layer path with
backend="torch", so the oracle shares no code with the fused op). The fused layers name their backend explicitly
and the tests check that the fused op ran.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bsconv_fused import FallbackWarning, backends
from bsconv_fused.inference import FUSABLE_ACTIVATIONS, FusedBSConv, fuse_for_inference
from bsconv_fused.models import get_model, set_backend
from bsconv_fused.modules import BSConvS, BSConvU, _BSConvBase

EXT = "cpu" if "cpu" in backends.BACKENDS else "cuda"
# float64: the folds reassociate products of O(1) factors (BN scale up to 1/sqrt(0.3)); a few ulps per layer, and
# whole networks compound them over ~15-20 layers of O(1-100) activations.
TOL = dict(rtol=1e-9, atol=1e-9)


def random_bn_stats(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN statistics and affine everywhere (the defaults would make every BN fold the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.3)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.5)
    return model


def fused_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` with hooks that check every FusedBSConv ran a fused op (autograd node of its output)."""
    nodes = []

    def hook(mod, inp, out):
        node = out.grad_fn
        while node is not None and not any(k in node.name() for k in ("cpp_forward", "triton_forward")):
            node = node.next_functions[0][0] if node.next_functions else None
        nodes.append(node)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, FusedBSConv)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FallbackWarning)
            y = model(x.requires_grad_())
    finally:
        for h in handles:
            h.remove()
    assert nodes and all(n is not None for n in nodes), "a FusedBSConv did not run the fused op"
    return y.detach()


@pytest.mark.parametrize("name", ["cifar_mobilenetv1_w1d4_bsconvu", "cifar_resnet20_bsconvu"])
def test_zoo_models_fused_equal_unfused(name):
    torch.manual_seed(0)
    model = random_bn_stats(get_model(name, 10, backend="torch").double(), seed=1).eval()
    fused = fuse_for_inference(model)
    set_backend(model, "torch")
    for m in fused.modules():
        if isinstance(m, FusedBSConv):
            m.backend = EXT
    n_layers = sum(isinstance(m, _BSConvBase) for m in model.modules())
    assert sum(isinstance(m, FusedBSConv) for m in fused.modules()) == n_layers
    assert not any(isinstance(m, _BSConvBase) for m in fused.modules())
    # every BN right after a BSConv is folded away: only those after plain convs (and MobileNet's data_bn) remain
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == n_bn - n_layers
    assert any(m.activation is not None for m in fused.modules() if isinstance(m, FusedBSConv))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(fused_outputs(fused, x), expected, **TOL)
    assert any(isinstance(m, _BSConvBase) for m in model.modules()), "not inplace: the original is untouched"


@pytest.mark.parametrize("kind", ["U", "S"])
@pytest.mark.parametrize("act", FUSABLE_ACTIVATIONS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("with_bn", [True, False])
def test_layer_bn_activation_folded_exactly(kind, act, with_bn):
    torch.manual_seed(1)
    cls = BSConvU if kind == "U" else BSConvS
    extra = dict(p=0.5) if kind == "S" else {}
    layer = cls(8, 6, 3, stride=2, padding=2, dilation=2, with_bn=with_bn, backend="torch", **extra)
    seq = random_bn_stats(nn.Sequential(layer, nn.BatchNorm2d(6), act()).double(), seed=2).eval()
    fused = fuse_for_inference(seq)
    f = fused[0]
    assert isinstance(f, FusedBSConv) and isinstance(f.activation, act)
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[2], nn.Identity)
    assert f.pw_weight.shape == (6, 8, 1, 1)  # BSConvS: pw2 @ pw1 merged into one pointwise conv
    assert (f.mid_bias is not None) == with_bn
    f.backend = EXT
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64) + 0.5  # padding 2 with dilation 2: border rings matter
    with torch.no_grad():
        expected = seq(x)
    torch.testing.assert_close(fused_outputs(fused, x), expected, **TOL)


def test_only_direct_followers_are_absorbed():
    layer = BSConvU(4, 6, 3, padding=1, with_bn=True, backend="torch")
    hooked_bn = nn.BatchNorm2d(6)
    hooked_bn.register_forward_hook(lambda *a: None)
    seq = random_bn_stats(nn.Sequential(layer, hooked_bn, nn.ReLU(), BSConvU(6, 6, 3, padding=1, backend="torch"),
                                        nn.Dropout(0.5), nn.ReLU()).double(), seed=3).eval()
    fused = fuse_for_inference(seq)
    assert isinstance(fused[0], FusedBSConv) and fused[0].activation is None  # the BN with a hook stays
    assert fused[1] is not hooked_bn and isinstance(fused[1], nn.BatchNorm2d) and isinstance(fused[2], nn.ReLU)
    assert isinstance(fused[3], FusedBSConv) and fused[3].activation is None  # Dropout sits in between
    assert isinstance(fused[5], nn.ReLU)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), seq(x), **TOL)


def test_unfusable_layers_are_left_with_a_warning():
    seq = nn.Sequential(BSConvU(4, 6, 3, padding=1, padding_mode="reflect", backend="torch"), nn.ReLU(),
                        BSConvU(6, 6, 3, padding=1, with_bn=True, bn_kwargs=dict(track_running_stats=False),
                                backend="torch")).double().eval()
    with pytest.warns(UserWarning, match="left unfused") as rec:
        fused = fuse_for_inference(seq)
    assert len([w for w in rec if "left unfused" in str(w.message)]) == 2
    assert isinstance(fused[0], BSConvU) and isinstance(fused[1], nn.ReLU) and isinstance(fused[2], BSConvU)


def test_needs_eval_mode_and_a_module():
    m = nn.Sequential(BSConvU(4, 6, 3, with_bn=True))
    with pytest.raises(ValueError, match="eval mode"):
        fuse_for_inference(m)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fuse_for_inference(torch.zeros(1))


def test_single_layer_and_inplace():
    layer = random_bn_stats(BSConvS(8, 6, 3, padding=1, with_bn=True, backend=EXT).double(), seed=4).eval()
    f = fuse_for_inference(layer)
    assert isinstance(f, FusedBSConv) and f.activation is None
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = nn.Sequential.forward(layer, x)
    torch.testing.assert_close(fused_outputs(f, x), expected, **TOL)
    seq = nn.Sequential(layer).eval()
    assert fuse_for_inference(seq, inplace=True) is seq and isinstance(seq[0], FusedBSConv)


def test_fused_layer_through_triton(triton_device, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(2)
    seq = random_bn_stats(nn.Sequential(BSConvS(8, 8, 3, padding=1, with_bn=True, p=0.5, backend="torch"),
                                        nn.BatchNorm2d(8), nn.Hardswish()).double(), seed=5).eval()
    fused = fuse_for_inference(seq).float().to(triton_device)
    fused[0].backend = "triton"
    x = torch.randn(1, 8, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = seq(x)
    got = fused_outputs(fused, x.float().to(triton_device))
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-4, atol=1e-4)  # fp32 sums of <= 72 O(1) terms
