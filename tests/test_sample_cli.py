"""`todsynth gen sample`: end to end on a saved tiny generator, a saved fcn-tiny judge and procedural scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from todsynth.data.procedural import generate_dataset
from todsynth.models.generator import build_generator, save_generator
from todsynth.models.presets import resolve_preset


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen_cli")
    gen_dir = save_generator(build_generator(resolve_preset("tiny", {"image_size": 32})), root / "gen")
    data = generate_dataset(root / "data", n_train=3, n_val=0, size=32, seed=0)
    return {"root": root, "gen": gen_dir, "data": data}


def _run(args: list[str]):
    return CliRunner().invoke(app, ["gen", "sample", *args], catch_exceptions=False)


def test_gen_sample_plain_and_crfm(setup) -> None:
    from todsynth.seg.io import save_segmentor
    from todsynth.seg.models import build_segmentor

    judge_dir = save_segmentor(build_segmentor("fcn-tiny"), "fcn-tiny", setup["root"] / "judge", 7)
    common = ["--generator", str(setup["gen"]), "--data", str(setup["data"]), "--steps", "2", "--limit", "2",
              "--no-progress"]
    plain = _run([*common, "--out", str(setup["root"] / "plain")])
    assert plain.exit_code == 0, plain.output
    manifest = json.loads((setup["root"] / "plain" / "manifest.json").read_text())
    assert manifest["totals"]["n_images"] == 2 and manifest["settings"]["crfm"]["rectified_step"] == 0
    assert all((setup["root"] / "plain" / e["image"]).is_file() for e in manifest["images"])
    rect = _run([*common, "--out", str(setup["root"] / "crfm"), "--crfm", "--rectified-step", "1",
                 "--judge", str(judge_dir), "--step-scheme", "C", "--seed", "3"])
    assert rect.exit_code == 0, rect.output
    manifest = json.loads((setup["root"] / "crfm" / "manifest.json").read_text())
    assert manifest["settings"]["crfm"]["step_scheme"] == "C" and manifest["settings"]["seed"] == 3
    assert all(len(e["judge_loss"]) == 1 for e in manifest["images"])


@pytest.mark.parametrize(("extra", "match"), [
    (["--crfm"], "--judge"),
    (["--crfm", "--judge", "x", "--rectified-step", "5"], "--rectified-step"),
    (["--step-scheme", "XY"], "--step-scheme"),
    (["--guidance", "0.5"], "--guidance"),
])
def test_gen_sample_bad_options_exit_2(setup, extra, match) -> None:
    result = _run(["--generator", str(setup["gen"]), "--data", str(setup["data"]), "--out",
                   str(setup["root"] / "bad"), "--steps", "2", *extra])
    assert result.exit_code == 2 and match in result.output
