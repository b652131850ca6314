"""Safe file output: atomic writes, and whether a path can be an output folder.

A killed process never leaves a half-written file under its final name (at most a hidden ``.<name>.*.tmp`` beside
it), and an output path that cannot be a folder is named before any work starts.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy stays out of import time: bench.cache (CLI start-up) imports this module
    import numpy as np


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
