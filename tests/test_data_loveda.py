"""LoveDA reader on the procedural fixture and hand-made tiles: listing, items, reduction, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from todsynth.data.classes import IGNORE_INDEX, PROMPT_PREFIX, prompt_for_labels
from todsynth.data.loveda import LoveDA, Sample, list_samples, load_image, load_mask
from todsynth.errors import DatasetNotFoundError, DataValidationError


def _write_tile(root, split, domain, stem, rgb, raw=None):
    img_dir = root / split / domain / "images_png"
    img_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(img_dir / f"{stem}.png")
    if raw is not None:
        mask_dir = root / split / domain / "masks_png"
        mask_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw, "L").save(mask_dir / f"{stem}.png")


@pytest.mark.parametrize(("split", "n_urban", "n_rural"), [("Train", 4, 4), ("Val", 2, 2)])
def test_list_samples_counts_and_order(procedural_root, split, n_urban, n_rural):
    samples = list_samples(procedural_root, split)
    assert [s.domain for s in samples] == ["Urban"] * n_urban + ["Rural"] * n_rural
    for s in samples:
        assert isinstance(s, Sample) and s.image_path.is_file() and s.mask_path.is_file()
        assert s.image_path.stem == s.mask_path.stem == s.id
    ids = [int(s.id) for s in samples if s.domain == "Urban"]
    assert ids == sorted(ids)
    assert [s.domain for s in list_samples(procedural_root, split, ("Rural",))] == ["Rural"] * n_rural


def test_numeric_ids_sort_numerically(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    for stem in ("10", "2", "1"):
        _write_tile(tmp_path, "Train", "Urban", stem, rgb, np.ones((4, 4), np.uint8))
    assert [s.id for s in list_samples(tmp_path, "Train")] == ["1", "2", "10"]


def test_items_have_contract_shapes(procedural_root):
    ds = LoveDA(procedural_root, "Train")
    assert len(ds) == 8
    item = ds[0]
    assert set(item) == {"image", "mask", "prompt", "id"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].dtype == torch.long and item["mask"].shape == (32, 32)
    values = set(item["mask"].unique().tolist())
    assert values <= set(range(7)) | {IGNORE_INDEX}
    assert item["prompt"] == prompt_for_labels(item["mask"].numpy())
    assert item["prompt"].startswith(PROMPT_PREFIX) and "background" not in item["prompt"]
    assert item["id"] == ds.samples[0].id


def test_samples_subset(procedural_root):
    subset = list_samples(procedural_root, "Train")[2:4]
    ds = LoveDA(procedural_root, "Train", samples=subset)
    assert len(ds) == 2 and ds[1]["id"] == subset[1].id


def test_load_mask_reduces_labels_and_load_image_scales(tmp_path):
    raw = np.arange(8, dtype=np.uint8).reshape(2, 4)
    rgb = np.array([[[0, 128, 255]] * 4] * 2, np.uint8)
    _write_tile(tmp_path, "Train", "Rural", "0", rgb, raw)
    mask = load_mask(tmp_path / "Train/Rural/masks_png/0.png")
    assert mask.dtype == torch.long
    assert mask.flatten().tolist() == [255, 0, 1, 2, 3, 4, 5, 6]
    image = load_image(tmp_path / "Train/Rural/images_png/0.png")
    assert image.shape == (3, 2, 4)
    assert torch.allclose(image[:, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))


def test_test_split_without_masks(tmp_path):
    _write_tile(tmp_path, "Test", "Urban", "5", np.full((4, 4, 3), 9, np.uint8))
    samples = list_samples(tmp_path, "Test")
    assert len(samples) == 1 and samples[0].mask_path is None
    item = LoveDA(tmp_path, "Test")[0]
    assert set(item) == {"image", "id"} and item["image"].shape == (3, 4, 4)


def test_missing_root_names_root_and_source(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"root=.*nowhere.*LoveDA") as info:
        list_samples(tmp_path / "nowhere")
    assert "Train.zip" in str(info.value)


def test_missing_split_and_empty_domain(procedural_root, tmp_path):
    _write_tile(tmp_path, "Train", "Urban", "0", np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint8))
    with pytest.raises(DatasetNotFoundError, match=r"Val"):
        list_samples(tmp_path, "Val")
    with pytest.raises(DatasetNotFoundError, match=r"Rural"):
        list_samples(tmp_path, "Train", ("Rural",))


def test_bad_arguments_and_missing_mask(tmp_path):
    with pytest.raises(ValueError, match="split='train'"):
        list_samples(tmp_path, "train")
    with pytest.raises(ValueError, match="domain='City'"):
        list_samples(tmp_path, "Train", ("City",))
    _write_tile(tmp_path, "Train", "Urban", "0", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataValidationError, match=r"masks_png/0.png"):
        list_samples(tmp_path, "Train")


def test_corrupt_files_raise_domain_errors(tmp_path):
    _write_tile(tmp_path, "Train", "Urban", "0", np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 9, np.uint8))
    with pytest.raises(DataValidationError, match="value 9"):
        load_mask(tmp_path / "Train/Urban/masks_png/0.png")
    bad = tmp_path / "Train/Urban/images_png/0.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DataValidationError, match="cannot read PNG"):
        load_image(bad)
