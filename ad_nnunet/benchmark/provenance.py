"""Where a benchmark result comes from: the commit of the code and the machine (recorded in reports and payloads)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

# The source checkout this package is imported from (an editable install); in an installed wheel it is the
# site-packages folder, where git finds no commit and the reports say "unknown".
SOURCE_TREE = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """``$AD_BENCH_COMMIT`` if set (a copy without .git), else ``git rev-parse HEAD`` of :data:`SOURCE_TREE`."""
    if os.environ.get("AD_BENCH_COMMIT"):
        return os.environ["AD_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_TREE), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=20)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine_info(device: str) -> dict:
    """CPU model, cores, torch version, device name (for the report)."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "device": device}
    try:
        from importlib.metadata import version
        info["nnunetv2"] = version("nnunetv2")
    except Exception:  # not installed as a distribution
        info["nnunetv2"] = "unknown"
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
