"""Every repository path that the README, the docs, docstrings and comments name exists in the repository.

A reader who follows a named document or results file must find it. Paths are
recognised by their top-level folder (docs/, benchmarks/, bsconv_fused/, csrc/, tests/, scripts/, examples/) and a
file extension; globs and placeholders (<...>, *, {a,b}) are skipped.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("docs", "benchmarks", "bsconv_fused", "csrc", "tests", "scripts", "examples", ".ci")
PATH_RE = re.compile(r"(?<![\w/.-])((?:%s)/[\w./-]*\w\.(?:md|py|sh|cuh|cu|cpp|h|json|csv|txt|toml|cff))(?!\w)"
                     % "|".join(re.escape(t) for t in TOPS))
SCANNED = (".md", ".py", ".cu", ".cuh", ".cpp", ".h", ".sh", ".toml")
# files a build writes (gitignored), named on purpose
GENERATED = {"bsconv_fused/_build_failed.txt"}


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.splitlines() if p.endswith(SCANNED) and (ROOT / p).is_file()]


def test_named_paths_exist():
    missing = []
    for f in _tracked_files():
        if "results" in f.parts and f.suffix in (".json", ".csv"):
            continue  # data files
        text = f.read_text(errors="replace")
        for m in PATH_RE.finditer(text):
            path = m.group(1).rstrip(".")
            if any(ch in path for ch in "<>*{}") or path in GENERATED:
                continue
            if not (ROOT / path).exists():
                line = text[:m.start()].count("\n") + 1
                missing.append(f"{f.relative_to(ROOT)}:{line}: {path}")
    assert not missing, "paths named but not in the repository:\n" + "\n".join(sorted(set(missing)))
