"""FreeMask-style filtering: pixels the judge finds anomalous become ignore in filtered mask copies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from todsynth.data.classes import PALETTE
from todsynth.seg.freemask import FILTERED_DIRNAME, filter_masks
from todsynth.seg.items import SegItem

COLOURS = torch.tensor(PALETTE, dtype=torch.float32) / 255.0


class NearestColourJudge(nn.Module):
    """Stand-in judge on [0,1] images: logits = -20 * squared distance to each palette colour."""

    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        return -20 * ((images_01[:, None] - COLOURS.view(1, 7, 3, 1, 1)) ** 2).sum(2)


def _write(root: Path, n: int = 3, size: int = 16) -> tuple[list[SegItem], np.ndarray]:
    """Palette-painted pairs; image 0 has a 4x4 block painted as 'water' where its mask says otherwise."""
    rng = np.random.default_rng(0)
    for d in ("images_png", "masks_png"):
        (root / d).mkdir(parents=True)
    items, corrupt = [], np.zeros((size, size), bool)
    for k in range(n):
        reduced = np.kron(rng.integers(0, 3, (size // 4, size // 4)), np.ones((4, 4), dtype=np.int64))
        raw = (reduced + 1).astype(np.uint8)
        raw[-1] = 0  # a no-data row
        painted = reduced.copy()
        if k == 0:
            painted[4:8, 8:12] = 3  # water colour; the mask keeps classes 0..2 there
            corrupt[4:8, 8:12] = True
        Image.fromarray((COLOURS[painted].numpy() * 255).round().astype(np.uint8), "RGB").save(root / "images_png" / f"{k}.png")
        Image.fromarray(raw, "L").save(root / "masks_png" / f"{k}.png")
        items.append(SegItem(root / "images_png" / f"{k}.png", root / "masks_png" / f"{k}.png"))
    return items, corrupt


def test_anomalous_pixels_become_ignore(tmp_path: Path) -> None:
    items, corrupt = _write(tmp_path / "Train" / "Urban")
    originals = [np.asarray(Image.open(i.mask_path)).copy() for i in items]
    result = filter_masks(NearestColourJudge(), items, margin=1.25)
    assert [i.image_path for i in result.items] == [i.image_path for i in items]
    assert all(i.mask_path.parent.name == FILTERED_DIRNAME for i in result.items)
    assert result.items[0].mask_path == tmp_path / "Train" / "Urban" / FILTERED_DIRNAME / "0.png"
    filtered = [np.asarray(Image.open(i.mask_path)) for i in result.items]
    assert (filtered[0][corrupt] == 0).all()
    np.testing.assert_array_equal(filtered[0][~corrupt], originals[0][~corrupt])
    for f, o in zip(filtered[1:], originals[1:], strict=True):
        np.testing.assert_array_equal(f, o)
    # originals untouched, no temp files left behind
    for i, o in zip(items, originals, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(i.mask_path)), o)
    assert sorted(p.name for p in (tmp_path / "Train" / "Urban" / FILTERED_DIRNAME).iterdir()) == ["0.png", "1.png", "2.png"]
    labelled = sum(int((o > 0).sum()) for o in originals)
    assert result.stats["filtered_fraction_total"] == pytest.approx(16 / labelled)
    assert math.isnan(result.stats["filtered_fraction"]["water"])  # no water in any mask
    assert result.stats["n_images"] == 3 and result.stats["margin"] == 1.25


def test_infinite_margin_keeps_everything_and_bad_args(tmp_path: Path) -> None:
    items, _ = _write(tmp_path / "d")
    result = filter_masks(NearestColourJudge(), items, margin=math.inf)
    assert result.stats["filtered_fraction_total"] == 0.0
    with pytest.raises(ValueError, match="margin must be > 0"):
        filter_masks(NearestColourJudge(), items, margin=0)
    with pytest.raises(ValueError, match="no items"):
        filter_masks(NearestColourJudge(), [])


class CountingJudge(NearestColourJudge):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(images_01)


@pytest.mark.parametrize(("keep_bytes", "calls"), [(256 << 20, 3), (0, 6), (2 * 16 * 16 * 5, 4)])
def test_loss_maps_kept_between_passes_while_they_fit(tmp_path: Path, monkeypatch, keep_bytes, calls) -> None:
    """One judge pass per image while the maps fit in KEEP_BYTES, a second for the rest; the same masks either way."""
    import todsynth.seg.freemask as fm

    items, _ = _write(tmp_path / "Train" / "Urban")
    monkeypatch.setattr(fm, "KEEP_BYTES", keep_bytes)
    judge = CountingJudge()
    result = filter_masks(judge, items, margin=1.25, out_dirname=f"f{keep_bytes}")
    assert judge.calls == calls  # 16x16 maps: float32 loss + uint8 target = 1280 bytes each
    monkeypatch.setattr(fm, "KEEP_BYTES", 0)
    again = filter_masks(NearestColourJudge(), items, margin=1.25, out_dirname="recomputed")
    for a, b in zip(result.items, again.items, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(a.mask_path)), np.asarray(Image.open(b.mask_path)))
    assert json.dumps(result.stats, sort_keys=True) == json.dumps(again.stats, sort_keys=True)  # NaN-safe
