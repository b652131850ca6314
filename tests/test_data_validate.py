"""`todsynth data validate`: every problem reported with its file, exit 2; a clean tree exits 0."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from todsynth.data.validate import validate_dataset

URBAN = "Train/Urban"


@pytest.fixture
def root(procedural_root, tmp_path):
    return shutil.copytree(procedural_root, tmp_path / "copy")


def _first(root, kind):
    return sorted((root / URBAN / kind).glob("*.png"))[0]


def _truncate(root):
    p = _first(root, "images_png")
    p.write_bytes(p.read_bytes()[:60])
    return p


def _drop_mask(root):
    p = _first(root, "masks_png")
    p.unlink()
    return _first(root, "images_png")  # the image that lost its mask is the one named


def _mask_value_9(root):
    p = _first(root, "masks_png")
    raw = np.array(Image.open(p))
    raw[0, 0] = 9
    Image.fromarray(raw, "L").save(p)
    return p


def _size_mismatch(root):
    p = _first(root, "masks_png")
    Image.fromarray(np.ones((16, 32), np.uint8), "L").save(p)
    return p


def _grey_image(root):
    p = _first(root, "images_png")
    Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(p)
    return p


def _orphan_mask(root):
    p = root / URBAN / "masks_png" / "999.png"
    Image.fromarray(np.ones((32, 32), np.uint8), "L").save(p)
    return p


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_truncate, "unreadable PNG"),
        (_drop_mask, "image without mask"),
        (_mask_value_9, "value(s) 9"),
        (_size_mismatch, "differs from image"),
        (_grey_image, "expected RGB"),
        (_orphan_mask, "mask without image"),
    ],
)
def test_each_problem_exits_2_and_names_the_file(root, corrupt, expected):
    bad = corrupt(root)
    res = CliRunner().invoke(cli.app, ["data", "validate", str(root)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if expected in line]
    assert len(lines) == 1 and str(bad) in lines[0], res.output


def test_clean_tree_exits_0(procedural_root):
    res = CliRunner().invoke(cli.app, ["data", "validate", str(procedural_root)])
    assert res.exit_code == 0, res.output
    assert "12 images checked" in res.output


def test_all_problems_are_reported_not_just_the_first(root):
    bad = [_truncate(root), _mask_value_9(root)]
    val_mask = sorted((root / "Val/Rural/masks_png").glob("*.png"))[0]
    Image.fromarray(np.ones((8, 8), np.uint8), "L").save(val_mask)
    problems = validate_dataset(root)
    assert len(problems) == 3
    for path in [*bad, val_mask]:
        assert any(p.startswith(str(path)) for p in problems)


def test_not_a_dataset(tmp_path):
    (tmp_path / "junk").mkdir()
    assert validate_dataset(tmp_path / "junk")[0].startswith(str(tmp_path / "junk"))
    res = CliRunner().invoke(cli.app, ["data", "validate", str(tmp_path / "junk")])
    assert res.exit_code == 2


def test_test_split_without_masks_is_fine(tmp_path):
    d = tmp_path / "Test/Rural/images_png"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(d / "1.png")
    assert validate_dataset(tmp_path) == []
