"""Model surgery: replace the regular convolutions of a model by BSConvU / BSConvS layers, optionally keeping what
the pretrained weights compute, and turn reference ``bsconv`` layers or plain pointwise->depthwise blocks into this
package's layers.

Matching rules (those of the reference package's ``BSConvU_Replacer`` / ``BSConvS_Replacer``): every ``nn.Conv2d``
(subclasses included) with ``groups == 1`` and a kernel size in ``kernel_sizes`` (``None``: any size) becomes a
BSConv layer with the same channels, kernel size, stride, padding, dilation, bias presence and padding_mode.
Replaced layers are not searched again. The S variants also give the root model a bound ``reg_loss(alpha=0.1)``.

Additions to the reference, all opt-in or invisible to its API: the new layers take the replaced conv's device, dtype
and train/eval mode (the reference leaves fresh CPU float32 layers); BSConv layers already in the model are left
alone (the reference would replace a depthwise conv with one channel, whose groups == 1); ``backend`` is passed on;
and :func:`replace_conv2d` can start the new layers from the replaced conv's weights (``init="pretrained"``):

- BSConvU: each output filter ``W[o]`` (an in_channels x kh*kw matrix) is replaced by its best rank-1
  approximation ``s1 * u1 v1^T`` (Eckart-Young, from its SVD): ``dw.weight[o] = sqrt(s1) * v1`` (the spatial
  factor), ``pw.weight[o, :] = sqrt(s1) * u1`` (the channel factor); ``dw.bias`` takes the conv's bias. A filter of
  rank 1 is converted exactly (up to rounding). ``sqrt(s1)`` on both sides keeps the two factors at the same scale
  for fine-tuning.
- BSConvS: the rank-1 step above, then the pointwise matrix P (out x in) is split as ``pw2 @ pw1`` by its best
  rank-mid approximation ``U_m S_m V_m^T``: ``pw1 = V_m^T`` (orthonormal rows, so the BSConv-S regulariser starts at
  its minimum, zero) and ``pw2 = U_m S_m``.
- BatchNorms inside the new layers (``with_bn=True``) start as the identity in eval mode (weight 1, bias 0,
  running mean 0, running variance 1 - eps). In training mode a BatchNorm normalises with the batch statistics, so
  the pretrained function is kept in eval mode only until they are learnt.

Each replaced layer is reported with the relative Frobenius error ``||W - W_hat||_F / ||W||_F`` of the dense kernel
the new layer computes (and the worst single filter's), so one sees which layers lose most of their function.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable, Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ._shapes import pair
from .modules import BSConvS, BSConvS_ModelRegLossMixin, BSConvU, _check_backend, bsconvs_mid_channels

__all__ = ["replace_conv2d", "Surgery", "LayerReport", "rank1_factors", "BSConvU_Replacer", "BSConvS_Replacer",
           "bsconvu_from_sequential", "convert_reference"]

_BSCONV_TYPES = (BSConvU, BSConvS)
KINDS = ("u", "s")
INITS = ("random", "pretrained")


# ------------------------------------------------------------------------------------------------ matching
def _kernel_set(kernel_sizes: Optional[Iterable]) -> Optional[Tuple[Tuple[int, int], ...]]:
    if kernel_sizes is None:
        return None
    if isinstance(kernel_sizes, (int, str)):
        raise TypeError(f"kernel_sizes must be an iterable of kernel sizes (e.g. ((3, 3), (5, 5))) or None, "
                        f"got {kernel_sizes!r}")
    return tuple(pair("kernel_sizes", k, 1) for k in kernel_sizes)


def _matches(module: nn.Module, kernels) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and (kernels is None or tuple(module.kernel_size) in kernels))


def _conv_arguments(conv: nn.Conv2d) -> dict:
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                padding_mode=conv.padding_mode)


def _replace_matching(model: nn.Module, build: Callable[[nn.Conv2d, str], nn.Module],
                      kernels) -> Tuple[nn.Module, int]:
    """Replace each matching conv ``c`` (at dotted path ``name``) of ``model``, the root included, by
    ``build(c, name)``, moved to the conv's device and dtype and given its train/eval mode; return (model, count)."""

    def convert(conv: nn.Conv2d, name: str) -> nn.Module:
        new = build(conv, name).to(device=conv.weight.device, dtype=conv.weight.dtype)
        new.train(conv.training)
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


# ------------------------------------------------------------------------------------ weight factorisation
@dataclass(frozen=True)
class Rank1:
    """Best rank-1 factors of every output filter of a conv weight, in float64."""

    pw: torch.Tensor  # (out, in) channel factors, scaled by sqrt(s1)
    dw: torch.Tensor  # (out, kh, kw) spatial factors, scaled by sqrt(s1)


def rank1_factors(weight: torch.Tensor) -> Rank1:
    """Factor each filter ``weight[o]`` (in x kh*kw) as ``pw[o, :, None] * dw[o].flatten()`` of rank 1 (its SVD's
    leading term). Computed in float64: the approximation, not the rounding, should decide the error reported."""
    if weight.dim() != 4:
        raise ValueError(f"weight must be a 4-d conv weight (out, in, kh, kw), got shape {tuple(weight.shape)}")
    out, cin, kh, kw = weight.shape
    mats = weight.detach().to(torch.float64).reshape(out, cin, kh * kw)
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    root = s[:, 0].sqrt()
    pw, dw = u[:, :, 0] * root[:, None], vh[:, 0, :] * root[:, None]
    # SVD signs are arbitrary; flip each pair so the spatial factor sums to >= 0 (deterministic, product unchanged)
    sign = torch.where(dw.sum(1) < 0, -1.0, 1.0).to(dw)
    return Rank1(pw * sign[:, None], (dw * sign[:, None]).reshape(out, kh, kw))


def _subspace_split(pw: torch.Tensor, mid: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``pw`` (out x in, float64) ~= pw2 @ pw1 of rank <= mid, with pw1 (mid x in) having orthonormal rows."""
    u, s, vh = torch.linalg.svd(pw, full_matrices=True)  # vh: in x in, so mid (<= in) orthonormal rows exist
    k = min(mid, s.shape[0])
    pw2 = pw.new_zeros(pw.shape[0], mid)
    pw2[:, :k] = u[:, :k] * s[:k]
    return pw2, vh[:mid]


def _errors(weight: torch.Tensor, pw: torch.Tensor, dw: torch.Tensor) -> Tuple[float, float]:
    """(relative Frobenius error of the whole kernel, worst relative error of one nonzero filter)."""
    w = weight.detach().to(torch.float64).flatten(2)
    approx = pw[:, :, None] * dw.flatten(1)[:, None, :]
    diff = (w - approx).flatten(1).norm(dim=1)
    norms = w.flatten(1).norm(dim=1)
    total = float(diff.norm() / norms.norm()) if float(norms.norm()) > 0 else 0.0
    nonzero = norms > 0
    worst = float((diff[nonzero] / norms[nonzero]).max()) if bool(nonzero.any()) else 0.0
    return total, worst


def _identity_batchnorm(bn: nn.BatchNorm2d, name: str) -> None:
    if bn.running_var is None:
        raise ValueError(f"init='pretrained' with with_bn=True needs BatchNorms that track running statistics "
                         f"({name} has track_running_stats=False, so it normalises every batch and cannot start as "
                         "the identity)")
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # rsqrt(running_var + eps) == 1: the identity in eval mode


def _load_pretrained(new: nn.Module, conv: nn.Conv2d, name: str) -> Tuple[float, float]:
    """Set ``new``'s weights from ``conv``'s (see the module docstring); return (relative error, worst filter)."""
    f = rank1_factors(conv.weight)
    with torch.no_grad():
        new.dw.weight.copy_(f.dw[:, None])
        if conv.bias is not None:
            new.dw.bias.copy_(conv.bias)
        if isinstance(new, BSConvS):
            pw2, pw1 = _subspace_split(f.pw, new.mid_channels)
            new.pw1.weight.copy_(pw1[:, :, None, None])
            new.pw2.weight.copy_(pw2[:, :, None, None])
            effective = pw2 @ pw1
        else:
            new.pw.weight.copy_(f.pw[:, :, None, None])
            effective = f.pw
    for bn_name in ("bn", "bn1", "bn2"):
        if bn_name in new._modules:
            _identity_batchnorm(new._modules[bn_name], f"{name}.{bn_name}")
    return _errors(conv.weight, effective, f.dw)


# ----------------------------------------------------------------------------------------- replace_conv2d
@dataclass(frozen=True)
class LayerReport:
    """One replaced conv: where, what it became, and (init="pretrained") how well the new layer reproduces it."""

    name: str
    replaced: str  # the replaced conv's class name
    layer: str
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    rel_error: Optional[float]  # ||W - W_hat||_F / ||W||_F of the whole kernel; None with init="random"
    worst_filter_error: Optional[float]  # the same for the worst single (nonzero) output filter


class Surgery(NamedTuple):
    """What :func:`replace_conv2d` returns: the model (a new object when the root itself was a conv) and a report
    per replaced layer."""

    model: nn.Module
    layers: List[LayerReport]

    def format(self) -> str:
        """The report as a table, one line per replaced layer."""
        lines = [f"{'layer':40s} {'new':8s} {'in':>5s} {'out':>5s} {'kernel':>7s} {'rel.err':>8s} {'worst':>8s}"]
        for r in self.layers:
            err = "-" if r.rel_error is None else f"{r.rel_error:.4f}"
            worst = "-" if r.worst_filter_error is None else f"{r.worst_filter_error:.4f}"
            k = f"{r.kernel_size[0]}x{r.kernel_size[1]}"
            lines.append(f"{r.name or '(root)':40s} {r.layer:8s} {r.in_channels:5d} {r.out_channels:5d} {k:>7s} "
                         f"{err:>8s} {worst:>8s}")
        return "\n".join(lines)


def replace_conv2d(model: nn.Module, kind: str = "u", kernel_sizes=((3, 3), (5, 5)), p: float = 0.25,
                   with_bn: bool = False, init: str = "random", *, bn_kwargs=None, min_mid_channels: int = 4,
                   backend: str = "auto", verbosity: int = 0) -> Surgery:
    """Replace the matching convs of ``model`` by BSConvU (``kind="u"``) or BSConvS (``kind="s"``, subspace
    fraction ``p``) layers, in place; return ``Surgery(model, layers)``.

    ``init="random"``: the new layers keep their default initialisation (the reference's behaviour).
    ``init="pretrained"``: they start from the replaced conv's weights by the best rank-1 approximation of every
    output filter (and, for BSConvS, the best rank-mid split of the pointwise matrix); ``layers`` reports each
    layer's relative approximation error. ``verbosity`` 1 prints a summary, 2 also the per-layer table.
    The root model gets ``reg_loss(alpha=0.1)`` when ``kind="s"``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(with_bn, bool):
        raise TypeError(f"with_bn must be a bool, got {type(with_bn).__name__} ({with_bn!r})")
    kernels = _kernel_set(kernel_sizes)
    _check_backend(backend)
    if kind == "s":
        bsconvs_mid_channels(1, p, min_mid_channels)  # validates p and min_mid_channels before any surgery
    reports: List[LayerReport] = []

    def build(conv: nn.Conv2d, name: str) -> nn.Module:
        args = dict(_conv_arguments(conv), with_bn=with_bn, bn_kwargs=bn_kwargs, backend=backend)
        new = BSConvU(**args) if kind == "u" else BSConvS(**args, p=p, min_mid_channels=min_mid_channels)
        new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
        err = _load_pretrained(new, conv, name) if init == "pretrained" else (None, None)
        reports.append(LayerReport(name, type(conv).__name__, type(new).__name__, conv.in_channels, conv.out_channels,
                                   tuple(conv.kernel_size), *err))
        return new

    before = sum(p_.numel() for p_ in model.parameters())
    model, _ = _replace_matching(model, build, kernels)
    if kind == "s":
        model.reg_loss = types.MethodType(BSConvS_ModelRegLossMixin.reg_loss, model)
    result = Surgery(model, reports)
    if verbosity >= 1:
        _print_summary("replace_conv2d", before, model, len(reports))
    if verbosity >= 2:
        print(result.format())
    return result


def _print_summary(who: str, before: int, model: nn.Module, count: int) -> None:
    after = sum(p.numel() for p in model.parameters())
    print(f"{who} replaced {count} module{'' if count == 1 else 's'}; "
          f"parameters {before:,} -> {after:,} ({100.0 * after / max(before, 1):.2f}%)")


# ----------------------------------------------------------------------------------- the reference's API
class BSConvU_Replacer:
    """``BSConvU_Replacer(kernel_sizes=((3, 3), (5, 5)), with_bn=False, bn_kwargs=None, verbosity=0).apply(model)``:
    the reference's replacer (random init). :func:`replace_conv2d` also offers ``init="pretrained"``."""

    kind = "u"

    def __init__(self, kernel_sizes=((3, 3), (5, 5)), with_bn: bool = False, bn_kwargs=None, verbosity: int = 0,
                 *, backend: str = "auto"):
        self.kernel_sizes = _kernel_set(kernel_sizes)
        self.with_bn = with_bn
        self.bn_kwargs = bn_kwargs
        self.verbosity = verbosity
        self.backend = _check_backend(backend)

    def _options(self) -> dict:
        return dict(kind=self.kind, kernel_sizes=self.kernel_sizes, with_bn=self.with_bn, bn_kwargs=self.bn_kwargs,
                    backend=self.backend)

    def apply(self, model: nn.Module) -> nn.Module:
        """Replace in place where possible and return the model (a new layer when the root itself is replaced)."""
        before = sum(p.numel() for p in model.parameters())
        result = replace_conv2d(model, **self._options())
        if self.verbosity >= 2:
            for r in result.layers:
                print(f"replaced {r.name or '(root)'}: {r.replaced} -> {r.layer}")
        if self.verbosity >= 1:
            _print_summary(type(self).__name__, before, result.model, len(result.layers))
        return result.model

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_sizes={self.kernel_sizes}, with_bn={self.with_bn})"


class BSConvS_Replacer(BSConvU_Replacer):
    """``BSConvS_Replacer(kernel_sizes=((3, 3), (5, 5)), p=0.25, with_bn=False, bn_kwargs=None, verbosity=0)``.

    ``apply`` also binds ``reg_loss(alpha=0.1)`` onto the returned root model: add ``model.reg_loss()`` to the loss.
    """

    kind = "s"

    def __init__(self, kernel_sizes=((3, 3), (5, 5)), p: float = 0.25, with_bn: bool = False, bn_kwargs=None,
                 verbosity: int = 0, *, min_mid_channels: int = 4, backend: str = "auto"):
        super().__init__(kernel_sizes, with_bn, bn_kwargs, verbosity, backend=backend)
        bsconvs_mid_channels(1, p, min_mid_channels)  # validates p and min_mid_channels before any surgery
        self.p = p
        self.min_mid_channels = min_mid_channels

    def _options(self) -> dict:
        return dict(super()._options(), p=self.p, min_mid_channels=self.min_mid_channels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_sizes={self.kernel_sizes}, p={self.p}, with_bn={self.with_bn})"


# ------------------------------------------------------------------- from existing pw -> dw blocks
def _why_not_bsconvu(seq: nn.Module) -> Optional[str]:
    """Why ``seq`` is not a ``Sequential(Conv2d 1x1, [BatchNorm2d], depthwise Conv2d)`` block, or None."""
    if not isinstance(seq, nn.Sequential):
        return f"expected an nn.Sequential, got {type(seq).__name__}"
    layers = list(seq.children())
    if len(layers) not in (2, 3):
        return f"expected 2 or 3 layers (pointwise conv, [BatchNorm2d], depthwise conv), got {len(layers)}"
    pw, dw = layers[0], layers[-1]
    if not isinstance(pw, nn.Conv2d) or not isinstance(dw, nn.Conv2d):
        return (f"the first and last layers must be nn.Conv2d, got {type(pw).__name__} and {type(dw).__name__}")
    if (tuple(pw.kernel_size) != (1, 1) or tuple(pw.stride) != (1, 1) or pw.groups != 1
            or pw.padding not in ("valid", (0, 0))):
        return (f"the first layer must be a 1x1 conv with stride 1, padding 0 and groups 1, got "
                f"kernel_size={pw.kernel_size}, stride={pw.stride}, padding={pw.padding}, groups={pw.groups}")
    c = pw.out_channels
    if not (dw.in_channels == dw.out_channels == dw.groups == c):
        return (f"the last layer must be a depthwise conv over the {c} channels of the first (in_channels == "
                f"out_channels == groups == {c}), got in_channels={dw.in_channels}, out_channels={dw.out_channels}, "
                f"groups={dw.groups}")
    if len(layers) == 3:
        bn = layers[1]
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != c:
            return f"the middle layer must be nn.BatchNorm2d({c}), got {bn!r}"
    elif pw.bias is not None:
        return ("the pointwise conv has a bias and no BatchNorm follows; BSConvU's pointwise conv has no bias "
                "(a BatchNorm would absorb it)")
    return None


def bsconvu_from_sequential(seq: nn.Sequential, *, backend: str = "auto", cls=BSConvU) -> BSConvU:
    """A BSConvU computing what ``seq`` computes: ``seq`` is a ``Sequential(Conv2d 1x1, [BatchNorm2d], depthwise
    Conv2d)`` block (a reference ``bsconv`` BSConvU is one). Weights, BatchNorm buffers and settings, device,
    dtype and train/eval mode are copied; hooks are not. A pointwise bias before the BatchNorm is folded into its
    running mean (exact: the BatchNorm subtracts the batch or running mean, which the bias shifts by itself)."""
    why = _why_not_bsconvu(seq)
    if why is not None:
        raise ValueError(f"seq: {why}")
    layers = list(seq.children())
    pw, dw = layers[0], layers[-1]
    bn = layers[1] if len(layers) == 3 else None
    bn_kwargs = None if bn is None else dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                                             track_running_stats=bn.track_running_stats)
    new = cls(pw.in_channels, pw.out_channels, dw.kernel_size, stride=dw.stride, padding=dw.padding,
              dilation=dw.dilation, bias=dw.bias is not None, padding_mode=dw.padding_mode, with_bn=bn is not None,
              bn_kwargs=bn_kwargs, backend=backend)
    state = {"pw.weight": pw.weight, "dw.weight": dw.weight}
    if dw.bias is not None:
        state["dw.bias"] = dw.bias
    if bn is not None:
        state.update({f"bn.{k}": v for k, v in bn.state_dict().items()})
        if pw.bias is not None and bn.running_mean is not None:
            state["bn.running_mean"] = bn.running_mean - pw.bias.detach().to(bn.running_mean.dtype)
    new = new.to(device=pw.weight.device, dtype=pw.weight.dtype)
    new.load_state_dict(state, strict=True)
    return new.train(seq.training)


def _reference_kind(module: nn.Module) -> Optional[str]:
    """"BSConvU" / "BSConvS" for the reference package's layers (recognised without importing it)."""
    name = type(module).__name__
    if type(module).__module__.split(".")[0] == "bsconv" and name in ("BSConvU", "BSConvS"):
        return name
    return None


def _bsconvs_from_reference(ref: nn.Sequential, backend: str) -> BSConvS:
    bn = ref._modules.get("bn1")
    bn_kwargs = None if bn is None else dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                                             track_running_stats=bn.track_running_stats)
    dw, mid = ref.dw, ref.pw1.out_channels
    # p=0 and min_mid_channels=mid give exactly the reference layer's width, whatever p it was built with
    new = BSConvS(ref.pw1.in_channels, dw.out_channels, dw.kernel_size, stride=dw.stride, padding=dw.padding,
                  dilation=dw.dilation, bias=dw.bias is not None, padding_mode=dw.padding_mode, p=0.0,
                  min_mid_channels=mid, with_bn=bn is not None, bn_kwargs=bn_kwargs, backend=backend)
    new = new.to(device=dw.weight.device, dtype=dw.weight.dtype)
    new.load_state_dict(ref.state_dict(), strict=True)
    return new.train(ref.training)


def convert_reference(model: nn.Module, *, backend: str = "auto", verbosity: int = 0) -> nn.Module:
    """Turn every reference ``bsconv`` BSConvU / BSConvS layer and every plain ``Sequential(Conv2d 1x1,
    [BatchNorm2d], depthwise Conv2d)`` block of ``model`` (the root included) into this package's BSConvU /
    BSConvS, weights preserved, in place; return the model (a new object when the root itself was converted).
    This package's layers are left as they are."""
    _check_backend(backend)

    def convert(module: nn.Module) -> Optional[nn.Module]:
        if isinstance(module, _BSCONV_TYPES):
            return None
        kind = _reference_kind(module)
        if kind == "BSConvS":
            return _bsconvs_from_reference(module, backend)
        if kind == "BSConvU" or _why_not_bsconvu(module) is None:
            return bsconvu_from_sequential(module, backend=backend)
        return None

    new = convert(model)
    if new is not None:
        return new
    count = 0
    stack = [("", model)]
    while stack:
        prefix, parent = stack.pop()
        for name, child in list(parent.named_children()):
            if isinstance(child, _BSCONV_TYPES):
                continue
            new = convert(child)
            if new is None:
                stack.append((prefix + name + ".", child))
                continue
            setattr(parent, name, new)
            count += 1
            if verbosity >= 2:
                print(f"converted {prefix + name}: {type(child).__name__} -> {type(new).__name__}")
    if verbosity >= 1:
        print(f"convert_reference converted {count} module{'' if count == 1 else 's'}")
    return model
