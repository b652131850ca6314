"""Mask fidelity: does a synthetic image show the layout of the mask it was generated from?

The suite's independent **evaluator** segments each synthetic image and is scored against the
conditioning mask (dataset-wide mIoU, OA, mAcc, per-class IoU). It must never be the **judge**
that guided CRFM: CRFM pushes images toward what the judge predicts, so scoring with the judge would
reward overfitting to it rather than fidelity. The harness passes both; this function refuses the
judge when it can tell.

It lives in ``todsynth.seg`` because it is a segmentor evaluation (``evaluate_segmentor`` plus that refusal):
``seg.evaluate`` scores with ``todsynth.metrics.segmentation``, and ``todsynth.metrics`` never imports
``todsynth.seg``, so the two packages depend one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from todsynth.data.classes import CLASSES, NUM_CLASSES
from todsynth.seg.evaluate import evaluate_segmentor


def _underlying(model: Any) -> Any:
    return getattr(model, "model", model)


def mask_fidelity(
    evaluator: nn.Module,
    items: Sequence[Any],
    *,
    judge: Any | None = None,
    batch_size: int = 8,
    num_classes: int = NUM_CLASSES,
    class_names: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Evaluator's scores on synthetic (image, conditioning raw mask) pairs.

    Raises:
        ValueError: ``evaluator`` is (or wraps the same model as) ``judge``.
    """
    if judge is not None and (evaluator is judge or _underlying(evaluator) is _underlying(judge)):
        raise ValueError("mask fidelity must be measured with the evaluator, not the CRFM judge")
    return evaluate_segmentor(_underlying(evaluator), items, batch_size, num_classes=num_classes,
                              class_names=class_names)
