"""FreeMask-style pixel filtering of synthetic masks with the judge segmentor.

Rule (FreeMask's class-wise tolerance rule, Yang et al. 2023, as its release's ``preprocess/filter.py``): the judge
gives a per-pixel cross-entropy ``l(p)`` of every image against its mask. Over the *real* reference images (the real
training set the synthetic images join), each class ``c`` gets its mean pixel loss ``mean_c``: what the judge's loss
on a correctly drawn pixel of that class looks like. A synthetic pixel of class ``c`` whose loss exceeds
``margin * mean_c`` is judged a generation failure and becomes ignore (raw 0, i.e. 255 after label reduction) in a
filtered copy of its mask. ``margin`` (default 1.25) is the one parameter: larger keeps more pixels; ``inf`` keeps
all. No-data pixels stay no-data; a class the reference images lack keeps its synthetic pixels.

The filtered masks are written beside the originals, ``<domain>/<out_dirname>/<id>.png`` next to
``<domain>/masks_png/``, each via a temporary file and an atomic rename.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from todsynth.data.classes import CLASSES, IGNORE_INDEX, NUM_CLASSES, RAW_NODATA
from todsynth.files import atomic_write_bytes, png_bytes
from todsynth.seg.evaluate import model_device
from todsynth.seg.items import SegItem, as_seg_items

FILTERED_DIRNAME = "masks_filtered_png"


@dataclass
class FreeMaskResult:
    """Filtered items (images unchanged, masks replaced) and statistics of what was filtered."""

    items: list[SegItem]
    stats: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _pixel_losses(judge: Callable[[torch.Tensor], torch.Tensor], item: SegItem,
                  device: torch.device | None) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel CE float32 (H, W), reduced target uint8 (H, W)) of one pair; ignore pixels have loss 0."""
    from todsynth.data.loveda import load_image, load_mask

    image = load_image(item.image_path)[None]
    target = load_mask(item.mask_path)[None]
    logits = judge(image if device is None else image.to(device)).float().cpu()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")[0]
    return loss.cpu().numpy(), target[0].numpy().astype(np.uint8)


def _filtered_path(item: SegItem, out_dirname: str) -> Path:
    mask = Path(item.mask_path)
    return mask.parent.parent / out_dirname / mask.name


def filter_masks(
    judge: Callable[[torch.Tensor], torch.Tensor],
    items: Sequence[Any],
    *,
    reference: Sequence[Any],
    margin: float = 1.25,
    num_classes: int = NUM_CLASSES,
    class_names: Sequence[str] = CLASSES,
    out_dirname: str = FILTERED_DIRNAME,
) -> FreeMaskResult:
    """Filter anomalous-loss pixels out of synthetic masks (rule in the module docstring).

    Args:
        judge: ``(1, 3, H, W) in [0, 1] -> logits (1, C, h, w)``, e.g. ``SegmentorLogits(model)`` (an image is moved
            to a module's device).
        items: synthetic (image, raw mask) pairs (SegItems, Samples or tuples).
        reference: the real (image, raw mask) pairs whose class-wise mean loss sets the thresholds.
        margin: tolerance multiplier on each class's mean loss; must be > 0.

    Returns:
        items pointing to the filtered masks, and ``stats``: ``margin``, ``threshold`` and ``mean_loss`` (over the
        reference) per class, ``filtered_fraction`` per class (of that class's labelled synthetic pixels),
        ``filtered_fraction_total``, ``n_images``, ``n_reference``.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if out_dirname == "masks_png":
        raise ValueError("out_dirname must differ from masks_png: the original masks are kept")
    pairs, real = as_seg_items(items), as_seg_items(reference)
    if not pairs:
        raise ValueError("no items to filter")
    if not real:
        raise ValueError("no reference images: the class-wise mean losses come from the real training images")
    device = model_device(judge) if isinstance(judge, torch.nn.Module) else None  # where the judge wants its images
    # Pass 1: class-wise mean loss over the real reference images.
    loss_sum = np.zeros(num_classes, dtype=np.float64)
    count = np.zeros(num_classes, dtype=np.int64)
    for item in real:
        loss, target = _pixel_losses(judge, item, device)
        valid = target != IGNORE_INDEX
        loss_sum += np.bincount(target[valid], weights=loss[valid], minlength=num_classes)[:num_classes]
        count += np.bincount(target[valid], minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_loss = np.where(count > 0, loss_sum / np.maximum(count, 1), np.nan)
        threshold = np.where(count > 0, margin * mean_loss, np.inf)  # a class the reference lacks: kept
    # Pass 2: each synthetic image's losses against the thresholds, and the filtered copies.
    removed = np.zeros(num_classes, dtype=np.int64)
    labelled = np.zeros(num_classes, dtype=np.int64)
    out_items: list[SegItem] = []
    for item in pairs:
        loss, target = _pixel_losses(judge, item, device)
        valid = target != IGNORE_INDEX
        thr = np.full(target.shape, np.inf, dtype=np.float64)
        thr[valid] = threshold[target[valid]]
        drop = valid & (loss > thr)
        labelled += np.bincount(target[valid], minlength=num_classes)[:num_classes]
        removed += np.bincount(target[drop], minlength=num_classes)[:num_classes]
        raw = np.where(valid, target.astype(np.int64) + 1, RAW_NODATA)
        raw[drop] = RAW_NODATA
        dest = _filtered_path(item, out_dirname)
        atomic_write_bytes(dest, png_bytes(raw.astype(np.uint8)))
        out_items.append(SegItem(Path(item.image_path), dest))
    total = int(labelled.sum())
    stats = {
        "margin": float(margin),
        "n_images": len(pairs),
        "n_reference": len(real),
        "mean_loss": {n: float(v) for n, v in zip(class_names, mean_loss, strict=True)},
        "threshold": {n: float(v) for n, v in zip(class_names, threshold, strict=True)},
        "filtered_fraction": {
            n: (float(r / c) if c else math.nan) for n, r, c in zip(class_names, removed, labelled, strict=True)
        },
        "filtered_fraction_total": float(removed.sum() / total) if total else math.nan,
    }
    return FreeMaskResult(out_items, stats)
