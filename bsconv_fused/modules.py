"""BSConvU and BSConvS as nn.Modules: drop-in replacements for the reference layers that take the fused path.

Layout, constructor arguments, defaults, submodule names and state_dict keys are those of the reference package
(``bsconv.pytorch``, see docs/bsconv-reference.md), so its checkpoints load with ``strict=True``. The modules are
``nn.Sequential`` subclasses like the reference, so iterating and indexing them yields the same layers; only
``forward`` differs: when the fused path applies, the layers' parameters are folded into one call of
:func:`bsconv_fused.functional.bsconv_u` (pointwise weight, ``mid_bias`` and depthwise weight); otherwise the
submodules run one after the other (the "two-layer path"), exactly as the reference does.

The fold is recomputed from the live parameters inside the autograd graph on every call: nothing is cached, so it
stays right after an optimizer step or ``load_state_dict`` and every parameter gets its gradient.

This module knows nothing about kernels; backend choice and the backend-level fallbacks (no GPU, fp64, ...) belong to
the functional layer.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._shapes import IntOrPair, pair
from .backends import CHOICES as BACKEND_NAMES
from .backends import warn_once
from . import bn_stats
from .bn_stats import PointwiseStep, batch_count, fold_chain, needs_batch_stats
from .functional import bsconv_u

__all__ = [
    "BSConvU",
    "BSConvS",
    "BSConvS_ModelRegLossMixin",
    "reg_loss",
    "bsconvs_mid_channels",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# --------------------------------------------------------------------------------------------- argument checks
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int (> 0), got {value}")
    return value


def _check_backend(backend) -> str:
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    return backend


def _check_common(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode,
                  bn_kwargs) -> Dict:
    """Validate the arguments both layers share; return bn_kwargs as a dict. Errors name the argument."""
    _positive_int("in_channels", in_channels)
    _positive_int("out_channels", out_channels)
    pair("kernel_size", kernel_size, 1)
    pair("stride", stride, 1)
    pair("dilation", dilation, 1)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
        if padding == "same" and pair("stride", stride, 1) != (1, 1):
            raise ValueError(f"padding='same' needs stride=1 (as in nn.Conv2d), got stride={stride!r}")
    else:
        pair("padding", padding, 0)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__} ({bias!r})")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if bn_kwargs is None:
        return {}
    if not isinstance(bn_kwargs, dict):
        raise TypeError(f"bn_kwargs must be a dict or None, got {type(bn_kwargs).__name__}")
    return dict(bn_kwargs)


def bsconvs_mid_channels(in_channels: int, p: float, min_mid_channels: int) -> int:
    """Width of BSConvS's subspace: ``min(in, max(min_mid_channels, ceil(p * in)))`` as in the reference."""
    _positive_int("in_channels", in_channels)
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float in [0, 1], got {type(p).__name__} ({p!r})")
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    _positive_int("min_mid_channels", min_mid_channels)
    return min(in_channels, max(min_mid_channels, math.ceil(p * in_channels)))


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    # The reference's pointwise convs never have a bias (a BN or the next pointwise conv follows).
    return nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), stride=1, padding=0, dilation=1, groups=1,
                     bias=False)


def _depthwise(channels, kernel_size, stride, padding, dilation, bias, padding_mode) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                     groups=channels, bias=bias, padding_mode=padding_mode)


# --------------------------------------------------------------------------------------------------- BN fold
def _fold_dtype(dtype: torch.dtype) -> torch.dtype:
    # Fold half-precision parameters in fp32: rsqrt(var + eps) and the products lose bits in fp16/bf16, and the
    # extra cost is a few per-channel vectors.
    return torch.promote_types(dtype, torch.float32)


def _bn_reason(bn: nn.Module, name: str) -> Optional[str]:
    """Why ``bn`` cannot be folded, or None when it can (eval mode: running statistics; training mode or
    track_running_stats=False: batch statistics from the pointwise conv's input, see bsconv_fused.bn_stats)."""
    if not isinstance(bn, _BatchNorm):
        return f"{name} is a {type(bn).__name__}, not a BatchNorm2d / SyncBatchNorm, and is not folded"
    return None


# ------------------------------------------------------------------------------------------------ the layers
class _BSConvBase(nn.Sequential):
    """What BSConvU and BSConvS share: the backend attribute, the fallback decision and the fused forward."""

    _pointwise_names: Tuple[str, ...] = ()

    def _init_backend(self, backend: str) -> None:
        # A plain attribute (not a buffer), so it never enters the state_dict.
        self._backend = _check_backend(backend)

    @property
    def backend(self) -> str:
        """Backend passed to :func:`bsconv_u` on the fused path ("auto", "triton", "cuda", "cpu" or "torch")."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = _check_backend(value)

    # -- subclasses provide these
    def _batchnorms(self) -> Tuple[Tuple[str, nn.BatchNorm2d], ...]:
        raise NotImplementedError

    def _fused_input(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor the fused op reads: x itself, unless a leading layer runs on its own (see BSConvS)."""
        return x

    def _fold_steps(self) -> list:
        """The pointwise convs and BatchNorms between the fused op's input and the depthwise conv, in order."""
        raise NotImplementedError

    def _fused_pointwise(self, z: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The single pointwise weight (C_out, C_in, 1, 1) and mid_bias (C_out,) or None equal to the layers.

        ``z``: the fused op's input, needed when a BatchNorm normalises with batch statistics (training mode);
        their running statistics are then updated, so call this once per forward."""
        steps = self._fold_steps()
        weight = next(step.weight for step in steps if isinstance(step, PointwiseStep))
        dtype = _fold_dtype(weight.dtype)
        if z is not None:
            dtype = torch.promote_types(dtype, bn_stats.stats_dtype(z.dtype))
        A, a = fold_chain(steps, dtype, z)
        pw = A.to(weight.dtype)[:, :, None, None]
        return pw, None if a is None else a.to(weight.dtype)

    def _uses_batch_stats(self) -> bool:
        return any(needs_batch_stats(bn) for _, bn in self._batchnorms())

    def _fused_padding(self) -> Optional[Tuple[int, int]]:
        """dw's padding as a symmetric pair, or None when it is not symmetric (padding='same', even extent)."""
        dw = self.dw
        if isinstance(dw.padding, str):
            if dw.padding == "valid":
                return (0, 0)
            extents = [d * (k - 1) for d, k in zip(dw.dilation, dw.kernel_size)]
            if any(e % 2 for e in extents):
                return None
            return (extents[0] // 2, extents[1] // 2)
        return tuple(dw.padding)  # type: ignore[return-value]

    def fused_path_reason(self) -> Optional[str]:
        """Why forward() would run the two-layer path instead of the fused one, or None when it takes the fused path.

        Depends on the current mode (train/eval). Backend-level reasons (no GPU, dtype, ...) are decided per call by
        the functional layer and are not reported here.
        """
        dw = self.dw
        if dw.padding_mode != "zeros":
            return f"padding_mode={dw.padding_mode!r} is not fused (only 'zeros' is)"
        if self._fused_padding() is None:
            return (f"padding='same' with kernel_size={dw.kernel_size} and dilation={dw.dilation} pads asymmetrically, "
                    "which is not fused")
        for name, bn in self._batchnorms():
            reason = _bn_reason(bn, name)
            if reason is not None:
                return reason
        # Hooks on the submodules (old-style weight_norm, observers, profilers) would be skipped by the fused path.
        for name in self._pointwise_names + tuple(n for n, _ in self._batchnorms()) + ("dw",):
            sub = getattr(self, name)
            if sub._forward_hooks or sub._forward_pre_hooks:
                return f"submodule {name!r} has forward hooks, which the fused path would bypass"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked here so the error names the module's argument (in_channels), not the functional's pw_weight.
        in_channels = getattr(self, self._pointwise_names[0]).in_channels
        if isinstance(x, torch.Tensor) and x.dim() in (3, 4) and x.shape[-3] != in_channels:
            raise ValueError(f"{type(self).__name__}(in_channels={in_channels}) got an input with {x.shape[-3]} "
                             f"channels (shape {tuple(x.shape)}): the input's channel dimension must equal "
                             "in_channels")
        reason = self.fused_path_reason()
        if reason is not None:
            # backend="torch" asks for the plain layers anyway: nothing is lost, so nothing to warn about.
            if self.backend != "torch":
                warn_once(f"{type(self).__name__}: {reason}")
            return super().forward(x)
        batch_stats = self._uses_batch_stats()
        z = self._fused_input(x)
        if batch_stats and batch_count(z) <= 1:
            return super().forward(x)  # BatchNorm raises its own "more than 1 value per channel" error
        pw, mid_bias = self._fused_pointwise(z if batch_stats else None)
        dw = self.dw
        return bsconv_u(z, pw, dw.weight, dw.bias, dw.stride, self._fused_padding(), dw.dilation,
                        mid_bias=mid_bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


class BSConvU(_BSConvBase):
    """Unconstrained blueprint separable convolution: pointwise 1x1 conv (-> BatchNorm) -> depthwise KxK conv.

    Same arguments, defaults, submodules (``pw``, ``bn`` when ``with_bn``, ``dw``) and state_dict keys as the
    reference ``bsconv.pytorch.BSConvU``; ``backend`` (keyword-only) selects the fused backend.

    Fused path: without BN, ``bsconv_u(x, pw.weight, dw.weight, dw.bias)``; with BN the BN is folded into a
    per-channel scale of ``pw.weight`` and a ``mid_bias`` (exact at the image borders, since ``mid_bias`` is not seen
    by the depthwise conv's zero padding): in eval mode from the running statistics, in training mode (or with
    ``track_running_stats=False``) from the batch statistics of the intermediate, computed from the mean and
    covariance of x (bsconv_fused.bn_stats; running statistics updated as BatchNorm2d does, all-reduced under
    SyncBatchNorm). Two-layer path (with one warning per reason): ``padding_mode`` other than ``"zeros"``,
    asymmetric ``padding="same"``, forward hooks on a submodule. See :meth:`fused_path_reason`.
    """

    _pointwise_names = ("pw",)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding=0, dilation: IntOrPair = 1, bias: bool = True, padding_mode: str = "zeros",
                 with_bn: bool = False, bn_kwargs: Optional[Dict] = None, *, backend: str = "auto"):
        bn_kwargs = _check_common(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                                  padding_mode, bn_kwargs)
        super().__init__()
        self._init_backend(backend)
        self.add_module("pw", _pointwise(in_channels, out_channels))
        if with_bn:
            self.add_module("bn", nn.BatchNorm2d(out_channels, **bn_kwargs))
        self.add_module("dw", _depthwise(out_channels, kernel_size, stride, padding, dilation, bias, padding_mode))

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, *, backend: str = "auto") -> "BSConvU":
        """A BSConvU computing what ``seq`` computes, weights preserved: ``seq`` is ``Sequential(Conv2d 1x1,
        [BatchNorm2d], depthwise Conv2d)`` (a reference ``bsconv`` BSConvU is one). See
        :func:`bsconv_fused.convert.bsconvu_from_sequential`."""
        from .convert import bsconvu_from_sequential  # convert.py imports this module

        return bsconvu_from_sequential(seq, backend=backend, cls=cls)

    def _batchnorms(self):
        return (("bn", self.bn),) if "bn" in self._modules else ()

    def _fold_steps(self):
        steps = [PointwiseStep(self.pw.weight[:, :, 0, 0])]
        return steps + [("bn", self.bn)] if "bn" in self._modules else steps


class BSConvS(_BSConvBase):
    """Subspace blueprint separable convolution: pw1 (-> bn1) -> pw2 (-> bn2) -> depthwise KxK conv.

    Same arguments, defaults, submodules (``pw1``, ``bn1``, ``pw2``, ``bn2``, ``dw``) and state_dict keys as the
    reference ``bsconv.pytorch.BSConvS``; ``mid_channels = min(in, max(min_mid_channels, ceil(p * in)))``.
    Train with :meth:`_reg_loss` (orthonormality of pw1's rows) added through :func:`reg_loss`.

    Fused path: the two pointwise convs (and, in eval mode, both BNs) are multiplied into one pointwise weight and
    one ``mid_bias`` inside the autograd graph, so pw1 and pw2 (and the BN affines) all get their gradients:
    with ``BN_k(t) = s_k * t + h_k``, ``pw = diag(s2) W2 diag(s1) W1`` and ``mid_bias = s2 * (W2 h1) + h2``.
    In training mode pw1 runs on its own and the fused op reads its mid-channel output u; bn1 and bn2 fold with
    batch statistics from u's mean and covariance (``pw = diag(s2) W2 diag(s1)``), so neither BN's input is stored.
    Falls back like :class:`BSConvU`.
    """

    _pointwise_names = ("pw1", "pw2")

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding=0, dilation: IntOrPair = 1, bias: bool = True, padding_mode: str = "zeros",
                 p: float = 0.25, min_mid_channels: int = 4, with_bn: bool = False,
                 bn_kwargs: Optional[Dict] = None, *, backend: str = "auto"):
        bn_kwargs = _check_common(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                                  padding_mode, bn_kwargs)
        mid_channels = bsconvs_mid_channels(in_channels, p, min_mid_channels)
        super().__init__()
        self._init_backend(backend)
        self.mid_channels = mid_channels
        self.add_module("pw1", _pointwise(in_channels, mid_channels))
        if with_bn:
            self.add_module("bn1", nn.BatchNorm2d(mid_channels, **bn_kwargs))
        self.add_module("pw2", _pointwise(mid_channels, out_channels))
        if with_bn:
            self.add_module("bn2", nn.BatchNorm2d(out_channels, **bn_kwargs))
        self.add_module("dw", _depthwise(out_channels, kernel_size, stride, padding, dilation, bias, padding_mode))

    def _batchnorms(self):
        return tuple((n, self._modules[n]) for n in ("bn1", "bn2") if n in self._modules)

    def _bn1_on_batch_stats(self) -> bool:
        return "bn1" in self._modules and needs_batch_stats(self.bn1)

    def _fused_input(self, x):
        # bn1 on batch statistics: pw1 runs on its own and the fused op reads its small (mid-channel) output u;
        # bn1 and bn2 both fold, their statistics from u's mid x mid covariance (cheaper than x's C_in x C_in).
        return self.pw1(x) if self._bn1_on_batch_stats() else x

    def _fold_steps(self):
        steps = []
        if not self._bn1_on_batch_stats():
            steps.append(PointwiseStep(self.pw1.weight[:, :, 0, 0]))
        if "bn1" in self._modules:
            steps.append(("bn1", self.bn1))
        steps.append(PointwiseStep(self.pw2.weight[:, :, 0, 0]))
        if "bn2" in self._modules:
            steps.append(("bn2", self.bn2))
        return steps

    def _reg_loss(self) -> torch.Tensor:
        """``|| W W^T - I ||_F`` (unsquared Frobenius norm) with ``W = pw1.weight[:, :, 0, 0]`` (mid x in)."""
        w = self.pw1.weight[:, :, 0, 0]
        gram = w @ w.t()
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.linalg.matrix_norm(gram - eye, ord="fro")

    def extra_repr(self) -> str:
        return f"mid_channels={self.mid_channels}, backend={self.backend!r}"


# ------------------------------------------------------------------------------------------ regularisation
def reg_loss(model: nn.Module, alpha: float = 0.1) -> torch.Tensor:
    """``alpha * sum(m._reg_loss())`` over every submodule of ``model`` (itself included) that has ``_reg_loss``.

    Duck-typed like the reference, so reference BSConvS layers in the same model count too. Add it to the task loss.
    Returns a 0-d zero tensor (on the model's device) when the model has no such layer.
    """
    total = None
    for module in model.modules():
        fn = getattr(module, "_reg_loss", None)
        if callable(fn):
            term = fn()
            total = term if total is None else total + term
    if total is None:
        ref = next(model.parameters(), None)
        total = torch.zeros((), device=None if ref is None else ref.device)
    return alpha * total


class BSConvS_ModelRegLossMixin:
    """Mix into a model class to give it ``model.reg_loss(alpha=0.1)``, as the reference's mixin does."""

    def reg_loss(self, alpha: float = 0.1) -> torch.Tensor:
        return reg_loss(self, alpha)
