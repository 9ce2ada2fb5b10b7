"""The network benchmark: BSConv-U MobileNetV1 at 224x224 and CIFAR ResNet-110-BSConvU at 32x32, inference latency
and one training step (forward, cross-entropy, backward, SGD step) with its peak memory, for every backend present
against the plain two-layer path (NCHW and channels_last) and torch.compile of it.

Each contender is first checked against a float64 copy of the same model and weights (logits in eval mode, every
parameter gradient in train mode); whole networks compound rounding over up to 110 layers, so a contender is wrong
when its error exceeds twice that of the two-layer path in the same dtype plus a floor (checks.NETWORK_FLOOR).
"""
from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import TABLE, available_backends
from ..models import get_model, set_backend
from .checks import NETWORK_FLOOR, describe, rel_error
from .results import ERROR, OK, UNAVAILABLE, WRONG, Row
from .suites import DTYPES
from .timing import peak_memory, time_fn

DIRECTIONS = ("inference", "train-step")
NAMES = ("triton-nchw", "triton-cl", "cuda-nchw", "cuda-cl", "torch-nchw", "torch-cl", "compile")


@dataclass(frozen=True)
class NetCase:
    model: str          # a bsconv_fused.models.get_model name
    num_classes: int
    N: int
    size: int
    dtype: str
    directions: Tuple[str, ...] = DIRECTIONS

    @property
    def name(self) -> str:
        return f"{self.model} N{self.N} {self.size}x{self.size} {self.dtype}"


def network_cases(device: torch.device, dtypes: Sequence[str], quick: bool) -> List[NetCase]:
    mb, rn = "mobilenetv1_w1_bsconvu", "cifar_resnet110_bsconvu"
    if device.type == "cuda":
        if quick:
            return [NetCase(rn, 100, 128, 32, dtypes[0])]
        out = []
        for dt in dtypes:
            out += [NetCase(mb, 1000, 1, 224, dt, ("inference",)), NetCase(mb, 1000, 64, 224, dt),
                    NetCase(rn, 100, 128, 32, dt)]
        return out
    if quick:
        # CI smoke run on shared cores: the 20-layer sibling of ResNet-110, same units and widths
        return [NetCase("cifar_resnet20_bsconvu", 100, 4, 32, dtypes[0])]
    return [NetCase(mb, 1000, 1, 224, dtypes[0]), NetCase(rn, 100, 32, 32, dtypes[0])]


@dataclass
class NetContender:
    name: str
    kind: str
    backend: str
    channels_last: bool
    compiled: bool = False
    unavailable: Optional[str] = None


def net_contenders(device: torch.device, *, compile_baselines: bool = True, quick: bool = False,
                   include: Optional[Sequence[str]] = None) -> List[NetContender]:
    """Fused backends and the two-layer path, NCHW and channels_last, and torch.compile of the two-layer model
    (quick mode: NCHW only, no torch.compile)."""
    status = available_backends()
    out = []
    for b in ("triton", "cuda", "cpu"):
        why = None if status[b].available else status[b].reason
        if TABLE[b].device != device.type:
            continue
        for cl in (False, True):
            out.append(NetContender(f"{b}-{'cl' if cl else 'nchw'}", "fused", b, cl, unavailable=why))
    out += [NetContender("torch-nchw", "baseline", "torch", False), NetContender("torch-cl", "baseline", "torch", True)]
    if device.type == "cuda" and compile_baselines and not quick:  # compiling ResNet-110's step takes minutes
        out.append(NetContender("compile", "baseline", "torch", False, compiled=True))
    if quick:
        out = [c for c in out if not c.channels_last]
    if include:
        # the layer benchmark's eager-* names select the two-layer path here too
        out = [c for c in out if c.name in include or c.name.replace("torch-", "eager-") in include]
    return out


def _prepare_model(base: nn.Module, c: NetContender, device, dtype, train: bool) -> nn.Module:
    m = copy.deepcopy(base)
    set_backend(m, c.backend)
    m = m.to(device=device, dtype=dtype)
    if c.channels_last:
        m = m.to(memory_format=torch.channels_last)
    m.train(train)
    if c.compiled:
        torch._dynamo.reset()
        m = torch.compile(m)
    return m


def _grads(model: nn.Module, x, target) -> List[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x).float(), target)
    loss.backward()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def run_case(case: NetCase, device: torch.device, contenders: Sequence[NetContender], *, quick: bool,
             suite: str = "networks", seed: int = 0, log: Callable[[str], None] = print) -> List[Row]:
    torch.manual_seed(seed)
    base = get_model(case.model, case.num_classes, backend="torch")
    dt = DTYPES[case.dtype]
    g = torch.Generator(device="cpu").manual_seed(seed)
    x64 = torch.randn(case.N, 3, case.size, case.size, generator=g, dtype=torch.float64).to(device)
    target = torch.randint(0, case.num_classes, (case.N,), generator=g).to(device)
    x = x64.to(dt)
    # the float64 oracle sees the inputs rounded to the contenders' dtype, as in the layer benchmark
    ref_model = copy.deepcopy(base).to(device=device, dtype=torch.float64)
    refs: Dict[str, object] = {}
    with torch.no_grad():
        refs["inference"] = ref_model.eval()(x.to(torch.float64))
    refs["train-step"] = _grads(ref_model.train(), x.to(torch.float64), target)
    del ref_model
    fields = dict(dtype=case.dtype, N=case.N, H=case.size, W=case.size, layer=case.model)
    rows: List[Row] = []
    eager_err: Dict[str, float] = {}
    # the eager paths first: their errors set the bar for the others
    order = sorted(contenders, key=lambda c: (c.name != "torch-nchw", c.name != "torch-cl"))
    for c in order:
        for d in case.directions:
            row = Row(suite, case.name, d, c.name, c.kind, OK, **fields)
            rows.append(row)
            if c.unavailable:
                row.status, row.note = UNAVAILABLE, c.unavailable
                continue
            try:
                xin = x.contiguous(memory_format=torch.channels_last) if c.channels_last else x
                m = _prepare_model(base, c, device, dt, train=(d == "train-step"))
                if d == "inference":
                    with torch.no_grad():
                        out = m(xin)
                    err = rel_error(out, refs["inference"])
                else:
                    # one error over all gradients together: per-tensor relative errors blow up on the tensors whose
                    # gradient is tiny after a deep stack (the plain PyTorch paths showed 0.17-0.46 that way)
                    gr = _grads(m, xin, target)
                    err = rel_error(torch.cat([a.flatten().double() for a in gr]),
                                    torch.cat([b.flatten() for b in refs["train-step"]]))
                row.max_err = err
                if c.name in ("torch-nchw", "torch-cl"):
                    eager_err[(d, c.name)] = err
                # a fused contender may be as far off as twice the plain PyTorch path in its own layout (PyTorch's
                # channels_last CPU training is itself ~1000x further from float64 than NCHW: 6e-3 vs 4e-6 seen);
                # the eager paths themselves are held to the NCHW bar
                same_layout = "torch-cl" if c.channels_last and c.name != "torch-cl" else "torch-nchw"
                eager_base = max(eager_err.get((d, "torch-nchw"), 0.0), eager_err.get((d, same_layout), 0.0))
                bar = 2 * eager_base + NETWORK_FLOOR[case.dtype]
                if not err <= bar:
                    row.status, row.note = WRONG, f"error above {bar:.1e} (2 x eager + floor)"
                    continue
                if d == "inference":
                    def fn(m=m, xin=xin):
                        with torch.no_grad():
                            return m(xin)
                else:
                    # tiny learning rate: the step is timed, not learned; weights barely move between reps
                    opt = torch.optim.SGD(m.parameters(), lr=1e-6)

                    def fn(m=m, xin=xin, opt=opt):
                        loss = F.cross_entropy(m(xin).float(), target)
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                t = time_fn(fn, device, quick=quick, long=not quick)
                row.median_us, row.p20_us, row.p80_us = t.median * 1e6, t.p20 * 1e6, t.p80 * 1e6
                if d == "train-step":
                    mem = peak_memory(fn, device)
                    row.peak_mem_mb = None if mem is None else mem / 2 ** 20
            except Exception as e:
                row.status, row.note = ERROR, describe(e)
            finally:
                m = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for d in case.directions:
        grp = [r for r in rows if r.direction == d]
        base_t = [r.median_us for r in grp if r.kind == "baseline" and r.status == OK and r.median_us]
        for r in grp:
            if base_t and r.median_us:
                r.speedup = min(base_t) / r.median_us
    return rows


def run_suite(cases: Sequence[NetCase], device: torch.device, contenders: Sequence[NetContender], *, quick: bool,
              log: Callable[[str], None] = print, on_case=None) -> List[Row]:
    rows = []
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        log(f"[networks {i}/{len(cases)}] {case.name} ...")
        r = run_case(case, device, contenders, quick=quick, log=log)
        rows += r
        if on_case:
            on_case(r)
        log(f"[networks {i}/{len(cases)}] {case.name} done in {time.perf_counter() - t0:.1f} s")
    return rows
