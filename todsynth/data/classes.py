"""LoveDA class facts, defined once: names, palette, label reduction, prompts.

Raw LoveDA masks: 0 = no-data, 1..7 = the classes below. Training labels are reduced
(0 -> 255 ignore, k -> k-1), as MMSeg's ``LoveDADataset`` does with ``reduce_zero_label``.
"""

from __future__ import annotations

from typing import cast

import numpy as np

CLASSES: tuple[str, ...] = (
    "background",
    "building",
    "road",
    "water",
    "barren",
    "forest",
    "agricultural",
)
NUM_CLASSES: int = len(CLASSES)
IGNORE_INDEX: int = 255
RAW_NODATA: int = 0
RAW_MAX: int = NUM_CLASSES  # raw labels are 0..7
# MMSeg's LoveDA palette (reduced label order).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)
NODATA_COLOUR: tuple[int, int, int] = (0, 0, 0)
PROMPT_PREFIX = "a satellite image of "
# Classes left out of prompts (background is everywhere; no-data is not a class).
PROMPT_EXCLUDED: frozenset[str] = frozenset({"background"})


def reduce_labels(raw: np.ndarray) -> np.ndarray:
    """Raw LoveDA mask (uint8, 0..7) -> training labels (0..6, 255 = ignore)."""
    raw = np.asarray(raw)
    out = raw.astype(np.int64) - 1
    out[raw == RAW_NODATA] = IGNORE_INDEX
    return out.astype(np.uint8)


def raw_labels(reduced: np.ndarray) -> np.ndarray:
    """Inverse of :func:`reduce_labels`: training labels (255 = ignore) -> raw 0..7."""
    reduced = np.asarray(reduced)
    out = reduced.astype(np.int64) + 1
    out[reduced == IGNORE_INDEX] = RAW_NODATA
    return out.astype(np.uint8)


def prompt_for_labels(reduced: np.ndarray) -> str:
    """'a satellite image of building, road, water' from the classes present (class order)."""
    present = set(np.unique(np.asarray(reduced)).tolist())
    names = [n for i, n in enumerate(CLASSES) if i in present and n not in PROMPT_EXCLUDED]
    return PROMPT_PREFIX + ", ".join(names)


def colorize(reduced: np.ndarray) -> np.ndarray:
    """Reduced label map (H, W) -> RGB uint8 (H, W, 3) in the LoveDA palette; ignore is black."""
    reduced = np.asarray(reduced)
    lut = np.zeros((256, 3), dtype=np.uint8)
    for i, c in enumerate(PALETTE):
        lut[i] = c
    lut[IGNORE_INDEX] = NODATA_COLOUR
    return cast("np.ndarray", lut[reduced])
