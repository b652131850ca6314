"""The model stages: ``autoencoder``, ``generator``, ``judge`` and ``evaluator``.

``autoencoder`` (scratch presets), ``generator`` (the mask-conditioned MM-DiT), and the two segmentors ``judge``
(guides CRFM) and ``evaluator`` (scores; never the judge), trained or loaded.

Imports :mod:`bench.stages.common` and (lazily) ``todsynth.data``, ``todsynth.models``, ``todsynth.train``,
``todsynth.seg``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.specs import AutoencoderSpec, CheckpointSpec, GeneratorStageSpec, SegmenterSpec
from bench.stages.common import (
    artifact_path,
    domains,
    launch_rank,
    split_samples,
    square_crop,
    stage_prompt_cache,
    train_samples,
    write_json,
)
from todsynth.data.classes import NUM_CLASSES

AUTOENCODER_METRICS = ("final_l1", "recon_l1", "scaling_factor", "shift_factor", "params", "train_seconds")


def stage_autoencoder(spec: AutoencoderSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """The autoencoder of a scratch preset.

    A VAE trained on the real training images, or a fixed transform (space-to-depth) whose latent scaling alone is
    fitted on them.
    """
    from todsynth.data.loveda import LoveDA
    from todsynth.models.presets import resolve_preset
    from todsynth.train.vae import train_preset_vae

    preset = resolve_preset(spec.preset, spec.overrides)
    data = inputs["data"]
    dataset = LoveDA(artifact_path(data, "root"), "Train", domains(data), samples=train_samples(spec.subset, data))
    vae_dir = train_preset_vae(dataset, preset, out_dir / "vae", spec.train.model_dump(),
                               progress=spec.runtime.progress)
    metrics = {}
    summary = Path(vae_dir) / "train_summary.json"
    if summary.is_file():  # outcomes only: the settings (steps, lr, seed, batch size) are the stage run's params
        metrics = {k: v for k, v in json.loads(summary.read_text()).items() if k in AUTOENCODER_METRICS}
    return {"vae": Path(vae_dir), "metrics": metrics,
            "mlflow_artifacts": [str(summary.relative_to(out_dir))] if summary.is_file() else []}


def stage_generator(spec: GeneratorStageSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Train the mask-conditioned MM-DiT (flow matching); checkpoints in a resumable work dir."""
    from todsynth.data.loveda import LoveDA
    from todsynth.train import TrainConfig, train_generator

    rt = spec.runtime
    overrides = dict(spec.overrides)
    if spec.sd3_dir:
        overrides["source"] = spec.sd3_dir
    fields = spec.train.model_dump(exclude_none=True)
    vae_dir = str(artifact_path(inputs["autoencoder"], "vae")) if "autoencoder" in inputs else None
    cfg = TrainConfig.from_preset(spec.preset, preset_overrides=overrides, vae_dir=vae_dir, init_from=spec.init_from,
                                  **fields)
    data = inputs["data"]
    dataset = LoveDA(artifact_path(data, "root"), "Train", domains(data), samples=train_samples(spec.subset, data))
    # Checkpoints go to a work dir keyed by the stage hash (not the temp dir), so a killed run resumes.
    work = Path(rt.work_dir or out_dir / "work")
    gen_dir = train_generator(cfg, dataset, stage_prompt_cache(inputs["prompts"], rt.device), work,
                              resume=True, progress=rt.progress)
    if launch_rank() != 0:  # accelerate: every rank trains, rank 0 publishes
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


def _segmenter(spec: SegmenterSpec | CheckpointSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """The judge and evaluator stages' body: train (or load) a segmentor, save it, score it on real Val."""
    from todsynth.seg.evaluate import evaluate_segmentor
    from todsynth.seg.io import load_user_checkpoint, save_segmentor
    from todsynth.seg.train import train_segmentor

    if launch_rank() != 0:
        # todsynth.seg trains on one process (mmengine launcher "none"): under torchrun, rank 0 alone
        # trains, so the stage stays correct; data-parallel MMSeg needs launcher "pytorch" there.
        return {}
    data = inputs["data"]
    val = split_samples(data, "Val")
    if isinstance(spec, CheckpointSpec):
        model = load_user_checkpoint(spec.checkpoint, spec.model, trust=spec.trust_checkpoint,
                                     trust_hint="set trust_checkpoint: true beside this checkpoint in the suite")
    else:
        model = train_segmentor(
            spec.model, train_samples(spec.subset, data), out_dir / "work", max_iters=spec.iters,
            batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed, crop_size=square_crop(spec.crop_size),
            optimizer=spec.optimizer, progress=spec.runtime.progress,
        )
    save_segmentor(model, spec.model, out_dir / "model", NUM_CLASSES)
    scores = evaluate_segmentor(model, val) if val else {}
    write_json(out_dir / "val_scores.json", scores)
    return {
        "model": out_dir / "model",
        "metrics": {f"val_{k}": v for k, v in scores.items() if k in ("miou", "oa", "macc")},
        "mlflow_artifacts": ["val_scores.json"],
    }


def stage_judge(spec: SegmenterSpec | CheckpointSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Train (or load) the judge segmentor on the real training set; score it on real Val."""
    return _segmenter(spec, inputs, out_dir)


def stage_evaluator(spec: SegmenterSpec | CheckpointSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Train (or load) the evaluator segmentor on the real training set; score it on real Val."""
    return _segmenter(spec, inputs, out_dir)
