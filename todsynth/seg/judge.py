"""Differentiable per-pixel logits of an MMSeg segmentor from [0, 1] RGB images.

CRFM needs d(loss)/d(image) through the segmentor, so we call ``model(x, mode="tensor")`` (the
plain forward: backbone + decode head) and never ``inference_model`` / ``test_step``, which wrap the
forward in ``torch.no_grad`` (research/ecosystem.md §4.5). Normalisation is done here, on RGB in
[0, 1], with ImageNet statistics (``todsynth.data.imagenet.normalize_01``); it matches what the
model's ``SegDataPreProcessor`` does to BGR-loaded 0..255 images during training (BGR -> RGB, then
the same mean/std in 0..255 units).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from todsynth.data.imagenet import normalize_01


def segment_logits(model: nn.Module, images_01: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) at the input size from RGB images (B, 3, H, W) in [0, 1]; keeps the graph.

    The model's train/eval mode is left as it is (callers decide; BN needs eval for inference).
    """
    x = normalize_01(images_01.float())
    logits: torch.Tensor = model(x, mode="tensor")
    if logits.shape[-2:] != images_01.shape[-2:]:
        align = bool(getattr(getattr(model, "decode_head", None), "align_corners", False))
        logits = F.interpolate(logits, size=images_01.shape[-2:], mode="bilinear", align_corners=align)
    return logits


class SegmentorLogits(nn.Module):
    """Frozen, eval-mode segmentor as a differentiable judge: ``(B,3,H,W) in [0,1] -> logits (B,C,H,W)``.

    Parameters get ``requires_grad=False`` (only the input receives gradients) and the model stays in
    eval mode (BN running statistics, no dropout) even if ``.train()`` is called on this wrapper.
    """

    def __init__(self, model: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_classes = num_classes

    def train(self, mode: bool = True) -> SegmentorLogits:
        """Keep the wrapped segmentor in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) for images (B, 3, H, W) in [0, 1]; differentiable w.r.t. the images."""
        logits = segment_logits(self.model, images_01)
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(f"segmentor outputs {logits.shape[1]} classes, expected {self.num_classes}")
        return logits
