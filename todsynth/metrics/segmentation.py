"""Segmentation scores from a dataset-wide confusion matrix: mIoU, OA, mAcc, per-class IoU.

Areas are summed over the whole dataset before dividing (as MMSeg's ``IoUMetric`` does); per-image
IoUs are never averaged. Scores are raw floats in [0, 1] (no rounding, no x100). A class whose
union is empty (absent from both prediction and target) has IoU NaN and is left out of the mean,
i.e. ``miou = nanmean(iou)``, which is exactly MMSeg's rule; ``macc`` leaves out classes absent
from the target the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from todsynth.data.classes import CLASSES, IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Confusion matrix ``cm[t, p]`` = #pixels with target ``t`` predicted ``p``; (C, C) int64.

    Args:
        pred: predicted labels, any shape, integer ``0..C-1``.
        target: reduced target labels, same shape, ``0..C-1`` or ``ignore_index`` (pixels skipped).
        num_classes: C.
        ignore_index: target value to skip (255 for reduced LoveDA labels).

    Raises:
        ValueError: shapes differ, labels are not integers, or a label is outside ``0..C-1`` (other than
            ``ignore_index``).
    """
    pred_t, target_t = torch.as_tensor(pred), torch.as_tensor(target)
    if pred_t.shape != target_t.shape:  # compared before flattening: (2, 3) against (3, 2) was accepted
        raise ValueError(f"pred and target differ in shape: {tuple(pred_t.shape)} vs {tuple(target_t.shape)}")
    for name, t in (("pred", pred_t), ("target", target_t)):
        if t.is_floating_point() or t.is_complex():  # 2.7 was truncated to class 2
            raise ValueError(f"{name} labels must be integers, got {t.dtype}")
    pred_t, target_t = pred_t.long().reshape(-1).cpu(), target_t.long().reshape(-1).cpu()
    keep = target_t != ignore_index
    pred_t, target_t = pred_t[keep], target_t[keep]
    for name, t in (("target", target_t), ("pred", pred_t)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(
                f"{name} labels must be in 0..{num_classes - 1} (or {ignore_index} in target); "
                f"got range {int(t.min())}..{int(t.max())}"
            )
    flat = target_t * num_classes + pred_t
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores_from_confusion(cm: torch.Tensor | np.ndarray, class_names: Sequence[str] = CLASSES) -> dict[str, Any]:
    """Scores from a (C, C) confusion matrix (rows target, columns prediction).

    Returns:
        ``{"miou", "oa", "macc": float, "per_class_iou", "per_class_acc": {name: float}, "n_pixels": int}``;
        NaN where a quantity is undefined (no labelled pixels, or a class absent as described above).

    Raises:
        ValueError: the matrix is not square or does not match ``class_names``.
    """
    m = np.asarray(cm.cpu().numpy() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {m.shape}")
    if m.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix has {m.shape[0]} classes but {len(class_names)} class names were given")
    intersect = np.diag(m)
    area_label = m.sum(axis=1)
    area_pred = m.sum(axis=0)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersect / np.where(union > 0, union, 1), np.nan)
        acc = np.where(area_label > 0, intersect / np.where(area_label > 0, area_label, 1), np.nan)
    total = area_label.sum()
    return {
        "miou": _nanmean(iou),
        "oa": float(intersect.sum() / total) if total > 0 else math.nan,
        "macc": _nanmean(acc),
        "per_class_iou": {n: float(v) for n, v in zip(class_names, iou, strict=True)},
        "per_class_acc": {n: float(v) for n, v in zip(class_names, acc, strict=True)},
        "n_pixels": int(total),
    }
