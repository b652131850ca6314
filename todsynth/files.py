"""Safe file input and output: atomic writes, whether a path can be an output folder, and reads that name the file.

A killed process never leaves a half-written file under its final name (at most a hidden ``.<name>.*.tmp`` beside
it), and an output path that cannot be a folder is named before any work starts. A file we read back (a saved
model's JSON config, its safetensors weights) that is damaged raises :class:`~todsynth.errors.ConfigError` naming
it, never a parser's traceback.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from todsynth.errors import ConfigError

if TYPE_CHECKING:  # numpy and torch stay out of import time: bench.cache (CLI start-up) imports this module
    import numpy as np
    import torch


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` uint8 encoded as PNG: (H, W) as grey (``L``), (H, W, 3) as RGB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be (or be created as) a folder this process writes in, or None; creates nothing.

    The nearest existing entry on the path decides: a file there, or a folder this user cannot write in.
    """
    here = Path(os.path.abspath(path))
    while not here.exists() and here.parent != here:
        here = here.parent
    if not here.is_dir():
        return f"{here} is a file, not a folder"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{here} is not writable by this user"
    return None


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be (or be created as) a file this process writes, or None; creates nothing.

    A folder there, or (:func:`folder_problem`) a parent that cannot be a folder this user writes in.
    """
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder; give a file path"
    return folder_problem(path.absolute().parent)


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``.

    Raises:
        ConfigError: the file cannot be read or is not JSON (the message names it).
    """
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def read_log_lines(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of an append-only JSON-lines log, in order; a line cut by a kill (not a JSON object) skipped."""
    import json

    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``, on ``device``.

    Raises:
        ConfigError: the file cannot be read or is not a safetensors file (the message names it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"cannot read weights {path}: {exc}") from exc
