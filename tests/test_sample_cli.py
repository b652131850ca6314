"""`todsynth gen sample`: end to end on a saved tiny generator, a saved fcn-tiny judge and procedural scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from todsynth.data.procedural import generate_dataset
from todsynth.models.generator import build_generator, save_generator
from todsynth.models.presets import TINY_SCRATCH_VAE_OVERRIDES, deep_merge, resolve_preset


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen_cli")
    # on a scratch VAE (convolutions, like SD3.5's), so the channels_last preparation has something to lay out
    overrides = deep_merge(TINY_SCRATCH_VAE_OVERRIDES, {"image_size": 32})
    gen_dir = save_generator(build_generator(resolve_preset("tiny", overrides)), root / "gen")
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


def test_gen_sample_prepares_models_and_keeps_results(setup, monkeypatch) -> None:
    """`gen sample` samples as `bench perf` measures (channels_last VAE + judge, CPU: fp32) and writes the same
    images as unprepared models would (to float rounding), with and without CRFM."""
    import numpy as np
    import torch
    from PIL import Image

    from cli import _load_judge
    from todsynth.data.loveda import list_samples
    from todsynth.models.generator import load_generator
    from todsynth.sample import speed
    from todsynth.sample.config import CRFMConfig, SamplerConfig
    from todsynth.sample.synthesize import synthesize
    from todsynth.seg.io import save_segmentor
    from todsynth.seg.models import build_segmentor
    from todsynth.text import PromptCache, build_prompt_encoder

    prepared = []

    def spy(gen, judge, cfg, **kw):  # noqa: ANN001, ANN202
        out = original(gen, judge, cfg, **kw)
        conv = next(m for m in gen.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        prepared.append((conv.weight.is_contiguous(memory_format=torch.channels_last), judge is not None))
        return out

    original = speed.prepare_sampling_run
    monkeypatch.setattr(speed, "prepare_sampling_run", spy)
    judge_dir = save_segmentor(build_segmentor("fcn-tiny", seed=5), "fcn-tiny", setup["root"] / "judge-prep", 7)
    common = ["--generator", str(setup["gen"]), "--data", str(setup["data"]), "--steps", "3", "--limit", "2",
              "--no-progress", "--seed", "4"]
    runs = {"plain": [], "crfm": ["--crfm", "--rectified-step", "2", "--max-step-size", "0.5", "--judge", str(judge_dir)]}
    for name, extra in runs.items():
        out = setup["root"] / f"prep-{name}"
        result = _run([*common, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["settings"]["sampler"]["precision"] == "fp32"  # CPU default
        # The same run without preparation (NCHW, fp32), straight through synthesize.
        gen = load_generator(setup["gen"], device="cpu")
        text = dict(gen.config.get("text", {"kind": "tiny"}))
        cache = PromptCache(setup["root"] / f"prep-cache-{name}", build_prompt_encoder(text.pop("kind"), **text))
        crfm = CRFMConfig(rectified_step=2, max_step_size=0.5) if extra else None
        judge = _load_judge(judge_dir, "fcn-tiny", False, gen.num_classes, "cpu") if extra else None
        ref_dir = setup["root"] / f"ref-{name}"
        ref = synthesize(gen, list_samples(setup["data"], "Train")[:2], ref_dir, cache,
                         SamplerConfig(num_inference_steps=3), crfm, judge, seed=4, progress=False)
        conv = next(m for m in gen.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        assert not conv.weight.is_contiguous(memory_format=torch.channels_last)  # the reference was not prepared
        for a, b in zip(manifest["images"], ref["images"], strict=True):
            got = np.asarray(Image.open(out / a["image"]), dtype=np.int16)
            want = np.asarray(Image.open(ref_dir / b["image"]), dtype=np.int16)
            assert np.abs(got - want).max() <= 1  # uint8 rounding of float differences ~1e-6
            if extra:
                assert np.allclose(a["judge_loss"], b["judge_loss"], atol=1e-4)
    assert prepared == [(True, False), (True, True)]  # channels_last VAE; the judge prepared with CRFM


def test_gen_sample_precision_option(setup) -> None:
    common = ["--generator", str(setup["gen"]), "--data", str(setup["data"]), "--steps", "1", "--limit", "1",
              "--no-progress"]
    bad = _run([*common, "--out", str(setup["root"] / "bad-precision"), "--precision", "fp16"])
    assert bad.exit_code == 2 and "--precision" in bad.output
    out = setup["root"] / "bf16"
    result = _run([*common, "--out", str(out), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["settings"]["sampler"]["precision"] == "bf16"
