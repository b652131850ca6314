"""Dataset-wide mIoU of a segmentor's predictions on in-memory images, for the checks."""

from __future__ import annotations

import torch

from todsynth.data.classes import IGNORE_INDEX, NUM_CLASSES
from todsynth.metrics.segmentation import confusion_matrix, scores_from_confusion
from todsynth.seg.evaluate import predict


@torch.no_grad()
def miou(evaluator: torch.nn.Module, images_01: torch.Tensor, masks: torch.Tensor) -> float:
    """Dataset-wide mIoU of the evaluator's predictions on images (B,3,H,W) [0,1] vs reduced masks (B,H,W)."""
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for lo in range(0, len(images_01), 8):
        pred = predict(evaluator, images_01[lo : lo + 8]).cpu()
        cm += confusion_matrix(pred, masks[lo : lo + 8], NUM_CLASSES, IGNORE_INDEX)
    return float(scores_from_confusion(cm)["miou"])
