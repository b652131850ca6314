"""index.jsonl: relative paths, prompts from the masks' classes, round trip, CLI, malformed lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from todsynth.data.classes import reduce_labels
from todsynth.data.index import build_index, read_index, write_index
from todsynth.errors import DatasetNotFoundError, DataValidationError


def test_entries_point_at_files_and_prompt_matches_mask(procedural_root):
    entries = build_index(procedural_root, "Train")
    assert len(entries) == 8
    for e in entries:
        assert set(e) == {"source", "target", "prompt"}
        assert not e["source"].startswith("/") and "masks_png" in e["source"]
        assert (procedural_root / e["target"]).is_file()
        present = set(np.unique(reduce_labels(np.asarray(Image.open(procedural_root / e["source"])))).tolist())
        names = e["prompt"].removeprefix("a satellite image of ").split(", ")
        expected = [n for i, n in enumerate(
            ("background", "building", "road", "water", "barren", "forest", "agricultural")) if i in present and i > 0]
        assert names == expected


def test_prompt_excludes_background_and_nodata(tmp_path):
    for kind, arr, mode in (("images_png", np.zeros((4, 4, 3), np.uint8), "RGB"),
                            ("masks_png", np.array([[0, 1, 4, 7]] * 4, np.uint8), "L")):
        d = tmp_path / "Val/Rural" / kind
        d.mkdir(parents=True)
        Image.fromarray(arr, mode).save(d / "3.png")
    (entry,) = build_index(tmp_path, "Val")
    assert entry == {"source": "Val/Rural/masks_png/3.png", "target": "Val/Rural/images_png/3.png",
                     "prompt": "a satellite image of water, agricultural"}


def test_round_trip_and_cli(procedural_root, tmp_path):
    out = write_index(procedural_root, "Val", tmp_path / "sub" / "val.jsonl")
    assert read_index(out) == build_index(procedural_root, "Val")
    assert len(out.read_text().splitlines()) == 4
    res = CliRunner().invoke(cli.app, ["data", "index", str(procedural_root), "--split", "Train",
                                       "--out", str(tmp_path / "index.jsonl")])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == build_index(procedural_root, "Train")


def test_read_index_errors_name_the_line(tmp_path):
    p = tmp_path / "i.jsonl"
    p.write_text('{"source": "a", "target": "b", "prompt": "c"}\n{"source": "a"}\n')
    with pytest.raises(DataValidationError, match=r"i.jsonl:2: .*target, prompt"):
        read_index(p)
    p.write_text("not json\n")
    with pytest.raises(DataValidationError, match=r"i.jsonl:1: not valid JSON"):
        read_index(p)
    with pytest.raises(DatasetNotFoundError, match="missing.jsonl"):
        read_index(tmp_path / "missing.jsonl")
    p.write_bytes(b'{"source": "a", "target": "b", "prompt": "c"}\n\xff\xfe\n')  # was a UnicodeDecodeError
    with pytest.raises(DataValidationError, match=r"i.jsonl: not UTF-8 text at byte 46"):
        read_index(p)


def test_index_of_test_split_needs_masks(tmp_path):
    d = tmp_path / "Test/Urban/images_png"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), "RGB").save(d / "0.png")
    with pytest.raises(DatasetNotFoundError, match="has no mask"):
        build_index(tmp_path, "Test")
