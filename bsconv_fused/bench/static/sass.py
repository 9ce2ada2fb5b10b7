"""Parse `cuobjdump -sass` output: instructions, runtime loops (backward branches) and instruction classes.

Only what the cost model needs: an instruction is (address, predicate, opcode, modifiers, operands); a loop is the
address range from a backward branch's target to the last branch that jumps back to it; each opcode falls into one
class, and each class is charged to one execution pipe by the machine model (machines.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Tuple

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z0-9_]+)((?:\.[A-Za-z0-9_]+)*)\s*(.*?)\s*;")
_BRANCH_TARGET = re.compile(r"(0x[0-9a-f]+)")


@dataclass(frozen=True)
class Instruction:
    addr: int
    pred: str  # "" or e.g. "@P0", "@!PT"
    op: str  # opcode without modifiers, e.g. "LDG"
    mods: str  # ".E.128"
    args: str

    @property
    def never_runs(self) -> bool:
        # "@!PT" (never true) marks fillers the compiler inserts around wgmma fences: issued, never executed
        return self.pred == "@!PT"


@dataclass(frozen=True)
class SassLoop:
    """A runtime loop: [start, end] where start is the backward branches' target and end the last of them."""

    start: int
    end: int

    def contains(self, addr: int) -> bool:
        return self.start <= addr <= self.end

    def __str__(self) -> str:
        return f"[{self.start:#06x}, {self.end:#06x}]"


class SassError(ValueError):
    pass


def parse(text: str) -> List[Instruction]:
    """The instructions of the (single) kernel function in a cuobjdump -sass listing, in address order."""
    if text.count("Function :") > 1:
        raise SassError("expected one kernel function per cubin, found " + str(text.count("Function :")))
    ins = []
    for line in text.splitlines():
        m = _LINE.search(line)
        if m:
            ins.append(Instruction(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4),
                                   m.group(5)))
    if not ins:
        raise SassError("no SASS instructions found (is this cuobjdump -sass output?)")
    return ins


def find_loops(ins: List[Instruction]) -> List[SassLoop]:
    """Loops from backward branches, sorted by start address then outermost first (the order their bodies start in
    the code). Branches to themselves (the trap loop after EXIT) are not loops. Loops must nest or be disjoint:
    anything else (irreducible control flow) is an error, because no trip-count product would describe it."""
    ends = {}
    for i in ins:
        if i.op != "BRA":
            continue
        m = _BRANCH_TARGET.match(i.args)
        if m:
            target = int(m.group(1), 16)
            if target < i.addr:
                ends[target] = max(ends.get(target, target), i.addr)
    loops = sorted((SassLoop(a, b) for a, b in ends.items()), key=lambda lp: (lp.start, -lp.end))
    for x in loops:
        for y in loops:
            if x.start < y.start <= x.end < y.end:
                raise SassError(f"loops {x} and {y} overlap without nesting")
    return loops


# Opcode classes. Pipes (machines.py) are assigned per class; "mods" refine a few (HADD2.F32 is an upcast).
_CLASSES = {
    "tensor": {"HGMMA", "HMMA", "IMMA", "DMMA", "QGMMA", "IGMMA"},
    "fp32": {"FFMA", "FADD", "FMUL", "FFMA32I", "FADD32I", "FMUL32I"},
    "fp16": {"HADD2", "HFMA2", "HMUL2", "HFMA2_MMA", "HADD2_32I", "HFMA2_32I", "HMUL2_32I"},
    "fp64": {"DFMA", "DADD", "DMUL"},
    "int_fma": {"IMAD", "IMAD32I", "IMUL", "IDP", "IMADSP", "IMUL32I"},
    "int_alu": {"IADD3", "IADD", "LEA", "SHF", "LOP3", "LOP", "IABS", "IMNMX", "VIMNMX", "VIMNMX3", "ISCADD", "SGXT",
                "BMSK", "POPC", "FLO", "PRMT", "BREV", "IADD32I", "LOP32I", "SHL", "SHR", "I2IP", "FMNMX", "VIADD",
                "VIADDMNMX", "IMNMX3", "F2FP", "HMNMX2"},
    "pred": {"ISETP", "FSETP", "HSETP2", "DSETP", "PLOP3", "SEL", "FSEL", "P2R", "R2P", "PSETP", "CSETP", "FCHK"},
    "move": {"MOV", "MOV32I"},
    "conv": {"F2F", "I2F", "F2I", "I2FP", "F2IP", "FRND"},
    "mufu": {"MUFU"},
    "shfl": {"SHFL"},
    "lds": {"LDS", "LDSM"},
    "sts": {"STS", "STSM"},
    "ldg": {"LDG", "LD"},
    "ldgsts": {"LDGSTS"},
    "stg": {"STG", "ST"},
    "local": {"LDL", "STL"},  # register spills
    "atom": {"RED", "ATOM", "ATOMG", "REDG", "ATOMS"},
    "tma": {"UTMALDG", "UTMASTG", "UBLKCP", "UTMAPF"},
    "sync": {"BAR", "DEPBAR", "LDGDEPBAR", "MEMBAR", "WARPSYNC", "ERRBAR", "CCTL", "SYNCS", "FENCE", "ARRIVES",
             "WARPGROUP", "UCGABAR_ARV", "UCGABAR_WAIT", "ELECT", "ENDCOLLECTIVE", "BPT", "NANOSLEEP"},
    "branch": {"BRA", "BSSY", "BSYNC", "EXIT", "CALL", "RET", "JMP", "BRX", "YIELD", "VOTE", "VOTEU"},
    "special": {"S2R", "CS2R", "S2UR", "LDC", "R2UR", "NOP", "ULDC", "GETLMEMBASE", "LEPC"},
}
_CLASS_OF = {op: k for k, ops in _CLASSES.items() for op in ops}
CLASSES: Tuple[str, ...] = tuple(_CLASSES) + ("upcast", "uniform", "other")
MEMORY_CLASSES = ("lds", "sts", "ldg", "ldgsts", "stg", "atom", "local")


def klass(i: Instruction) -> str:
    if i.op == "HADD2" and ".F32" in i.mods:
        return "upcast"  # f16 -> f32 conversion, run on the FMA pipe (not the XU like F2F)
    k = _CLASS_OF.get(i.op)
    if k is not None:
        return k
    if i.op.startswith("U"):
        return "uniform"  # uniform datapath (UIADD3, ULEA, ...): issue slot, no vector pipe
    return "other"


def bytes_per_thread(i: Instruction) -> int:
    """Bytes one thread moves with a memory instruction (LDSM/STSM: x1/x2/x4 32-bit registers)."""
    if i.op in ("LDSM", "STSM"):
        return 4 * (4 if ".X4" in i.mods else 2 if ".X2" in i.mods else 1)
    for mod, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if mod in i.mods:
            return b
    return 4


_MMA_SHAPE = re.compile(r"\.(\d+)x(\d+)x(\d+)")


def mma_flops_per_warp(i: Instruction) -> float:
    """FLOPs of one tensor instruction, per warp (a wgmma is issued by the 4 warps of a warpgroup together)."""
    m = _MMA_SHAPE.match(i.mods)
    if i.op == "HGMMA" and m:
        M, N, K = map(int, m.groups())
        return 2.0 * M * N * K / 4
    if i.op in ("HMMA", "IMMA") and i.mods.startswith(".") and i.mods[1:].split(".")[0].isdigit():
        shape = i.mods[1:].split(".")[0]  # e.g. 16816 = m16n8k16, 1688 = m16n8k8
        dims = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4), "16832": (16, 8, 32)}.get(shape)
        if dims:
            return 2.0 * dims[0] * dims[1] * dims[2]
    return 0.0


def hgmma_smem_bytes_per_warp(i: Instruction) -> float:
    """Shared-memory operand bytes of one HGMMA, per warp: B (K x N) always, A (M x K) when it is a smem
    descriptor ("gdesc") rather than registers. 2-byte operands (fp16/bf16); tf32 operands are 4 bytes."""
    m = _MMA_SHAPE.match(i.mods)
    if i.op != "HGMMA" or not m:
        return 0.0
    M, N, K = map(int, m.groups())
    elt = 4 if "TF32" in i.mods else 2
    operands = i.args.split(",")
    a_in_smem = len(operands) > 1 and "gdesc" in operands[1]
    return ((M * K * elt if a_in_smem else 0) + K * N * elt) / 4
