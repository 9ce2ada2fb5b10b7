"""MobileNetV1 (Howard et al. 2017), V2 (Sandler et al. 2018) and V3 small/large (Howard et al. 2019), plain or as
the BSConv variants of Haase & Amthor 2020:

- ``mobilenetv1_*_bsconvu`` (Sect. 4.1): every depthwise-separable block (3x3 depthwise + BN + ReLU, 1x1 pointwise
  + BN + ReLU) becomes BSConvU(in, out, 3, stride, padding=1, bias=False) + BN + ReLU. These layers take the fused
  path.
- ``mobilenetv2_*_bsconvs_p1d6`` / ``mobilenetv3_*_bsconvs_p1d6`` (Sect. 4.2): the architecture is unchanged; each
  bottleneck's 1x1 projection (``conv3``) together with the next bottleneck's expansion and depthwise conv is read
  as a BSConv-S, and training adds the orthonormality regulariser of the projection's weight
  (``model.reg_loss()``). An activation sits between the expansion and the depthwise conv, so these networks have
  no BSConv layer to fuse: they run as plain PyTorch layers.

ImageNet layout at 224x224, or the CIFAR layout at 32x32 (stem stride 1 and the first stride-2 stage made stride
1). Widths are scaled by truncation as in the reference package ``bsconv`` 0.4.0, whose module names are kept so
its checkpoints load with strict=True.
"""
from __future__ import annotations

import torch
from torch import nn

from ._blocks import (Classifier, ConvUnit, Variant, ZooModel, SEUnit, check_classes, check_width, init_backbone,
                      plain_conv, scaled)
from ..modules import BSConvU

V1_STAGES = ((64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024))

V2_STAGES = ((16,), (24, 24), (32, 32, 32), (64, 64, 64, 64, 96, 96, 96), (160, 160, 160, 320))
V2_MID = ((32,), (96, 144), (144, 192, 192), (192, 384, 384, 384, 384, 576, 576), (576, 960, 960, 960))

# per version: stages, mid channels, strides, kernel sizes, activations, SE flags, final conv, SE after final conv
V3 = {
    "small": dict(stages=((16,), (24, 24), (40, 40, 40, 48, 48), (96, 96, 96)),
                  mid=((16,), (72, 88), (96, 240, 240, 120, 144), (288, 576, 576)),
                  strides=(2, 2, 2, 2), cifar_strides=(1, 2, 2, 2), kernels=(3, 3, 5, 5),
                  acts=("relu", "relu", "hswish", "hswish"),
                  se=((1,), (0, 0), (1, 1, 1, 1, 1), (1, 1, 1)), final=576, final_se=True),
    "large": dict(stages=((16,), (24, 24), (40, 40, 40), (80, 80, 80, 80, 112, 112), (160, 160, 160)),
                  mid=((16,), (64, 72), (72, 120, 120), (240, 200, 184, 184, 480, 672), (672, 960, 960)),
                  strides=(1, 2, 2, 2, 2), cifar_strides=(1, 1, 2, 2, 2), kernels=(3, 3, 5, 3, 5),
                  acts=("relu", "relu", "relu", "hswish", "hswish"),
                  se=((0,), (0, 0), (1, 1, 1), (0, 0, 0, 0, 1, 1), (1, 1, 1)), final=960, final_se=False),
}


def _ds_unit(in_channels: int, out_channels: int, stride: int, variant: Variant) -> nn.Module:
    if variant.kind == "u":
        return nn.Sequential(BSConvU(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                                     backend=variant.backend),
                             nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    return DepthwiseSeparableUnit(in_channels, out_channels, stride)


class DepthwiseSeparableUnit(nn.Module):
    """``conv_dw`` (3x3 depthwise + BN + ReLU), then ``conv_pw`` (1x1 + BN + ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv_dw = ConvUnit(plain_conv(in_channels, in_channels, 3, stride, groups=in_channels), in_channels)
        self.conv_pw = ConvUnit(plain_conv(in_channels, out_channels, 1), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


class MobileNetV1(ZooModel):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, cifar: bool = False,
                 variant: Variant = Variant()):
        super().__init__()
        check_classes(num_classes)
        width = check_width(width)
        if variant.kind == "s":
            raise ValueError("variant: MobileNetV1 has a BSConv-U variant only (as in the reference)")
        self.in_size = (32, 32) if cifar else (224, 224)
        stem = scaled(32, width)
        strides = (1, 1, 2, 2, 2) if cifar else (1, 2, 2, 2, 2)
        self.backbone = nn.Sequential()
        self.backbone.add_module("data_bn", nn.BatchNorm2d(3))
        self.backbone.add_module("init_conv", ConvUnit(plain_conv(3, stem, 3, stride=1 if cifar else 2), stem))
        c = stem
        for i, stage_channels in enumerate(V1_STAGES):
            stage = nn.Sequential()
            for j, out in enumerate(stage_channels):
                out = scaled(out, width)
                stage.add_module(f"unit{j + 1}", _ds_unit(c, out, strides[i] if j == 0 else 1, variant))
                c = out
            self.backbone.add_module(f"stage{i + 1}", stage)
        self.backbone.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        init_backbone(self.backbone)
        self.classifier = Classifier(c, num_classes)


class LinearBottleneck(nn.Module):
    """1x1 expansion + BN + act, KxK depthwise + BN + act, optional SE, 1x1 projection + BN; identity shortcut
    when the shape is kept."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int, act: str = "relu6",
                 kernel_size: int = 3, use_se: bool = False):
        super().__init__()
        self.use_res_skip = in_channels == out_channels and stride == 1
        self.conv1 = ConvUnit(plain_conv(in_channels, mid_channels, 1), mid_channels, act=act)
        self.conv2 = ConvUnit(plain_conv(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels),
                              mid_channels, act=act)
        if use_se:
            self.se_unit = SEUnit(mid_channels)
        self.conv3 = ConvUnit(plain_conv(mid_channels, out_channels, 1), out_channels, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if "se_unit" in self._modules:
            y = self.se_unit(y)
        y = self.conv3(y)
        return y + x if self.use_res_skip else y


class RegularizedBottleneck(LinearBottleneck):
    """A bottleneck of a BSConv-S MobileNet: its projection's rows are pushed towards orthonormality."""

    def _reg_loss(self) -> torch.Tensor:
        """``|| W W^T - I ||_F`` with ``W = conv3.conv.weight[:, :, 0, 0]`` (out x mid), as BSConvS's pw1."""
        w = self.conv3.conv.weight[:, :, 0, 0]
        gram = w @ w.t()
        return torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device))


def _bottleneck(variant: Variant):
    if variant.kind == "u":
        raise ValueError("variant: MobileNetV2/V3 have a BSConv-S (p=1/6) variant only (as in the reference)")
    if variant.kind == "s" and abs(variant.p - 1 / 6) > 1e-12:
        raise ValueError(f"variant: MobileNetV2/V3 are defined for p=1/6 only (bsconvs_p1d6), got p={variant.p}")
    return RegularizedBottleneck if variant.kind == "s" else LinearBottleneck


class MobileNetV2(ZooModel):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, cifar: bool = False,
                 variant: Variant = Variant()):
        super().__init__()
        check_classes(num_classes)
        width = check_width(width)
        unit = _bottleneck(variant)
        self.in_size = (32, 32) if cifar else (224, 224)
        strides = (1, 1, 2, 2, 2) if cifar else (1, 2, 2, 2, 2)
        stem = scaled(32, width)
        final = scaled(1280, width) if width > 1.0 else 1280
        self.backbone = nn.Sequential()
        self.backbone.add_module("data_bn", nn.BatchNorm2d(3))
        self.backbone.add_module("init_conv", ConvUnit(plain_conv(3, stem, 3, stride=1 if cifar else 2), stem,
                                                       act="relu6"))
        c = stem
        for i, (outs, mids) in enumerate(zip(V2_STAGES, V2_MID)):
            stage = nn.Sequential()
            for j, (out, mid) in enumerate(zip(outs, mids)):
                out = scaled(out, width)
                stage.add_module(f"unit{j + 1}", unit(c, scaled(mid, width), out, strides[i] if j == 0 else 1))
                c = out
            self.backbone.add_module(f"stage{i + 1}", stage)
        self.backbone.add_module("final_conv", ConvUnit(plain_conv(c, final, 1), final, act="relu6"))
        self.backbone.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        init_backbone(self.backbone)
        self.classifier = Classifier(final, num_classes)


class MobileNetV3(ZooModel):
    """MobileNetV3-small / -large with the lightweight head of the reference (one final 1x1 conv, no dropout)."""

    def __init__(self, version: str, num_classes: int = 1000, width: float = 1.0, cifar: bool = False,
                 variant: Variant = Variant()):
        super().__init__()
        if version not in V3:
            raise ValueError(f"version must be one of {sorted(V3)}, got {version!r}")
        check_classes(num_classes)
        width = check_width(width)
        unit = _bottleneck(variant)
        cfg = V3[version]
        self.in_size = (32, 32) if cifar else (224, 224)
        strides = cfg["cifar_strides"] if cifar else cfg["strides"]
        stem = scaled(16, width)
        final = scaled(cfg["final"], width) if width > 1.0 else cfg["final"]
        self.backbone = nn.Sequential()
        self.backbone.add_module("data_bn", nn.BatchNorm2d(3))
        self.backbone.add_module("init_conv", ConvUnit(plain_conv(3, stem, 3, stride=1 if cifar else 2), stem,
                                                       act="hswish"))
        c = stem
        for i, (outs, mids, ses) in enumerate(zip(cfg["stages"], cfg["mid"], cfg["se"])):
            stage = nn.Sequential()
            for j, (out, mid, se) in enumerate(zip(outs, mids, ses)):
                out = scaled(out, width)
                stage.add_module(f"unit{j + 1}", unit(c, scaled(mid, width), out, strides[i] if j == 0 else 1,
                                                      cfg["acts"][i], cfg["kernels"][i], bool(se)))
                c = out
            self.backbone.add_module(f"stage{i + 1}", stage)
        self.backbone.add_module("final_conv1", ConvUnit(plain_conv(c, final, 1), final, act="hswish"))
        if cfg["final_se"]:
            self.backbone.add_module("final_se", SEUnit(final))
        self.backbone.add_module("final_pool", nn.AdaptiveAvgPool2d(1))
        init_backbone(self.backbone)
        self.classifier = Classifier(final, num_classes)


def mobilenetv1_bsconvu(num_classes: int = 1000, width: float = 1.0, cifar: bool = False,
                        backend: str = "auto") -> MobileNetV1:
    """BSConv-U MobileNetV1 (``[cifar_]mobilenetv1_w{width}_bsconvu``), the benchmark's network."""
    return MobileNetV1(num_classes, width, cifar, Variant("u", backend=backend))
