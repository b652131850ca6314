"""Check a LoveDA-layout dataset and report every problem, each naming its file.

Checks per split (Train/Val/Test) and domain (Urban/Rural): image/mask pairing in both directions
(Test may lack masks), readable PNGs, RGB 8-bit images, single-channel 8-bit masks with raw values
0..7, equal image and mask sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from todsynth.data.classes import RAW_MAX
from todsynth.data.loveda import DOMAINS, IMAGES_DIR, MASKS_DIR, SPLITS
from todsynth.errors import DatasetNotFoundError


def _open(path: Path, problems: list[str]) -> Image.Image | None:
    """Fully decode a PNG (a truncated file fails here); record the failure and return None."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                problems.append(f"{path}: not a PNG file (format {img.format})")
                return None
            img.load()
            return img.copy()
    except (OSError, SyntaxError, ValueError) as exc:
        problems.append(f"{path}: unreadable PNG ({exc})")
        return None


def _check_image(path: Path, problems: list[str]) -> tuple[int, int] | None:
    img = _open(path, problems)
    if img is None:
        return None
    if img.mode != "RGB":
        problems.append(f"{path}: image mode {img.mode!r}, expected RGB (3 channels, 8-bit)")
    return img.size


def _check_mask(path: Path, problems: list[str]) -> tuple[int, int] | None:
    img = _open(path, problems)
    if img is None:
        return None
    if img.mode not in ("L", "P"):
        problems.append(f"{path}: mask mode {img.mode!r}, expected single-channel 8-bit (L)")
        return img.size
    values = np.unique(np.asarray(img))
    bad = values[values > RAW_MAX]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8])
        problems.append(f"{path}: mask value(s) {shown} outside raw labels 0..{RAW_MAX}")
    return img.size


def _split_dirs(root: Path) -> Iterator[tuple[str, str, Path]]:
    for split in SPLITS:
        for domain in DOMAINS:
            d = root / split / domain
            if d.is_dir():
                yield split, domain, d


def validate_dataset(root: str | Path, progress: Callable[[Path], None] | None = None) -> list[str]:
    """Every problem found under ``root``, each a line starting with the offending path; [] if clean.

    ``progress`` (optional) is called with each file as it is checked (for a progress bar).
    Raises :class:`DatasetNotFoundError` if ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset root not found: root={root}")
    problems: list[str] = []
    found_any = False
    for split, _domain, ddir in _split_dirs(root):
        found_any = True
        img_dir, mask_dir = ddir / IMAGES_DIR, ddir / MASKS_DIR
        if not img_dir.is_dir():
            problems.append(f"{img_dir}: missing images directory")
            continue
        images = {p.stem: p for p in sorted(img_dir.glob("*.png"))}
        masks = {p.stem: p for p in sorted(mask_dir.glob("*.png"))} if mask_dir.is_dir() else {}
        if not images:
            problems.append(f"{img_dir}: no .png images")
        if not mask_dir.is_dir() and split != "Test":
            problems.append(f"{mask_dir}: missing masks directory")
        for stem, orphan in masks.items():
            if stem not in images:
                problems.append(f"{orphan}: mask without image (expected {img_dir / orphan.name})")
        for stem, ipath in images.items():
            if progress is not None:
                progress(ipath)
            isize = _check_image(ipath, problems)
            mpath = masks.get(stem)
            if mpath is None:
                if split != "Test" and mask_dir.is_dir():
                    problems.append(f"{ipath}: image without mask (expected {mask_dir / ipath.name})")
                continue
            msize = _check_mask(mpath, problems)
            if isize is not None and msize is not None and isize != msize:
                problems.append(
                    f"{mpath}: size {msize[0]}x{msize[1]} differs from image {ipath} ({isize[0]}x{isize[1]})"
                )
    if not found_any:
        problems.append(
            f"{root}: no {{Train,Val,Test}}/{{Urban,Rural}} directories (expected LoveDA layout "
            f"<split>/<domain>/{IMAGES_DIR}|{MASKS_DIR}/<id>.png)"
        )
    return problems


def count_files(root: str | Path) -> int:
    """Number of images :func:`validate_dataset` will check (for sizing a progress bar)."""
    root = Path(root)
    if not root.is_dir():
        return 0
    return sum(len(list((d / IMAGES_DIR).glob("*.png"))) for _, _, d in _split_dirs(root))
