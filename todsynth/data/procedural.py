"""Procedural LoveDA-format scenes: seeded land-cover tiles for tests and the CPU smoke suite.

A scene is a label map built from shapes (warped land-use patches, agricultural field grids, rivers
and lakes, road networks, clustered buildings, no-data borders) rendered with per-class colour *and*
texture (crop rows, tree crowns, speckled barren ground, flat water, roof ridges and shadows) under
per-scene illumination. Class colours overlap on purpose (roads / roofs / barren; forest / crops;
water / shadows), so that a per-pixel colour lookup stays well below perfect
(:func:`colour_lookup_accuracy`) while texture and shape remain learnable.

Files are written in LoveDA's layout with PIL's PNG encoder at fixed settings, so a seed gives
byte-identical files (same numpy/Pillow build). Each scene's randomness comes from
``numpy.random.default_rng((seed, split, domain, index))``: scene ``k`` does not depend on how many
scenes are generated.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image
from scipy.ndimage import find_objects

from todsynth.data.classes import IGNORE_INDEX, NUM_CLASSES, RAW_NODATA
from todsynth.data.loveda import DOMAINS, IMAGES_DIR, MASKS_DIR, list_samples, read_image_array, read_raw_mask

# Reduced class ids (classes.CLASSES order).
BACKGROUND, BUILDING, ROAD, WATER, BARREN, FOREST, AGRICULTURAL = range(7)
_SPLIT_CODES = {"Train": 0, "Val": 1}
_DOMAIN_CODES = {"Urban": 0, "Rural": 1}
# Land-use patch probabilities per domain: background, barren, forest, agricultural.
_PATCH_CLASSES = (BACKGROUND, BARREN, FOREST, AGRICULTURAL)
_PATCH_PROBS = {"Urban": (0.55, 0.17, 0.16, 0.12), "Rural": (0.22, 0.10, 0.26, 0.42)}
# Base colours (RGB in [0, 1]); several per class, chosen per scene / object. Overlaps are deliberate.
_COLOURS: dict[int, tuple[tuple[float, float, float], ...]] = {
    BACKGROUND: ((0.52, 0.50, 0.40), (0.44, 0.48, 0.36), (0.58, 0.55, 0.47)),
    BUILDING: ((0.60, 0.60, 0.60), (0.76, 0.74, 0.70), (0.62, 0.40, 0.32), (0.50, 0.55, 0.62), (0.46, 0.46, 0.47)),
    ROAD: ((0.46, 0.46, 0.47), (0.62, 0.61, 0.58), (0.60, 0.53, 0.43)),
    WATER: ((0.13, 0.20, 0.29), (0.20, 0.33, 0.36), (0.33, 0.37, 0.30)),
    BARREN: ((0.66, 0.60, 0.50), (0.58, 0.56, 0.53), (0.62, 0.52, 0.42)),
    FOREST: ((0.17, 0.29, 0.16), (0.25, 0.36, 0.20), (0.30, 0.38, 0.26)),
    AGRICULTURAL: ((0.34, 0.48, 0.24), (0.27, 0.38, 0.19), (0.66, 0.61, 0.40), (0.50, 0.43, 0.33)),
}
PNG_SETTINGS: dict[str, Any] = {"format": "PNG", "compress_level": 6, "optimize": False}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a (cells+1)^2 normal grid, bilinearly upsampled to (size, size), roughly N(0, 1)."""
    cells = max(1, int(cells))
    grid = rng.standard_normal((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size, endpoint=False) + 0.5 * cells / size
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return cast("np.ndarray", rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :])


def _band(rng: np.random.Generator, size: int, width: float, meander: float) -> np.ndarray:
    """Bool (size, size) mask of a band crossing the tile (road or river), optionally meandering."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if rng.random() < 0.5:
        xx, yy = yy, xx
    y0 = rng.uniform(0.15, 0.85) * size
    slope = rng.uniform(-0.35, 0.35)
    period = rng.uniform(0.6, 1.5) * size
    centre = y0 + slope * (xx - size / 2) + meander * size * np.sin(2 * np.pi * xx / period + rng.uniform(0, 6.3))
    half = width / 2 * (1 + 0.25 * meander * np.sin(2 * np.pi * xx / (period * 0.7)))
    return cast("np.ndarray", np.abs(yy - centre) < np.maximum(half, 0.75))


def _layout(rng: np.random.Generator, size: int, domain: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label map (size, size) int64 reduced ids, field-id map for crops, and building-instance map."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    urban = domain == "Urban"
    # Land-use patches: Voronoi cells over domain-warped coordinates (organic boundaries).
    k = int(rng.integers(5, 10))
    seeds = rng.uniform(0, size, (k, 2))
    cls = rng.choice(_PATCH_CLASSES, size=k, p=_PATCH_PROBS[domain])
    amp = rng.uniform(0.06, 0.14) * size
    wy = yy + amp * _smooth_noise(rng, size, 3)
    wx = xx + amp * _smooth_noise(rng, size, 3)
    d2 = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    label = cls[np.argmin(d2, axis=0)].astype(np.int64)
    # Agricultural fields: a rotated grid of rectangles, each with its own crop (straight edges).
    theta = rng.uniform(-0.5, 0.5)
    u = np.cos(theta) * xx + np.sin(theta) * yy
    v = -np.sin(theta) * xx + np.cos(theta) * yy
    fw, fh = rng.uniform(0.15, 0.4, 2) * size
    fields = np.floor(u / fw).astype(np.int64) * 1000 + np.floor(v / fh).astype(np.int64)
    # Water: a meandering river or a smooth lake.
    if rng.random() < (0.45 if urban else 0.55):
        if rng.random() < 0.5:
            water = _band(rng, size, rng.uniform(0.06, 0.14) * size, rng.uniform(0.03, 0.1))
        else:
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            r = rng.uniform(0.15, 0.32) * size
            dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
            water = (1 - dist) + 0.35 * _smooth_noise(rng, size, 4) > 0
        label[water] = WATER
    # Roads: a grid-like network in cities, a few tracks in the countryside.
    n_roads = int(rng.integers(2, 5)) if urban else int(rng.integers(0, 3))
    road_width = max(2.0, rng.uniform(0.03, 0.055) * size) if urban else max(1.6, rng.uniform(0.02, 0.04) * size)
    roads = np.zeros((size, size), dtype=bool)
    for _ in range(n_roads):
        roads |= _band(rng, size, road_width, 0.0 if urban else rng.uniform(0.0, 0.05))
    label[roads] = ROAD
    # Buildings: axis-aligned rectangles in clusters, dense in cities, a few farmsteads in the countryside.
    instances = np.zeros((size, size), dtype=np.int64)
    n_clusters = int(rng.integers(2, 5)) if urban else int(rng.integers(0, 3))
    inst = 0
    for _ in range(n_clusters):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        spread = rng.uniform(0.1, 0.22) * size
        for _ in range(int(rng.integers(6, 16)) if urban else int(rng.integers(2, 6))):
            h, w = np.maximum(2, np.round(rng.uniform(0.04, 0.12, 2) * size)).astype(int)
            y0 = int(np.clip(round(cy + rng.normal(0, spread) - h / 2), 0, size - h))
            x0 = int(np.clip(round(cx + rng.normal(0, spread) - w / 2), 0, size - w))
            foot = label[y0 : y0 + h, x0 : x0 + w]
            if np.isin(foot, (ROAD, WATER)).mean() > 0.2:
                continue
            inst += 1
            free = ~np.isin(foot, (ROAD, WATER))
            foot[free] = BUILDING
            instances[y0 : y0 + h, x0 : x0 + w][free] = inst
    # No-data: an occasional black border with a slanted edge (raw label 0).
    if rng.random() < 0.15:
        depth = rng.uniform(0.06, 0.25) * size
        tilt = rng.uniform(-0.2, 0.2)
        side = int(rng.integers(0, 4))
        coord = (yy, xx, size - 1 - yy, size - 1 - xx)[side]
        other = xx if side % 2 == 0 else yy
        label[coord < depth + tilt * (other - size / 2)] = IGNORE_INDEX
    return label, fields, instances


def _pick(rng: np.random.Generator, cls: int, jitter: float = 0.05) -> np.ndarray:
    options = _COLOURS[cls]
    base = np.array(options[int(rng.integers(0, len(options)))])
    return np.clip(base + rng.normal(0, jitter, 3), 0, 1)


def _render(
    rng: np.random.Generator, label: np.ndarray, fields: np.ndarray, instances: np.ndarray
) -> np.ndarray:
    """RGB float image (size, size, 3) in [0, 1] for a label map: colour + texture per class."""
    size = label.shape[0]
    img = np.zeros((size, size, 3))
    grain = rng.standard_normal((size, size))  # per-pixel luminance grain, shared by classes
    low = _smooth_noise(rng, size, max(2, size // 16))  # low-frequency variation
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    def paint(cls: int, tex: np.ndarray, colour: np.ndarray | None = None) -> None:
        where = label == cls
        if where.any():
            c = _pick(rng, cls) if colour is None else colour
            img[where] = c[None, :] * (1 + tex[where, None])

    paint(BACKGROUND, 0.10 * low + 0.05 * grain)
    paint(WATER, 0.06 * low + 0.012 * grain)
    paint(BARREN, 0.05 * low + 0.11 * grain + 0.06 * _smooth_noise(rng, size, max(2, size // 6)))
    crowns = _smooth_noise(rng, size, max(2, size // 3))
    paint(FOREST, 0.22 * np.tanh(1.5 * crowns) + 0.04 * grain)
    paint(ROAD, 0.02 * grain + 0.03 * low)
    # Crops: one colour and row direction per field; rows are a sinusoid along the field axes.
    agri = label == AGRICULTURAL
    if agri.any():
        ids, inv = np.unique(fields[agri], return_inverse=True)
        cols = np.stack([_pick(rng, AGRICULTURAL, 0.04) for _ in ids])
        period = np.maximum(2.2, rng.uniform(0.03, 0.07, len(ids)) * size)
        angle = rng.uniform(0, np.pi, len(ids))
        depth = rng.uniform(0.05, 0.14, len(ids))
        phase = np.cos(angle)[inv] * xx[agri] + np.sin(angle)[inv] * yy[agri]
        rows = depth[inv] * np.sin(2 * np.pi * phase / period[inv])
        img[agri] = cols[inv] * (1 + rows + 0.03 * grain[agri])[:, None]
    # Buildings: one roof colour each, a darker half (gable), a cast shadow on the ground beside it.
    n_inst = int(instances.max())
    if n_inst:
        roofs = np.stack([_pick(rng, BUILDING, 0.05) for _ in range(n_inst)])
        bld = instances > 0
        roof = roofs[instances[bld] - 1]
        along_y = rng.random(n_inst) < 0.5
        half = np.zeros((size, size), dtype=bool)
        for i, box in enumerate(find_objects(instances)):  # darker half of each roof, split at its centre line
            if box is None:  # fully covered by a later building
                continue
            m = instances[box] == i + 1
            coord = (yy if along_y[i] else xx)[box][m]
            half[box][m] = coord > coord.mean()
        shade = np.where(half[bld], 0.86, 1.0)
        img[bld] = roof * (shade + 0.015 * grain[bld])[:, None]
        sh = max(1, size // 48)
        shadow = np.zeros_like(bld)
        shadow[sh:, sh:] = bld[:-sh, :-sh]
        shadow &= ~bld & (label != IGNORE_INDEX)
        img[shadow] *= 0.55
    # Scene-wide illumination, tint and haze.
    gain = rng.uniform(0.85, 1.15)
    tint = 1 + rng.normal(0, 0.03, 3)
    haze = rng.uniform(0.0, 0.08)
    img = img * gain * tint[None, None, :] + haze
    img[label == IGNORE_INDEX] = 0.0
    return np.clip(img, 0, 1)


def generate_scene(rng: np.random.Generator, size: int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """One scene: RGB uint8 (size, size, 3) and raw LoveDA mask uint8 (size, size), 0 = no-data."""
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r} is not one of {', '.join(DOMAINS)}")
    if size < 16:
        raise ValueError(f"size={size} is too small for a scene; use at least 16 px")
    return _paint(rng, *_layout(rng, size, domain))


def scene_rng(seed: int, split: str, domain: str, index: int) -> np.random.Generator:
    """The generator of one scene, independent of how many scenes are written."""
    return np.random.default_rng((seed, _SPLIT_CODES[split], _DOMAIN_CODES[domain], index))


def rerender_scene(seed: int, split: str, domain: str, index: int, size: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of :func:`generate_dataset` with its layout (so its mask, unchanged) painted anew.

    ``draw`` >= 1 picks another appearance (colours, textures, illumination): a sample of the scenes' true
    p(image | mask), which is what a perfect mask-conditioned generator would draw from that mask.
    Returns RGB uint8 (size, size, 3) and the raw mask, equal to the scene's own.
    """
    if draw < 1:
        raise ValueError(f"draw={draw} must be >= 1 (draw 0 is the scene itself)")
    layout = _layout(scene_rng(seed, split, domain, index), size, domain)
    return _paint(np.random.default_rng((seed, _SPLIT_CODES[split], _DOMAIN_CODES[domain], index, draw)), *layout)


def _paint(
    rng: np.random.Generator, label: np.ndarray, fields: np.ndarray, instances: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A layout (``_layout``) rendered with ``rng``: RGB uint8 (size, size, 3) and its raw LoveDA mask uint8."""
    image = np.round(_render(rng, label, fields, instances) * 255).astype(np.uint8)
    raw = np.where(label == IGNORE_INDEX, RAW_NODATA, label + 1).astype(np.uint8)
    return image, raw


def generate_dataset(
    out: str | Path, n_train: int, n_val: int, size: int = 64, seed: int = 0, *, overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``n_train``/``n_val`` scenes in LoveDA layout under ``out``; returns ``out``.

    Each split is divided between Urban (the larger half) and Rural. Ids are integers running
    Rural then Urban, Train then Val (as LoveDA's ids do not repeat across splits). An existing
    ``Train``/``Val`` under ``out`` is refused unless ``overwrite`` (then both are replaced, once the new scenes are
    all written). ``progress``: a bar over the scenes (LoveDA-size tiles take about half a second each).
    """
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need n_train >= 1 and n_val >= 0, got n_train={n_train}, n_val={n_val}")
    if not 16 <= size <= 2048:
        raise ValueError(f"size={size} is out of range; use 16 to 2048 px")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    out = Path(out)
    existing = [out / split for split in _SPLIT_CODES if (out / split).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it")
    if stray := [p for p in existing if not p.is_dir()]:
        raise FileExistsError(f"{stray[0]} exists and is not a folder; remove it first")
    out.mkdir(parents=True, exist_ok=True)
    # Written into a staging dir inside ``out`` and moved into place when complete: an existing dataset is replaced
    # only by a finished one, never lost to a failure on the way.
    staging = Path(tempfile.mkdtemp(prefix=".procedural-", dir=out))
    try:
        _write_scenes(staging, n_train, n_val, size, seed, progress)
        for split in _SPLIT_CODES:
            if (out / split).exists():
                os.rename(out / split, staging / f".old-{split}")
            if (staging / split).exists():
                os.rename(staging / split, out / split)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_scenes(out: Path, n_train: int, n_val: int, size: int, seed: int, progress: bool) -> None:
    """The scenes of :func:`generate_dataset` under ``out`` (``Train``/``Val``/<domain>/...)."""
    from todsynth.progress import progress_bar

    next_id = 0
    with progress_bar("procedural scenes", n_train + n_val, enabled=progress) as update:
        for split, n in (("Train", n_train), ("Val", n_val)):
            counts = {"Rural": n // 2, "Urban": n - n // 2}
            for domain, count in counts.items():
                if count == 0:
                    continue
                img_dir = out / split / domain / IMAGES_DIR
                mask_dir = out / split / domain / MASKS_DIR
                img_dir.mkdir(parents=True, exist_ok=True)
                mask_dir.mkdir(parents=True, exist_ok=True)
                for k in range(count):
                    image, raw = generate_scene(scene_rng(seed, split, domain, k), size, domain)
                    Image.fromarray(image, "RGB").save(img_dir / f"{next_id}.png", **PNG_SETTINGS)
                    Image.fromarray(raw, "L").save(mask_dir / f"{next_id}.png", **PNG_SETTINGS)
                    next_id += 1
                    update(advance=1)


def rerender_samples(
    samples: Sequence[Any], pool: Sequence[Any], seed: int, size: int, draw: int, out: str | Path
) -> list[tuple[Path, Path]]:
    """Re-render ``samples`` (Train scenes of :func:`generate_dataset`) with appearance ``draw``; write PNG pairs.

    ``pool``: the whole Train listing, which numbers each domain's scenes (ids run in scene order within a domain).
    Writes ``out/images_png/<id>.png`` and ``out/masks_png/<id>.png``; returns the (image, mask) paths.

    Raises:
        ValueError: a sample is not in ``pool``, or its mask is not the one this renderer draws for it (the data
            was not written by ``generate_dataset(seed=seed, size=size)``).
    """
    index: dict[tuple[str, str], int] = {}
    for domain in {s.domain for s in pool}:
        ids = sorted((s.id for s in pool if s.domain == domain), key=int)
        index |= {(domain, i): k for k, i in enumerate(ids)}
    out = Path(out)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    pairs = []
    for s in samples:
        k = index.get((s.domain, s.id))
        if k is None:
            raise ValueError(f"{s.image_path}: not a Train scene of the listing")
        image, raw = rerender_scene(seed, "Train", s.domain, k, size, draw)
        if not np.array_equal(read_raw_mask(s.mask_path), raw):
            raise ValueError(f"{s.mask_path}: not the mask procedural seed {seed} at {size} px draws for "
                             f"{s.domain} scene {k}; re-rendering needs the data generate_dataset wrote")
        img_path, mask_path = out / IMAGES_DIR / f"{s.id}.png", out / MASKS_DIR / f"{s.id}.png"
        Image.fromarray(image, "RGB").save(img_path, **PNG_SETTINGS)
        Image.fromarray(raw, "L").save(mask_path, **PNG_SETTINGS)
        pairs.append((img_path, mask_path))
    return pairs


def _lookup_counts(root: Path, split: str, levels: int, domains: Sequence[str]) -> np.ndarray:
    """(levels^3, NUM_CLASSES) counts of quantised RGB bins vs class, no-data pixels left out."""
    counts = np.zeros((levels**3, NUM_CLASSES), dtype=np.int64)
    for s in list_samples(root, split, domains):
        if s.mask_path is None:  # only Test lacks masks; not used here
            continue
        q = (read_image_array(s.image_path).astype(np.int64) * levels) // 256
        bins = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
        raw = read_raw_mask(s.mask_path).astype(np.int64)
        valid = raw != RAW_NODATA
        counts += np.bincount(
            bins[valid] * NUM_CLASSES + raw[valid] - 1, minlength=levels**3 * NUM_CLASSES
        ).reshape(levels**3, NUM_CLASSES)
    return counts


def colour_lookup_accuracy(
    root: str | Path, levels: int = 16, domains: Sequence[str] = DOMAINS
) -> float:
    """Val pixel accuracy of the best per-pixel colour lookup fitted on Train (no-data excluded).

    RGB is quantised to ``levels`` per channel; each bin predicts its majority Train class (bins never
    seen in Train predict the overall majority). A low value means colour alone does not give the
    labels away, so texture and shape must be learnt.
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"levels={levels} must be within 2..256")
    root = Path(root)
    train = _lookup_counts(root, "Train", levels, domains)
    fallback = int(train.sum(axis=0).argmax())
    lut = np.where(train.sum(axis=1) > 0, train.argmax(axis=1), fallback)
    val = _lookup_counts(root, "Val", levels, domains)
    total = int(val.sum())
    if total == 0:
        raise ValueError(f"no labelled Val pixels under {root}")
    return float(val[np.arange(len(lut)), lut].sum() / total)
