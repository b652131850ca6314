"""How a committed report names where its numbers came from.

Paths (relative to the workspace, never a temp dir's absolute path), the MLflow store, the device.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

TEMP_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")


def _under_temp(path: Path) -> bool:
    roots = {Path(tempfile.gettempdir()).resolve(), *(Path(r).resolve() for r in TEMP_ROOTS)}
    p = path.resolve()
    return any(p == r or r in p.parents for r in roots)


def _shown_dir(path: Path) -> str:
    """Relative to the current directory when below it (as typed: ``runs``), else absolute."""
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def display_path(path: Path, workspace: Path | None = None) -> str:
    """A path as a committed report may show it: relative to the workspace, never a temp dir's absolute path.

    A report built from a scratch workspace names only the file.
    """
    p = Path(path).expanduser().absolute()
    ws = Path(workspace).expanduser().absolute() if workspace is not None else None
    if ws is not None and (p == ws or ws in p.parents):
        where = "a temporary workspace" if _under_temp(ws) else f"workspace {_shown_dir(ws)}"
        return where if p == ws else f"{p.relative_to(ws)} in {where}"
    if _under_temp(p):
        return f"{p.name} (in a temporary directory)"
    return _shown_dir(p)


def store_text(uri: str, workspace: Path | None = None) -> str:
    """The MLflow store for provenance: a sqlite file through :func:`display_path`, other URIs as given."""
    if uri.startswith("sqlite:///"):
        return "sqlite " + display_path(Path(uri.removeprefix("sqlite:///")), workspace)
    return uri


def device_text(device: str, gpus: Any) -> str:
    """The device a run used; the GPU count only for a CUDA (or unresolved auto) run, never "cpu ..., gpus=1"."""
    on_gpu = device.startswith(("cuda", "auto"))
    return device + (f", gpus={gpus}" if gpus and on_gpu else "")
