"""Faulty datasets: `data validate` and `bench run` name every bad file; `dataset.on_bad_sample: skip` drops them.

Each fault is applied to a copy of the seeded 32 px procedural LoveDA tree. Decisions tested here:
a palette (P-mode) mask is accepted when its indices are raw labels 0..7 (the indices are the labels, as
many tools write them; the palette colours are ignored); 16-bit masks, out-of-range values, RGBA images,
non-PNG content, truncated files, size mismatches and unpaired files are rejected, each line naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_reliability_suites import _main

from bench.engine import run_suite
from bench.suites import validate_data
from todsynth.data.validate import validate_dataset
from todsynth.errors import DatasetNotFoundError, DataValidationError


def _first(root: Path, split: str = "Train", kind: str = "images_png") -> Path:
    return sorted((root / split / "Urban" / kind).glob("*.png"))[0]


def _mask_of(image: Path) -> Path:
    return image.parent.parent / "masks_png" / image.name


def truncated_png(root):
    p = _first(root)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return [p], "unreadable PNG"


def mask_16bit(root):
    m = _mask_of(_first(root))
    Image.fromarray(np.asarray(Image.open(m)).astype(np.uint16) * 300).save(m)
    return [m], "mask mode 'I;16'"


def mask_out_of_range(root):
    m = _mask_of(_first(root))
    arr = np.asarray(Image.open(m)).copy()
    arr[0, 0] = 9
    Image.fromarray(arr, mode="L").save(m)
    return [m], "mask value(s) 9 outside raw labels 0..7"


def palette_out_of_range(root):
    m = _mask_of(_first(root))
    img = Image.fromarray(np.full((32, 32), 12, np.uint8), mode="P")
    img.putpalette(list(range(256)) * 3)
    img.save(m)
    return [m], "mask value(s) 12 outside raw labels 0..7"


def size_mismatch(root):
    m = _mask_of(_first(root))
    Image.open(m).resize((16, 16), Image.NEAREST).save(m)
    return [m], "size 16x16 differs from image"


def image_without_mask(root):
    i = _first(root)
    _mask_of(i).unlink()
    return [i], "image without mask"


def mask_without_image(root):
    i = _first(root)
    i.unlink()
    return [_mask_of(i)], "mask without image"


def rgba_image(root):
    i = _first(root)
    Image.open(i).convert("RGBA").save(i)
    return [i], "image mode 'RGBA'"


def jpeg_named_png(root):
    i = _first(root)
    Image.open(i).save(i, format="JPEG")
    return [i], "not a PNG file (format JPEG)"


def two_faults(root):
    a, _ = truncated_png(root)
    b = sorted((root / "Val" / "Rural" / "masks_png").glob("*.png"))[0]
    b.write_bytes(b"\x00garbage")
    return [*a, b], "unreadable PNG"


FAULTS = [truncated_png, mask_16bit, mask_out_of_range, palette_out_of_range, size_mismatch, image_without_mask,
          mask_without_image, rgba_image, jpeg_named_png, two_faults]


@pytest.fixture
def data_copy(procedural_root, tmp_path):
    root = tmp_path / "loveda"
    shutil.copytree(procedural_root, root)
    return root


def _suite(tiny_suite_data, root: Path, ws: Path, **dataset):
    data = json.loads(json.dumps(tiny_suite_data))
    data["dataset"] = {"kind": "loveda", "root": str(root), **dataset}
    data["workspace"] = str(ws)
    return validate_data(data, "test")


def _fns(fake_stages):
    from bench.stages import stage_data

    fns, _ = fake_stages
    return {**fns, "data": stage_data}  # the real data stage; the rest are fakes


def test_palette_mask_with_raw_indices_is_accepted(data_copy):
    from todsynth.data.loveda import load_mask

    m = _mask_of(_first(data_copy))
    before = load_mask(m)
    arr = np.asarray(Image.open(m))
    img = Image.fromarray(arr, mode="P")
    img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    img.save(m)
    assert Image.open(m).mode == "P"
    assert validate_dataset(data_copy) == []
    assert np.array_equal(load_mask(m).numpy(), before.numpy())  # the indices are the labels


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_fault_named_by_validate_run_and_skipped_on_request(fault, data_copy, tiny_suite_data, fake_stages, tmp_path,
                                                             capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    bad, why = fault(data_copy)
    # data validate: exit 2, one line per problem naming the file
    code, out, err = _main(["data", "validate", str(data_copy)])
    assert code == 2, (out, err)
    for path in bad:
        assert sum(str(path) in line for line in out.splitlines()) >= 1, (path, out)
    assert why in out and "Traceback" not in out + err
    # bench run (default on_bad_sample: error): the data stage fails naming the file(s), nothing published
    ws = tmp_path / "ws"
    with pytest.raises(DataValidationError) as exc:
        run_suite(_suite(tiny_suite_data, data_copy, ws), stage_fns=_fns(fake_stages), stage_versions={},
                  track=False, progress=False)
    for path in bad:
        assert str(path) in str(exc.value)
    assert "on_bad_sample: skip" in str(exc.value)
    assert not list((ws / "cache").glob("*/[0-9a-f]*")) and not list((ws / "cache").glob("*/.tmp-*"))
    assert not (ws / "t" / "results.json").exists()
    capsys.readouterr()
    # on_bad_sample: skip -> a warning per file, the samples are left out, results.json counts them
    out = run_suite(_suite(tiny_suite_data, data_copy, ws, on_bad_sample="skip"), stage_fns=_fns(fake_stages),
                    stage_versions={}, track=False, progress=False)
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("warning: skipping bad sample")]
    assert len(warned) == len(bad) and all(any(str(p) in w for w in warned) for p in bad), err
    assert out.results["skipped_samples"] == len(bad)
    assert json.loads((ws / "t" / "results.json").read_text())["skipped_samples"] == len(bad)
    (data_dir,) = (ws / "cache" / "data").glob("[0-9a-f]*")
    listing = json.loads((data_dir / "samples.json").read_text())
    listed = {(data_copy / s[k]) for split in listing.values() for s in split for k in ("image", "mask") if s[k]}
    assert not listed & set(bad)
    assert len(listing["Train"]) + len(listing["Val"]) == 12 - len(bad)


def test_clean_dataset_reports_zero_skipped(data_copy, tiny_suite_data, fake_stages, tmp_path):
    out = run_suite(_suite(tiny_suite_data, data_copy, tmp_path / "ws", on_bad_sample="skip"),
                    stage_fns=_fns(fake_stages), stage_versions={}, track=False, progress=False)
    assert out.results["skipped_samples"] == 0
    assert json.loads(next((tmp_path / "ws" / "cache" / "data").glob("[0-9a-f]*/samples.json")).read_text())["Train"]


def test_empty_split_is_an_error_even_when_skipping(data_copy, tiny_suite_data, fake_stages, tmp_path):
    for d in ("Urban", "Rural"):
        for p in (data_copy / "Val" / d / "images_png").glob("*.png"):
            p.unlink()
    code, out, _ = _main(["data", "validate", str(data_copy)])
    assert code == 2 and f"{data_copy / 'Val' / 'Urban' / 'images_png'}: no .png images" in out
    for mode in ("error", "skip"):
        with pytest.raises((DataValidationError, DatasetNotFoundError), match="images_png"):
            run_suite(_suite(tiny_suite_data, data_copy, tmp_path / mode, on_bad_sample=mode),
                      stage_fns=_fns(fake_stages), stage_versions={}, track=False, progress=False)


def test_every_val_sample_bad_is_an_empty_split_error(data_copy, tiny_suite_data, fake_stages, tmp_path):
    for d in ("Urban", "Rural"):
        for p in (data_copy / "Val" / d / "masks_png").glob("*.png"):
            p.write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match=r"no images in root=.* split=Val"):
        run_suite(_suite(tiny_suite_data, data_copy, tmp_path / "ws", on_bad_sample="skip"),
                  stage_fns=_fns(fake_stages), stage_versions={}, track=False, progress=False)


def test_bench_run_cli_names_the_bad_file(data_copy, tmp_path, monkeypatch):
    """Through the console entry point: exit 2, one `error:` line naming the file, no traceback."""
    monkeypatch.setenv("COLUMNS", "400")
    bad, _ = truncated_png(data_copy)
    import yaml

    suite = yaml.safe_load((Path(__file__).resolve().parent.parent / "suites" / "tests.yaml").read_text())
    suite["dataset"] = {"kind": "loveda", "root": str(data_copy), "limit": 4}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    code, out, err = _main(["bench", "run", str(path), "-w", str(tmp_path / "ws"), "--no-progress"])
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(bad[0]) in lines[0] and "Traceback" not in out + err
