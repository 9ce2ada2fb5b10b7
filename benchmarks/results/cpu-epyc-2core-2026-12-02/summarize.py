"""summary.md from the interleaved.py result files given on the command line (one per thread count)."""
from __future__ import annotations

import json
import sys


def cell(t):
    return f"{t['median_us']:.0f} [{t['p20_us']:.0f}, {t['p80_us']:.0f}]"


def main(paths):
    out = []
    for path in paths:
        d = json.load(open(path))
        m, rows = d["machine"], d["rows"]
        clock = rows[0]["clock"]
        out.append(f"## {m['cpu']}, {rows[0]['threads']} thread(s) of {m['os_cpus']} cores, torch {m['torch']}, "
                   f"{m['date_utc']}, git {m['git_commit']}\n")
        out.append(f"Clock: {'thread CPU time' if clock == 'cpu' else 'wall time'}; median [p20, p80] over "
                   f"{rows[0]['rounds']} interleaved rounds, in us. The machine was shared with other jobs "
                   f"(2 cores, up to 8 agents): read the spread before the medians.\n")
        out.append("| case | direction | cuda-nchw | cuda-cl | eager-nchw | eager-cl "
                   "| two-layer time / fused time (best of each) |")
        out.append("|---|---|---|---|---|---|---|")
        for r in rows:
            cells = [cell(r[n][clock]) for n in ("cuda-nchw", "cuda-cl", "eager-nchw", "eager-cl")]
            out.append(f"| {r['case']} | {r['direction']} | " + " | ".join(cells) +
                       f" | **{r['speedup']:.2f}x** ({r['best_fused']} vs {r['best_baseline']}) |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
