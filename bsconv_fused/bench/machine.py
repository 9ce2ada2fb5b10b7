"""What a result was measured on: device name, driver, CUDA, cuDNN, torch, triton, git commit, date."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Dict, Optional

import torch


def _run(cmd, cwd=None) -> Optional[str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    """HEAD of the checkout this package runs from, with '+dirty' when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    head = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if head is None:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return head + ("+dirty" if dirty else "")


def machine_info(device: torch.device) -> Dict[str, object]:
    info: Dict[str, object] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "os_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git_commit": git_commit(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # absent or broken: recorded as such
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_sms"] = props.multi_processor_count
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
        drv = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                    str(device.index or 0)])
        info["driver"] = drv.splitlines()[0] if drv else None
    else:
        info["gpu"] = None
    return info


def device_slug(info: Dict[str, object]) -> str:
    """A file-name-safe card name for result folders, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu-amd-epyc-7b13'."""
    name = str(info.get("gpu") or f"cpu {info.get('cpu', '')}")
    name = re.sub(r"\((r|tm)\)", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:48] or "device"
