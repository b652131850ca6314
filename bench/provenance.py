"""Provenance recorded with every result: git commit, date, package versions, host."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "todsynth", "torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "mmsegmentation",
    "mmengine", "mmcv-lite", "mmcv", "mlflow", "optuna", "clean-fid", "torchmetrics", "numpy",
)


def git_commit(cwd: Path | None = None) -> str:
    """HEAD commit of the source checkout (``-dirty`` when it has local changes), or ``unknown``."""
    where = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (absent ones are skipped)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def now_iso() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def device_label(device: str) -> str:
    """The device a run used, in words (GPU name or CPU model), for provenance."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model} ({os.cpu_count()} cores)"


def provenance() -> dict[str, object]:
    """Everything above plus python/platform, as one JSON-safe dict."""
    return {
        "git_commit": git_commit(),
        "date": now_iso(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
    }
