"""Judge logits (differentiable, frozen), prediction, dataset scoring and mask fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from todsynth.data.classes import PALETTE
from todsynth.data.imagenet import IMAGENET_MEAN_255, IMAGENET_STD_255, normalize_01
from todsynth.seg.evaluate import evaluate_segmentor, predict
from todsynth.seg.fidelity import mask_fidelity
from todsynth.seg.items import SegItem
from todsynth.seg.judge import SegmentorLogits
from todsynth.seg.models import build_segmentor

COLOURS = torch.tensor(PALETTE, dtype=torch.float32) / 255.0  # (7, 3)


class PaletteOracle(nn.Module):
    """Stand-in segmentor: classifies each pixel by its nearest palette colour (optionally at 1/2 size)."""

    def __init__(self, downsample: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.downsample = downsample

    def forward(self, x: torch.Tensor, mode: str = "tensor") -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1) / 255
        std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1) / 255
        rgb = x * std + mean
        dist = ((rgb[:, None] - COLOURS.view(1, 7, 3, 1, 1)) ** 2).sum(2)
        logits = -self.scale * dist
        return logits[..., ::2, ::2] if self.downsample else logits


def _write_pairs(root: Path, n: int, size: int = 16, seed: int = 0) -> list[SegItem]:
    """Images painted in the palette colour of their (random blocky) mask; raw masks 0..7 with a no-data row."""
    rng = np.random.default_rng(seed)
    (root / "images_png").mkdir(parents=True)
    (root / "masks_png").mkdir(parents=True)
    items = []
    for k in range(n):
        reduced = np.kron(rng.integers(0, 7, (size // 4, size // 4)), np.ones((4, 4), dtype=np.int64))
        image = (COLOURS[reduced].numpy() * 255).round().astype(np.uint8)
        raw = (reduced + 1).astype(np.uint8)
        raw[0] = 0
        Image.fromarray(image, "RGB").save(root / "images_png" / f"{k}.png")
        Image.fromarray(raw, "L").save(root / "masks_png" / f"{k}.png")
        items.append(SegItem(root / "images_png" / f"{k}.png", root / "masks_png" / f"{k}.png"))
    return items


def test_normalize_01_uses_imagenet_statistics() -> None:
    x = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1).expand(2, 3, 4, 4) / 255
    torch.testing.assert_close(normalize_01(x), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        normalize_01(torch.zeros(3, 4, 4))


def test_judge_is_frozen_differentiable_and_full_size() -> None:
    model = build_segmentor("fcn-tiny", 7, seed=0)
    judge = SegmentorLogits(model, num_classes=7)
    judge.train()
    assert not judge.model.training
    assert not any(p.requires_grad for p in judge.parameters())
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    logits = judge(images)
    assert logits.shape == (2, 7, 32, 32)
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(2, 32, 32, dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, images)
    assert grad.shape == images.shape and grad.abs().sum() > 0
    assert all(p.grad is None for p in judge.parameters())
    # eval mode: the same input gives the same logits (no dropout, running BN stats)
    torch.testing.assert_close(judge(images), logits)


def test_predict_resizes_to_input() -> None:
    images = COLOURS[torch.tensor([[0, 1], [2, 3]])].permute(2, 0, 1)[None]
    images = torch.nn.functional.interpolate(images, size=(8, 8), mode="nearest")
    pred = predict(PaletteOracle(downsample=True), images)
    assert pred.shape == (1, 8, 8) and pred.dtype == torch.long
    assert pred[0, 0, 0] == 0 and pred[0, -1, -1] == 3


def test_evaluate_oracle_is_perfect_and_constant_is_not(tmp_path: Path) -> None:
    items = _write_pairs(tmp_path / "d", 5)
    perfect = evaluate_segmentor(PaletteOracle(), items, batch_size=2)
    assert perfect["miou"] == pytest.approx(1.0) and perfect["oa"] == pytest.approx(1.0)
    assert perfect["n_images"] == 5 and perfect["n_pixels"] == 5 * 15 * 16  # the no-data row is ignored

    class Constant(PaletteOracle):
        def forward(self, x: torch.Tensor, mode: str = "tensor") -> torch.Tensor:
            out = torch.zeros(x.shape[0], 7, *x.shape[2:])
            out[:, 2] = 1.0
            return out

    const = evaluate_segmentor(Constant(), items)
    assert const["per_class_iou"]["road"] < 0.5 and const["per_class_iou"]["building"] == 0.0
    assert const["miou"] < 0.2


def test_mask_fidelity_refuses_the_judge(tmp_path: Path) -> None:
    items = _write_pairs(tmp_path / "d", 3, seed=1)
    evaluator, judge_model = PaletteOracle(), PaletteOracle()
    scores = mask_fidelity(evaluator, items, judge=SegmentorLogits(judge_model))
    assert scores["miou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="evaluator, not the CRFM judge"):
        mask_fidelity(evaluator, items, judge=SegmentorLogits(evaluator))
