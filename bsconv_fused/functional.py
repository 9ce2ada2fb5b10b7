"""Functional API: argument checks, stride/padding/dilation normalisation, backend choice, dispatch to the ops."""
from __future__ import annotations

from typing import Optional

import torch

from . import activation as _act
from . import backends
from ._shapes import IntOrPair, pw_as_matrix, validate
from .reference import bsconv_u_dense, bsconv_u_reference

__all__ = ["bsconv_u", "bsconv_u_reference", "bsconv_u_dense"]


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    # Custom ops are invisible to autocast, so mirror F.conv2d's policy (run in the lower precision) here.
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def bsconv_u(
    x: torch.Tensor,
    pw_weight: torch.Tensor,
    dw_weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    mid_bias: Optional[torch.Tensor] = None,
    backend: str = "auto",
    activation: Optional[str] = None,
) -> torch.Tensor:
    """Blueprint separable convolution: y = act(DW(PW(x) + mid_bias) + bias), fused where a backend can run it.

    Args:
        x: (N, C_in, H, W), float16 / bfloat16 / float32 (float64 runs the two-layer path on GPUs); NCHW,
            channels_last or any strided view. y comes back in x's memory format.
        pw_weight: pointwise weight (C_out, C_in, 1, 1) or (C_out, C_in); the pointwise conv has no bias.
        dw_weight: depthwise weight (C_out, 1, kh, kw).
        bias: optional (C_out,) bias of the depthwise conv.
        stride, padding, dilation: of the depthwise conv (int or pair); the pointwise conv runs at input resolution.
        mid_bias: optional (C_out,) bias added to the intermediate at in-image positions only (the depthwise zero
            padding stays zero): what folding an eval-mode BatchNorm between the two convs needs.
        backend: "auto", "triton", "cuda", "cpu" or "torch" (see bsconv_fused.backends).
        activation: None / "none", "relu", "relu6", "hardswish" or "silu", applied to y. The fused backends run it
            in their kernels' epilogue (fp32, before the cast to y's dtype) when no gradient is needed; when
            autograd will need one (grad mode on and a tensor argument requiring grad) it runs as the torch function
            after the fused op, so the gradients are exact. "torch" applies the torch function.
    """
    if backend not in backends.CHOICES:
        raise ValueError(f"backend must be one of {backends.CHOICES}, got {backend!r}")
    act = _act.code_of(activation)
    low = _autocast_dtype(x) if isinstance(x, torch.Tensor) else None
    if low is not None:
        # fp32 operands go down to the autocast dtype, whichever of them arrives already lowered (x often does,
        # from an earlier autocast layer), as F.conv2d would do
        cast = lambda t: t.to(low) if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t  # noqa: E731
        x, pw_weight, dw_weight, bias, mid_bias = map(cast, (x, pw_weight, dw_weight, bias, mid_bias))
    g = validate(x, pw_weight, dw_weight, bias, mid_bias, stride, padding, dilation)
    if backend == "auto" and (g.N == 0 or torch.onnx.is_in_onnx_export()):
        # An empty batch has nothing to fuse (F.conv2d returns the empty output); an ONNX export must emit the two
        # standard convolutions, which every ONNX runtime knows, rather than our custom op, which none does.
        name = "torch"
    else:
        name = backends.choose(backend, x, g)
    if name == "torch":
        y = bsconv_u_reference(x, pw_weight, dw_weight, bias, g.stride, g.padding, g.dilation, mid_bias=mid_bias)
        return _act.apply(y, act)
    op = backends.TABLE[name].forward_op()
    args = (x, pw_as_matrix(pw_weight), dw_weight, bias, mid_bias, list(g.stride), list(g.padding), list(g.dilation))
    if act != 0 and torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in (x, pw_weight, dw_weight, bias, mid_bias)):
        # The epilogue has no backward (ops.register_pair refuses it): the activation runs as a torch op instead.
        return _act.apply(op(*args), act)
    return op(*args, act) if act != 0 else op(*args)
