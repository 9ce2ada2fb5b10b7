"""The plain two-layer path: the semantics every fused backend must match, and the fallback backend "torch".

Built from ATen convolutions only, so autograd, every device and every dtype come for free.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._shapes import IntOrPair, pw_as_matrix, validate


def bsconv_u_reference(
    x: torch.Tensor,
    pw_weight: torch.Tensor,
    dw_weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    mid_bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y = DW(PW(x) + mid_bias) + bias as two convolutions (the unfused path)."""
    g = validate(x, pw_weight, dw_weight, bias, mid_bias, stride, padding, dilation)
    pw = pw_as_matrix(pw_weight)
    # mid_bias is a bias of the pointwise conv: it lands on in-image positions only, the depthwise conv's zero
    # padding is applied afterwards and stays zero (that is what folding an eval-mode BatchNorm needs).
    t = F.conv2d(x, pw[:, :, None, None], mid_bias)
    return F.conv2d(t, dw_weight, bias, g.stride, g.padding, g.dilation, groups=g.C_out)


def dense_equivalent_weight(pw_weight: torch.Tensor, dw_weight: torch.Tensor) -> torch.Tensor:
    """The weight of the single dense conv equal to BSConvU without mid_bias: F[o,i] = pw[o,i] * dw[o,0]."""
    pw = pw_as_matrix(pw_weight)
    return pw[:, :, None, None] * dw_weight


def bsconv_u_dense(
    x: torch.Tensor,
    pw_weight: torch.Tensor,
    dw_weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> torch.Tensor:
    """BSConvU (without mid_bias) as one dense convolution: an independent oracle and a benchmark baseline."""
    g = validate(x, pw_weight, dw_weight, bias, None, stride, padding, dilation)
    return F.conv2d(x, dense_equivalent_weight(pw_weight, dw_weight), bias, g.stride, g.padding, g.dilation)
