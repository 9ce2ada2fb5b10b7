"""Shared pieces of the model zoo: conv + BN + activation units named as in the reference package, so its
checkpoints load with strict=True."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..modules import BSConvU


class ConvUnit(nn.Module):
    """``conv`` (an nn.Conv2d or a BSConvU), then optionally ``bn`` and ``activation`` (ReLU)."""

    def __init__(self, conv: nn.Module, out_channels: int, bn: bool = True, relu: bool = True):
        super().__init__()
        self.conv = conv
        if bn:
            self.bn = nn.BatchNorm2d(out_channels)
        if relu:
            self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        if hasattr(self, "activation"):
            x = self.activation(x)
        return x


def bsconv3x3(in_channels: int, out_channels: int, stride: int, backend: str) -> BSConvU:
    """A 3x3 BSConv-U with padding 1 and no bias: what the reference puts where a 3x3 conv was."""
    return BSConvU(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, backend=backend)


class Classifier(nn.Module):
    """A 1x1 conv with bias to the class count, flattened (the reference's head)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1, bias=True)
        nn.init.xavier_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


def init_backbone(backbone: nn.Module) -> None:
    """Kaiming-uniform plain convs, zero biases; BSConvU layers keep nn.Conv2d's default init, as in the reference
    (it initialises the dense network, then swaps in freshly built BSConv layers)."""
    inside = {id(c) for m in backbone.modules() if isinstance(m, BSConvU) for c in m.modules()}
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in inside:
            nn.init.kaiming_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Point every BSConv layer of ``model`` at ``backend`` ("auto", "triton", "cuda", "cpu", "torch")."""
    for m in model.modules():
        if isinstance(m, BSConvU):
            m.backend = backend
    return model


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def check_classes(num_classes: Optional[int]) -> int:
    return _positive("num_classes", num_classes)
