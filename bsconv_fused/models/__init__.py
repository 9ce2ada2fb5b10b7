"""The model zoo: the reference package's networks, built from this package's BSConv layers.

``get_model(name, num_classes, backend="auto")`` takes the reference's names (case-insensitive):

- ``[pre]resnet{10,18,26,34,68,102}``, ``cifar_[pre]resnet{20,56,110,302,602}``, ``cifar_wrn{16,28,40}_{width}``,
  each plain or with the suffix ``_bsconvu`` or ``_bsconvs_p{X}d{Y}`` (BSConv-S with p = X / Y);
- ``[cifar_]mobilenetv1_w{X}[d{Y}]`` plain or ``_bsconvu``; ``[cifar_]mobilenetv2_w{X}[d{Y}]`` and
  ``[cifar_]mobilenetv3_{small,large}_w{X}[d{Y}]`` plain or ``_bsconvs_p1d6`` (width = X / Y).

Parameter counts and state_dict keys equal those of ``bsconv.pytorch.get_model`` (tests/test_zoo.py checks it when
the reference is installed), so its checkpoints load with strict=True. ``backend`` is given to every BSConv layer;
every model has ``reg_loss(alpha=0.1)``, the BSConv-S regulariser to add to the training loss (zero when the
network has nothing to regularise). See docs/models.md.
"""
from __future__ import annotations

import re
from typing import Optional

from torch import nn

from ._blocks import Variant, ZooModel, parse_variant, set_backend
from .mobilenet import MobileNetV1, MobileNetV2, MobileNetV3, mobilenetv1_bsconvu
from .resnet import (CIFAR_UNITS, IMAGENET_UNITS, WRN_UNITS, ResNet, cifar_resnet, cifar_resnet_bsconvu, cifar_wrn,
                     resnet)

__all__ = ["get_model", "list_families", "set_backend", "Variant", "ZooModel", "ResNet", "MobileNetV1",
           "MobileNetV2", "MobileNetV3", "resnet", "cifar_resnet", "cifar_wrn", "cifar_resnet_bsconvu",
           "mobilenetv1_bsconvu"]

_SUFFIX = r"(?:_(?P<variant>bsconvu|bsconvs_p\d+d\d+))?"
_RESNET = re.compile(r"(?P<cifar>cifar_)?(?P<pre>pre)?resnet(?P<depth>\d+)" + _SUFFIX)
_WRN = re.compile(r"cifar_wrn(?P<depth>\d+)_(?P<width>\d+)" + _SUFFIX)
_MOBILENET = re.compile(r"(?P<cifar>cifar_)?mobilenet(?P<version>v1|v2|v3_small|v3_large)"
                        r"_w(?P<num>\d+)(?:d(?P<den>\d+))?" + _SUFFIX)

_FAMILIES = (
    f"[pre]resnet{{{','.join(map(str, IMAGENET_UNITS))}}}[_bsconvu|_bsconvs_pXdY]",
    f"cifar_[pre]resnet{{{','.join(map(str, CIFAR_UNITS))}}}[_bsconvu|_bsconvs_pXdY]",
    f"cifar_wrn{{{','.join(map(str, WRN_UNITS))}}}_W[_bsconvu|_bsconvs_pXdY]",
    "[cifar_]mobilenetv1_wX[dY][_bsconvu]",
    "[cifar_]mobilenetv2_wX[dY][_bsconvs_p1d6]",
    "[cifar_]mobilenetv3_{small,large}_wX[dY][_bsconvs_p1d6]",
)


def list_families() -> tuple:
    """The name patterns get_model accepts."""
    return _FAMILIES


def _width(num: str, den: Optional[str]) -> float:
    if den is not None and int(den) == 0:
        raise ValueError(f"name: the width w{num}d{den} divides by zero")
    return int(num) / (int(den) if den is not None else 1)


def get_model(name: str, num_classes: int, backend: str = "auto") -> nn.Module:
    """Build the zoo network called ``name`` (the reference's naming scheme) with ``num_classes`` outputs."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.lower()
    m = _RESNET.fullmatch(key)
    if m:
        variant = parse_variant(m["variant"], backend)
        build = cifar_resnet if m["cifar"] else resnet
        return build(int(m["depth"]), num_classes, preact=bool(m["pre"]), variant=variant)
    m = _WRN.fullmatch(key)
    if m:
        return cifar_wrn(int(m["depth"]), int(m["width"]), num_classes, parse_variant(m["variant"], backend))
    m = _MOBILENET.fullmatch(key)
    if m:
        variant = parse_variant(m["variant"], backend)
        width, cifar = _width(m["num"], m["den"]), bool(m["cifar"])
        version = m["version"]
        if version == "v1":
            return MobileNetV1(num_classes, width, cifar, variant)
        if version == "v2":
            return MobileNetV2(num_classes, width, cifar, variant)
        return MobileNetV3(version[3:], num_classes, width, cifar, variant)
    raise ValueError(f"name must match one of {', '.join(_FAMILIES)} (case-insensitive), got {name!r}")
