"""The extension's CUDA kernels for the static model: what each layer launches and what the compiled kernels hold.

    python -m bsconv_fused.bench.static.cuda [--filter '128->128@56'] [--suite layers,variants] [--dtype fp16]
                                             [--json FILE] [--markdown FILE]

- Launch plan: csrc/cuda/probe/plan_probe.cu includes forward.cu and backward.cu and runs their own planners
  (pick_block_n, pick_out_plan, backward_plans, the refusal checks) on a device described by the machine table (SM
  count, shared memory), so the grids, channel blocks, tiles and shared memory here are the extension's decisions,
  not a re-derivation. The probe is built with nvcc (host code; the device pass for sm_75 compiles empty kernel
  bodies, see BSCONV_ARCH_OK) and cached.
- Kernels: forward.cu and backward.cu compiled with `nvcc -cubin -lineinfo` for sm_90 (the device flags of setup.py,
  as tests/test_cuda_compile.py uses them), split per function; registers, stack and static shared memory from
  `cuobjdump --dump-resource-usage`, SASS from `cuobjdump -sass`, and the source line of every instruction (with its
  inline call site) from `nvdisasm -gi`. Each runtime loop of the SASS (sass.find_loops) is attributed to the source
  loop whose back edge it is: `forward.cu:111 @ forward.cu:153` is the kernel-row loop of depthwise_runs as inlined
  by the `case 3:` branch of the kernel.

What this module does not do yet: dynamic instruction counts, hence no predicted time. nvcc partially unrolls
runtime loops (the 3x3 kernel-row loop is unrolled twice with a straight-line remainder; the 2-wide one eight times
with a two-wide remainder loop and a straight-line tail), so a source loop's trip count does not give the trips of
its SASS loops without the unroll factor of each copy. docs/static-cost-model.md ("CUDA kernels") describes the plan
to get them. Everything here is static: no GPU is used and nothing is measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..suites import LayerCase
from .bounds import occupancy
from .compile import CompiledLaunch
from .machines import MACHINES_FOR_ARCH
from .sass import _BRANCH_TARGET, SassError, find_loops, parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CSRC = os.path.join(ROOT, "csrc")
SOURCES = ("forward", "backward")
# The device flags of setup.py's CUDAExtension (keep in sync with tests/test_cuda_compile.py).
NVCC_FLAGS = ("-O3", "-std=c++17", "-lineinfo", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__")
THREADS = 256  # kThreads of csrc/cuda/common.cuh: every kernel runs 8 warps
# Mangled template argument of the storage type (forward_kernel<__half, 64, true> -> ...I6__halfLi64ELb1EE...).
_MANGLED_T = {"fp16": "6__half", "bf16": "13__nv_bfloat16", "fp32": "f"}
_ESZ = {"fp16": 2, "bf16": 2, "fp32": 4}


class ToolMissing(RuntimeError):
    """nvcc, cuobjdump or nvdisasm is not available."""


def nvcc() -> str:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    for cand in (os.path.join(home, "bin", "nvcc"), shutil.which("nvcc") or ""):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise ToolMissing("nvcc not found (set CUDA_HOME): the CUDA kernels' static analysis compiles them")


def tool(name: str) -> str:
    """cuobjdump / nvdisasm: Triton's copies first (the ones the Triton rows use), then the CUDA toolkit."""
    try:
        import triton

        cands = [os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)]
    except ImportError:
        cands = []
    try:
        cands.append(os.path.join(os.path.dirname(nvcc()), name))
    except ToolMissing:
        pass
    cands.append(shutil.which(name) or "")
    for cand in cands:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise ToolMissing(f"{name} not found (Triton's backends/nvidia/bin, CUDA_HOME/bin or PATH)")


def _sources_hash(extra: Sequence[str] = ()) -> str:
    h = hashlib.sha256()
    for d in ("cuda", os.path.join("cuda", "probe")):
        for name in sorted(os.listdir(os.path.join(CSRC, d))):
            path = os.path.join(CSRC, d, name)
            if os.path.isfile(path) and name.endswith((".cu", ".cuh", ".h")):
                h.update(name.encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]


def cache_dir() -> str:
    base = os.environ.get("BSCONV_FUSED_STATIC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "bsconv_fused", "static")
    os.makedirs(base, exist_ok=True)
    return base


def _build(out: str, args: List[str]) -> str:
    if os.path.exists(out):
        return out
    tmp = out + f".tmp{os.getpid()}"
    r = subprocess.run(args + ["-o", tmp], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{(r.stdout + r.stderr)[-4000:]}")
    os.replace(tmp, out)  # atomic: a concurrent run sees the whole file or none
    return out


def probe_binary() -> str:
    src = os.path.join(CSRC, "cuda", "probe", "plan_probe.cu")
    cc = nvcc()
    out = os.path.join(cache_dir(), f"plan_probe-{_sources_hash([cc])}")
    return _build(out, [cc, "-std=c++17", "-O1", "-arch=sm_75", "-I", CSRC, src])


def cubin(source: str, arch: int = 90) -> str:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    cc = nvcc()
    out = os.path.join(cache_dir(), f"{source}-sm{arch}-{_sources_hash([cc, *NVCC_FLAGS])}.cubin")
    return _build(out, [cc, *NVCC_FLAGS, f"-arch=sm_{arch}", "-cubin", "-I", CSRC,
                        os.path.join(CSRC, "cuda", f"{source}.cu")])


# ---------------------------------------------------------------------------------------------------------------
# Launch plans (the C++ planners through the probe)

@dataclass(frozen=True)
class PlannedLaunch:
    kernel: str  # forward_kernel, dx_kernel, dpw_kernel, wgrad_kernel
    BN: int  # the template channel block
    blocks: int
    smem: int  # dynamic shared memory per block, bytes
    plan: Dict[str, int]  # the planner's other fields (tiles, splits, ...)


def _device_args(machine) -> List[str]:
    # the kernels plan for two resident blocks per SM within the opt-in limit (227 KB on sm_90 / 163 KB on sm_80)
    return [str(machine.sms), str(machine.smem_per_sm - 1024), str(machine.smem_per_sm)]


def plan_layers(cases: Sequence[LayerCase], machine) -> List[Dict[str, object]]:
    """Per case: {'forward': [PlannedLaunch] (NCHW output), 'forward_staged': [...] (channels_last output),
    'backward': [dx, dpw, wgrad]}, or {'refused': reason}. Backward: the gradients of x, pw, dw and bias, atomics
    (the default; deterministic mode adds fixed-order reduction launches)."""
    lines = "".join(f"{c.N} {c.C_in} {c.C_out} {c.H} {c.W} {c.K} {c.K} {c.stride} {c.stride} {c.padding} "
                    f"{c.padding} 1 1 {_ESZ[c.dtype]}\n" for c in cases)
    r = subprocess.run([probe_binary(), *_device_args(machine)], input=lines, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"plan_probe failed: {r.stderr.strip()}")
    out: List[Dict[str, object]] = [dict(forward=[], forward_staged=[], backward=[]) for _ in cases]
    for line in r.stdout.splitlines():
        idx, kind, *rest = line.split()
        d = out[int(idx) - 1]
        if kind == "end":
            continue
        if kind == "refused":
            d.setdefault("refused", {})[rest[0]] = " ".join(rest[1:])
            continue
        kv = {k: int(v) for k, v in (t.split("=") for t in rest)}
        kernel = "forward_kernel" if kind.startswith("forward") else f"{kind}_kernel"
        pl = PlannedLaunch(kernel, kv.pop("BN"), kv.pop("blocks"), kv.pop("smem"), kv)
        (d["backward"] if kind in ("dx", "dpw", "wgrad") else d[kind]).append(pl)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Compiled kernels: SASS, resources, source lines, loops

@dataclass(frozen=True)
class KernelImage:
    name: str  # mangled
    sass: str
    regs: int
    stack: int
    static_shared: int
    lines: Dict[int, Tuple[str, ...]]  # address -> source locations, innermost first, the kernel body's last


def _split_functions(text: str) -> Dict[str, str]:
    out = {}
    for block in re.split(r"\n\s*Function : ", text)[1:]:
        name, body = block.split("\n", 1)
        out[name.strip()] = "Function : " + name.strip() + "\n" + body
    return out


_RES = re.compile(r"Function (\S+):\s*\n?\s*REG:(\d+) STACK:(\d+) SHARED:(\d+)")
_LOC = re.compile(r'\s*//## File "([^"]+)", line (\d+)')
_INS = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s")


def _line_tables(dis: str) -> Dict[str, Dict[int, Tuple[str, ...]]]:
    tables: Dict[str, Dict[int, Tuple[str, ...]]] = {}
    for sec in re.split(r"\n//-+ \.text\.", dis)[1:]:
        name = sec.split(" ", 1)[0].strip()
        table: Dict[int, Tuple[str, ...]] = {}
        group: List[str] = []
        fresh = True
        loc: Tuple[str, ...] = ()
        for ln in sec.splitlines():
            m = _LOC.match(ln)
            if m:
                if fresh:
                    group = []
                    fresh = False
                group.append(f"{os.path.basename(m.group(1))}:{m.group(2)}")
                continue
            if _INS.match(ln):
                if not fresh:
                    loc = tuple(group)
                    fresh = True
                table[int(_INS.match(ln).group(1), 16)] = loc
        tables[name] = table
    return tables


@functools.lru_cache(maxsize=None)
def kernel_images(source: str, arch: int = 90) -> Dict[str, KernelImage]:
    path = cubin(source, arch)
    sass = subprocess.run([tool("cuobjdump"), "-sass", path], capture_output=True, text=True, timeout=600)
    res = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                         timeout=600)
    dis = subprocess.run([tool("nvdisasm"), "-gi", path], capture_output=True, text=True, timeout=600)
    for r, what in ((sass, "cuobjdump -sass"), (res, "cuobjdump --dump-resource-usage"), (dis, "nvdisasm -gi")):
        if r.returncode != 0:
            raise RuntimeError(f"{what} {path} failed: {r.stderr.strip()}")
    resources = {m.group(1): tuple(int(m.group(i)) for i in (2, 3, 4)) for m in _RES.finditer(res.stdout)}
    lines = _line_tables(dis.stdout)
    out = {}
    for name, text in _split_functions(sass.stdout).items():
        if name not in resources or name not in lines:
            raise RuntimeError(f"{name}: no resource usage or line table in {path}")
        regs, stack, shared = resources[name]
        out[name] = KernelImage(name, text, regs, stack, shared, lines[name])
    return out


def instantiation(kernel: str, dtype: str, BN: int, tc: bool = True) -> str:
    """The mangled-name fragment of kernel<T, BN, TC> (fp32 uses TF32 tensor cores, torch's default)."""
    return f"{kernel}I{_MANGLED_T[dtype]}Li{BN}ELb{int(tc)}EE"


def find_image(kernel: str, dtype: str, BN: int, arch: int = 90) -> KernelImage:
    source = "forward" if kernel == "forward_kernel" else "backward"
    frag = instantiation(kernel, dtype, BN)
    hits = [img for name, img in kernel_images(source, arch).items() if frag in name]
    if len(hits) != 1:
        raise RuntimeError(f"expected one {kernel}<{dtype}, {BN}> in {source}.cu's cubin, found {len(hits)}")
    return hits[0]


@dataclass(frozen=True)
class SourceLoop:
    sass: str  # "[0x0b10, 0x0e00]"
    depth: int
    static_instructions: int
    source: str  # the back edge's innermost location, e.g. "forward.cu:111"
    call_site: str  # its location in the kernel body (where the loop's function is inlined)
    text: str  # the source line

    @property
    def key(self) -> str:
        return self.source if self.source == self.call_site else f"{self.source} @ {self.call_site}"


@functools.lru_cache(maxsize=None)
def _source_line(loc: str) -> str:
    name, line = loc.rsplit(":", 1)
    for d in ("cuda",):
        path = os.path.join(CSRC, d, name)
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().splitlines()
            n = int(line)
            return lines[n - 1].strip() if 0 < n <= len(lines) else ""
    return ""


@functools.lru_cache(maxsize=None)
def _loops_of(name: str, source: str, arch: int) -> Tuple[Tuple[SourceLoop, ...], str]:
    img = kernel_images(source, arch)[name]
    try:
        return tuple(source_loops(img)), ""
    except SassError as e:
        return (), str(e)


def source_loops(img: KernelImage) -> List[SourceLoop]:
    """Every runtime loop of the kernel, outer before inner, with the source loop its back edge belongs to. Raises
    SassError when the SASS loops overlap without nesting: nvcc sometimes lays a loop's blocks out apart from each
    other (the depthwise-weight kernel's emit code, shared by its six inlined stencil copies), and the address-range
    loop model of sass.find_loops cannot describe that; a CFG with dominators would."""
    ins = parse(img.sass)
    loops = find_loops(ins)
    out = []
    for lp in loops:
        backs = [i for i in ins if i.op == "BRA" and i.addr > lp.start and (m := _BRANCH_TARGET.match(i.args))
                 and int(m.group(1), 16) == lp.start]
        locs = {img.lines.get(b.addr, ()) for b in backs}
        loc = max(locs, key=len) if locs else ()
        depth = sum(1 for o in loops if o is not lp and o.start <= lp.start and lp.end <= o.end)
        src = loc[0] if loc else "?"
        out.append(SourceLoop(str(lp), depth, sum(1 for i in ins if lp.contains(i.addr)), src,
                              loc[-1] if loc else "?", _source_line(src) if loc else ""))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Per layer: the launches with their compiled kernels

def layer_kernels(case: LayerCase, layout: str, direction: str, plans: Dict[str, object], arch: int = 90) -> dict:
    """The launches of one (layer, layout, direction) with grid, block, shared memory, registers, occupancy per
    machine and the SASS loops of the launched instantiation; {'refused': ...} when the planners refuse."""
    if "refused" in plans:
        return dict(refused=plans["refused"])
    if direction == "forward":
        planned = plans["forward_staged" if layout == "channels_last" else "forward"]
    elif direction == "backward":
        planned = plans["backward"]
    else:
        raise ValueError(f"direction must be forward or backward, got {direction!r}")
    machines = MACHINES_FOR_ARCH[arch]
    kernels = []
    for pl in planned:
        img = find_image(pl.kernel, case.dtype, pl.BN, arch)
        k = CompiledLaunch(name=f"{pl.kernel}<{case.dtype},{pl.BN}>", launch=None, arch=arch, sass=img.sass,
                           regs=img.regs, stack=img.stack, shared=pl.smem + img.static_shared,
                           num_warps=THREADS // 32, grid=(pl.blocks,))
        occ = {m.name: occupancy(k, m) for m in machines}
        loops, loops_error = _loops_of(img.name, "forward" if pl.kernel == "forward_kernel" else "backward", arch)
        kernels.append(dict(
            kernel=k.name, mangled=img.name, grid=[pl.blocks], block=[THREADS], ctas=pl.blocks, num_warps=k.num_warps,
            regs=img.regs, stack_bytes=img.stack, dynamic_shared_bytes=pl.smem, static_shared_bytes=img.static_shared,
            plan=pl.plan,
            occupancy={n: dict(ctas_per_sm=o.ctas_per_sm, limiter=o.limiter, warps_per_sm=o.warps_per_sm,
                               waves=round(o.waves, 3), tail=round(o.tail, 3)) for n, o in occ.items()},
            sass_loops=[dataclasses.asdict(lp) | dict(key=lp.key) for lp in loops],
        ))
        if loops_error:
            kernels[-1]["loops_error"] = loops_error
    return dict(kernels=kernels)


def inventory(cases_layouts: Sequence[tuple], arch: int = 90, directions=("forward", "backward"), log=print) -> dict:
    machine = MACHINES_FOR_ARCH[arch][0]
    cases = list(dict.fromkeys(c for c, _ in cases_layouts))
    plans = dict(zip(cases, plan_layers(cases, machine)))
    rows = []
    for case, layout in cases_layouts:
        for direction in directions:
            r = layer_kernels(case, layout, direction, plans[case], arch)
            rows.append(dict(layer=case.layer, kernel_size=case.K, K=case.K, stride=case.stride, N=case.N,
                             layout=layout, dtype=case.dtype, direction=direction, backend="cuda", **r))
            log(f"{case.layer} K{case.K} s{case.stride} {layout} {direction}: "
                + ("refused: " + str(r["refused"]) if "refused" in r else
                   ", ".join(f"{k['kernel']} {k['ctas']} CTAs {k['regs']} regs "
                             f"{(k['dynamic_shared_bytes'] + k['static_shared_bytes']) / 1024:.1f} KB" for k in
                             r["kernels"])))
    return dict(header=dict(note="static launch plans and compiled-kernel facts, no time predicted, nothing measured",
                            arch=f"sm_{arch}", plan_machine=machine.name, nvcc_flags=list(NVCC_FLAGS)),
                rows=rows)


def to_markdown(inv: dict) -> str:
    h = inv["header"]
    m0 = h["plan_machine"]
    out = [f"# CUDA kernels of the extension, {h['arch']}: launch plans and compiled kernels", "",
           f"**{h['note']}.** Plans from the extension's planners for the {m0}; registers and loops from the "
           f"sm_90 cubins.", "",
           "| layer | K | stride | layout | direction | kernel | grid x 256 | regs | smem KB | CTA/SM (limit) | "
           "waves | runtime loops (SASS) |",
           "|---|---:|---:|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in inv["rows"]:
        if "refused" in r:
            out.append(f"| {r['layer']} | {r['kernel_size']} | {r['stride']} | {r['layout']} | {r['direction']} | "
                       f"refused: {r['refused']} | | | | | | |")
            continue
        for k in r["kernels"]:
            o = k["occupancy"][m0]
            out.append(f"| {r['layer']} | {r['kernel_size']} | {r['stride']} | {r['layout']} | {r['direction']} | "
                       f"{k['kernel']} | {k['ctas']} | {k['regs']} | "
                       f"{(k['dynamic_shared_bytes'] + k['static_shared_bytes']) / 1024:.1f} | "
                       f"{o['ctas_per_sm']} ({o['limiter']}) | {o['waves']:.2f} | "
                       f"{'not structured (see docs)' if k.get('loops_error') else len(k['sass_loops'])} |")
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .report import SUITES, suite

    ap = argparse.ArgumentParser(prog="python -m bsconv_fused.bench.static.cuda", description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp16", choices=tuple(_MANGLED_T))
    ap.add_argument("--filter", default="")
    ap.add_argument("--suite", default="layers", help=f"comma-separated, of {SUITES}")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    try:
        pairs = suite([args.dtype], args.filter, [s for s in args.suite.split(",") if s])
        if not pairs:
            raise ValueError(f"--filter {args.filter!r} matches no layer of the suite")
        inv = inventory(pairs, log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ToolMissing, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    md = to_markdown(inv)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(inv, f, indent=1)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if not args.json and not args.markdown:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
