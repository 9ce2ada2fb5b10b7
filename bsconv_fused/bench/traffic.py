"""Count what Triton kernels move and compute, on the CPU, through Triton's interpreter (TRITON_INTERPRET=1).

The idea and the first version come from the project's shared tool (../shared/tools/triton_traffic.py): wrap the
interpreter's memory and dot builders and record every access. This is the project's own implementation of it, with
bounded memory (address sets are compacted as they grow, so realistic channel counts fit) and atomics counted as
the stores they are.

What it measures, for everything launched inside ``with count_traffic() as t:``:
- requested bytes: elements touched by tl.load / tl.store / atomics, masked-off lanes excluded: what the kernel
  asks of the memory hierarchy (L1/L2/DRAM together);
- unique bytes: distinct addresses touched, what DRAM would move with a perfect cache; DRAM traffic on a GPU lies
  between the unique and the requested bytes;
- dot FLOPs: 2*M*N*K for every tl.dot, recomputation included.
Only Triton kernels are seen: torch operations around the launches (allocations, a final reduction of partial sums
in torch) are not counted. Addresses are distinct per element size; one buffer read at two element sizes would be
counted twice (no kernel of this project does that).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List

import numpy as np

_COMPACT_AT = 1 << 22  # pending addresses before deduplicating (4M int64 = 32 MiB)


class AddressSet:
    """Distinct element addresses, grouped by element size."""

    def __init__(self):
        self._done: Dict[int, np.ndarray] = {}
        self._pending: Dict[int, List[np.ndarray]] = {}
        self._n_pending = 0

    def add(self, addrs: np.ndarray, itemsize: int) -> None:
        if addrs.size == 0:
            return
        self._pending.setdefault(itemsize, []).append(addrs.astype(np.uint64, copy=False))
        self._n_pending += addrs.size
        if self._n_pending >= _COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        for size, parts in self._pending.items():
            old = self._done.get(size)
            arrs = parts + ([old] if old is not None else [])
            self._done[size] = np.unique(np.concatenate(arrs))
        self._pending.clear()
        self._n_pending = 0

    def arrays(self) -> Dict[int, np.ndarray]:
        self._compact()
        return dict(self._done)

    def nbytes(self) -> int:
        return sum(a.size * size for size, a in self.arrays().items())

    def union_nbytes(self, other: "AddressSet") -> int:
        a, b = self.arrays(), other.arrays()
        total = 0
        for size in set(a) | set(b):
            u = np.union1d(a.get(size, np.empty(0, np.uint64)), b.get(size, np.empty(0, np.uint64)))
            total += u.size * size
        return total


@dataclass
class Traffic:
    requested_load: int = 0
    requested_store: int = 0
    requested_atomic: int = 0
    dot_flops: int = 0
    load_ops: int = 0
    store_ops: int = 0
    atomic_ops: int = 0
    dot_ops: int = 0
    _loads: AddressSet = field(default_factory=AddressSet, repr=False)
    _stores: AddressSet = field(default_factory=AddressSet, repr=False)  # stores and atomics

    @property
    def requested(self) -> int:
        return self.requested_load + self.requested_store + self.requested_atomic

    @property
    def unique_load(self) -> int:
        return self._loads.nbytes()

    @property
    def unique_store(self) -> int:
        return self._stores.nbytes()

    @property
    def unique(self) -> int:
        """Distinct bytes read or written (a read-modify-write address counts once)."""
        return self._loads.union_nbytes(self._stores)

    def as_dict(self) -> dict:
        return dict(requested_load=self.requested_load, requested_store=self.requested_store,
                    requested_atomic=self.requested_atomic, requested=self.requested,
                    unique_load=self.unique_load, unique_store=self.unique_store, unique=self.unique,
                    dot_flops=self.dot_flops, load_ops=self.load_ops, store_ops=self.store_ops,
                    atomic_ops=self.atomic_ops, dot_ops=self.dot_ops)

    def report(self) -> str:
        return (f"requested: load {self.requested_load:,} B, store {self.requested_store:,} B, atomic "
                f"{self.requested_atomic:,} B | unique: load {self.unique_load:,} B, store {self.unique_store:,} B, "
                f"total {self.unique:,} B | dot {self.dot_flops:,} FLOP")


def _itemsize(ptrs) -> int:
    return ptrs.get_element_ty().primitive_bitwidth // 8


def _selected(ptrs, mask) -> np.ndarray:
    p = np.asarray(ptrs.data).reshape(-1)
    if mask is None:
        return p
    m = np.broadcast_to(np.asarray(mask.data).astype(bool), np.shape(ptrs.data)).reshape(-1)
    return p[m]


@contextlib.contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Record the traffic of every Triton kernel run inside the block (interpreter only)."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("count_traffic needs the Triton interpreter: set TRITON_INTERPRET=1 before the kernels "
                           "are imported (for example run `TRITON_INTERPRET=1 python -m bsconv_fused.bench.traffic_report`)")
    from triton.runtime import interpreter as it

    B = it.InterpreterBuilder
    names = ("create_masked_load", "create_masked_store", "create_dot", "create_atomic_rmw", "create_atomic_cas")
    saved = {n: getattr(B, n) for n in names}
    t = Traffic()

    def masked_load(self, ptrs, mask, other, *a, **k):
        sel = _selected(ptrs, mask)
        size = _itemsize(ptrs)
        t.load_ops += 1
        t.requested_load += sel.size * size
        t._loads.add(sel, size)
        return saved["create_masked_load"](self, ptrs, mask, other, *a, **k)

    def masked_store(self, ptrs, value, mask, *a, **k):
        sel = _selected(ptrs, mask)
        size = _itemsize(ptrs)
        t.store_ops += 1
        t.requested_store += sel.size * size
        t._stores.add(sel, size)
        return saved["create_masked_store"](self, ptrs, value, mask, *a, **k)

    def dot(self, a, b, d, *args, **k):
        sa, sb = np.shape(a.data), np.shape(b.data)
        batch = int(np.prod(sa[:-2])) if len(sa) > 2 else 1
        t.dot_ops += 1
        t.dot_flops += 2 * batch * sa[-2] * sa[-1] * sb[-1]
        return saved["create_dot"](self, a, b, d, *args, **k)

    def atomic(self, ptrs, mask):
        sel = _selected(ptrs, mask)
        size = _itemsize(ptrs)
        t.atomic_ops += 1
        t.requested_atomic += sel.size * size
        t._stores.add(sel, size)

    def atomic_rmw(self, op, ptr, val, mask, *a, **k):
        atomic(self, ptr, mask)
        return saved["create_atomic_rmw"](self, op, ptr, val, mask, *a, **k)

    def atomic_cas(self, ptr, cmp, val, *a, **k):
        atomic(self, ptr, None)
        return saved["create_atomic_cas"](self, ptr, cmp, val, *a, **k)

    B.create_masked_load, B.create_masked_store = masked_load, masked_store
    B.create_dot, B.create_atomic_rmw, B.create_atomic_cas = dot, atomic_rmw, atomic_cas
    try:
        yield t
    finally:
        for n, f in saved.items():
            setattr(B, n, f)
