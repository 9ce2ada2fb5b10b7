"""Model surgery: replace the regular convolutions of a model by BSConvU / BSConvS layers.

Same rules as the reference package's ``BSConvU_Replacer`` / ``BSConvS_Replacer``: every ``nn.Conv2d`` (subclasses
included) with ``groups == 1`` and a kernel size in ``kernel_sizes`` (``None``: any size) becomes a BSConv layer with
the same channels, kernel size, stride, padding, dilation, bias presence and padding_mode. Replaced layers are not
searched again. The S replacer also gives the root model a bound ``reg_loss(alpha=0.1)`` method.

Differences from the reference, all additive: the new layers take the replaced conv's device, dtype and train/eval
mode (the reference leaves them as fresh CPU float32 layers); BSConv layers already in the model are left alone
(the reference would replace a depthwise conv with one channel, whose groups == 1); ``backend`` is passed on.

Weights are NOT transferred: a dense KxK conv is not a blueprint separable conv, so no exact conversion exists and
the new layers start from their default initialisation. Train (or fine-tune) after replacing.
"""
from __future__ import annotations

import types
from typing import Callable, Iterable, Optional, Tuple

from torch import nn

from ._shapes import pair
from .modules import BSConvS, BSConvS_ModelRegLossMixin, BSConvU, _check_backend, bsconvs_mid_channels

__all__ = ["BSConvU_Replacer", "BSConvS_Replacer", "replace_conv2d"]

_BSCONV_TYPES = (BSConvU, BSConvS)


def _kernel_set(kernel_sizes: Optional[Iterable]) -> Optional[Tuple[Tuple[int, int], ...]]:
    if kernel_sizes is None:
        return None
    return tuple(pair("kernel_sizes", k, 1) for k in kernel_sizes)


def _matches(module: nn.Module, kernels) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and (kernels is None or tuple(module.kernel_size) in kernels))


def _conv_arguments(conv: nn.Conv2d) -> dict:
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                padding_mode=conv.padding_mode)


def replace_conv2d(model: nn.Module, build: Callable[[nn.Conv2d], nn.Module], kernel_sizes=((3, 3), (5, 5)),
                   verbosity: int = 0) -> Tuple[nn.Module, int]:
    """Replace each matching conv ``c`` of ``model`` (the root included) by ``build(c)``; return (model, count).

    The new layer is moved to the conv's device and dtype and given its train/eval mode.
    """
    kernels = _kernel_set(kernel_sizes)

    def convert(conv: nn.Conv2d, name: str) -> nn.Module:
        new = build(conv).to(device=conv.weight.device, dtype=conv.weight.dtype)
        new.train(conv.training)
        if verbosity >= 2:
            print(f"replaced {name or '(root)'}: {type(conv).__name__} -> {type(new).__name__}")
        return new

    if _matches(model, kernels):
        return convert(model, ""), 1
    count = 0
    stack = [("", model)]
    while stack:
        prefix, parent = stack.pop()
        for name, child in list(parent.named_children()):
            full = prefix + name
            if isinstance(child, _BSCONV_TYPES):
                continue
            if _matches(child, kernels):
                setattr(parent, name, convert(child, full))
                count += 1
            else:
                stack.append((full + ".", child))
    return model, count


def _report(replacer, before: int, model: nn.Module, count: int) -> None:
    after = sum(p.numel() for p in model.parameters())
    print(f"{type(replacer).__name__} replaced {count} module{'' if count == 1 else 's'}; "
          f"parameters {before:,} -> {after:,} ({100.0 * after / max(before, 1):.2f}%)")


class BSConvU_Replacer:
    """``BSConvU_Replacer(kernel_sizes=((3, 3), (5, 5)), with_bn=False, bn_kwargs=None, verbosity=0).apply(model)``."""

    def __init__(self, kernel_sizes=((3, 3), (5, 5)), with_bn: bool = False, bn_kwargs=None, verbosity: int = 0,
                 *, backend: str = "auto"):
        self.kernel_sizes = _kernel_set(kernel_sizes)
        self.with_bn = with_bn
        self.bn_kwargs = bn_kwargs
        self.verbosity = verbosity
        self.backend = _check_backend(backend)

    def _build(self, conv: nn.Conv2d) -> nn.Module:
        return BSConvU(**_conv_arguments(conv), with_bn=self.with_bn, bn_kwargs=self.bn_kwargs, backend=self.backend)

    def apply(self, model: nn.Module) -> nn.Module:
        """Replace in place where possible and return the model (a new layer when the root itself is replaced)."""
        before = sum(p.numel() for p in model.parameters())
        model, count = replace_conv2d(model, self._build, self.kernel_sizes, self.verbosity)
        if self.verbosity >= 1:
            _report(self, before, model, count)
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_sizes={self.kernel_sizes}, with_bn={self.with_bn})"


class BSConvS_Replacer(BSConvU_Replacer):
    """``BSConvS_Replacer(kernel_sizes=((3, 3), (5, 5)), p=0.25, with_bn=False, bn_kwargs=None, verbosity=0)``.

    ``apply`` also binds ``reg_loss(alpha=0.1)`` onto the returned root model: add ``model.reg_loss()`` to the loss.
    """

    def __init__(self, kernel_sizes=((3, 3), (5, 5)), p: float = 0.25, with_bn: bool = False, bn_kwargs=None,
                 verbosity: int = 0, *, min_mid_channels: int = 4, backend: str = "auto"):
        super().__init__(kernel_sizes, with_bn, bn_kwargs, verbosity, backend=backend)
        bsconvs_mid_channels(1, p, min_mid_channels)  # validates p and min_mid_channels before any surgery
        self.p = p
        self.min_mid_channels = min_mid_channels

    def _build(self, conv: nn.Conv2d) -> nn.Module:
        return BSConvS(**_conv_arguments(conv), p=self.p, min_mid_channels=self.min_mid_channels,
                       with_bn=self.with_bn, bn_kwargs=self.bn_kwargs, backend=self.backend)

    def apply(self, model: nn.Module) -> nn.Module:
        model = super().apply(model)
        model.reg_loss = types.MethodType(BSConvS_ModelRegLossMixin.reg_loss, model)
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_sizes={self.kernel_sizes}, p={self.p}, with_bn={self.with_bn})"
