"""Reports: the terminal table, JSON and CSV with machine info, a markdown summary ending with the verdict (the
geometric-mean speedup per direction), and PNG plots (matplotlib: installed by scripts/setup_env.sh; without it the
plots are skipped with a note)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .results import OK, ROW_FIELDS, Row, RunInfo

MACHINE_COLUMNS = ("gpu", "cpu", "driver", "cuda_runtime", "cudnn", "torch", "triton", "git_commit", "date_utc")


def _f(v: Optional[float], fmt: str, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, fmt)


def _us(v: Optional[float]) -> str:
    """Microseconds as a short cell: '12.34', '1234.5', then '12.3ms' and '1.23s' for slow CPU rows."""
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}s"
    if v >= 1e4:
        return f"{v / 1e3:.1f}ms"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def group(rows: Iterable[Row]) -> Dict[Tuple[str, str, str], List[Row]]:
    out: Dict[Tuple[str, str, str], List[Row]] = {}
    for r in rows:
        out.setdefault((r.suite, r.case, r.direction), []).append(r)
    return out


HEADER = (f"{'contender':<22}{'status':<12}{'median us':>11} {'p20-p80 us':>17}{'speedup':>9}{'BW %':>7}"
          f"{'bound %':>9}{'mem MB':>9}{'max err':>10}  note")


def format_rows(rows: Sequence[Row]) -> str:
    """One block per case and direction, contenders as lines (the terminal view)."""
    lines = []
    for (suite, case, direction), grp in group(rows).items():
        lines.append(f"== {suite}: {case} | {direction}")
        lines.append(HEADER)
        for r in grp:
            spread = f"{_us(r.p20_us)}-{_us(r.p80_us)}" if r.p20_us is not None else "-"
            lines.append(
                f"{r.contender:<22}{r.status:<12}{_us(r.median_us):>11} {spread:>17}{_f(r.speedup, '.2f'):>9}"
                f"{_f(None if r.bw_frac is None else 100 * r.bw_frac, '.0f'):>7}"
                f"{_f(None if r.bound_frac is None else 100 * r.bound_frac, '.0f'):>9}"
                f"{_f(r.peak_mem_mb, '.1f'):>9}{_f(r.max_err, '.1e'):>10}  {r.note}")
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> List[dict]:
    """Per case and direction: the fastest correct fused contender against the fastest correct baseline."""
    out = []
    for (suite, case, direction), grp in group(rows).items():
        fused = [r for r in grp if r.kind == "fused" and r.status == OK and r.median_us]
        base = [r for r in grp if r.kind == "baseline" and r.status == OK and r.median_us]
        bound = next((r for r in grp if r.contender == "bound-fused"), None)
        bf = min(fused, key=lambda r: r.median_us) if fused else None
        bb = min(base, key=lambda r: r.median_us) if base else None
        wrong = sorted({r.contender for r in grp if r.status == "wrong"})
        out.append(dict(
            suite=suite, case=case, direction=direction,
            best_fused=bf.contender if bf else None, fused_us=bf.median_us if bf else None,
            best_baseline=bb.contender if bb else None, baseline_us=bb.median_us if bb else None,
            speedup=(bb.median_us / bf.median_us) if bf and bb else None,
            fused_bound_us=bound.median_us if bound else None,
            bound_frac=bf.bound_frac if bf else None,
            fused_mem_mb=bf.peak_mem_mb if bf else None, baseline_mem_mb=bb.peak_mem_mb if bb else None,
            fused_p20=bf.p20_us if bf else None, fused_p80=bf.p80_us if bf else None,
            baseline_p20=bb.p20_us if bb else None, baseline_p80=bb.p80_us if bb else None,
            noisy=bool((bf and bf.noisy) or (bb and bb.noisy)),
            wrong=", ".join(wrong),
        ))
    return out


def verdict(rows: Sequence[Row], device: str) -> List[str]:
    """One quotable line per direction: the geometric mean over the cases of (fastest correct baseline / fastest
    correct fused contender), its range, and how many of those cases rest on a noisy row."""
    by: Dict[str, List[dict]] = {}
    missing: Dict[str, int] = {}
    for d in summary(rows):
        if d["speedup"] is not None:
            by.setdefault(d["direction"], []).append(d)
        elif d["baseline_us"] is not None:
            missing[d["direction"]] = missing.get(d["direction"], 0) + 1
    lines = []
    for direction in sorted(set(by) | set(missing), key=_direction_order):
        items = by.get(direction, [])
        if not items:
            lines.append(f"VERDICT {device} {direction}: no case has a correct fused result to compare "
                         f"({missing[direction]} cases)")
            continue
        sp = [d["speedup"] for d in items]
        gm = math.exp(sum(math.log(v) for v in sp) / len(sp))
        word = "faster than" if gm > 1.02 else "slower than" if gm < 0.98 else "on par with"
        n_noisy = sum(d["noisy"] for d in items)
        line = (f"VERDICT {device} {direction}: fused {gm:.2f}x, {word} the best baseline (geometric mean over "
                f"{len(sp)} cases, range {min(sp):.2f}x-{max(sp):.2f}x; {n_noisy} of {len(sp)} noisy)")
        if missing.get(direction):
            line += f"; {missing[direction]} more cases without a correct fused result"
        if 2 * n_noisy > len(sp):
            line += "; most cases are noisy: rerun on an idle machine before quoting this"
        lines.append(line)
    return lines


def _direction_order(d: str):
    order = ("forward", "backward", "forward+backward", "inference", "train-step")
    return (order.index(d) if d in order else len(order), d)


def format_summary(rows: Sequence[Row], markdown: bool = False) -> str:
    s = summary(rows)
    head = ["suite", "case", "direction", "best fused", "us", "best baseline", "us", "speedup", "fused bound us",
            "% of bound", "peak MB fused/base", "noisy", "wrong"]
    body = []
    for d in s:
        mem = "-" if d["fused_mem_mb"] is None and d["baseline_mem_mb"] is None else \
            f"{_f(d['fused_mem_mb'], '.0f')}/{_f(d['baseline_mem_mb'], '.0f')}"
        body.append([d["suite"], d["case"], d["direction"], d["best_fused"] or "none", _us(d["fused_us"]),
                     d["best_baseline"] or "none", _us(d["baseline_us"]), _f(d["speedup"], ".2f"),
                     _us(d["fused_bound_us"]), _f(None if d["bound_frac"] is None else 100 * d["bound_frac"], ".0f"),
                     mem, "noisy" if d["noisy"] else "", d["wrong"] or ""])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*[str(c) for c in row]) for row in body])


def write_json(path: Path, machine: dict, info: Optional[RunInfo], rows: Sequence[Row], settings: dict,
               extra: Optional[dict] = None) -> None:
    doc = {"machine": machine, "settings": settings, "rows": [r.as_dict() for r in rows]}
    if info is not None:
        doc["copy_bandwidth_GBps"] = info.copy_bandwidth / 1e9
        doc["gemm_TFLOPs"] = {k: (None if v is None else v / 1e12) for k, v in info.gemm_flops.items()}
    if extra:
        doc.update(extra)
    path.write_text(json.dumps(doc, indent=1, default=str))


def write_csv(path: Path, machine: dict, rows: Sequence[Row]) -> None:
    """Every row carries the machine columns, so CSVs from different cards can be concatenated safely."""
    cols = list(MACHINE_COLUMNS) + ROW_FIELDS
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            d = {k: machine.get(k) for k in MACHINE_COLUMNS}
            d.update(r.as_dict())
            w.writerow(d)


def write_plots(out_dir: Path, rows: Sequence[Row], title: str) -> Tuple[List[Path], str]:
    """Per suite and direction, one figure: the latency of the fastest fused contender and of the fastest baseline
    per case on a log scale, p20-p80 as error bars, with the fused roofline bound drawn; and the speedup, noisy
    cases hatched. Returns the files written and a note (why nothing was written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ("plots skipped: matplotlib is not installed (scripts/setup_env.sh installs it; "
                    "pip install matplotlib)")
    by: Dict[Tuple[str, str], List[dict]] = {}
    for d in summary(rows):
        if d["speedup"] is not None:
            by.setdefault((d["suite"], d["direction"]), []).append(d)
    files = []
    for (suite, direction), items in by.items():
        fig, (lat, spd) = plt.subplots(1, 2, figsize=(max(9, 0.6 * len(items) + 5), 4.8))
        x = list(range(len(items)))

        def bars(key):
            med = [d[f"{key}_us"] for d in items]
            lo = [m - (d[f"{key}_p20"] if d[f"{key}_p20"] is not None else m) for m, d in zip(med, items)]
            hi = [(d[f"{key}_p80"] if d[f"{key}_p80"] is not None else m) - m for m, d in zip(med, items)]
            return med, [lo, hi]

        med, err = bars("fused")
        lat.errorbar([v - 0.12 for v in x], med, yerr=err, fmt="o", color="tab:blue", capsize=3, ms=4,
                     label="fastest fused (median, p20-p80)")
        med, err = bars("baseline")
        lat.errorbar([v + 0.12 for v in x], med, yerr=err, fmt="s", color="tab:orange", capsize=3, ms=4,
                     label="fastest baseline (median, p20-p80)")
        bound = [(v, d["fused_bound_us"]) for v, d in zip(x, items) if d["fused_bound_us"]]
        if bound:  # networks have no analytic bound
            lat.scatter([v for v, _ in bound], [b for _, b in bound], marker="_", s=300, color="k",
                        label="fused roofline bound")
        lat.set_yscale("log")
        lat.set_ylabel("latency (us, log scale)")
        lat.legend(fontsize=7)
        colors = ["tab:green" if d["speedup"] >= 1 else "tab:red" for d in items]
        rects = spd.bar(x, [d["speedup"] for d in items], color=colors)
        for r, d in zip(rects, items):
            if d["noisy"]:
                r.set_hatch("//")
                r.set_alpha(0.6)
        spd.axhline(1.0, color="k", lw=0.8)
        spd.set_ylabel("speedup vs best baseline (hatched: noisy)")
        for ax in (lat, spd):
            ax.set_xticks(x)
            ax.set_xticklabels([d["case"] for d in items], rotation=70, ha="right", fontsize=7)
        fig.suptitle(f"{title}: {suite}, {direction}", fontsize=9)
        fig.tight_layout()
        p = out_dir / f"{suite}-{direction.replace('+', '_')}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    return files, "" if files else "plots skipped: no case had both a fused contender and a baseline"
