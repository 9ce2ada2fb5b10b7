"""BSConv-U MobileNetV1 (Haase & Amthor 2020, Sect. 4.1): every depthwise-separable block (3x3 depthwise + BN + ReLU,
1x1 pointwise + BN + ReLU) becomes BSConvU(in, out, 3, stride, padding=1, bias=False) + BN + ReLU. ImageNet layout
at 224x224 (stem stride 2) or the CIFAR layout at 32x32 (stem stride 1, first stage strides 1).

Module names follow the reference package's ``mobilenetv1_w1_bsconvu``, so its state_dicts load with strict=True.
"""
from __future__ import annotations

from torch import nn

from ._blocks import Classifier, ConvUnit, bsconv3x3, check_classes, init_backbone

STAGES = ((64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024))


class MobileNetV1BSConvU(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, cifar: bool = False, backend: str = "auto"):
        super().__init__()
        check_classes(num_classes)
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width must be a positive number, got {width!r}")
        self.in_size = (32, 32) if cifar else (224, 224)
        stem = int(32 * width)
        strides = (1, 1, 2, 2, 2) if cifar else (1, 2, 2, 2, 2)
        self.backbone = nn.Sequential()
        self.backbone.add_module("data_bn", nn.BatchNorm2d(3))
        self.backbone.add_module("init_conv", ConvUnit(
            nn.Conv2d(3, stem, 3, stride=1 if cifar else 2, padding=1, bias=False), stem))
        c = stem
        for i, stage_channels in enumerate(STAGES):
            stage = nn.Sequential()
            for j, out in enumerate(stage_channels):
                out = int(out * width)
                stage.add_module(f"unit{j + 1}", nn.Sequential(
                    bsconv3x3(c, out, strides[i] if j == 0 else 1, backend),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True)))
                c = out
            self.backbone.add_module(f"stage{i + 1}", stage)
        self.backbone.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        init_backbone(self.backbone)
        self.classifier = Classifier(c, num_classes)

    def forward(self, x):
        return self.classifier(self.backbone(x))


def mobilenetv1_bsconvu(num_classes: int = 1000, width: float = 1.0, cifar: bool = False,
                        backend: str = "auto") -> MobileNetV1BSConvU:
    """BSConv-U MobileNetV1 (reference name ``[cifar_]mobilenetv1_w{width}_bsconvu``)."""
    return MobileNetV1BSConvU(num_classes, width, cifar, backend)
