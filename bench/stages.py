"""The suite's stages: one small plain function each, ``(spec, inputs, out_dir) -> artifacts``.

``spec`` is the node's resolved config (what the cache hash covers) plus ``spec["runtime"]`` (device,
launcher, a resumable ``work_dir``; not hashed). ``inputs`` maps a role (``data``, ``generator``,
``judge``...) to the finished :class:`bench.cache.CachedStage` it depends on. A stage writes only under
``out_dir`` (a temp dir the cache renames into place) and returns JSON values; paths inside
``out_dir`` are stored relative. ``metrics`` are logged to the stage's MLflow child run,
``mlflow_artifacts`` (relative paths) are attached to it.

Heavy imports (torch, diffusers, mmseg) stay inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.grids import sample_grid
from todsynth.data.classes import NUM_CLASSES

SAMPLES_FILE = "samples.json"
# Bump a stage's version when its function changes what it computes: its cache entries (and their
# dependents') are then recomputed. The package version is part of every key as well.
STAGE_VERSIONS: dict[str, int] = {
    "data": 1, "prompts": 1, "autoencoder": 1, "generator": 1, "judge": 1, "evaluator": 1,
    "real_features": 1, "synthesize": 1, "evaluate": 3, "downstream": 1,
}  # evaluate 2: adds evaluator_real_miou (the evaluator on the real images of the synthesized masks); 3: FID/KID's
#   image counts (fid_n_real, fid_n_synthetic) and resize (fid_resize)


AUTOENCODER_METRICS = ("final_l1", "recon_l1", "scaling_factor", "shift_factor", "params", "train_seconds")


# ---------------------------------------------------------------- helpers
def artifact_path(stage: CachedStage, key: str) -> Path:
    """An artifact path of a finished stage: relative ones live in its dir, absolute ones are kept."""
    p = Path(str(stage.artifacts[key]))
    return p if p.is_absolute() else stage.dir / p


def _rank() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when not launched)."""
    import os

    return int(os.environ.get("RANK", "0"))


def _runtime(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(spec.get("runtime") or {"device": "cpu"})


def _progress(spec: dict[str, Any]) -> bool:
    return bool(_runtime(spec).get("progress", False))


def _samples(data: CachedStage, split: str) -> list[Any]:
    """``Sample``s of a split from the data stage's listing (``Train`` or ``Val``)."""
    from todsynth.data.loveda import Sample

    listing = json.loads(artifact_path(data, "samples").read_text())
    root = artifact_path(data, "root")
    return [
        Sample(s["id"], s["domain"], root / s["image"], root / s["mask"] if s.get("mask") else None)
        for s in listing[split]
    ]


def _train(spec: dict[str, Any], data: CachedStage) -> list[Any]:
    """The training ``Sample``s a stage may learn from: the whole split, or the labelled subset in ``spec["subset"]``."""
    samples = _samples(data, "Train")
    sub = spec.get("subset")
    if sub is None:
        return samples
    from todsynth.data.subset import DRAW_RULE, labelled_subset

    if sub["rule"] != DRAW_RULE:
        raise ValueError(f"subset rule {sub['rule']!r} is not this version's {DRAW_RULE!r}")
    return labelled_subset(samples, sub["n"], sub["seed"])


def _domains(data: CachedStage) -> list[str]:
    return list(data.marker["spec"]["domains"])


class LazyEncoder:
    """A prompt encoder built on first ``encode``: reading cached prompts only needs its ``name``.

    Later stages read the prompts stage's cache without loading CLIP/T5 (gigabytes for SD3); a miss
    (a prompt not seen at the prompts stage) builds the real encoder, which must carry the same name.
    """

    def __init__(self, name: str, build: Callable[[], Any]) -> None:
        self.name = name
        self._build = build
        self._encoder: Any = None

    def encode(self, prompts: list[str]) -> Any:
        """Encode with the real encoder (built now if needed)."""
        if self._encoder is None:
            self._encoder = self._build()
            if self._encoder.name != self.name:
                raise ValueError(f"prompt encoder is now {self._encoder.name!r}, the cache was written by {self.name!r}")
        return self._encoder.encode(prompts)


def _build_encoder(spec: dict[str, Any], device: str) -> Any:
    """The prompts stage's encoder from its spec (the preset's ``text`` config, SD3 dir for ``sd3``)."""
    from todsynth.text import build_prompt_encoder

    text = dict(spec["text"])
    kind = text.pop("kind")
    kw = {"sd3_dir": spec["sd3_dir"], "device": device, **text} if kind == "sd3" else text
    return build_prompt_encoder(kind, **kw)


def _prompt_cache(prompts: CachedStage, device: str) -> Any:
    """The prompt cache written by the ``prompts`` stage (its encoder built lazily, only on a miss)."""
    from todsynth.text import PromptCache

    spec = prompts.marker["spec"]
    encoder = LazyEncoder(prompts.artifacts["encoder_name"], lambda: _build_encoder(spec, device))
    return PromptCache(artifact_path(prompts, "cache"), encoder)


def _crop(size: int | None) -> tuple[int, int] | None:
    return (size, size) if size else None


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


# ---------------------------------------------------------------- stages
def stage_data(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Procedural scenes (written here) or a validated LoveDA root (listed): ``samples.json`` per split."""
    from todsynth.data.loveda import list_samples

    skip: dict[Path, str] | None = None
    if spec["kind"] == "procedural":
        from todsynth.data.procedural import generate_dataset

        p = spec["procedural"]
        root = generate_dataset(out_dir / "data", p["n_train"], p["n_val"], p["size"], p["seed"])
    else:
        from todsynth.data.validate import validate_dataset
        from todsynth.errors import DataValidationError

        root = Path(spec["root"])
        problems = validate_dataset(root)
        skip = bad_sample_files(root, problems) if spec.get("on_bad_sample") == "skip" else None
        if problems and skip is None:
            shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
            hint = "fix or remove the files, or set dataset.on_bad_sample: skip"
            raise DataValidationError(f"dataset.root {root}: {shown}; {hint} (`todsynth data validate {root}` lists all)",
                                      problems)
    skip = skip or {}
    for path, reason in skip.items():  # one warning line per skipped file (also kept in skipped.json)
        print(f"warning: skipping bad sample {path}: {reason}", file=sys.stderr)
    listing: dict[str, list[dict[str, Any]]] = {}
    for split in ("Train", "Val"):
        listing[split] = [
            {"id": s.id, "domain": s.domain, "image": s.image_path.relative_to(root).as_posix(),
             "mask": s.mask_path.relative_to(root).as_posix() if s.mask_path else None}
            for s in list_samples(root, split, spec["domains"], skip=set(skip))
        ]
    out: dict[str, Any] = {
        "root": root,
        "samples": _write_json(out_dir / SAMPLES_FILE, listing),
        "metrics": {"n_train": len(listing["Train"]), "n_val": len(listing["Val"]), "skipped_samples": len(skip)},
    }
    if skip:
        out["skipped"] = _write_json(out_dir / "skipped.json", {str(p): r for p, r in skip.items()})
    return out


def bad_sample_files(root: Path, problems: list[str]) -> dict[Path, str]:
    """Faulty file -> reason from ``validate_dataset`` problems; raises when a problem is not about one file.

    Directory-level problems (missing images/masks folder, no LoveDA layout) cannot be skipped.
    """
    from todsynth.errors import DataValidationError

    bad: dict[Path, str] = {}
    for problem in problems:
        head, _, reason = problem.partition(": ")
        path = Path(head)
        if path.suffix.lower() != ".png":
            raise DataValidationError(f"dataset.root {root}: {problem} (not a single sample: cannot be skipped)")
        bad[path] = reason
    return bad


def stage_prompts(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Vectorize every training mask's prompt and the empty prompt once (safetensors per prompt)."""
    from todsynth.data.classes import prompt_for_labels, reduce_labels
    from todsynth.data.loveda import read_raw_mask
    from todsynth.text import PromptCache

    encoder = _build_encoder(spec, _runtime(spec)["device"])
    prompts = sorted({prompt_for_labels(reduce_labels(read_raw_mask(s.mask_path))) for s in _samples(inputs["data"], "Train")})
    prompts.append("")
    cache = PromptCache(out_dir / "cache", encoder)
    cache.get(prompts)
    return {
        "cache": out_dir / "cache",
        "encoder_name": encoder.name,
        "prompts": _write_json(out_dir / "prompts.json", prompts),
        "metrics": {"n_prompts": len(prompts)},
    }


def stage_autoencoder(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """The autoencoder of a scratch preset: a VAE trained on the real training images, or a fixed transform
    (space-to-depth) whose latent scaling alone is fitted on them."""
    from todsynth.data.loveda import LoveDA
    from todsynth.models.presets import resolve_preset
    from todsynth.train import train_vae

    preset = resolve_preset(spec["preset"], spec["overrides"])
    budget = {**(preset.get("vae_train") or {}), **{k: v for k, v in spec["train"].items() if v is not None}}
    data = inputs["data"]
    dataset = LoveDA(artifact_path(data, "root"), "Train", _domains(data), samples=_train(spec, data))
    kw = {"kl_weight": budget["kl_weight"]} if budget.get("kl_weight") is not None else {}
    vae_dir = train_vae(dataset, preset["vae"], out_dir / "vae", steps=budget["steps"], batch_size=budget["batch_size"],
                        lr=budget["lr"], seed=budget["seed"], image_size=preset["image_size"],
                        progress=_progress(spec), **kw)
    metrics = {}
    summary = Path(vae_dir) / "train_summary.json"
    if summary.is_file():  # outcomes only: the settings (steps, lr, seed, batch size) are the stage run's params
        metrics = {k: v for k, v in json.loads(summary.read_text()).items() if k in AUTOENCODER_METRICS}
    return {"vae": Path(vae_dir), "metrics": metrics,
            "mlflow_artifacts": [str(summary.relative_to(out_dir))] if summary.is_file() else []}


def stage_generator(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Train the mask-conditioned MM-DiT (flow matching); checkpoints in a resumable work dir."""
    from todsynth.data.loveda import LoveDA
    from todsynth.train import TrainConfig, train_generator

    rt = _runtime(spec)
    overrides = dict(spec["overrides"])
    if spec.get("sd3_dir"):
        overrides["source"] = spec["sd3_dir"]
    fields = {k: v for k, v in spec["train"].items() if v is not None}
    vae_dir = str(artifact_path(inputs["autoencoder"], "vae")) if "autoencoder" in inputs else None
    cfg = TrainConfig.from_preset(spec["preset"], preset_overrides=overrides, vae_dir=vae_dir, **fields)
    data = inputs["data"]
    dataset = LoveDA(artifact_path(data, "root"), "Train", _domains(data), samples=_train(spec, data))
    # Checkpoints go to a work dir keyed by the stage hash (not the temp dir), so a killed run resumes.
    work = Path(rt.get("work_dir") or out_dir / "work")
    gen_dir = train_generator(cfg, dataset, _prompt_cache(inputs["prompts"], rt["device"]), work,
                              resume=True, progress=_progress(spec))
    if _rank() != 0:  # accelerate: every rank trains, rank 0 publishes
        return {}
    shutil.copytree(gen_dir, out_dir / "generator")
    metrics: dict[str, Any] = {}
    for name in ("train_summary.json", "log.jsonl"):
        if (work / name).is_file():
            shutil.copy(work / name, out_dir / name)
    if (out_dir / "train_summary.json").is_file():
        summary = json.loads((out_dir / "train_summary.json").read_text())
        metrics = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if work != out_dir / "work":
        shutil.rmtree(work, ignore_errors=True)
    return {"generator": out_dir / "generator", "metrics": metrics,
            "mlflow_artifacts": [n for n in ("train_summary.json",) if (out_dir / n).is_file()]}


def _segmenter(role: str) -> Callable[[dict[str, Any], dict[str, CachedStage], Path], dict[str, Any]]:
    def stage(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
        from todsynth.seg.evaluate import evaluate_segmentor
        from todsynth.seg.io import load_user_checkpoint, save_segmentor
        from todsynth.seg.train import train_segmentor

        if _rank() != 0:
            # todsynth.seg trains on one process (mmengine launcher "none"): under torchrun, rank 0 alone
            # trains, so the stage stays correct; data-parallel MMSeg needs launcher "pytorch" there.
            return {}
        data = inputs["data"]
        val = _samples(data, "Val")
        if spec.get("checkpoint"):
            model = load_user_checkpoint(spec["checkpoint"], spec["model"], trust=spec["trust_checkpoint"])
        else:
            model = train_segmentor(
                spec["model"], _train(spec, data), out_dir / "work", max_iters=spec["iters"],
                batch_size=spec["batch_size"], lr=spec["lr"], seed=spec["seed"], crop_size=_crop(spec["crop_size"]),
                optimizer=spec["optimizer"], progress=_progress(spec),
            )
        save_segmentor(model, spec["model"], out_dir / "model", NUM_CLASSES)
        scores = evaluate_segmentor(model, val) if val else {}
        _write_json(out_dir / "val_scores.json", scores)
        return {
            "model": out_dir / "model",
            "metrics": {f"val_{k}": v for k, v in scores.items() if k in ("miou", "oa", "macc")},
            "mlflow_artifacts": ["val_scores.json"],
        }

    stage.__name__ = f"stage_{role}"
    stage.__doc__ = f"Train (or load) the {role} segmentor on the real training set; score it on real Val."
    return stage


def _load_seg(stage: CachedStage, device: str) -> Any:
    from todsynth.seg.io import load_segmentor

    return load_segmentor(artifact_path(stage, "model"), device=device).eval()


def _extractor(kind: str, weights: str | None, evaluator: CachedStage | None, device: str) -> Any:
    """FID feature extractor: Inception from a local file, or the evaluator's backbone ("segmenter")."""
    from todsynth.metrics.fid import build_extractor

    if kind == "inception":
        return build_extractor("inception", weights=weights, device=device)
    if evaluator is None:
        raise ValueError("the evaluator FID extractor needs the evaluator stage")
    return build_extractor("segmenter", evaluator=_load_seg(evaluator, device), device=device)


def stage_real_features(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """FID/KID reference features of the real training images (computed once, reused by every variant)."""
    from todsynth.metrics.fid import extract_features, save_features

    rt = _runtime(spec)
    extractor = _extractor(spec["extractor"], spec.get("weights"), inputs.get("evaluator"), rt["device"])
    feats = extract_features([s.image_path for s in _samples(inputs["data"], "Train")], extractor)
    meta = {"extractor": getattr(extractor, "name", spec["extractor"]),
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


def source_samples(synth: CachedStage, data: CachedStage) -> list[Any]:
    """The real training ``Sample``s whose masks a synthesize stage generated from (each once, in split order)."""
    used = set()
    for rel in synth.artifacts["copies"]:
        manifest = json.loads((synth.dir / rel / "manifest.json").read_text())
        used |= {(e["domain"], e["id"]) for e in manifest["images"]}
    return [s for s in _samples(data, "Train") if (s.domain, s.id) in used]


def stage_synthesize(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Generate ``round(ratio * n_masks)`` images from the (limited) training masks, CRFM-guided by the judge."""
    from bench.graph import n_synthetic
    from todsynth.models.generator import load_generator
    from todsynth.sample.crfm import CRFMConfig
    from todsynth.sample.sampler import SamplerConfig
    from todsynth.sample.speed import prepare_sampling_run
    from todsynth.sample.synthesize import synthesize
    from todsynth.seg.judge import SegmentorLogits

    rt = _runtime(spec)
    device = rt["device"]
    gen = load_generator(artifact_path(inputs["generator"], "generator"), device=device)
    masks = _train(spec, inputs["data"])
    if spec["limit"] is not None:
        masks = masks[: spec["limit"]]
    total = n_synthetic(spec["ratio"], len(masks))
    cfg = SamplerConfig(**spec["sampling"])
    crfm = CRFMConfig(**spec["crfm"]) if spec["crfm"] else None
    judge = SegmentorLogits(_load_seg(inputs["judge"], device)) if crfm is not None else None
    cfg = prepare_sampling_run(gen, judge, cfg)  # as `bench perf` measures: channels_last; bf16 on CUDA
    cache = _prompt_cache(inputs["prompts"], device)
    copies, seconds, n_images = [], 0.0, 0
    for r in range(math.ceil(total / len(masks))):
        chunk = masks[: min(len(masks), total - r * len(masks))]
        root = out_dir / f"copy-{r}"
        manifest = synthesize(gen, chunk, root, cache, cfg, crfm, judge, seed=1000 * spec["seed"] + r,
                              progress=_progress(spec))
        copies.append(root)
        if "totals" in manifest:  # the merged manifest (rank 0 under accelerate; always when not launched)
            seconds += manifest["totals"]["seconds"]
            n_images += manifest["totals"]["n_images"]
    if _rank() != 0:
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


def stage_evaluate(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Mask fidelity with the EVALUATOR (never the judge), FID/KID against the cached real features.

    ``evaluator_real_miou`` is the evaluator's mIoU on the REAL images of the same masks: the ceiling of
    ``mask_miou`` (a synthetic image can at best be segmented as well as the real one). It is recomputed per
    variant and seed (one evaluator pass over those real images, deterministic), which keeps it cache-correct
    for any ``limit``, ``ratio`` or labelled subset without a stage of its own.
    """
    from todsynth.metrics.fid import extract_features, fid_kid, load_features
    from todsynth.seg.evaluate import evaluate_segmentor
    from todsynth.seg.fidelity import mask_fidelity

    rt = _runtime(spec)
    synth = inputs["synthesize"]
    pairs = synthetic_pairs(synth)
    evaluator = _load_seg(inputs["evaluator"], rt["device"])
    fidelity = mask_fidelity(evaluator, pairs)
    ceiling = evaluate_segmentor(evaluator, source_samples(synth, inputs["data"]))
    feat_spec = inputs["real_features"].marker["spec"]
    extractor = _extractor(feat_spec["extractor"], feat_spec.get("weights"), inputs["evaluator"], rt["device"])
    fake = extract_features([p[0] for p in pairs], extractor)
    real, meta = load_features(artifact_path(inputs["real_features"], "features"))
    fk = fid_kid(real, fake, extractor=meta["extractor"], comparable=meta["comparable"])
    _write_json(out_dir / "fidelity.json", fidelity)
    _write_json(out_dir / "evaluator_real.json", ceiling)
    _write_json(out_dir / "fid.json", fk)
    metrics = {
        "fid": fk["fid"], "kid": fk["kid"], "fid_extractor": fk["fid_extractor"],
        "fid_comparable": fk["fid_comparable"], "fid_n_real": fk["n_real"], "fid_n_synthetic": fk["n_fake"],
        "fid_resize": getattr(extractor, "resize_label", "unknown"),
        "mask_miou": fidelity["miou"], "mask_oa": fidelity.get("oa"), "mask_macc": fidelity.get("macc"),
        "mask_per_class_iou": fidelity.get("per_class_iou", {}),
        "evaluator_real_miou": ceiling["miou"], "n_real_masks": ceiling["n_images"],
        "seconds_per_image": synth.artifacts["metrics"]["seconds_per_image"],
    }
    return {"metrics": metrics, "mlflow_artifacts": ["fidelity.json", "evaluator_real.json", "fid.json"]}


def _freemask(pairs: list[tuple[Path, Path]], judge_stage: CachedStage, margin: float, out_dir: Path,
              device: str) -> tuple[list[Any], dict[str, Any]]:
    """FreeMask-filter synthetic masks with the judge; filtered copies live in ``out_dir/freemask``.

    The masks are copied first: ``filter_masks`` writes beside its input masks, and the synthesize
    stage's cached directory must never change.
    """
    from todsynth.seg.freemask import filter_masks
    from todsynth.seg.judge import SegmentorLogits

    copies = []
    for i, (image, mask) in enumerate(pairs):
        dest = out_dir / "freemask" / f"{i:06d}" / "masks_png" / mask.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask, dest)
        copies.append((image, dest))
    result = filter_masks(SegmentorLogits(_load_seg(judge_stage, device)), copies, margin=margin)
    for _, dest in copies:  # only the filtered copies are needed
        dest.unlink()
    return result.items, result.stats


def stage_downstream(spec: dict[str, Any], inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Train the downstream segmentor on real (+ synthetic, FreeMask-filtered) data; score on real Val."""
    from todsynth.seg.evaluate import evaluate_segmentor
    from todsynth.seg.io import save_segmentor
    from todsynth.seg.train import train_segmentor

    if _rank() != 0:  # see _segmenter: rank 0 alone trains under torchrun
        return {}
    rt = _runtime(spec)
    data = inputs["data"]
    real = _train(spec, data)
    val = _samples(data, "Val")
    if spec["val_limit"] is not None:
        val = val[: spec["val_limit"]]
    items: list[Any] = list(real)
    repeat: list[float] | None = None
    kept = None
    if "synthesize" in inputs:
        from todsynth.seg.downstream import downstream_items

        synth = synthetic_pairs(inputs["synthesize"])
        if spec.get("freemask"):
            synth, freemask_stats = _freemask(synth, inputs["judge"], spec["freemask"]["margin"], out_dir, rt["device"])
            _write_json(out_dir / "freemask.json", freemask_stats)
            kept = 1.0 - freemask_stats["filtered_fraction_total"]
        items, repeat = downstream_items(real, synth, spec["ratio"])
    model = train_segmentor(
        spec["model"], items, out_dir / "work", max_iters=spec["iters"], batch_size=spec["batch_size"], lr=spec["lr"],
        seed=spec["seed"], crop_size=_crop(spec["crop_size"]), repeat_factors=repeat,
        optimizer=spec["optimizer"], progress=_progress(spec),
    )
    save_segmentor(model, spec["model"], out_dir / "model", NUM_CLASSES)
    scores = evaluate_segmentor(model, val)
    per_class = scores["per_class_iou"]
    (out_dir / "per_class_iou.csv").write_text(
        "class,iou\n" + "".join(f"{k},{v!r}\n" for k, v in per_class.items()))
    metrics: dict[str, Any] = {
        "downstream_miou": scores["miou"], "downstream_oa": scores["oa"], "downstream_macc": scores["macc"],
        "per_class_iou": per_class, "n_train_items": len(items), "n_val": len(val),
    }
    if kept is not None:
        metrics["freemask_kept_fraction"] = kept
    return {"model": out_dir / "model", "metrics": metrics, "mlflow_artifacts": ["per_class_iou.csv"]}


STAGES: dict[str, Callable[[dict[str, Any], dict[str, CachedStage], Path], dict[str, Any]]] = {
    "data": stage_data,
    "prompts": stage_prompts,
    "autoencoder": stage_autoencoder,
    "generator": stage_generator,
    "judge": _segmenter("judge"),
    "evaluator": _segmenter("evaluator"),
    "real_features": stage_real_features,
    "synthesize": stage_synthesize,
    "evaluate": stage_evaluate,
    "downstream": stage_downstream,
}
