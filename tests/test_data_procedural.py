"""Procedural scenes: exact layout, byte-identical determinism, land-cover content, colour ambiguity."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from todsynth.data.classes import PALETTE, reduce_labels
from todsynth.data.loveda import list_samples
from todsynth.data.procedural import (
    colour_lookup_accuracy,
    generate_dataset,
    generate_scene,
    rerender_scene,
    scene_rng,
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_and_split_between_domains(tmp_path):
    root = generate_dataset(tmp_path / "d", n_train=5, n_val=3, size=32, seed=3)
    for split, urban, rural in (("Train", 3, 2), ("Val", 2, 1)):
        for domain, n in (("Urban", urban), ("Rural", rural)):
            imgs = sorted((root / split / domain / "images_png").glob("*.png"))
            masks = sorted((root / split / domain / "masks_png").glob("*.png"))
            assert len(imgs) == len(masks) == n
    ids = [s.id for split in ("Train", "Val") for s in list_samples(root, split)]
    assert len(set(ids)) == 8  # ids do not repeat across splits or domains
    with Image.open(root / "Train/Urban/images_png" / f"{list_samples(root)[0].id}.png") as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    with Image.open(next((root / "Train/Urban/masks_png").glob("*.png"))) as m:
        assert m.mode == "L" and int(np.asarray(m).max()) <= 7


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path, procedural_root):
    again = generate_dataset(tmp_path / "again", n_train=8, n_val=4, size=32, seed=0)
    other = generate_dataset(tmp_path / "other", n_train=8, n_val=4, size=32, seed=1)
    ref = _files(procedural_root)
    assert _files(again) == ref
    assert _files(other).keys() == ref.keys() and _files(other) != ref


def test_scene_does_not_depend_on_count():
    a = generate_scene(scene_rng(0, "Train", "Urban", 2), 32, "Urban")
    b = generate_scene(scene_rng(0, "Train", "Urban", 2), 32, "Urban")
    c = generate_scene(scene_rng(0, "Train", "Urban", 3), 32, "Urban")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def _scenes(domain, n, size=48):
    return [generate_scene(scene_rng(7, "Train", domain, k), size, domain) for k in range(n)]


def test_scenes_look_like_land_cover():
    urban, rural = _scenes("Urban", 30), _scenes("Rural", 30)
    raws = np.stack([r for _, r in urban + rural])
    assert set(np.unique(raws).tolist()) == set(range(8))  # all 7 classes and no-data occur

    def frac(scenes, raw_class):
        return float(np.mean([np.mean(r == raw_class) for _, r in scenes]))

    assert frac(urban, 2) > 2 * frac(rural, 2)  # buildings denser in cities
    assert frac(rural, 7) > 2 * frac(urban, 7)  # fields in the countryside
    assert frac(urban, 3) > frac(rural, 3)  # more roads in cities
    for img, raw in urban + rural:
        nodata = raw == 0
        assert np.all(img[nodata] == 0)  # no-data is black
        assert np.mean(nodata) < 0.3
        # no class map is pixel noise: most pixels share their label with the right-hand neighbour
        assert np.mean(raw[:, 1:] == raw[:, :-1]) > 0.6


def test_texture_differs_by_class():
    """Crops and forest vary more from pixel to pixel than water: texture carries information."""

    def local_std(scenes, raw_class):
        vals = []
        for img, raw in scenes:
            grey = img.astype(float).mean(-1)
            diff = np.abs(grey[:, 1:] - grey[:, :-1])
            inside = (raw[:, 1:] == raw_class) & (raw[:, :-1] == raw_class)
            if inside.sum() > 20:
                vals.append(diff[inside].mean())
        return float(np.mean(vals))

    scenes = _scenes("Rural", 30) + _scenes("Urban", 30)
    assert local_std(scenes, 7) > 1.5 * local_std(scenes, 4)  # agricultural rows vs flat water
    assert local_std(scenes, 6) > 1.5 * local_std(scenes, 4)  # forest crowns vs flat water


def test_colour_lookup_is_far_from_perfect(tmp_path):
    root = generate_dataset(tmp_path / "d", n_train=24, n_val=12, size=48, seed=0)
    acc = colour_lookup_accuracy(root)
    assert 0.25 < acc < 0.8


def test_colour_lookup_is_perfect_for_palette_images(tmp_path):
    """Sanity of the measure: images painted in the class palette are fully predictable from colour."""
    root = generate_dataset(tmp_path / "d", n_train=4, n_val=2, size=32, seed=0)
    lut = np.zeros((8, 3), np.uint8)
    lut[1:] = PALETTE
    for s in list_samples(root, "Train") + list_samples(root, "Val"):
        raw = np.asarray(Image.open(s.mask_path))
        Image.fromarray(lut[raw], "RGB").save(s.image_path)
    assert colour_lookup_accuracy(root) == 1.0


def test_overwrite_and_bad_arguments(tmp_path):
    generate_dataset(tmp_path / "d", n_train=4, n_val=2, size=32, seed=0)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(tmp_path / "d", n_train=2, n_val=0, size=32, seed=0)
    generate_dataset(tmp_path / "d", n_train=2, n_val=0, size=32, seed=0, overwrite=True)
    assert len(list_samples(tmp_path / "d", "Train")) == 2 and not (tmp_path / "d/Val").exists()
    with pytest.raises(ValueError, match="size=8"):
        generate_dataset(tmp_path / "e", n_train=2, n_val=0, size=8, seed=0)
    with pytest.raises(ValueError, match="n_train=0"):
        generate_dataset(tmp_path / "e", n_train=0, n_val=0, size=32, seed=0)


def test_overwrite_replaces_only_with_a_finished_dataset(tmp_path, monkeypatch):
    """Before, --overwrite deleted Train/Val first: a bad argument or a failure on the way lost the old dataset."""
    import todsynth.data.procedural as procedural

    root = generate_dataset(tmp_path / "d", n_train=4, n_val=2, size=32, seed=0)
    before = sorted(p.read_bytes() for p in root.rglob("*.png"))
    with pytest.raises(ValueError, match="seed=-1 must be >= 0"):
        generate_dataset(root, n_train=4, n_val=2, size=32, seed=-1, overwrite=True)
    made = []

    def dies_on_the_third(*args, **kwargs):
        if len(made) == 2:
            raise OSError("disk full")
        made.append(1)
        return generate_scene(*args, **kwargs)

    monkeypatch.setattr(procedural, "generate_scene", dies_on_the_third)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(root, n_train=4, n_val=2, size=32, seed=1, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.read_bytes() for p in root.rglob("*.png")) == before  # the old dataset, whole
    assert sorted(p.name for p in root.iterdir()) == ["Train", "Val"]  # no staging dir left
    generate_dataset(root, n_train=2, n_val=0, size=32, seed=1, overwrite=True)
    assert len(list_samples(root, "Train")) == 2 and not (root / "Val").exists()
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "Train").write_text("not a folder")
    with pytest.raises(FileExistsError, match="is not a folder"):
        generate_dataset(tmp_path / "f", n_train=2, n_val=0, size=32, seed=0, overwrite=True)


def test_reduced_masks_of_scenes_are_valid():
    _, raw = generate_scene(scene_rng(0, "Val", "Rural", 0), 32, "Rural")
    reduced = reduce_labels(raw)
    assert set(np.unique(reduced).tolist()) <= set(range(7)) | {255}


def test_cli_procedural(tmp_path):
    import cli

    runner = CliRunner()
    res = runner.invoke(cli.app, ["data", "procedural", str(tmp_path / "p"), "--n-train", "2", "--n-val", "2",
                                  "--size", "32", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "p").rglob("*.png"))) == 8
    res = runner.invoke(cli.app, ["data", "procedural", str(tmp_path / "p"), "--n-train", "2"])
    assert res.exit_code == 2 and "overwrite" in res.output
    res = runner.invoke(cli.app, ["data", "procedural", str(tmp_path / "q"), "--size", "4"])
    assert res.exit_code == 2 and "size=4" in res.output


def test_rerender_keeps_the_mask_and_paints_anew(tmp_path):
    generate_dataset(tmp_path, 4, 0, 32, seed=3)
    rural = [s for s in list_samples(tmp_path, "Train") if s.domain == "Rural"]  # ids 0, 1: scenes 0, 1
    mask = np.asarray(Image.open(rural[1].mask_path))
    image = np.asarray(Image.open(rural[1].image_path)).astype(int)
    one, raw = rerender_scene(3, "Train", "Rural", 1, 32, draw=1)
    two, raw2 = rerender_scene(3, "Train", "Rural", 1, 32, draw=2)
    assert (raw == mask).all() and (raw2 == mask).all()  # the same layout: the mask, pixel for pixel
    assert np.abs(one.astype(int) - image).mean() > 3 and np.abs(one.astype(int) - two).mean() > 3  # new paint
    assert (rerender_scene(3, "Train", "Rural", 1, 32, draw=1)[0] == one).all()  # deterministic
    assert (one[raw == 0] == 0).all()  # no-data stays black
    with pytest.raises(ValueError, match="draw=0"):
        rerender_scene(3, "Train", "Rural", 1, 32, draw=0)
