"""The ``downstream`` stage: the measure of what the synthetic data is worth.

The segmentor trained on real (+ synthetic, optionally FreeMask-filtered) data and scored on real Val.

Imports :mod:`bench.stages.common`, :mod:`bench.stages.synthesis` (``synthetic_pairs``, ``rerender_dir``) and
(lazily) ``todsynth.seg``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.specs import (
    AddingDownstreamSpec,
    DownstreamSpec,
    MixedDownstreamSpec,
    OracleDownstreamSpec,
    RerenderDownstreamSpec,
)
from bench.stages.common import (
    labelled_samples,
    launch_rank,
    load_seg,
    split_samples,
    square_crop,
    write_json,
)
from bench.stages.synthesis import rerender_dir, synthetic_pairs


def _freemask(pairs: list[tuple[Path, Path]], real: list[Any], judge_stage: CachedStage, margin: float, out_dir: Path,
              device: str) -> tuple[list[Any], dict[str, Any]]:
    """FreeMask-filter synthetic masks with the judge; filtered copies live in ``out_dir/freemask``.

    The thresholds come from the judge's losses on ``real``, the real training images. The masks are copied first:
    ``filter_masks`` writes beside its input masks, and the synthesize stage's cached directory must never change.
    """
    from todsynth.seg.freemask import filter_masks
    from todsynth.seg.judge import SegmentorLogits

    copies = []
    for i, (image, mask) in enumerate(pairs):
        dest = out_dir / "freemask" / f"{i:06d}" / "masks_png" / mask.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask, dest)
        copies.append((image, dest))
    result = filter_masks(SegmentorLogits(load_seg(judge_stage, device)), copies, reference=real, margin=margin)
    for _, dest in copies:  # only the filtered copies are needed
        dest.unlink()
    return result.items, result.stats


def _held_out(spec: OracleDownstreamSpec, pool: list[Any]) -> list[Any]:
    """The oracle's extra real scenes: the ``spec.held_out`` that follow the labelled subset in the draw order.

    ``pool``: the Train split's samples, the subset's draw order's input.
    """
    from todsynth.data.subset import held_out

    if spec.subset is None:
        raise ValueError("the oracle's downstream stage needs a labelled subset (dataset.subsets)")
    if len(pool) <= spec.subset.n:
        raise ValueError(f"the oracle at n={spec.subset.n} has no held-out scene: the training split has "
                         f"{len(pool)} (use smaller dataset.subsets or drop the oracle variant)")
    return held_out(pool, spec.subset.n, spec.held_out, spec.subset.seed)


def _rerendered(spec: RerenderDownstreamSpec, data: CachedStage, real: list[Any], pool: list[Any],
                out_dir: Path) -> list[Any]:
    """The rerender ceiling's images: the (limited) training masks' scenes painted anew, as many as synthesis makes.

    Copy ``r`` (:func:`rerender_dir`) is appearance draw ``spec.first_draw + r`` of the first masks, as synthesis
    fills its copies. ``pool``: the Train split's samples (where the masks' scene indices come from).
    """
    from bench.graph import copy_chunks
    from todsynth.data.procedural import rerender_samples

    proc = data.marker["spec"].get("procedural")
    if not proc:
        raise ValueError("the rerender variant needs procedural data (dataset.kind: procedural)")
    masks = real if spec.limit is None else real[: spec.limit]
    pairs: list[Any] = []
    for r, chunk in enumerate(copy_chunks(masks, spec.ratio)):
        pairs += rerender_samples(chunk, pool, int(proc["seed"]), int(proc["size"]), spec.first_draw + r,
                                  rerender_dir(out_dir, r))
    return pairs


def stage_downstream(spec: DownstreamSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Train the downstream segmentor on real (+ synthetic, FreeMask-filtered, or + a ceiling's) data; score on Val.

    :func:`todsynth.seg.downstream.run_downstream` trains and scores (its files in ``out_dir``: ``model/``,
    ``train_log.json``, ``scores.json``).
    """
    from todsynth.seg.downstream import run_downstream

    if launch_rank() != 0:  # see bench.stages.models: rank 0 alone trains under torchrun
        return {}
    data = inputs["data"]
    pool = split_samples(data, "Train")
    real = labelled_samples(spec.subset, pool)
    val = split_samples(data, "Val")
    if spec.val_limit is not None:
        val = val[: spec.val_limit]
    added: list[Any] = []
    kept = None
    extra: dict[str, Any] = {}
    if isinstance(spec, OracleDownstreamSpec):
        added = _held_out(spec, pool)
        extra["n_held_out"] = len(added)
    elif isinstance(spec, RerenderDownstreamSpec):
        added = _rerendered(spec, data, real, pool, out_dir)
        extra["n_rerendered"] = len(added)
    elif isinstance(spec, MixedDownstreamSpec):
        added = synthetic_pairs(inputs["synthesize"])
        if spec.freemask is not None:
            added, freemask_stats = _freemask(added, real, inputs["judge"], spec.freemask.margin, out_dir,
                                              spec.runtime.device)
            write_json(out_dir / "freemask.json", freemask_stats)
            kept = 1.0 - freemask_stats["filtered_fraction_total"]
    scores = run_downstream(
        spec.model, real, added, val, out_dir, ratio=spec.ratio if isinstance(spec, AddingDownstreamSpec) else 1.0,
        iters=spec.iters, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
        crop_size=square_crop(spec.crop_size), optimizer=spec.optimizer, progress=spec.runtime.progress,
    )
    per_class = scores["per_class_iou"]
    (out_dir / "per_class_iou.csv").write_text(
        "class,iou\n" + "".join(f"{k},{v!r}\n" for k, v in per_class.items()))
    metrics: dict[str, Any] = {
        "downstream_miou": scores["miou"], "downstream_oa": scores["oa"], "downstream_macc": scores["macc"],
        "per_class_iou": per_class, "n_train_items": scores["n_real"] + scores["n_synthetic"], "n_val": len(val),
        **extra,
    }
    if kept is not None:
        metrics["freemask_kept_fraction"] = kept
    return {"model": out_dir / "model", "metrics": metrics, "mlflow_artifacts": ["per_class_iou.csv"]}
