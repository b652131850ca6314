"""`todsynth seg train|eval|models` end to end on a tiny procedural dataset, and their input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from todsynth.data.procedural import generate_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("cli") / "data", n_train=4, n_val=2, size=32, seed=1)


def test_train_then_eval(data_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "seg"
    res = runner.invoke(app, ["seg", "train", "--model", "fcn-tiny", "--data", str(data_root), "--out", str(out),
                              "--iters", "2", "--batch-size", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and (out / "segmentor.json").is_file()
    assert "mIoU" in res.output and "agricultural" in res.output
    res = runner.invoke(app, ["seg", "eval", "--model-dir", str(out), "--data", str(data_root), "--split", "Train"])
    assert res.exit_code == 0, res.output
    assert "Train (4 images)" in res.output.replace("\n", " ") or "4 images" in res.output


def test_eval_user_checkpoint_and_trust(data_root: Path, tmp_path: Path) -> None:
    from mmengine.logging import HistoryBuffer

    from todsynth.seg.models import build_segmentor

    model = build_segmentor("fcn-tiny", 7, seed=0)
    path = tmp_path / "user.pth"
    torch.save({"meta": {"hub": HistoryBuffer()}, "state_dict": model.state_dict()}, path)
    runner = CliRunner()
    args = ["seg", "eval", "--data", str(data_root), "--checkpoint", str(path), "--model", "fcn-tiny"]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "trust-checkpoint" in str(res.exception)
    res = runner.invoke(app, [*args, "--trust-checkpoint"])
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["seg", "eval", "--data", "."], "exactly one of --model-dir"),
        (["seg", "eval", "--data", ".", "--checkpoint", "x.pth"], "needs --model"),
        (["seg", "train", "--model", "unet", "--data", "."], "is not one of fcn-tiny"),
        (["seg", "train", "--optimizer", "adam", "--data", "."], "--optimizer 'adam'"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output.replace("\n", " ")


def test_models_lists_names() -> None:
    res = CliRunner().invoke(app, ["seg", "models"])
    assert res.exit_code == 0 and "fcn-r18" in res.output and "deeplabv3plus-r50" in res.output


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("damage", ["grey image", "16-bit mask"])
def test_files_that_are_not_loveda_format_exit_2_naming_them(tmp_path: Path, command: str, damage: str) -> None:
    """MMSeg's loader read a grey image as three equal channels and a 16-bit mask's values as labels, and
    `seg train` trained on them with exit 0; both commands now check the root as the suite's data stage does."""
    import numpy as np
    from PIL import Image

    from todsynth.seg.io import save_segmentor
    from todsynth.seg.models import build_segmentor

    root = generate_dataset(tmp_path / "data", n_train=4, n_val=2, size=32, seed=1)
    image = sorted(root.glob("Train/*/images_png/*.png"))[0]
    mask = image.parent.parent / "masks_png" / image.name
    if damage == "grey image":
        Image.open(image).convert("L").save(image)
        bad = image
    else:
        Image.fromarray(np.asarray(Image.open(mask)).astype(np.uint16) * 300).save(mask)
        bad = mask
    if command == "train":
        args = ["seg", "train", "--model", "fcn-tiny", "--data", str(root), "--out", str(tmp_path / "seg"), "--iters",
                "1", "--batch-size", "2", "--no-progress"]
    else:
        model_dir = save_segmentor(build_segmentor("fcn-tiny", 7, seed=0), "fcn-tiny", tmp_path / "m", 7)
        args = ["seg", "eval", "--data", str(root), "--model-dir", str(model_dir), "--split", "Train"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert f"--data {root}: {bad}: " in " ".join(res.output.split()), res.output
    assert not (tmp_path / "seg" / "model.safetensors").exists()
