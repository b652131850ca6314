"""`todsynth gen train`: end to end on procedural scenes (scratch VAE trained first), option errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from todsynth.data.procedural import generate_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("gen_train_cli"), n_train=4, n_val=0, size=64, seed=0)


def _run(args: list[str]):  # noqa: ANN202
    return CliRunner().invoke(app, ["gen", "train", *args], catch_exceptions=False)


def test_gen_train_end_to_end(data: Path, tmp_path: Path) -> None:
    from todsynth.models.generator import load_generator

    out = tmp_path / "run"
    result = _run(["--data", str(data), "--out", str(out), "--steps", "2", "--vae-steps", "1", "--batch-size", "2",
                   "--checkpoint-every", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "generator ->" in result.output
    assert (out / "vae" / "vae.safetensors").is_file() and (out / "checkpoint-2" / "state.json").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["vae_dir"] == str(out / "vae")
    gen = load_generator(out / "generator")
    assert gen.image_size == 64 and gen.config["text"]["kind"] == "tiny"


@pytest.mark.parametrize(("extra", "match"), [
    (["--trainable", "full"], "TrainConfig.trainable"),
    (["--preset", "huge"], "unknown generator preset"),
    (["--caption-dropout", "1.5"], "caption_dropout"),
    (["--mask-dropout", "1.5"], "mask_dropout"),
    (["--init-from", "no-such-run/generator"], "no saved generator in no-such-run/generator"),
])
def test_gen_train_bad_options_exit_2(data: Path, tmp_path: Path, extra: list[str], match: str) -> None:
    result = _run(["--data", str(data), "--out", str(tmp_path / "bad"), *extra])
    assert result.exit_code == 2 and match in result.output
    assert not (tmp_path / "bad" / "vae").exists()  # rejected before any training
