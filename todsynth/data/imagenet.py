"""ImageNet statistics and the normalisation ImageNet-pretrained backbones expect of RGB images.

Shared by the segmentors (``todsynth.seg``: data preprocessor, judge logits) and the segmenter feature
extractor of FID (``todsynth.metrics.fid``), so neither package needs the other for it.
"""

from __future__ import annotations

import torch

# ImageNet statistics in 0..255 units (MMSeg's convention), RGB order.
IMAGENET_MEAN_255: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD_255: tuple[float, float, float] = (58.395, 57.12, 57.375)


def normalize_01(images_01: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise RGB images in [0, 1], (B, 3, H, W) float -> same shape."""
    if images_01.ndim != 4 or images_01.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) RGB in [0, 1], got shape {tuple(images_01.shape)}")
    mean = images_01.new_tensor(IMAGENET_MEAN_255).div(255.0).view(1, 3, 1, 1)
    std = images_01.new_tensor(IMAGENET_STD_255).div(255.0).view(1, 3, 1, 1)
    return (images_01 - mean) / std
