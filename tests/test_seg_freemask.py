"""FreeMask-style filtering: pixels the judge finds anomalous become ignore in filtered mask copies."""

from __future__ import annotations

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


def _write(root: Path, n: int = 3, size: int = 16, corrupt_first: bool = True,
           paint: dict[int, int] | None = None) -> tuple[list[SegItem], np.ndarray]:
    """Palette-painted pairs; image 0 has a 4x4 block painted as 'water' where its mask says otherwise
    (``corrupt_first``); ``paint`` repaints whole classes (reduced label -> the colour of another) in every image."""
    rng = np.random.default_rng(0)
    for d in ("images_png", "masks_png"):
        (root / d).mkdir(parents=True)
    items, corrupt = [], np.zeros((size, size), bool)
    for k in range(n):
        reduced = np.kron(rng.integers(0, 3, (size // 4, size // 4)), np.ones((4, 4), dtype=np.int64))
        raw = (reduced + 1).astype(np.uint8)
        raw[-1] = 0  # a no-data row
        painted = reduced.copy()
        for cls, colour in (paint or {}).items():
            painted[reduced == cls] = colour
        if k == 0 and corrupt_first:
            painted[4:8, 8:12] = 3  # water colour; the mask keeps classes 0..2 there
            corrupt[4:8, 8:12] = True
        Image.fromarray((COLOURS[painted].numpy() * 255).round().astype(np.uint8), "RGB").save(root / "images_png" / f"{k}.png")
        Image.fromarray(raw, "L").save(root / "masks_png" / f"{k}.png")
        items.append(SegItem(root / "images_png" / f"{k}.png", root / "masks_png" / f"{k}.png"))
    return items, corrupt


def test_anomalous_pixels_become_ignore(tmp_path: Path) -> None:
    real, _ = _write(tmp_path / "real", corrupt_first=False)
    items, corrupt = _write(tmp_path / "Train" / "Urban")
    originals = [np.asarray(Image.open(i.mask_path)).copy() for i in items]
    result = filter_masks(NearestColourJudge(), items, reference=real, margin=1.25)
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
    assert result.stats["n_images"] == 3 and result.stats["n_reference"] == 3 and result.stats["margin"] == 1.25


def test_thresholds_come_from_the_real_images(tmp_path: Path) -> None:
    """FreeMask's release takes each class's mean loss over the real images. A synthetic set that draws a whole class
    wrong in every image is filtered there; over its own means (the earlier rule) those pixels were the norm and kept."""
    real, _ = _write(tmp_path / "real", corrupt_first=False)
    wrong, _ = _write(tmp_path / "synthetic", corrupt_first=False, paint={1: 3})  # every building painted as water
    masks = [np.asarray(Image.open(i.mask_path)) for i in wrong]
    result = filter_masks(NearestColourJudge(), wrong, reference=real)
    filtered = [np.asarray(Image.open(i.mask_path)) for i in result.items]
    for f, m in zip(filtered, masks, strict=True):
        assert (f[m == 2] == 0).all()  # raw 2 = building: dropped
        np.testing.assert_array_equal(f[m != 2], m[m != 2])
    assert result.stats["filtered_fraction"]["building"] == 1.0
    # a class the real images lack keeps its synthetic pixels (no norm to judge them by)
    no_building, _ = _write(tmp_path / "real2", corrupt_first=False, paint={})
    for item in no_building:
        m = np.asarray(Image.open(item.mask_path)).copy()
        m[m == 2] = 1
        Image.fromarray(m, "L").save(item.mask_path)
    kept = filter_masks(NearestColourJudge(), wrong, reference=no_building, out_dirname="kept")
    assert kept.stats["filtered_fraction"]["building"] == 0.0 and math.isinf(kept.stats["threshold"]["building"])


def test_infinite_margin_keeps_everything_and_bad_args(tmp_path: Path) -> None:
    items, _ = _write(tmp_path / "d")
    real, _ = _write(tmp_path / "real", corrupt_first=False)
    result = filter_masks(NearestColourJudge(), items, reference=real, margin=math.inf)
    assert result.stats["filtered_fraction_total"] == 0.0
    with pytest.raises(ValueError, match="margin must be > 0"):
        filter_masks(NearestColourJudge(), items, reference=real, margin=0)
    with pytest.raises(ValueError, match="no items"):
        filter_masks(NearestColourJudge(), [], reference=real)
    with pytest.raises(ValueError, match="no reference images"):
        filter_masks(NearestColourJudge(), items, reference=[])


class DeviceJudge(NearestColourJudge):
    """Records the device its input arrives on; its one parameter lives on ``meta``."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1, device="meta"))
        self.seen: list[str] = []

    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        self.seen.append(images_01.device.type)
        return super().forward(torch.zeros(images_01.shape))


def test_images_go_to_the_judges_device_and_each_once(tmp_path: Path) -> None:
    """The judge sees each image on its own device (before: always the CPU, so a CUDA judge failed), and each
    real and synthetic image once."""
    items, _ = _write(tmp_path / "s")
    real, _ = _write(tmp_path / "r", n=2, corrupt_first=False)
    judge = DeviceJudge()
    filter_masks(judge, items, reference=real)
    assert judge.seen == ["meta"] * 5
