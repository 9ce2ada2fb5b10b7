"""Inference fusion: ``fuse_for_inference(model)`` turns every BSConvU / BSConvS of an eval-mode model into one
:class:`FusedBSConv` holding the folded weights, so each forward is one fused op with nothing recomputed per call.

What is folded, all exact in eval mode:
- the BatchNorm(s) inside BSConvU / BSConvS (running statistics) into the pointwise weight and ``mid_bias``
  (``mid_bias`` lands on in-image positions only, so the borders stay exact);
- BSConvS's two pointwise convs into one (``pw = diag(s2) W2 diag(s1) W1``);
- a BatchNorm2d applied right after the layer into the depthwise weight and bias (a per-channel affine map after
  a per-channel conv: ``s * (dw * t + b) + h = (s dw) * t + (s b + h)``);
- a following activation (ReLU, ReLU6, Hardswish, SiLU) is moved into the fused layer: it runs in the fused
  kernels' epilogue (``bsconv_u(..., activation=name)``: applied to the fp32 accumulator after the bias, before
  the cast to y's dtype), so it costs no extra pass over y. ``FusedBSConv.activation`` keeps the module (repr,
  compatibility); the name the kernels get is derived from its type. Where autograd needs gradients, and on the
  "torch" backend, the activation runs as the torch function after the op instead (exact gradients).

"Right after" is known only where the container's forward runs its children in order: ``nn.Sequential``, the model
zoo's ``ConvUnit`` (conv, bn, activation), or any module that lists its children in order in an ``_inference_chain``
attribute. Absorbed modules are replaced by ``nn.Identity`` so indexing and attribute access keep working.
Layers the fused op cannot run (``padding_mode`` other than zeros, asymmetric ``padding='same'``, BN without running
statistics, forward hooks) are left as they are, with one warning each.

The fused model is for inference: its state_dict has the folded tensors under new keys (``pw_weight``,
``mid_bias``, ``dw_weight``, ``bias``), so keep the original model for training and checkpoints.
"""
from __future__ import annotations

import copy
import warnings
from typing import List, Optional, Tuple

import torch
from torch import nn

from .activation import module_name
from .bn_stats import eval_scale_shift
from .functional import bsconv_u
from .modules import BSConvS, BSConvU, _BSConvBase, _fold_dtype

__all__ = ["fuse_for_inference", "FusedBSConv", "FUSABLE_ACTIVATIONS"]

FUSABLE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)


class FusedBSConv(nn.Module):
    """y = activation(DW(PW(x) + mid_bias) + bias) with folded, frozen weights: the output of fuse_for_inference.

    ``activation`` (None or one of FUSABLE_ACTIVATIONS) runs in the fused op's epilogue when it is exactly an
    nn.ReLU, nn.ReLU6, nn.Hardswish or nn.SiLU (bsconv_fused/activation.py maps the type to the kernels' name); a
    subclass runs as its own module after the op. The tensors are parameters with requires_grad=False so
    ``.to()``/``.half()`` move them."""

    def __init__(self, pw_weight: torch.Tensor, mid_bias: Optional[torch.Tensor], dw_weight: torch.Tensor,
                 bias: Optional[torch.Tensor], stride: Tuple[int, int], padding: Tuple[int, int],
                 dilation: Tuple[int, int], backend: str = "auto", activation: Optional[nn.Module] = None):
        super().__init__()
        self.pw_weight = nn.Parameter(pw_weight.detach().clone(), requires_grad=False)
        self.mid_bias = None if mid_bias is None else nn.Parameter(mid_bias.detach().clone(), requires_grad=False)
        self.dw_weight = nn.Parameter(dw_weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.backend = backend
        self.activation = activation

    @property
    def activation_name(self) -> Optional[str]:
        """The epilogue name of ``activation`` ("none" without one), or None when it must run as its own module."""
        return module_name(self.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = self.activation_name
        y = bsconv_u(x, self.pw_weight, self.dw_weight, self.bias, self.stride, self.padding, self.dilation,
                     mid_bias=self.mid_bias, backend=self.backend, activation=name or "none")
        return self.activation(y) if name is None else y

    def extra_repr(self) -> str:
        c_out, c_in = self.pw_weight.shape[:2]
        k = tuple(self.dw_weight.shape[2:])
        return (f"{c_in}, {c_out}, kernel_size={k}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, mid_bias={self.mid_bias is not None}, bias={self.bias is not None}, "
                f"backend={self.backend!r}")


# ------------------------------------------------------------------------------------------------- folding
def _fold_reason(layer: _BSConvBase) -> Optional[str]:
    reason = layer.fused_path_reason()
    if reason is not None:
        return reason
    for name, bn in layer._batchnorms():
        if bn.running_mean is None or bn.running_var is None:
            return f"{name} has track_running_stats=False (batch statistics even in eval mode)"
    return None


def _foldable_bn(m: nn.Module) -> bool:
    return (isinstance(m, nn.BatchNorm2d) and not m.training and m.running_mean is not None
            and m.running_var is not None and not m._forward_hooks and not m._forward_pre_hooks)


def _fusable_activation(m: nn.Module) -> bool:
    return isinstance(m, FUSABLE_ACTIVATIONS) and not m._forward_hooks and not m._forward_pre_hooks


@torch.no_grad()
def _fuse_layer(layer: _BSConvBase, post_bn: Optional[nn.BatchNorm2d],
                activation: Optional[nn.Module]) -> FusedBSConv:
    pw, mid_bias = layer._fused_pointwise()
    dw = layer.dw
    dw_weight, bias = dw.weight, dw.bias
    if post_bn is not None:
        dtype = _fold_dtype(dw_weight.dtype)
        s, h = eval_scale_shift(post_bn, dtype)
        b = h if bias is None else s * bias.to(dtype) + h
        dw_weight = (dw_weight.to(dtype) * s[:, None, None, None]).to(dw.weight.dtype)
        bias = b.to(dw.weight.dtype)
    if activation is not None:
        activation = copy.deepcopy(activation)
        if hasattr(activation, "inplace"):
            activation.inplace = True  # it sees the op's fresh output only
    return FusedBSConv(pw, mid_bias, dw_weight, bias, dw.stride, layer._fused_padding(), dw.dilation,
                       backend=layer.backend, activation=activation)


def _chain(container: nn.Module) -> Optional[List[str]]:
    """Names of ``container``'s children in the order its forward applies them one to the next, or None."""
    if isinstance(container, _BSConvBase):
        return None
    if isinstance(container, nn.Sequential):
        return list(container._modules)
    order = getattr(container, "_inference_chain", None)
    if order is None:
        try:
            from .models._blocks import ConvUnit
        except ImportError:  # pragma: no cover - the zoo moved it
            ConvUnit = None
        if ConvUnit is not None and type(container) is ConvUnit:
            order = ("conv", "bn", "activation")
    if order is None:
        return None
    return [n for n in order if n in container._modules]


def _fuse_into(container: nn.Module, counts: dict) -> None:
    names = list(container._modules)
    for name in names:  # depth first, BSConv layers themselves are leaves
        child = container._modules[name]
        if child is not None and not isinstance(child, _BSConvBase):
            _fuse_into(child, counts)
    chain = _chain(container) or []
    follower = {a: b for a, b in zip(chain, chain[1:])}
    for name in names:
        layer = container._modules[name]
        if not isinstance(layer, _BSConvBase):
            continue
        reason = _fold_reason(layer)
        if reason is not None:
            warnings.warn(f"fuse_for_inference: {type(layer).__name__} {name!r} left unfused: {reason}",
                          stacklevel=3)
            counts["skipped"] += 1
            continue
        post_bn = activation = None
        nxt = follower.get(name)
        if nxt is not None and _foldable_bn(container._modules[nxt]):
            post_bn = container._modules[nxt]
            container._modules[nxt] = nn.Identity()
            nxt = follower.get(nxt)
        if nxt is not None and _fusable_activation(container._modules[nxt]):
            activation = container._modules[nxt]
            container._modules[nxt] = nn.Identity()
        container._modules[name] = _fuse_layer(layer, post_bn, activation)
        counts["fused"] += 1


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BSConvU / BSConvS of ``model`` (with its BNs, a following BatchNorm2d and activation) into one
    :class:`FusedBSConv` each. ``model`` must be in eval mode. Returns the fused model (a deep copy unless
    ``inplace``); a model that is itself a BSConvU / BSConvS comes back as a FusedBSConv."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"fuse_for_inference needs the model in eval mode (call model.eval() first); in training "
                         f"mode: {', '.join(training[:3])}{' ...' if len(training) > 3 else ''}")
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, (BSConvU, BSConvS)):
        reason = _fold_reason(model)
        if reason is not None:
            raise ValueError(f"model cannot be fused: {reason}")
        return _fuse_layer(model, None, None)
    counts = {"fused": 0, "skipped": 0}
    _fuse_into(model, counts)
    return model
