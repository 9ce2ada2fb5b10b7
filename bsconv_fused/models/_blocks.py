"""Shared pieces of the model zoo: conv + BN + activation units, the classifier head and the BSConv variant that
decides what a KxK conv becomes. Submodule names follow the reference package (``conv``, ``bn``, ``activation``,
``classifier.conv``, ...), so its checkpoints load with strict=True."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..modules import BSConvS, BSConvS_ModelRegLossMixin, BSConvU, _check_backend


# ------------------------------------------------------------------------------------------------ activations
def activation(name: str) -> nn.Module:
    """The reference's activations. torch's Hardswish/Hardsigmoid compute its ``x * relu6(x + 3) / 6`` and
    ``relu6(x + 3) / 6`` (up to rounding); all are parameter-free, so state_dicts are unaffected."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "hswish":
        return nn.Hardswish()
    if name == "hsigmoid":
        return nn.Hardsigmoid()
    raise ValueError(f"activation must be one of relu, relu6, hswish, hsigmoid, got {name!r}")


class ConvUnit(nn.Module):
    """``conv`` (an nn.Conv2d or a BSConv layer), then optionally ``bn`` and ``activation``."""

    def __init__(self, conv: nn.Module, out_channels: int, bn: bool = True, act: Optional[str] = "relu"):
        super().__init__()
        self.conv = conv
        if bn:
            self.bn = nn.BatchNorm2d(out_channels)
        if act is not None:
            self.activation = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if "bn" in self._modules:
            x = self.bn(x)
        if "activation" in self._modules:
            x = self.activation(x)
        return x


def plain_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
               bias: bool = False) -> nn.Conv2d:
    """A conv with "same"-style padding ``kernel_size // 2`` (the only padding the zoo uses)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                     bias=bias)


class SEUnit(nn.Module):
    """Squeeze-and-excitation: pool, 1x1 conv (bias) to ``channels // squeeze_factor``, ReLU, 1x1 conv back,
    hard sigmoid, scale the input."""

    def __init__(self, channels: int, squeeze_factor: int = 4):
        super().__init__()
        squeezed = channels // squeeze_factor
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Conv2d(channels, squeezed, 1, bias=True)
        self.activation1 = activation("relu")
        self.conv2 = nn.Conv2d(squeezed, channels, 1, bias=True)
        self.activation2 = activation("hsigmoid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.activation2(self.conv2(self.activation1(self.conv1(self.pool(x)))))
        return x * s


class Classifier(nn.Module):
    """A 1x1 conv with bias to the class count, flattened (the reference's head)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1, bias=True)
        nn.init.xavier_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


# ---------------------------------------------------------------------------------------------- BSConv variant
@dataclass(frozen=True)
class Variant:
    """What a 3x3 / 5x5 conv of a zoo network becomes, as the reference's replacers would make it.

    ``kind`` None: a plain nn.Conv2d; "u": BSConvU without BN (the reference's ``_bsconvu``); "s": BSConvS with BN
    and subspace fraction ``p`` (``_bsconvs_pXdY``). 1x1 and 7x7 convs are never replaced (the replacers' default
    kernel sizes are 3x3 and 5x5).
    """

    kind: Optional[str] = None
    p: float = 0.25
    backend: str = "auto"

    def __post_init__(self):
        if self.kind not in (None, "u", "s"):
            raise ValueError(f"kind must be None, 'u' or 's', got {self.kind!r}")
        if self.kind == "s" and not (isinstance(self.p, (int, float)) and 0.0 <= self.p <= 1.0):
            raise ValueError(f"p must be in [0, 1], got {self.p!r}")
        _check_backend(self.backend)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
        pad = kernel_size // 2
        if self.kind is None or kernel_size not in (3, 5):
            return plain_conv(in_channels, out_channels, kernel_size, stride)
        if self.kind == "u":
            return BSConvU(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False,
                           backend=self.backend)
        return BSConvS(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False, p=self.p,
                       with_bn=True, backend=self.backend)


def parse_variant(suffix: Optional[str], backend: str) -> Variant:
    """``None`` / ``"bsconvu"`` / ``"bsconvs_p{X}d{Y}"`` (p = X / Y) -> Variant."""
    if suffix is None:
        return Variant(None, backend=backend)
    if suffix == "bsconvu":
        return Variant("u", backend=backend)
    num, den = suffix[len("bsconvs_p"):].split("d")
    if int(den) == 0:
        raise ValueError(f"name: the BSConv-S fraction p{num}d{den} divides by zero")
    return Variant("s", p=int(num) / int(den), backend=backend)


# ------------------------------------------------------------------------------------------------- the models
class ZooModel(BSConvS_ModelRegLossMixin, nn.Module):
    """Base of the zoo networks: ``backbone`` then ``classifier``, and ``reg_loss(alpha=0.1)`` (zero for networks
    without BSConv-S layers or regularised bottlenecks, so a training loop can always add it)."""

    in_size: tuple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def init_backbone(backbone: nn.Module) -> None:
    """Kaiming-uniform plain convs, zero biases; layers inside BSConv modules keep nn.Conv2d's default init, as in
    the reference (it initialises the dense network, then swaps in freshly built BSConv layers)."""
    inside = {id(c) for m in backbone.modules() if isinstance(m, (BSConvU, BSConvS)) for c in m.modules()}
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in inside:
            nn.init.kaiming_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Point every BSConv layer of ``model`` at ``backend`` (one of bsconv_fused.backends.CHOICES)."""
    _check_backend(backend)
    for m in model.modules():
        if isinstance(m, (BSConvU, BSConvS)):
            m.backend = backend
    return model


def check_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def scaled(channels: int, width: float) -> int:
    """The reference's width scaling: truncation, no rounding to a multiple of 8."""
    return int(channels * width)


def check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0 or math.isinf(width):
        raise ValueError(f"width must be a positive number, got {width!r}")
    return float(width)
