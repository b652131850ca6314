"""``evaluator_real_miou``: the evaluator's mIoU on the real images of the masks the synthetic images came from.

The real data, evaluate and real_features stages run on a seeded, untrained fcn-tiny evaluator (32 px procedural
scenes); the generator, judge, synthesis and downstream stages are fakes. Synthesis uses the masks the real stage
would (``dataset.limit`` / ``dataset.subsets``), so the metric must equal the evaluator's score on exactly those
real images, nothing more (not the whole training split).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench import stages
from bench.cache import CachedStage
from bench.engine import run_suite
from bench.stages.common import split_samples, train_samples
from bench.suites import validate_data


def evaluator_stages(fake_stages):
    fns, calls = fake_stages

    def evaluator(spec, inputs, out_dir):
        from todsynth.seg.io import save_segmentor
        from todsynth.seg.models import build_segmentor

        calls.append("evaluator")
        save_segmentor(build_segmentor(spec.model, seed=spec.seed), spec.model, out_dir / "model", 7)
        return {"model": out_dir / "model"}

    def synthesize(spec, inputs, out_dir):
        """The real stage's choice of masks (subset, then limit); images: the real ones, darkened and noised."""
        calls.append("synthesize")
        masks = train_samples(spec.subset, inputs["data"])
        masks = masks[: spec.limit] if spec.limit is not None else masks
        copy = out_dir / "copy-0"
        entries = []
        rng = np.random.default_rng(spec.seed)
        for s in masks:
            base = copy / "Train" / s.domain
            for d in ("images_png", "masks_png"):
                (base / d).mkdir(parents=True, exist_ok=True)
            img = np.asarray(Image.open(s.image_path).convert("RGB")).astype(np.int16) // 2
            img = np.clip(img + rng.integers(0, 60, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(base / "images_png" / f"{s.id}.png")
            Image.open(s.mask_path).save(base / "masks_png" / f"{s.id}.png")
            entries.append({"id": s.id, "domain": s.domain, "image": f"Train/{s.domain}/images_png/{s.id}.png",
                            "mask": f"Train/{s.domain}/masks_png/{s.id}.png", "source_mask": str(s.mask_path)})
        (copy / "manifest.json").write_text(json.dumps({"images": entries}))
        return {"copies": [copy], "metrics": {"seconds_per_image": 0.5}}

    return {**fns, "data": stages.stage_data, "evaluator": evaluator, "real_features": stages.stage_real_features,
            "synthesize": synthesize, "evaluate": stages.stage_evaluate}


def _entries(ws, stage):
    """Finished cache dirs of a stage (not its lock files)."""
    return [p for p in (ws / "cache" / stage).iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("dataset", [{"limit": 3}, {"subsets": [4]}], ids=["limit", "subset"])
def test_evaluator_real_miou_is_the_evaluators_score_on_those_real_images(
        tiny_suite_data, bench_workspace, fake_stages, dataset):
    from bench.tracking import get_run_record
    from todsynth.data.subset import labelled_subset
    from todsynth.seg.evaluate import evaluate_segmentor
    from todsynth.seg.io import load_segmentor

    data = {**tiny_suite_data, "workspace": str(bench_workspace)}
    data["dataset"] = {**data["dataset"], **dataset}
    suite = validate_data(data, "test")
    out = run_suite(suite, stage_fns=evaluator_stages(fake_stages), stage_versions={}, progress=False)

    data_dir = _entries(bench_workspace, "data")[0]
    data_stage = CachedStage(data_dir, json.loads((data_dir / "done.json").read_text()))
    train = split_samples(data_stage, "Train")
    used = train[:3] if "limit" in dataset else labelled_subset(train, 4, 0)
    assert len(train) == 8 and len(used) < len(train)
    ev_dir = _entries(bench_workspace, "evaluator")[0]
    model = load_segmentor(ev_dir / "model")
    expected = evaluate_segmentor(model, used)["miou"]
    whole = evaluate_segmentor(model, train)["miou"]

    run_ids = out.results["mlflow"]["variant_runs"]
    for v in out.results["variants"]:
        logged = get_run_record(suite.tracking_uri, run_ids[v["name"]]["0"])["metrics"]
        if v["kind"] == "baseline":
            assert "evaluator_real_miou" not in v["metrics"] and "evaluator_real_miou" not in logged
            continue
        got = v["metrics"]["evaluator_real_miou"]
        assert got == pytest.approx(expected, abs=1e-12) and got != pytest.approx(whole, abs=1e-9)
        assert v["per_seed"][0]["metrics"]["evaluator_real_miou"] == got
        assert logged["evaluator_real_miou"] == pytest.approx(got, rel=1e-9)
        # FID/KID's sample counts and resize travel with the figure (results.json and the variant run)
        assert v["metrics"]["fid_n_synthetic"] == len(used) and v["metrics"]["fid_n_real"] >= 2
        assert logged["fid_n_synthetic"] == len(used) and v["metrics"]["fid_resize"] == "none: native resolution"
        # precision/recall (k = 3) need more than 3 images on each side: with 3, no number (not a made-up one)
        pr = [v["metrics"].get(k) for k in ("precision", "recall")]
        if len(used) <= 3:
            assert pr == [None, None] and "precision" not in v["metrics_std"]
        else:
            assert all(0.0 <= x <= 1.0 for x in pr) and [logged["precision"], logged["recall"]] == pr
    # the evaluate stage's own record: the real images it scored
    assert len(_entries(bench_workspace, "evaluate")) == 2  # plain, crfm
    for ev in _entries(bench_workspace, "evaluate"):
        scores = json.loads((ev / "evaluator_real.json").read_text())
        assert scores["n_images"] == len(used)
