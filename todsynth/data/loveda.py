"""LoveDA reader: the real on-disk layout, also written by :mod:`todsynth.data.procedural`.

Layout: ``ROOT/{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}/<id>.png``. Raw masks are
uint8 ``0..7`` (0 = no-data); samples yield reduced labels (``0..6``, 255 = ignore). The LoveDA
``Test`` split ships without masks: its samples have ``mask_path=None`` and their items carry only
``image`` and ``id`` (they cannot be used for training or evaluation).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from todsynth.data.classes import prompt_for_labels, reduce_labels
from todsynth.errors import DatasetNotFoundError, DataValidationError

SPLITS: tuple[str, ...] = ("Train", "Val", "Test")
DOMAINS: tuple[str, ...] = ("Urban", "Rural")
IMAGES_DIR = "images_png"
MASKS_DIR = "masks_png"
HOW_TO_GET = (
    "get LoveDA from https://github.com/Junjue-Wang/LoveDA (Zenodo: https://zenodo.org/records/5706578) "
    "and unzip Train.zip/Val.zip under ROOT, or write procedural scenes with "
    "`todsynth data procedural ROOT`"
)


@dataclass(frozen=True)
class Sample:
    """One LoveDA tile: its id (file stem), domain, image path and raw mask path (None for Test)."""

    id: str
    domain: str
    image_path: Path
    mask_path: Path | None


def _natural_key(stem: str) -> tuple[int, int | str]:
    """Sort numeric ids numerically (LoveDA ids are integers), others after them by name."""
    return (0, int(stem)) if re.fullmatch(r"\d+", stem) else (1, stem)


def _check_choice(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not one of {', '.join(allowed)}")


def list_samples(
    root: str | Path, split: str = "Train", domains: Sequence[str] = DOMAINS, skip: Collection[Path] = ()
) -> list[Sample]:
    """All samples of ``split`` in ``domains``, sorted by domain order then id.

    ``skip``: image or mask paths to leave out (faulty files found by ``validate_dataset``); a skipped
    image without its mask is dropped instead of raising.

    Raises :class:`DatasetNotFoundError` when the root, the split or every requested domain is
    missing or holds no images. An image without its mask (outside Test) is a
    :class:`DataValidationError`; run ``todsynth data validate ROOT`` for a full report.
    """
    _check_choice(split, SPLITS, "split")
    if isinstance(domains, str):
        domains = (domains,)
    for d in domains:
        _check_choice(d, DOMAINS, "domain")
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"LoveDA root not found: root={root}; {HOW_TO_GET}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(f"split {split!r} not found: root={root} has no {split}/; {HOW_TO_GET}")
    samples: list[Sample] = []
    for domain in domains:
        image_dir = split_dir / domain / IMAGES_DIR
        if not image_dir.is_dir():
            continue
        mask_dir = split_dir / domain / MASKS_DIR
        stems = sorted((p.stem for p in image_dir.glob("*.png")), key=_natural_key)
        for stem in stems:
            mask_file = mask_dir / f"{stem}.png"
            if skip and (image_dir / f"{stem}.png" in skip or mask_file in skip):
                continue
            mask_path: Path | None = mask_file if mask_file.is_file() else None
            if mask_path is None and split != "Test":
                raise DataValidationError(
                    f"mask missing for image {image_dir / (stem + '.png')}: expected {mask_file}; "
                    f"run `todsynth data validate {root}` for a full report"
                )
            samples.append(Sample(stem, domain, image_dir / f"{stem}.png", mask_path))
    if not samples:
        raise DatasetNotFoundError(
            f"no images in root={root} split={split} domains={','.join(domains)} "
            f"(expected {split}/<Urban|Rural>/{IMAGES_DIR}/<id>.png); {HOW_TO_GET}"
        )
    return samples


def _open_png(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError) as exc:
        raise DataValidationError(f"cannot read PNG {path}: {exc}") from exc
    return img


def read_image_array(path: str | Path) -> np.ndarray:
    """RGB PNG -> uint8 array (H, W, 3); other modes are a :class:`DataValidationError`."""
    img = _open_png(Path(path))
    if img.mode != "RGB":
        raise DataValidationError(f"image {path} has mode {img.mode!r}, expected 8-bit RGB")
    return np.asarray(img, dtype=np.uint8)


def read_raw_mask(path: str | Path) -> np.ndarray:
    """Raw LoveDA mask PNG (8-bit L or P) -> uint8 array (H, W) with values 0..7."""
    img = _open_png(Path(path))
    if img.mode not in ("L", "P"):
        raise DataValidationError(f"mask {path} has mode {img.mode!r}, expected single-channel 8-bit (L)")
    raw = np.asarray(img, dtype=np.uint8)
    if raw.size and int(raw.max()) > 7:
        raise DataValidationError(f"mask {path} has value {int(raw.max())}, expected raw labels 0..7")
    return raw


def load_image(path: str | Path) -> torch.Tensor:
    """RGB PNG -> float32 tensor (3, H, W) in [0, 1]."""
    arr = read_image_array(path)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def load_mask(path: str | Path) -> torch.Tensor:
    """Raw mask PNG -> reduced training labels, long (H, W): 0..6, 255 = no-data (ignore)."""
    return torch.from_numpy(reduce_labels(read_raw_mask(path)).astype(np.int64))


class LoveDA(Dataset[dict[str, Any]]):
    """LoveDA (or procedural) tiles as ``{"image", "mask", "prompt", "id"}`` dicts.

    ``image`` float32 (3, H, W) in [0, 1]; ``mask`` long (H, W) reduced labels; ``prompt`` names the
    classes present (``classes.prompt_for_labels``). Pass ``samples`` to use a pre-selected subset
    (then ``root``/``split``/``domains`` only describe it). Test samples have no mask: their items hold
    only ``image`` and ``id``.
    """

    splits = SPLITS
    domains_all = DOMAINS

    def __init__(
        self,
        root: str | Path,
        split: str = "Train",
        domains: Sequence[str] = DOMAINS,
        samples: Sequence[Sample] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.domains = (domains,) if isinstance(domains, str) else tuple(domains)
        self.samples: list[Sample] = (
            list(samples) if samples is not None else list_samples(root, split, self.domains)
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        item: dict[str, Any] = {"image": load_image(s.image_path), "id": s.id}
        if s.mask_path is not None:
            mask = load_mask(s.mask_path)
            if mask.shape != item["image"].shape[1:]:
                raise DataValidationError(
                    f"size mismatch: image {s.image_path} is {tuple(item['image'].shape[1:])}, "
                    f"mask {s.mask_path} is {tuple(mask.shape)}"
                )
            item["mask"] = mask
            item["prompt"] = prompt_for_labels(mask.numpy())
        return item
