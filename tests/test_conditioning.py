"""bench.checks (conditioning, crfm): scoring, override parsing, the end-to-end plumbing at tiny sizes (not the
figures) and the `todsynth bench check-*` commands' refusal of bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import cli
from bench.checks.conditioning import measure_conditioning, parse_overrides
from bench.checks.scoring import miou
from todsynth.errors import ConfigError


class _Oracle(nn.Module):
    """A 'segmenter' that predicts fixed label maps (one-hot logits), whatever the image."""

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.labels = labels
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, mode: str = "tensor") -> torch.Tensor:
        n = x.shape[0]
        lab = self.labels[:n].clamp(0, 6)
        self.labels = self.labels[n:]
        return nn.functional.one_hot(lab, 7).permute(0, 3, 1, 2).float() + 0 * self.w


def test_miou_scores_predictions_against_masks() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 7, (4, 16, 16), generator=g)
    images = torch.rand(4, 3, 16, 16, generator=g)
    assert miou(_Oracle(masks.clone()), images, masks) == pytest.approx(1.0)
    shuffled = miou(_Oracle(masks.roll(1, dims=0)), images, masks)
    assert 0.0 <= shuffled < 0.5


def test_parse_overrides_builds_nested_overrides() -> None:
    out = parse_overrides(["train.steps=800", "transformer.patch_size=1", "mask_stream.init=fresh", "train.lr=1.0e-3"])
    assert out == {"train": {"steps": 800, "lr": 1e-3}, "transformer": {"patch_size": 1}, "mask_stream": {"init": "fresh"}}
    assert parse_overrides(["train.lr=4e-3"]) == {"train": {"lr": 4e-3}}  # a float, though YAML 1.1 reads a string
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides(["train.steps"])


def test_measure_conditioning_plumbing_and_cache(tmp_path) -> None:
    overrides = {
        "image_size": 32,
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 0, "log_every": 1},
        "vae_train": {"steps": 2, "batch_size": 2},
    }
    kw = dict(overrides=overrides, n_train=4, n_val=4, size=32, n_masks=3, evaluator="fcn-tiny",
              evaluator_iters=2, num_inference_steps=2)
    torch.set_num_threads(1)
    r = measure_conditioning(tmp_path, **kw)
    for key in ("miou_true", "miou_shuffled", "miou_real", "miou_recon"):
        assert 0.0 <= r[key] <= 1.0
    # the tiny preset's space-to-depth autoencoder is lossless: its reconstructions score as the real images
    assert r["miou_recon"] == pytest.approx(r["miou_real"], abs=1e-6)
    if r["miou_real"] > 0:
        assert r["ae_cap"] == pytest.approx(1.0, abs=1e-6)
        assert r["fidelity_true"] == pytest.approx(r["miou_true"] / r["miou_real"])
    assert r["gap"] == pytest.approx(r["miou_true"] - r["miou_shuffled"])
    assert (r["guidance_scale"], r["mask_guidance"]) == (1.5, True)  # the smoke suite's sampler by default
    assert r["vae_wall_s"] > 0 and r["gen_cpu_s"] > 0
    run = Path(r["run_dir"])
    assert run.parent == tmp_path / "results"
    assert json.loads((run / "conditioning.json").read_text())["miou_true"] == r["miou_true"]
    assert (run / "samples.png").is_file()
    # Every stage is a published stage-cache dir (done.json), nothing half-written or left to resume.
    cache = tmp_path / "cache"
    for stage in ("data", "evaluator", "autoencoder", "generator"):
        (done,) = [d for d in (cache / stage).iterdir() if not d.name.startswith(".")]
        assert json.loads((done / "done.json").read_text())["stage"] == stage
    assert not list(cache.glob("*/.tmp-*")) and not list(cache.glob("*/.work-*"))
    # Second call re-uses data, evaluator, VAE and generator (no retraining) and reproduces the figures.
    weights = sorted(cache.glob("evaluator/*/model/model.safetensors"))
    assert len(weights) == 1
    stamp = weights[0].stat().st_mtime_ns
    lines: list[str] = []
    r2 = measure_conditioning(tmp_path, **kw, log=lines.append)
    assert weights[0].stat().st_mtime_ns == stamp
    assert [x for x in lines if x.endswith(": cached")] == [f"{s}: cached" for s in ("data", "evaluator", "autoencoder",
                                                                                   "generator")]
    assert r2["vae_cached"] and not r["vae_cached"] and r2["vae_cpu_s"] == r["vae_cpu_s"]
    assert r2["gen_cached"] and r2["gen_cpu_s"] == 0.0 < r["gen_cpu_s"]
    assert (r2["miou_true"], r2["miou_shuffled"]) == (r["miou_true"], r["miou_shuffled"])
    assert r2["run_dir"] == r["run_dir"]
    # train.init_from keys the generator by the weights' bytes, as a suite's generator.init_from does: new weights at
    # the same path retrain it (before: keyed by the path string, so the old generator was reused)
    import shutil

    (first,) = [d for d in (cache / "generator").iterdir() if not d.name.startswith(".")]
    pre = tmp_path / "pre"
    shutil.copytree(first / "generator", pre)
    warm = {**kw, "overrides": {**overrides, "train": {**overrides["train"], "init_from": str(pre)}}}
    measure_conditioning(tmp_path, **warm)
    config = json.loads((pre / "config.json").read_text())
    (pre / "config.json").write_text(json.dumps(config, indent=1))  # the same settings, other bytes
    measure_conditioning(tmp_path, **warm)
    assert len([d for d in (cache / "generator").iterdir() if not d.name.startswith(".")]) == 3
    for bad, needle in (({"n_masks": 1}, "n_masks"), ({"n_masks": 5}, "fewer than n_masks"),
                        ({"size": 64}, "image_size"), ({"mask_split": "Test"}, "mask_split"),
                        ({"guidance_scale": 0.5}, "guidance_scale"), ({"mask_guidance": "yes"}, "mask_guidance")):
        with pytest.raises(ConfigError, match=needle):
            measure_conditioning(tmp_path / "bad", **{**kw, **bad})
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_train_vae_mask_fraction_teaches_mask_greys(tmp_path) -> None:
    """The scratch VAE also sees the masks' grey images, so it reconstructs them better (mask stream input)."""
    from todsynth.data.loveda import LoveDA
    from todsynth.data.procedural import generate_dataset
    from todsynth.models.presets import TINY_SCRATCH_VAE
    from todsynth.models.vae import decode_latents, encode_latents, load_vae, mask_to_grey
    from todsynth.train import train_vae

    torch.set_num_threads(1)
    ds = LoveDA(generate_dataset(tmp_path / "d", n_train=6, n_val=0, size=32, seed=0), "Train")
    greys = mask_to_grey(torch.stack([ds[i]["mask"] for i in range(len(ds))]), 7)
    cfg = {**TINY_SCRATCH_VAE, "block_out_channels": [8, 8, 8], "sample_size": 32}

    def grey_l1(mask_fraction: float) -> float:
        out = train_vae(ds, cfg, tmp_path / f"v{mask_fraction}", steps=100, batch_size=4, lr=1e-2, seed=0,
                        mask_fraction=mask_fraction)
        assert json.loads((out / "train_summary.json").read_text())["mask_fraction"] == mask_fraction
        vae = load_vae(out)
        with torch.no_grad():
            return (decode_latents(vae, encode_latents(vae, greys)) - greys).abs().mean().item()

    with_masks, without = grey_l1(0.5), grey_l1(0.0)
    assert with_masks < 0.8 * without
    with pytest.raises(ValueError, match="mask_fraction"):
        train_vae(ds, cfg, tmp_path / "bad", steps=1, batch_size=2, lr=1e-3, seed=0, mask_fraction=1.0)


def test_crfm_fidelity_rows_plain_first_same_seeds(tmp_path) -> None:
    """bench.checks.crfm: plain row first, a CRFM setting scored with the same seeds, bad n_masks refused."""
    from bench.checks.crfm import crfm_fidelity
    from todsynth.data.loveda import LoveDA
    from todsynth.data.procedural import generate_dataset
    from todsynth.models.generator import build_generator
    from todsynth.models.presets import resolve_preset
    from todsynth.seg.models import build_segmentor
    from todsynth.text import PromptCache, build_prompt_encoder

    torch.set_num_threads(1)
    root = generate_dataset(tmp_path / "d", 2, 3, 32, 0)
    gen = build_generator(resolve_preset("tiny", {"image_size": 32}))
    judge, evaluator = build_segmentor("fcn-tiny", seed=0).eval(), build_segmentor("fcn-tiny", seed=1).eval()
    cache = PromptCache(tmp_path / "p", build_prompt_encoder("tiny"))
    ds = LoveDA(root, "Val")
    settings = [{"rectified_step": 2, "max_step_size": 1000.0, "step_scheme": "C", "clamp": None}]
    rows = crfm_fidelity(gen, judge, evaluator, ds, cache, settings, n_masks=3, num_inference_steps=2)
    assert [r["setting"] for r in rows] == [{}, settings[0]]
    assert all(0.0 <= r["evaluator_miou"] <= 1.0 and 0.0 <= r["judge_miou"] <= 1.0 and r["n_masks"] == 3 for r in rows)
    assert all(r["scorer_miou"] == {} for r in rows)
    again = crfm_fidelity(gen, judge, evaluator, ds, cache, [], n_masks=3, num_inference_steps=2,
                          scorers={"same-as-evaluator": evaluator})
    assert again[0]["scorer_miou"] == {"same-as-evaluator": rows[0]["evaluator_miou"]}  # same seeds, same images
    assert {k: v for k, v in again[0].items() if k != "scorer_miou"} == {k: v for k, v in rows[0].items() if k != "scorer_miou"}
    with pytest.raises(ValueError, match="n_masks"):
        crfm_fidelity(gen, judge, evaluator, ds, cache, settings, n_masks=4)


def _cli_exit(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run ``todsynth ARGS`` in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["todsynth", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--masks", "99"], "--masks 99"),
        (["--split", "Test"], "--split 'Test'"),
        (["--setting", "{rectified_stp: 4}"], "rectified_stp"),
        (["--setting", "[1, 2]"], "not a mapping"),
        (["--setting", "{max_step_size: -1}"], "max_step_size"),
        (["--guidance", "0.5"], "--guidance"),
        (["--steps", "4", "--setting", "{rectified_step: 10}"], "rectified_step 10 > --steps 4"),  # was a traceback
    ],
)
def test_check_crfm_refuses_bad_input_before_loading(tmp_path, monkeypatch, capsys, extra, needle) -> None:
    """Bad --masks / --split / --setting exit 2 with one line naming the option, before any model is loaded."""
    from todsynth.data.procedural import generate_dataset

    root = generate_dataset(tmp_path / "d", 2, 3, 32, 0)
    missing = str(tmp_path / "no-such-model")  # never reached: validation comes first
    code, err = _cli_exit(monkeypatch, capsys, "bench", "check-crfm", "--generator", missing, "--judge", missing,
                          "--evaluator", missing, "--data", str(root), "--no-progress", *extra)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_check_crfm_names_a_missing_dataset(tmp_path, monkeypatch, capsys) -> None:
    code, err = _cli_exit(monkeypatch, capsys, "bench", "check-crfm", "--generator", "g", "--judge", "j",
                          "--evaluator", "e", "--data", str(tmp_path / "nope"), "--no-progress")
    assert code == 2 and "nope" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--masks", "1"], "n_masks must be >= 2"),
        (["--masks", "9", "--n-val", "8"], "fewer than n_masks=9"),
        (["--mask-split", "Test"], "mask_split='Test'"),
        (["--guidance", "0.5"], "guidance_scale"),
        (["--set", "train.steps"], "is not key.path=value"),
        (["--set", "no_such_key=1"], "unknown override key"),
        (["--set", "train.steps=abc"], "TrainConfig.steps='abc'"),  # the generator's budget: before the evaluator trains
        (["--set", "train.stepz=9"], "unknown TrainConfig field(s) ['stepz']"),
        (["--set", "text=5"], "text must be a mapping"),
        (["--set", "train.init_from=/nowhere"], "train.init_from: /nowhere holds no saved generator"),
        (["--preset", "nope"], "unknown generator preset"),
    ],
)
def test_check_conditioning_refuses_bad_input_before_work(tmp_path, monkeypatch, capsys, extra, needle) -> None:
    work = tmp_path / "work"
    code, err = _cli_exit(monkeypatch, capsys, "bench", "check-conditioning", str(work), "--no-progress", *extra)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not work.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [([], (1.5, True)), (["--guidance", "1"], (1.0, True)), (["--no-mask-guidance"], (1.5, False))],
)
def test_check_crfm_samples_as_the_smoke_suite_by_default(tmp_path, monkeypatch, capsys, extra, expected) -> None:
    """check-crfm's sampler defaults are check-conditioning's and the smoke suite's (guidance 1.5, mask guidance)."""
    import bench.checks.crfm as crfm_check
    from bench.suites import load_suite

    smoke = load_suite(Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml")
    assert (smoke.sampling.guidance_scale, smoke.sampling.mask_guidance) == (1.5, True)
    seen: dict[str, object] = {}

    def fake_check_crfm(*args: object, **kwargs: object) -> list[dict[str, object]]:
        seen.update(kwargs)
        return []

    from todsynth.data.procedural import generate_dataset

    root = generate_dataset(tmp_path / "d", 2, 3, 32, 0)
    monkeypatch.setattr(crfm_check, "check_crfm", fake_check_crfm)
    monkeypatch.setattr(sys, "argv", ["todsynth", "bench", "check-crfm", "--generator", "g", "--judge", "j",
                                      "--evaluator", "e", "--data", str(root), "--no-progress", *extra])
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    assert (seen["guidance_scale"], seen["mask_guidance"]) == expected


def test_check_crfm_names_masks_that_do_not_fit_the_generator(tmp_path) -> None:
    """32 px masks for a 64 px generator: a ConfigError naming both, before the segmentors load (was a traceback)."""
    from bench.checks.crfm import check_crfm
    from todsynth.data.procedural import generate_dataset
    from todsynth.errors import ConfigError
    from todsynth.models.generator import build_generator, save_generator
    from todsynth.models.presets import resolve_preset

    root = generate_dataset(tmp_path / "d", 2, 3, 32, 0)
    save_generator(build_generator(resolve_preset("tiny", {"image_size": 64})), tmp_path / "g")
    missing = tmp_path / "no-such-segmentor"  # never reached
    with pytest.raises(ConfigError, match=r"32x32 px masks do not fit the generator's image_size 64"):
        check_crfm(tmp_path / "g", missing, missing, root, n_masks=2, steps=4)
