"""Segmentation pairs: an RGB image PNG and its raw LoveDA mask PNG, from any of the forms callers hold.

Below ``train``, ``evaluate``, ``freemask`` and ``downstream``, which all take items in these forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SegItem:
    """One training/evaluation pair: RGB image PNG and raw LoveDA mask PNG (0 = no-data, 1..7)."""

    image_path: Path
    mask_path: Path


def as_seg_items(pairs: Sequence[Any]) -> list[SegItem]:
    """SegItems from SegItems, ``todsynth.data.loveda.Sample``s or (image, mask) tuples."""
    items: list[SegItem] = []
    for p in pairs:
        if isinstance(p, SegItem):
            items.append(p)
        elif hasattr(p, "image_path") and hasattr(p, "mask_path"):
            if p.mask_path is None:
                raise ValueError(f"sample {p.image_path} has no mask (LoveDA Test?); it cannot be used here")
            items.append(SegItem(Path(p.image_path), Path(p.mask_path)))
        else:
            image, mask = p
            items.append(SegItem(Path(image), Path(mask)))
    return items
