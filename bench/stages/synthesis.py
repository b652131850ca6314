"""The per-variant stages around the generator, and the readers of a synthesize stage's output.

The stages are ``real_features`` (FID/KID reference, once), ``synthesize`` (images from the training masks,
CRFM-guided by the judge) and ``evaluate`` (mask fidelity with the evaluator, FID/KID, precision/recall; of a
synthesize stage's images or of a rerender ceiling's); the readers are :func:`synthetic_pairs`,
:func:`source_samples` and, for the images a rerender ceiling's downstream stage paints (:func:`rerender_dir`),
:func:`painted_pairs`.

Imports :mod:`bench.stages.common`, :mod:`bench.grids`, :mod:`bench.graph` (``copy_chunks``, lazily) and (lazily)
``todsynth.models``, ``todsynth.sample``, ``todsynth.seg``, ``todsynth.metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.grids import sample_grid
from bench.specs import EvaluateSpec, FeaturesSpec, SynthesizeSpec
from bench.stages.common import (
    artifact_path,
    launch_rank,
    load_seg,
    split_samples,
    stage_prompt_cache,
    train_samples,
    write_json,
)


def _extractor(kind: str, weights: str | None, evaluator: CachedStage | None, device: str) -> Any:
    """FID feature extractor: Inception from a local file, or the evaluator's backbone ("segmenter")."""
    from todsynth.metrics.fid import build_extractor

    if kind == "inception":
        return build_extractor("inception", weights=weights, device=device)
    if evaluator is None:
        raise ValueError("the evaluator FID extractor needs the evaluator stage")
    return build_extractor("segmenter", evaluator=load_seg(evaluator, device), device=device)


def stage_real_features(spec: FeaturesSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """FID/KID reference features of the real training images (computed once, reused by every variant)."""
    from todsynth.metrics.fid import extract_features, save_features

    extractor = _extractor(spec.extractor, spec.weights, inputs.get("evaluator"), spec.runtime.device)
    feats = extract_features([s.image_path for s in split_samples(inputs["data"], "Train")], extractor)
    meta = {"extractor": getattr(extractor, "name", spec.extractor),
            "comparable": bool(getattr(extractor, "comparable", False)), "split": "Train"}
    save_features(out_dir / "features.safetensors", feats, meta)
    return {"features": out_dir / "features.safetensors", "metrics": {"n_real": int(feats.shape[0])}}


def synthetic_pairs(synth: CachedStage) -> list[tuple[Path, Path]]:
    """(image, mask) paths of every image a synthesize stage wrote, in manifest order."""
    pairs = []
    for rel in synth.artifacts["copies"]:
        root = synth.dir / rel
        manifest = json.loads((root / "manifest.json").read_text())
        pairs += [(root / e["image"], root / e["mask"]) for e in manifest["images"]]
    return pairs


def rerender_dir(stage_dir: Path, copy: int) -> Path:
    """Where the rerender ceiling's downstream stage writes painted copy ``copy`` (``images_png``/``masks_png``)."""
    return stage_dir / "rerender" / f"copy-{copy}"


def painted_pairs(stage: CachedStage) -> list[tuple[Path, Path]]:
    """(image, mask) paths of every image a rerender ceiling's downstream stage painted, copy by copy, in id order."""
    from todsynth.data.loveda import IMAGES_DIR, MASKS_DIR

    pairs = []
    for copy in sorted((stage.dir / "rerender").glob("copy-*"), key=lambda p: int(p.name.removeprefix("copy-"))):
        images = sorted((copy / IMAGES_DIR).glob("*.png"), key=lambda p: (len(p.stem), p.stem))
        pairs += [(img, copy / MASKS_DIR / img.name) for img in images]
    return pairs


def source_samples(synth: CachedStage, data: CachedStage) -> list[Any]:
    """The real training ``Sample``s whose masks a synthesize stage generated from (each once, in split order)."""
    used = set()
    for rel in synth.artifacts["copies"]:
        manifest = json.loads((synth.dir / rel / "manifest.json").read_text())
        used |= {(e["domain"], e["id"]) for e in manifest["images"]}
    return [s for s in split_samples(data, "Train") if (s.domain, s.id) in used]


def stage_synthesize(spec: SynthesizeSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Generate ``round(ratio * n_masks)`` images from the (limited) training masks, CRFM-guided by the judge."""
    from bench.graph import copy_chunks
    from todsynth.models.generator import load_generator
    from todsynth.sample.speed import prepare_sampling_run
    from todsynth.sample.synthesize import synthesize
    from todsynth.seg.judge import SegmentorLogits

    device = spec.runtime.device
    gen = load_generator(artifact_path(inputs["generator"], "generator"), device=device)
    masks = train_samples(spec.subset, inputs["data"])
    if spec.limit is not None:
        masks = masks[: spec.limit]
    crfm = spec.crfm
    judge = SegmentorLogits(load_seg(inputs["judge"], device)) if crfm is not None else None
    cfg = prepare_sampling_run(gen, judge, spec.sampling)  # as `bench perf` measures: channels_last; bf16 on CUDA
    cache = stage_prompt_cache(inputs["prompts"], device)
    copies, seconds, n_images = [], 0.0, 0
    for r, chunk in enumerate(copy_chunks(masks, spec.ratio)):
        root = out_dir / f"copy-{r}"
        manifest = synthesize(gen, chunk, root, cache, cfg, crfm, judge, seed=1000 * spec.seed + r,
                              progress=spec.runtime.progress)
        copies.append(root)
        if "totals" in manifest:  # the merged manifest (rank 0 under accelerate; always when not launched)
            seconds += manifest["totals"]["seconds"]
            n_images += manifest["totals"]["n_images"]
    if launch_rank() != 0:
        return {}
    arts: dict[str, Any] = {"copies": copies}
    grid = sample_grid(synthetic_pairs(CachedStage(out_dir, {"artifacts": {"copies": [c.name for c in copies]}})),
                       out_dir / "grid.png")
    arts |= {
        "grid": grid,
        "metrics": {"n_images": n_images, "seconds_per_image": seconds / max(n_images, 1), "n_masks": len(masks)},
        "mlflow_artifacts": ["grid.png"],
    }
    return arts


def stage_evaluate(spec: EvaluateSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Mask fidelity with the EVALUATOR (never the judge); FID/KID, precision/recall against the cached real features.

    The images are a ``synthesize`` stage's, or (input ``downstream``) those a rerender ceiling's downstream stage
    painted: the same measurements of images as good as images can be, each image metric's ceiling.
    ``evaluator_real_miou`` is the evaluator's mIoU on the REAL images of the same masks: the ceiling of
    ``mask_miou`` (a synthetic image can at best be segmented as well as the real one). It is recomputed per
    variant and seed (one evaluator pass over those real images, deterministic), which keeps it cache-correct
    for any ``limit``, ``ratio`` or labelled subset without a stage of its own.
    """
    from todsynth.metrics.fid import extract_features, fid_kid, load_features
    from todsynth.metrics.manifold import precision_recall
    from todsynth.seg.evaluate import evaluate_segmentor
    from todsynth.seg.fidelity import mask_fidelity

    device = spec.runtime.device
    synth = inputs.get("synthesize")
    if synth is not None:
        pairs, sources = synthetic_pairs(synth), source_samples(synth, inputs["data"])
        cost = {"seconds_per_image": synth.artifacts["metrics"]["seconds_per_image"]}
    else:
        pairs, cost = painted_pairs(inputs["downstream"]), {}
        painted = {mask.stem for _, mask in pairs}
        sources = [s for s in split_samples(inputs["data"], "Train") if s.id in painted]
    evaluator = load_seg(inputs["evaluator"], device)
    fidelity = mask_fidelity(evaluator, pairs)
    ceiling = evaluate_segmentor(evaluator, sources)
    feat_spec = inputs["real_features"].marker["spec"]
    extractor = _extractor(feat_spec["extractor"], feat_spec.get("weights"), inputs["evaluator"], device)
    fake = extract_features([p[0] for p in pairs], extractor)
    real, meta = load_features(artifact_path(inputs["real_features"], "features"))
    fk = fid_kid(real, fake, extractor=meta["extractor"], comparable=meta["comparable"])
    fk |= precision_recall(real, fake)
    write_json(out_dir / "fidelity.json", fidelity)
    write_json(out_dir / "evaluator_real.json", ceiling)
    write_json(out_dir / "fid.json", fk)
    metrics = {
        "fid": fk["fid"], "kid": fk["kid"], "fid_extractor": fk["fid_extractor"],
        "fid_comparable": fk["fid_comparable"], "precision": fk["precision"], "recall": fk["recall"],
        "fid_n_real": fk["n_real"], "fid_n_synthetic": fk["n_fake"],
        "fid_resize": getattr(extractor, "resize_label", "unknown"),
        "mask_miou": fidelity["miou"], "mask_oa": fidelity.get("oa"), "mask_macc": fidelity.get("macc"),
        "mask_per_class_iou": fidelity.get("per_class_iou", {}),
        "evaluator_real_miou": ceiling["miou"], "n_real_masks": ceiling["n_images"], **cost,
    }
    return {"metrics": metrics, "mlflow_artifacts": ["fidelity.json", "evaluator_real.json", "fid.json"]}
