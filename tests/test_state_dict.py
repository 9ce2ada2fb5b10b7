"""State_dict compatibility of BSConvU / BSConvS with the reference layout, both directions.

The oracle for outputs is the reference module itself (the `bsconv` package, skipped when absent) or, without the
package, a hand-built nn.Sequential in the reference layout holding the same state_dict.
Everything runs in float64 on the CPU; the fused path (backend="torch") reassociates the arithmetic (BN folded
into the weights, pw2 @ pw1 merged), so the tolerance is a few float64 ulps scaled by the reduction length, far
below any real error (a wrong fold is off by O(1)).
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from bsconv_fused.modules import BSConvS, BSConvU
from module_helpers import randomize

TOL = dict(rtol=1e-10, atol=1e-12)


CONFIGS = [
    # (layer, args, kwargs)
    ("U", (6, 10, 3), dict(padding=1)),
    ("U", (6, 10, (3, 5)), dict(stride=2, padding=(1, 2), bias=False)),
    ("U", (5, 7, 3), dict(padding=1, with_bn=True)),
    ("U", (5, 7, 3), dict(padding=2, dilation=2, with_bn=True, bn_kwargs=dict(eps=1e-3, momentum=0.2))),
    ("S", (12, 9, 3), dict(padding=1)),
    ("S", (12, 9, 3), dict(padding=1, with_bn=True)),
    ("S", (20, 8, 5), dict(stride=2, padding=2, p=0.5, with_bn=True, bias=False)),
    ("S", (3, 8, 3), dict(padding=1, min_mid_channels=2)),
]


def ours(kind, args, kwargs):
    cls = BSConvU if kind == "U" else BSConvS
    return cls(*args, **kwargs, backend="torch")


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
@pytest.mark.parametrize("direction", ["ref_to_ours", "ours_to_ref"])
def test_reference_package_state_dict_round_trip(kind, args, kwargs, direction):
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    ref = (ref_pkg.BSConvU if kind == "U" else ref_pkg.BSConvS)(*args, **kwargs).double()
    mine = ours(kind, args, kwargs).double()
    src, dst = (ref, mine) if direction == "ref_to_ours" else (mine, ref)
    randomize(src, seed=1)
    assert list(src.state_dict().keys()) == list(dst.state_dict().keys())
    dst.load_state_dict(src.state_dict(), strict=True)
    # Same layers in the same order: iteration and indexing agree with the reference.
    assert [type(m) for m in mine] == [type(m) for m in ref]
    assert [n for n, _ in mine.named_children()] == [n for n, _ in ref.named_children()]
    x = torch.randn(2, args[0], 9, 11, dtype=torch.float64)
    for mode in ("eval", "train"):
        ref.train(mode == "train")
        mine.train(mode == "train")
        with torch.no_grad():
            expected = ref(x)
            got = mine(x)
        torch.testing.assert_close(got, expected, **TOL)


def test_reference_package_parameter_counts():
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    for kind, args, kwargs in CONFIGS:
        ref = (ref_pkg.BSConvU if kind == "U" else ref_pkg.BSConvS)(*args, **kwargs)
        mine = ours(kind, args, kwargs)
        assert sum(p.numel() for p in mine.parameters()) == sum(p.numel() for p in ref.parameters())
        assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_reference_package_reg_loss_equal():
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    ref = randomize(ref_pkg.BSConvS(24, 16, 3, p=0.25).double(), seed=3)
    mine = BSConvS(24, 16, 3, p=0.25, backend="torch").double()
    mine.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(mine._reg_loss(), ref._reg_loss(), rtol=1e-12, atol=0)


def hand_built_u(c_in, c_out, k, with_bn, **dw_kwargs) -> nn.Sequential:
    """The reference layout built by hand: what a checkpoint of any BSConvU implementation looks like."""
    layers = [("pw", nn.Conv2d(c_in, c_out, 1, bias=False))]
    if with_bn:
        layers.append(("bn", nn.BatchNorm2d(c_out)))
    layers.append(("dw", nn.Conv2d(c_out, c_out, k, groups=c_out, **dw_kwargs)))
    return nn.Sequential(OrderedDict(layers))


def hand_built_s(c_in, mid, c_out, k, with_bn, **dw_kwargs) -> nn.Sequential:
    layers = [("pw1", nn.Conv2d(c_in, mid, 1, bias=False))]
    if with_bn:
        layers.append(("bn1", nn.BatchNorm2d(mid)))
    layers.append(("pw2", nn.Conv2d(mid, c_out, 1, bias=False)))
    if with_bn:
        layers.append(("bn2", nn.BatchNorm2d(c_out)))
    layers.append(("dw", nn.Conv2d(c_out, c_out, k, groups=c_out, **dw_kwargs)))
    return nn.Sequential(OrderedDict(layers))


@pytest.mark.parametrize("with_bn", [False, True])
def test_hand_built_sequential_u_loads_and_matches(with_bn):
    seq = randomize(hand_built_u(4, 6, 3, with_bn, stride=2, padding=1).double(), seed=5).eval()
    mine = BSConvU(4, 6, 3, stride=2, padding=1, with_bn=with_bn, backend="torch").double().eval()
    mine.load_state_dict(seq.state_dict(), strict=True)
    assert mine.fused_path_reason() is None
    x = torch.randn(3, 4, 8, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), seq(x), **TOL)
    # and back: our state_dict loads into the hand-built layout
    seq2 = hand_built_u(4, 6, 3, with_bn, stride=2, padding=1).double().eval()
    seq2.load_state_dict(mine.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(seq2(x), seq(x), rtol=0, atol=0)


@pytest.mark.parametrize("with_bn", [False, True])
def test_hand_built_sequential_s_loads_and_matches(with_bn):
    # in=16, p=0.25 -> mid = max(4, ceil(4)) = 4
    seq = randomize(hand_built_s(16, 4, 8, 3, with_bn, padding=1, bias=False).double(), seed=6).eval()
    mine = BSConvS(16, 8, 3, padding=1, bias=False, with_bn=with_bn, backend="torch").double().eval()
    mine.load_state_dict(seq.state_dict(), strict=True)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), seq(x), **TOL)


def test_wrong_layout_is_rejected_by_strict_load():
    # A state_dict of the other layer (or a different mid width) must not load silently.
    mine = BSConvS(16, 8, 3, backend="torch")
    with pytest.raises(RuntimeError):
        mine.load_state_dict(hand_built_u(16, 8, 3, False).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        mine.load_state_dict(hand_built_s(16, 5, 8, 3, False).state_dict(), strict=True)
