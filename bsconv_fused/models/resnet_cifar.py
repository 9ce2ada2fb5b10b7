"""CIFAR ResNet-BSConvU (He et al. 2016 CIFAR layout; Haase & Amthor 2020): 3x3 stem with 16 channels, three stages
of 16/32/64 channels with basic units (two 3x3 convs, a 1x1 conv + BN projection when the shape changes), every 3x3
conv replaced by BSConvU(in, out, 3, stride, padding=1, bias=False) as the reference's BSConvU replacer does
(without BN inside). ResNet-110: 18 units per stage.

Module names follow the reference package's ``cifar_resnet110_bsconvu``, so its state_dicts load with strict=True.
"""
from __future__ import annotations

from torch import nn

from ._blocks import Classifier, ConvUnit, bsconv3x3, check_classes, init_backbone

UNITS = {20: 3, 56: 9, 110: 18, 302: 50, 602: 100}


class BasicUnit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, backend: str):
        super().__init__()
        self.conv1 = ConvUnit(bsconv3x3(in_channels, out_channels, stride, backend), out_channels)
        self.conv2 = ConvUnit(bsconv3x3(out_channels, out_channels, 1, backend), out_channels, relu=False)
        if in_channels != out_channels or stride != 1:
            self.projection = ConvUnit(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       out_channels, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        residual = self.projection(x) if hasattr(self, "projection") else x
        return self.relu(self.conv2(self.conv1(x)) + residual)


class CifarResNetBSConvU(nn.Module):
    def __init__(self, depth: int = 110, num_classes: int = 100, backend: str = "auto"):
        super().__init__()
        check_classes(num_classes)
        if depth not in UNITS:
            raise ValueError(f"depth must be one of {sorted(UNITS)}, got {depth!r}")
        self.in_size = (32, 32)
        self.backbone = nn.Sequential()
        self.backbone.add_module("data_bn", nn.BatchNorm2d(3))
        self.backbone.add_module("init_unit", _InitUnit(bsconv3x3(3, 16, 1, backend), 16))
        c = 16
        for i, width in enumerate((16, 32, 64)):
            stage = nn.Sequential()
            for j in range(UNITS[depth]):
                stage.add_module(f"unit{j + 1}", BasicUnit(c, width, 2 if (j == 0 and i > 0) else 1, backend))
                c = width
            self.backbone.add_module(f"stage{i + 1}", stage)
        self.backbone.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        init_backbone(self.backbone)
        self.classifier = Classifier(c, num_classes)

    def forward(self, x):
        return self.classifier(self.backbone(x))


class _InitUnit(nn.Module):
    """The stem: one conv unit, held under the name ``conv`` as in the reference (``init_unit.conv.conv``)."""

    def __init__(self, conv: nn.Module, out_channels: int):
        super().__init__()
        self.conv = ConvUnit(conv, out_channels)

    def forward(self, x):
        return self.conv(x)


def cifar_resnet_bsconvu(depth: int = 110, num_classes: int = 100, backend: str = "auto") -> CifarResNetBSConvU:
    """CIFAR ResNet-{depth}-BSConvU (reference name ``cifar_resnet{depth}_bsconvu``)."""
    return CifarResNetBSConvU(depth, num_classes, backend)
