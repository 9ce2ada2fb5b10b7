"""The shapes the benchmark runs: the layer table of docs/performance.md and its variants, scaled-down CPU and
interpreter versions of it, and the parity cases.

A :class:`LayerCase` is one BSConvU call (padding K//2, dilation 1, bias on the depthwise conv, no mid_bias: the
shape of a BSConv-U layer in a network). Suites are plain tuples so the CLI, the pytest-benchmark tests and the
traffic report share them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import torch

from .._shapes import conv_out_size

DTYPES: Dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                                  "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# (C_in, C_out, H=W): the nine layers of the roofline table in docs/performance.md (MobileNetV1-like widths).
TABLE_LAYERS: Tuple[Tuple[int, int, int], ...] = (
    (32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28),
    (256, 512, 14), (512, 512, 14), (512, 1024, 7), (1024, 1024, 7),
)

DIRECTIONS = ("forward", "backward", "forward+backward")


@dataclass(frozen=True)
class LayerCase:
    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    K: int = 3
    stride: int = 1
    dtype: str = "fp16"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        for name in ("N", "C_in", "C_out", "H", "W", "K", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def padding(self) -> int:
        return self.K // 2

    @property
    def Ho(self) -> int:
        return conv_out_size(self.H, self.K, self.stride, self.padding, 1)

    @property
    def Wo(self) -> int:
        return conv_out_size(self.W, self.K, self.stride, self.padding, 1)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def layer(self) -> str:
        """The layer's name in the performance.md table, e.g. '32->64@112'."""
        hw = f"{self.H}" if self.H == self.W else f"{self.H}x{self.W}"
        return f"{self.C_in}->{self.C_out}@{hw}"

    @property
    def name(self) -> str:
        return f"{self.layer} N{self.N} K{self.K} s{self.stride} {self.dtype}"

    def with_(self, **changes) -> "LayerCase":
        d = asdict(self)
        d.update(changes)
        return LayerCase(**d)

    def as_dict(self) -> dict:
        return asdict(self)


def table_cases(N: int, K: int = 3, stride: int = 1, dtype: str = "fp16",
                layers: Sequence[Tuple[int, int, int]] = TABLE_LAYERS) -> List[LayerCase]:
    return [LayerCase(N, ci, co, hw, hw, K, stride, dtype) for ci, co, hw in layers]


def _product(layers, Ns, Ks, strides, dtypes) -> List[LayerCase]:
    return [c for dt in dtypes for N in Ns for K in Ks for s in strides for c in table_cases(N, K, s, dt, layers)]


# GPU suites. The full cross product of performance.md (N x K x stride x dtype = 324 cases x 3 directions x ~9
# contenders) takes hours, mostly compiling torch.compile baselines, so the default splits it into the questions
# each part answers; "sweep" is the whole product for whoever has the time.
def gpu_layer_suites(dtypes: Sequence[str], quick: bool) -> Dict[str, List[LayerCase]]:
    if quick:
        # One memory-bound and one tensor-core-bound layer at the headline setting.
        return {"layers": _product((TABLE_LAYERS[1], TABLE_LAYERS[6]), (64,), (3,), (1,), dtypes[:1])}
    first = [d for d in ("fp16",) if d in dtypes] or list(dtypes[:1])
    return {
        # The headline table: N=64, K=3, stride 1, every dtype.
        "layers": _product(TABLE_LAYERS, (64,), (3,), (1,), dtypes),
        # Latency at small batch, where launch overhead and occupancy decide.
        "latency": _product(TABLE_LAYERS, (1, 8), (3,), (1,), first),
        # The other kernel size and the strided layers.
        "variants": _product(TABLE_LAYERS, (64,), (5,), (1,), first) + _product(TABLE_LAYERS, (64,), (3,), (2,), first),
    }


def gpu_sweep(dtypes: Sequence[str]) -> List[LayerCase]:
    return _product(TABLE_LAYERS, (1, 8, 64), (3, 5), (1, 2), dtypes)


# CPU suites: the same channel counts at one image, maps capped so one call stays in the milliseconds on a laptop.
def cpu_layer_suites(dtypes: Sequence[str], quick: bool) -> Dict[str, List[LayerCase]]:
    def capped(layers, cap):
        return tuple((ci, co, min(hw, cap)) for ci, co, hw in layers)

    if quick:
        return {"layers": _product(capped((TABLE_LAYERS[0], TABLE_LAYERS[4]), 28), (1,), (3,), (1,), dtypes[:1])}
    return {
        "layers": _product(capped(TABLE_LAYERS, 56), (1,), (3,), (1,), dtypes),
        "variants": _product(capped(TABLE_LAYERS, 56), (1,), (5,), (1,), dtypes[:1])
        + _product(capped(TABLE_LAYERS, 56), (1,), (3,), (2,), dtypes[:1]),
    }


def interpreter_cases(quick: bool, dtype: str = "fp32") -> List[LayerCase]:
    """The table's layers at realistic channel counts and N=1 for the Triton interpreter (about 0.1 s per program
    instance). Full mode caps maps at 28x28 (the 28, 14 and 7 maps keep their real size) and adds one 56x56 layer,
    where the kernels take their large-map path; quick mode (CI) caps at 16x16 and takes two layers."""
    if quick:
        return [LayerCase(1, ci, co, min(hw, 16), min(hw, 16), 3, 1, dtype)
                for ci, co, hw in (TABLE_LAYERS[0], (128, 256, 16))]
    cases = [LayerCase(1, ci, co, min(hw, 28), min(hw, 28), 3, 1, dtype) for ci, co, hw in TABLE_LAYERS]
    return cases + [LayerCase(1, 32, 64, 56, 56, 3, 1, dtype), LayerCase(1, 128, 128, 28, 28, 5, 1, dtype),
                    LayerCase(1, 128, 256, 28, 28, 3, 2, dtype)]


@dataclass(frozen=True)
class ParityCase:
    """A small BSConvU call covering one corner of the geometry (odd sizes, rectangular kernels, dilation, ...)."""

    label: str
    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    bias: bool = True
    mid_bias: bool = False
    channels_last: bool = False


PARITY_CASES: Tuple[ParityCase, ...] = (
    ParityCase("3x3 same, C_in=3", 2, 3, 16, 9, 11, (3, 3), padding=(1, 1)),
    ParityCase("5x5 stride 2, mid_bias", 1, 16, 24, 13, 10, (5, 5), (2, 2), (2, 2), mid_bias=True),
    ParityCase("3x1 rect, dilation 2, no bias", 2, 12, 20, 10, 7, (3, 1), (1, 1), (2, 0), (2, 1), bias=False),
    ParityCase("4x4 even, stride 2x1", 1, 8, 12, 8, 9, (4, 4), (2, 1), (1, 2)),
    ParityCase("3x3 channels_last", 2, 20, 36, 7, 7, (3, 3), padding=(1, 1), mid_bias=True, channels_last=True),
    ParityCase("1x1 kernel", 1, 17, 9, 5, 6, (1, 1)),
)


def filter_cases(cases: Iterable[LayerCase], pattern: str) -> List[LayerCase]:
    """Keep the cases whose name contains every space-separated token of ``pattern`` (CLI --filter)."""
    toks = pattern.split()
    return [c for c in cases if all(t in c.name for t in toks)]
