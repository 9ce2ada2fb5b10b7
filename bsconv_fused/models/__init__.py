"""Networks built from the public BSConvU layer (and nn.Conv2d / BatchNorm / ReLU): the benchmark's network suite.

``get_model(name, num_classes, backend="auto")`` takes the reference package's names for the models provided:
``mobilenetv1_w1_bsconvu`` (also ``w3d4``, ``w1d2``, ``w1d4`` and the ``cifar_`` variants) and
``cifar_resnet{20,56,110,302,602}_bsconvu``. Parameter counts and state_dict keys match the reference.
"""
from __future__ import annotations

import re

from torch import nn

from ._blocks import set_backend
from .mobilenet import MobileNetV1BSConvU, mobilenetv1_bsconvu
from .resnet_cifar import CifarResNetBSConvU, cifar_resnet_bsconvu

__all__ = ["get_model", "mobilenetv1_bsconvu", "cifar_resnet_bsconvu", "MobileNetV1BSConvU", "CifarResNetBSConvU",
           "set_backend"]

_WIDTHS = {"w1": 1.0, "w3d4": 0.75, "w1d2": 0.5, "w1d4": 0.25}


def get_model(name: str, num_classes: int, backend: str = "auto") -> nn.Module:
    key = name.lower()
    m = re.fullmatch(r"(cifar_)?mobilenetv1_(w1|w3d4|w1d2|w1d4)_bsconvu", key)
    if m:
        return mobilenetv1_bsconvu(num_classes, _WIDTHS[m.group(2)], cifar=bool(m.group(1)), backend=backend)
    m = re.fullmatch(r"cifar_resnet(\d+)_bsconvu", key)
    if m:
        return cifar_resnet_bsconvu(int(m.group(1)), num_classes, backend=backend)
    raise ValueError(f"name must be one of [cifar_]mobilenetv1_{{w1,w3d4,w1d2,w1d4}}_bsconvu or "
                     f"cifar_resnet{{20,56,110,302,602}}_bsconvu, got {name!r}")
