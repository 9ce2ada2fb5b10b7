"""ResNets (He et al. 2016), pre-activation ResNets and wide ResNets (Zagoruyko & Komodakis 2016), plain or with
their 3x3 convs made blueprint separable (Haase & Amthor 2020).

Layouts (as in the reference package ``bsconv`` 0.4.0, whose module names are kept so its checkpoints load):

- ImageNet (224x224): 7x7/2 conv + BN + ReLU stem and a 3x3/2 max pool, four stages of 64/128/256/512 channels;
- CIFAR (32x32): 3x3/1 stem with 16 channels, three stages of 16/32/64 channels times the width (WRNs: the stem
  keeps 16 channels);
- units: two 3x3 convs, the first of a stage (but the first stage) strides 2; a 1x1 projection (with BN in standard
  units, without in pre-activation units) where the shape changes. Pre-activation units (``preresnet``, ``wrn``)
  start with BN + ReLU, their second conv has no BN, and the network ends with BN + ReLU.

The BSConv ``Variant`` turns each 3x3 conv into BSConvU (no BN inside) or BSConvS (with BN inside); the 7x7 stem and
the 1x1 projections stay plain, as the reference's replacers leave them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._blocks import Classifier, ConvUnit, Variant, ZooModel, check_classes, check_width, init_backbone, plain_conv

IMAGENET_UNITS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 26: (3, 3, 3, 3), 34: (3, 4, 6, 3), 68: (3, 4, 23, 3),
                  102: (3, 8, 36, 3)}
CIFAR_UNITS = {20: (3, 3, 3), 56: (9, 9, 9), 110: (18, 18, 18), 302: (50, 50, 50), 602: (100, 100, 100)}
WRN_UNITS = {16: (2, 2, 2), 28: (4, 4, 4), 40: (6, 6, 6)}


class StandardUnit(nn.Module):
    """conv-BN-ReLU, conv-BN, + shortcut (projection conv-BN where the shape changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, variant: Variant):
        super().__init__()
        self.conv1 = ConvUnit(variant.conv(in_channels, out_channels, 3, stride), out_channels)
        self.conv2 = ConvUnit(variant.conv(out_channels, out_channels, 3), out_channels, act=None)
        if in_channels != out_channels or stride != 1:
            self.projection = ConvUnit(plain_conv(in_channels, out_channels, 1, stride), out_channels, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.projection(x) if "projection" in self._modules else x
        return self.relu(self.conv2(self.conv1(x)) + residual)


class PreactUnit(nn.Module):
    """BN-ReLU, conv-BN-ReLU, conv, + shortcut (taken after BN-ReLU through a bare 1x1 conv when it projects)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, variant: Variant):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = ConvUnit(variant.conv(in_channels, out_channels, 3, stride), out_channels)
        self.conv2 = ConvUnit(variant.conv(out_channels, out_channels, 3), out_channels, bn=False, act=None)
        if in_channels != out_channels or stride != 1:
            self.projection = ConvUnit(plain_conv(in_channels, out_channels, 1, stride), out_channels, bn=False,
                                       act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "projection" in self._modules:
            x = self.relu(self.bn(x))
            residual = self.projection(x)
        else:
            residual = x
            x = self.relu(self.bn(x))
        return self.conv2(self.conv1(x)) + residual


class _Stem(nn.Module):
    """``conv`` (a ConvUnit), then on ImageNet a 3x3/2 max ``pool``."""

    def __init__(self, conv: ConvUnit, pool: bool):
        super().__init__()
        self.conv = conv
        if pool:
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.pool(x) if "pool" in self._modules else x


class _PostActivation(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(x))


class ResNet(ZooModel):
    """A ResNet with ``units`` per stage. ``cifar`` picks the CIFAR layout, ``preact`` the pre-activation units,
    ``width`` multiplies the stage widths (not the CIFAR stem's 16 channels)."""

    def __init__(self, units: Sequence[int], num_classes: int, cifar: bool = False, preact: bool = False,
                 width: float = 1.0, variant: Variant = Variant()):
        super().__init__()
        check_classes(num_classes)
        width = check_width(width)
        expected = 3 if cifar else 4
        if len(units) != expected or not all(isinstance(u, int) and u >= 1 for u in units):
            raise ValueError(f"units must be {expected} positive ints for the {'CIFAR' if cifar else 'ImageNet'} "
                             f"layout, got {tuple(units)!r}")
        self.in_size = (32, 32) if cifar else (224, 224)
        self.backbone = nn.Sequential()
        self.backbone.add_module("data_bn", nn.BatchNorm2d(3))
        if cifar:
            c = 16
            stem = ConvUnit(variant.conv(3, c, 3), c, bn=not preact, act=None if preact else "relu")
            stages = (16, 32, 64)
        else:
            c = 64
            stem = ConvUnit(plain_conv(3, c, 7, stride=2), c)
            stages = (64, 128, 256, 512)
        self.backbone.add_module("init_unit", _Stem(stem, pool=not cifar))
        unit = PreactUnit if preact else StandardUnit
        for i, (stage_width, n) in enumerate(zip(stages, units)):
            out = int(stage_width * width)
            stage = nn.Sequential()
            for j in range(n):
                stage.add_module(f"unit{j + 1}", unit(c, out, 2 if (j == 0 and i > 0) else 1, variant))
                c = out
            self.backbone.add_module(f"stage{i + 1}", stage)
        if preact:
            self.backbone.add_module("final_activation", _PostActivation(c))
        self.backbone.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        init_backbone(self.backbone)
        self.classifier = Classifier(c, num_classes)


def _units(table: dict, depth: int, family: str) -> Sequence[int]:
    if depth not in table:
        raise ValueError(f"depth must be one of {sorted(table)} for {family}, got {depth!r}")
    return table[depth]


def resnet(depth: int, num_classes: int = 1000, preact: bool = False, variant: Variant = Variant()) -> ResNet:
    """ImageNet ResNet-{10,18,26,34,68,102} (``[pre]resnet{depth}[_bsconvu|_bsconvs_pXdY]``)."""
    return ResNet(_units(IMAGENET_UNITS, depth, "ImageNet ResNets"), num_classes, False, preact, 1.0, variant)


def cifar_resnet(depth: int, num_classes: int = 100, preact: bool = False, variant: Variant = Variant()) -> ResNet:
    """CIFAR ResNet-{20,56,110,302,602} (``cifar_[pre]resnet{depth}[_bsconvu|_bsconvs_pXdY]``)."""
    return ResNet(_units(CIFAR_UNITS, depth, "CIFAR ResNets"), num_classes, True, preact, 1.0, variant)


def cifar_wrn(depth: int, width: int, num_classes: int = 100, variant: Variant = Variant()) -> ResNet:
    """CIFAR WRN-{16,28,40}-{width} (``cifar_wrn{depth}_{width}[_bsconvu|_bsconvs_pXdY]``): pre-activation units."""
    return ResNet(_units(WRN_UNITS, depth, "WRNs"), num_classes, True, True, check_width(width), variant)


def cifar_resnet_bsconvu(depth: int = 110, num_classes: int = 100, backend: str = "auto") -> ResNet:
    """CIFAR ResNet-{depth}-BSConvU (``cifar_resnet{depth}_bsconvu``), the benchmark's network."""
    return cifar_resnet(depth, num_classes, variant=Variant("u", backend=backend))
