"""Image grids as PNGs: one layout function for every grid the harness writes.

The synthesize stage's ``grid.png`` (masks above their samples), the report's ``samples.png`` (per row a mask,
its real image and each variant's sample, under column headers) and the conditioning check's ``samples.png`` are
all :func:`save_grid` over rows of cells; :func:`read_rgb` and :func:`mask_rgb` read the cells from disk. Cells
are uint8 RGB arrays ``(H, W, 3)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HEADER_PX = 18  # height of the header row when there are headers


def read_rgb(path: Path) -> Any:
    """An image file as uint8 RGB ``(H, W, 3)``."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def mask_rgb(path: Path, size: tuple[int, int] | None = None) -> Any:
    """A raw LoveDA mask file (0..7) in palette colours, uint8 ``(H, W, 3)``.

    Resized (nearest) to ``size`` ``(W, H)`` when given and different.
    """
    import numpy as np
    from PIL import Image

    from todsynth.data.classes import colorize, reduce_labels

    mask = colorize(reduce_labels(np.asarray(Image.open(path))))
    if size is not None and mask.shape[1::-1] != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return mask


def _upscaled(arr: Any, min_cell: int) -> Any:
    """A PIL image of ``arr``, enlarged (nearest, by a whole factor) until its longer side reaches ``min_cell``."""
    from PIL import Image

    img = Image.fromarray(arr).convert("RGB")
    scale = max(1, math.ceil(min_cell / max(img.size)))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def save_grid(rows: Sequence[Sequence[Any]], path: Path, *, headers: Sequence[str] = (), min_cell: int = 0,
              pad: int = 0) -> Path:
    """Write ``rows`` of uint8 RGB cells as one PNG on white; returns ``path``.

    Every slot is as large as the largest cell (after upscaling small cells to ``min_cell`` px), cells sit at
    their slot's top-left corner, ``pad`` px apart and around; ``headers`` label the columns in a row above.
    """
    from PIL import Image, ImageDraw

    cells = [[_upscaled(c, min_cell) for c in row] for row in rows]
    cw = max(c.width for r in cells for c in r)
    ch = max(c.height for r in cells for c in r)
    n_cols = max(len(r) for r in cells)
    head = HEADER_PX if headers else 0
    canvas = Image.new("RGB", (n_cols * (cw + pad) + pad, head + len(cells) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, h in enumerate(headers):
        draw.text((pad + j * (cw + pad) + 2, 3), h[: max(4, cw // 6)], fill="black")
    for i, r in enumerate(cells):
        for j, c in enumerate(r):
            canvas.paste(c, (pad + j * (cw + pad), head + i * (ch + pad)))
    canvas.save(path)
    return path


def sample_grid(pairs: list[tuple[Path, Path]], out: Path, n: int = 8) -> Path:
    """A PNG with up to ``n`` columns: colorized mask above its synthetic image (the synthesize stage's grid)."""
    shown = pairs[:n]
    images = [read_rgb(image_path) for image_path, _ in shown]
    masks = [mask_rgb(mask_path, image.shape[1::-1]) for image, (_, mask_path) in zip(images, shown, strict=True)]
    return save_grid([masks, images], out)
