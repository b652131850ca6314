"""Environment report for ``todsynth doctor``: versions, hardware, and the local weights/data paths.

Only reads metadata and paths; never imports mmseg (its import has side effects on mmcv-lite).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
from dataclasses import dataclass
from pathlib import Path

# (label, distribution name)
PACKAGES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("diffusers", "diffusers"),
    ("transformers", "transformers"),
    ("accelerate", "accelerate"),
    ("peft", "peft"),
    ("mmseg", "mmsegmentation"),
    ("mmengine", "mmengine"),
)
SD3_PARTS: tuple[str, ...] = (
    "transformer",
    "vae",
    "scheduler",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
)
ENV_SD3 = "TODSYNTH_SD3_DIR"
ENV_INCEPTION = "TODSYNTH_INCEPTION_WEIGHTS"
ENV_LOVEDA = "TODSYNTH_LOVEDA_ROOT"


@dataclass(frozen=True)
class Row:
    """One line of the report: what, its value, and ``ok`` / ``missing`` / ``not set`` / ``info``."""

    item: str
    value: str
    status: str


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def mmcv_flavour() -> tuple[str | None, str]:
    """(mmcv version or None, ``full`` if the compiled ``mmcv._ext`` imports, else ``lite``)."""
    version = _version("mmcv") or _version("mmcv-lite")
    if version is None:
        return None, "missing"
    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        return version, "lite"
    return version, "full"


def _resolve(value: str | Path | None, env: str) -> tuple[Path | None, str]:
    if value is not None:
        return Path(value).expanduser(), "option"
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser(), f"${env}"
    return None, ""


def _sd3_row(path: Path | None, source: str) -> Row:
    if path is None:
        return Row("SD3.5 dir", f"--sd3-dir or ${ENV_SD3}", "not set")
    if not path.is_dir():
        return Row("SD3.5 dir", f"{path} ({source}) does not exist", "missing")
    absent = [p for p in SD3_PARTS if not (path / p).is_dir()]
    if absent:
        return Row("SD3.5 dir", f"{path} ({source}) lacks {', '.join(absent)}", "missing")
    return Row("SD3.5 dir", f"{path} ({source})", "ok")


def _inception_row(path: Path | None, source: str) -> Row:
    if path is None:
        return Row("Inception weights", f"--inception or ${ENV_INCEPTION}", "not set")
    if not path.is_file():
        return Row("Inception weights", f"{path} ({source}) is not a file", "missing")
    return Row("Inception weights", f"{path} ({source}, {path.stat().st_size / 2**20:.1f} MiB)", "ok")


def _loveda_row(path: Path | None, source: str) -> Row:
    if path is None:
        return Row("LoveDA root", f"--loveda-root or ${ENV_LOVEDA}", "not set")
    from todsynth.data.loveda import list_samples
    from todsynth.errors import TodsynthError

    counts = []
    for split in ("Train", "Val"):
        try:
            counts.append(f"{split} {len(list_samples(path, split))}")
        except TodsynthError:
            counts.append(f"{split} missing")
    status = "ok" if all("missing" not in c for c in counts) else "missing"
    return Row("LoveDA root", f"{path} ({source}): {', '.join(counts)}", status)


def doctor_rows(
    sd3_dir: str | Path | None = None,
    inception: str | Path | None = None,
    loveda_root: str | Path | None = None,
) -> list[Row]:
    """Everything ``todsynth doctor`` prints; options override the ``TODSYNTH_*`` environment variables."""
    rows = [Row("python", platform.python_version(), "info")]
    for label, dist in PACKAGES:
        v = _version(dist)
        rows.append(Row(label, v or "not installed", "ok" if v else "missing"))
    mmcv_version, flavour = mmcv_flavour()
    rows.append(
        Row("mmcv", f"{mmcv_version} ({flavour})" if mmcv_version else "not installed", "ok" if mmcv_version else "missing")
    )
    rows.append(Row("CPU cores", str(os.cpu_count()), "info"))
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            rows.append(Row("GPU", f"{len(names)} x {names[0]} (CUDA {torch.version.cuda})", "ok"))
        else:
            rows.append(Row("GPU", "none (CPU only)", "info"))
    except ImportError:
        rows.append(Row("GPU", "torch not installed", "missing"))
    rows.append(_sd3_row(*_resolve(sd3_dir, ENV_SD3)))
    rows.append(_inception_row(*_resolve(inception, ENV_INCEPTION)))
    rows.append(_loveda_row(*_resolve(loveda_root, ENV_LOVEDA)))
    return rows
