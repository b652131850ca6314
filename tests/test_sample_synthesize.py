"""synthesize: LoveDA layout, manifest, per-sample seeds, sharding equal to one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_sample_sampler import generator, judge  # noqa: F401  (fixtures: tiny preset at 32 px, 1x1 judge)

from todsynth.data.loveda import list_samples
from todsynth.data.procedural import generate_dataset
from todsynth.sample.config import CRFMConfig, SamplerConfig
from todsynth.sample.synthesize import merge_manifests, sample_seed, synthesize

CFG = SamplerConfig(num_inference_steps=2, batch_size=2)


class HashPromptCache:
    """Deterministic prompt embeddings (stand-in for PromptCache): (N, 5, 64), (N, 64)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def get(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(prompts))
        gens = [torch.Generator().manual_seed(sum(p.encode()) + len(p)) for p in prompts]
        return (torch.stack([torch.randn(5, 64, generator=g) for g in gens]),
                torch.stack([torch.randn(64, generator=g) for g in gens]))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("loveda"), n_train=4, n_val=0, size=32, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "Train").rglob("*.png"))}


def _strip_seconds(manifest: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in manifest["images"]]


def test_layout_manifest_and_seeds(generator, data, tmp_path) -> None:  # noqa: F811
    samples = list_samples(data, "Train")
    cache = HashPromptCache()
    manifest = synthesize(generator, samples, tmp_path, cache, CFG, seed=7, progress=False)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["totals"]["n_images"] == 4 and manifest["settings"]["seed"] == 7
    assert manifest["settings"]["sampler"]["num_inference_steps"] == 2
    for s, entry in zip(samples, manifest["images"], strict=True):
        image = np.asarray(Image.open(tmp_path / entry["image"]))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.std() > 0
        assert entry["image"] == f"Train/{s.domain}/images_png/{s.id}.png"
        assert (tmp_path / entry["mask"]).read_bytes() == s.mask_path.read_bytes()
        assert entry["seed"] == sample_seed(7, s) and entry["seconds"] > 0 and not entry["mask_resized"]
        assert entry["prompt"].startswith("a satellite image of")
    assert not list(tmp_path.rglob("*.tmp"))
    assert [""] not in cache.calls  # CFG off: no negative prompt encoded


def test_sample_seed_depends_on_identity_only(data) -> None:
    a, b = list_samples(data, "Train")[:2]
    assert sample_seed(0, a) == sample_seed(0, a) and 0 <= sample_seed(0, a) < 2**63
    assert len({sample_seed(0, a), sample_seed(0, b), sample_seed(1, a)}) == 3


def test_shards_merge_to_the_single_process_result(generator, data, tmp_path) -> None:  # noqa: F811
    samples = list_samples(data, "Train")
    cfg = SamplerConfig(num_inference_steps=2, batch_size=1)  # same batches -> bit-identical PNGs
    single = synthesize(generator, samples, tmp_path / "one", HashPromptCache(), cfg, progress=False)
    part = synthesize(generator, samples, tmp_path / "two", HashPromptCache(), cfg, progress=False, shard=(0, 2))
    assert "shard" in part and not (tmp_path / "two" / "manifest.json").exists()
    assert [e["index"] for e in part["images"]] == [0, 2]
    merged = synthesize(generator, samples, tmp_path / "two", HashPromptCache(), cfg, progress=False, shard=(1, 2))
    assert merged["world"] == 2 and merge_manifests(tmp_path / "two", 2) == merged
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert _strip_seconds(single) == _strip_seconds(merged)
    assert merged["settings"] == single["settings"]
    # order and batching do not change an image (up to float rounding across batch shapes)
    rev = synthesize(generator, samples[::-1], tmp_path / "rev", HashPromptCache(), CFG, progress=False)
    for name in _files(tmp_path / "one"):
        a = np.asarray(Image.open(tmp_path / "one" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "rev" / name)).astype(int)
        assert np.abs(a - b).max() <= 1, name
    assert rev["totals"]["n_images"] == 4


def test_crfm_cfg_and_resized_masks(generator, judge, tmp_path) -> None:  # noqa: F811
    root = generate_dataset(tmp_path / "big", n_train=2, n_val=0, size=64, seed=1)
    samples = list_samples(root, "Train")
    cache = HashPromptCache()
    cfg = SamplerConfig(num_inference_steps=2, guidance_scale=2.0)
    crfm = CRFMConfig(rectified_step=1, max_step_size=0.5)
    manifest = synthesize(generator, samples, tmp_path / "out", cache, cfg, crfm, judge, progress=False)
    assert [""] in cache.calls  # the empty prompt is the CFG negative
    for entry in manifest["images"]:
        assert entry["mask_resized"] and len(entry["judge_loss"]) == 1 and len(entry["judge_error_fraction"]) == 1
        mask = np.asarray(Image.open(tmp_path / "out" / entry["mask"]))
        assert mask.shape == (32, 32) and mask.max() <= 7
    synthesize(generator, samples, tmp_path / "plain", HashPromptCache(), cfg, progress=False)
    assert _files(tmp_path / "out").keys() == _files(tmp_path / "plain").keys()
    assert any(
        _files(tmp_path / "out")[k] != v for k, v in _files(tmp_path / "plain").items() if "images_png" in k
    )


@pytest.mark.parametrize(("kwargs", "match"), [({"shard": (2, 2)}, "shard"), ({"samples": []}, "samples")])
def test_errors(generator, data, tmp_path, kwargs, match) -> None:  # noqa: F811
    args = {"samples": list_samples(data, "Train"), "shard": None} | kwargs
    with pytest.raises(ValueError, match=match):
        synthesize(generator, args["samples"], tmp_path, HashPromptCache(), CFG, progress=False, shard=args["shard"])
