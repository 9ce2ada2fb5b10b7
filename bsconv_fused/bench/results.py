"""One row of benchmark results and the per-run context (device, measured roofs) the derived columns need."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional

# Row status values. Only "ok" rows carry a latency; "bound" rows carry the analytic time instead.
OK, WRONG, ERROR, UNAVAILABLE, BOUND = "ok", "wrong", "error", "unavailable", "bound"


@dataclass
class Row:
    suite: str
    case: str               # e.g. "64->128@56 N64 K3 s1 fp16", or a network name and batch
    direction: str          # forward / backward / forward+backward, or inference / train-step for networks
    contender: str
    kind: str               # fused / baseline / bound
    status: str = OK
    dtype: str = ""
    layer: str = ""
    N: Optional[int] = None
    C_in: Optional[int] = None
    C_out: Optional[int] = None
    H: Optional[int] = None
    W: Optional[int] = None
    K: Optional[int] = None
    stride: Optional[int] = None
    median_us: Optional[float] = None
    p20_us: Optional[float] = None
    p80_us: Optional[float] = None
    speedup: Optional[float] = None        # best baseline median / this median
    model_bytes: Optional[int] = None      # bytes of this contender's traffic model (fused or unfused)
    bw_frac: Optional[float] = None        # model_bytes / median as a fraction of the measured copy bandwidth
    bound_frac: Optional[float] = None     # fused bound / median (1.0 = at the roofline)
    peak_mem_mb: Optional[float] = None    # extra device memory at the peak of a training call (CUDA only)
    max_err: Optional[float] = None        # max |out - ref64| / max |ref64| over outputs (and gradients)
    noisy: bool = False                    # p80/p20 > NOISY_SPREAD even after one interleaved re-measurement
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


ROW_FIELDS: List[str] = [f.name for f in fields(Row)]

# A row whose p80/p20 spread exceeds this is noisy: its median may be off by more than the effects compared.
NOISY_SPREAD = 1.3


def row_spread(r: Row) -> Optional[float]:
    """p80 / p20 of a timed row (1.0 = every repetition took the same time), None when untimed."""
    if r.p20_us is None or r.p80_us is None or r.p20_us <= 0:
        return None
    return r.p80_us / r.p20_us


def mark_noisy(rows: List[Row]) -> None:
    """Flag the timed rows whose spread exceeds NOISY_SPREAD (rows the layer benchmark re-measured keep its flag)."""
    for r in rows:
        s = row_spread(r)
        if s is not None and s > NOISY_SPREAD:
            r.noisy = True


@dataclass
class RunInfo:
    """What a run measured about its device, besides the rows."""

    device: str
    copy_bandwidth: float                     # bytes/s
    gemm_flops: Dict[str, Optional[float]] = field(default_factory=dict)  # dtype name -> FLOP/s (None on CPU)
