"""The contenders of the layer benchmark: every fused backend present and the baselines of docs/performance.md.

A contender is a function (x, pw, dw, bias) -> y plus the layout its inputs take. Baselines:
- eager-nchw / eager-cl: the two-layer block (1x1 conv, then depthwise conv) in plain PyTorch, as a user's
  nn.Sequential runs it, NCHW or channels_last, with torch.backends.cudnn.benchmark on;
- compile / compile-max-autotune: torch.compile of that block (GPU only; max-autotune compiles for minutes);
- dense: the single dense conv with weight pw[o,i]*dw[o] (same bytes as fused, K*K times the pointwise FLOPs);
  inference uses the product weight computed ahead, training builds it inside the graph so pw and dw get gradients.
Fused contenders go through the public functional API (bsconv_fused.functional.bsconv_u), so its Python
overhead is part of what is measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import backends
from ..functional import bsconv_u
from .suites import LayerCase

FUSED_BACKENDS = ("triton", "cuda", "cpu")
BASELINES = ("eager-nchw", "eager-cl", "compile", "compile-max-autotune", "dense")
NAMES = tuple(f"{b}-{layout}" for b in FUSED_BACKENDS for layout in ("nchw", "cl")) + BASELINES

LayerFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@dataclass
class Contender:
    name: str
    kind: str                # "fused" or "baseline"
    channels_last: bool
    fused_bytes: bool        # its memory traffic model: fused (one pass) or unfused (two layers)
    build: Callable[[LayerCase, bool], LayerFn] = field(repr=False)  # (case, training) -> layer function
    unavailable: Optional[str] = None  # why it cannot run here (reported, not timed)
    # torch.compile contenders: a separately compiled training function whose backward can be replayed
    build_replay: Optional[Callable[[LayerCase], LayerFn]] = field(default=None, repr=False)


def two_layer(case: LayerCase) -> LayerFn:
    s, p = case.stride, case.padding

    def block(x, pw, dw, bias):
        return F.conv2d(F.conv2d(x, pw), dw, bias, s, p, 1, dw.shape[0])

    return block


def _fused(name: str) -> Callable[[LayerCase, bool], LayerFn]:
    def build(case: LayerCase, training: bool) -> LayerFn:
        s, p = case.stride, case.padding

        def fn(x, pw, dw, bias):
            return bsconv_u(x, pw, dw, bias, s, p, backend=name)

        return fn

    return build


def _eager(case: LayerCase, training: bool) -> LayerFn:
    return two_layer(case)


def _two_layer_replay(case: LayerCase) -> LayerFn:
    # Same computation as two_layer under its own code object, so Dynamo compiles it apart from the training
    # function (its cache is keyed by code object) and the backward-alone timing gets its own graph.
    s, p = case.stride, case.padding

    def block_replay(x, pw, dw, bias):
        return F.conv2d(F.conv2d(x, pw), dw, bias, s, p, 1, dw.shape[0])

    return block_replay


def _compiled(mode: Optional[str]):
    last = []

    def fresh_cache(case: LayerCase) -> None:
        # A fresh Dynamo cache per shape: otherwise the recompile limit is reached across the suite and later
        # shapes silently run eagerly (or with dynamic shapes), which would flatter or insult the baseline.
        if last != [case]:
            torch._dynamo.reset()
            last[:] = [case]

    def build(case: LayerCase, training: bool) -> LayerFn:
        fresh_cache(case)
        return torch.compile(two_layer(case), mode=mode, dynamic=False)

    def build_replay(case: LayerCase) -> LayerFn:
        fresh_cache(case)
        return torch.compile(_two_layer_replay(case), mode=mode, dynamic=False)

    return build, build_replay


def _dense(case: LayerCase, training: bool) -> LayerFn:
    s, p = case.stride, case.padding
    if training:
        def fn(x, pw, dw, bias):
            return F.conv2d(x, pw * dw, bias, s, p)

        return fn
    cache = {}

    def fn(x, pw, dw, bias):
        key = (pw.data_ptr(), dw.data_ptr())
        if key not in cache:  # the product weight is a one-off cost at inference, like a folded checkpoint
            cache.clear()
            w = pw * dw
            cache[key] = w.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
                memory_format=torch.channels_last) and not x.is_contiguous() else w
        return F.conv2d(x, cache[key], bias, s, p)

    return fn


def dropped(device: torch.device, *, quick: bool, compile_baselines: bool = True,
            max_autotune: bool = True) -> List[Tuple[str, str]]:
    """The baselines left out of this run, each with the reason, so a report says what it did not compare against.
    (Fused contenders that cannot run stay in the table as 'unavailable' with their reason.)"""
    out = []
    for name in ("compile", "compile-max-autotune"):
        if device.type != "cuda":
            why = ("the torch.compile baselines are GPU-only in this suite: on the CPU it compares the extension's "
                   "kernels with the eager two-layer path (oneDNN) and the dense conv")
        elif not compile_baselines:
            why = "--no-compile"
        elif name == "compile-max-autotune" and not max_autotune:
            why = "--no-max-autotune"
        elif name == "compile-max-autotune" and quick:
            why = "--quick (max-autotune tunes for minutes per shape)"
        else:
            continue
        out.append((name, why))
    return out


def contenders(device: torch.device, *, quick: bool, include: Optional[Sequence[str]] = None,
               compile_baselines: bool = True, max_autotune: bool = True) -> List[Contender]:
    """The contenders for ``device``, in report order. ``include`` keeps only the named ones (CLI --contenders)."""
    status = backends.available_backends()
    out: List[Contender] = []
    for name in FUSED_BACKENDS:
        why = None if status[name].available else status[name].reason
        if backends.TABLE[name].device != device.type:
            # (Under TRITON_INTERPRET=1 the Triton kernels run on the CPU through numpy: a test vehicle, not a
            # contender; see the traffic report.)
            continue
        for cl in (False, True):
            out.append(Contender(f"{name}-{'cl' if cl else 'nchw'}", "fused", cl, True, _fused(name), why))
    out.append(Contender("eager-nchw", "baseline", False, False, _eager))
    out.append(Contender("eager-cl", "baseline", True, False, _eager))
    if device.type == "cuda" and compile_baselines:
        build, replay = _compiled(None)
        out.append(Contender("compile", "baseline", False, False, build, build_replay=replay))
        if max_autotune and not quick:
            build, replay = _compiled("max-autotune")
            out.append(Contender("compile-max-autotune", "baseline", False, False, build, build_replay=replay))
    # cuDNN's dense conv is fastest in NHWC on tensor-core cards; on the CPU oneDNN takes either, NCHW is plain.
    out.append(Contender("dense", "baseline", device.type == "cuda", True, _dense))
    if include:
        out = [c for c in out if c.name in include]
    return out
