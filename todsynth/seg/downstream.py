"""Downstream protocol: train a segmentor on real (+ synthetic) data and score it on real Val.

Synthetic:real ratio by sampling weights (``downstream_items``): with ``n_real`` real and ``n_syn``
synthetic images, every real image has weight 1 and every synthetic image weight
``ratio * n_real / n_syn``. Since draws are proportional to weight, the expected number of
synthetic draws is ``ratio`` times the expected number of real draws, whatever the set sizes
(the paper's 3:1 uses ``ratio=3``). Baseline and synthetic variants use the same model, seed,
iterations, batch size, learning rate and sampler (epochs of repeat factors, ``RepeatFactorSampler``), so only
the data differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from todsynth.data.classes import CLASSES, NUM_CLASSES
from todsynth.files import atomic_write_bytes
from todsynth.seg.items import SegItem, as_seg_items


def downstream_items(real_items: Sequence[Any], synthetic_items: Sequence[Any],
                     ratio: float = 3.0) -> tuple[list[SegItem], list[float]]:
    """Real then synthetic items and their sampling weights (rule in the module docstring).

    Raises:
        ValueError: no real items, or ``ratio`` <= 0 while synthetic items are given.
    """
    real = as_seg_items(real_items)
    syn = as_seg_items(synthetic_items)
    if not real:
        raise ValueError("downstream training needs at least one real item")
    if not syn:
        return real, [1.0] * len(real)
    if not ratio > 0:
        raise ValueError(f"ratio (synthetic:real) must be > 0, got {ratio}")
    w_syn = ratio * len(real) / len(syn)
    return real + syn, [1.0] * len(real) + [w_syn] * len(syn)


def run_downstream(
    name: str,
    real_items: Sequence[Any],
    synthetic_items: Sequence[Any],
    val_items: Sequence[Any],
    work_dir: str | Path,
    ratio: float = 3.0,
    iters: int = 200,
    *,
    batch_size: int = 8,
    lr: float = 0.01,
    seed: int = 0,
    crop_size: tuple[int, int] | None = None,
    optimizer: Literal["sgd", "adamw"] = "sgd",
    num_classes: int = NUM_CLASSES,
    class_names: Sequence[str] = CLASSES,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``name`` on real (+ synthetic at ``ratio``) items, score on ``val_items``; real-only if no synthetic.

    Writes ``work_dir/model`` (safetensors + JSON), ``work_dir/train_log.json`` and
    ``work_dir/scores.json``. Returns the evaluation scores plus ``n_real``, ``n_synthetic``,
    ``ratio`` (0 for real-only), ``iters``, ``seed`` and ``train_seconds``.
    """
    from todsynth.seg.evaluate import evaluate_segmentor
    from todsynth.seg.io import save_segmentor
    from todsynth.seg.train import train_segmentor

    if not as_seg_items(val_items):
        raise ValueError("downstream evaluation needs Val items")
    items, weights = downstream_items(real_items, synthetic_items, ratio)
    n_real = len(as_seg_items(real_items))
    n_syn = len(items) - n_real
    work = Path(work_dir)
    model = train_segmentor(
        name, items, work, max_iters=iters, batch_size=batch_size, lr=lr, seed=seed, crop_size=crop_size,
        repeat_factors=weights, optimizer=optimizer, num_classes=num_classes,
        class_names=class_names, progress=progress,
    )
    save_segmentor(model, name, work / "model", num_classes, class_names)
    scores = evaluate_segmentor(model, val_items, num_classes=num_classes, class_names=class_names)
    log = json.loads((work / "train_log.json").read_text())
    scores.update(n_real=n_real, n_synthetic=n_syn, ratio=float(ratio) if n_syn else 0.0, iters=iters,
                  seed=seed, train_seconds=log["train_seconds"])
    atomic_write_bytes(work / "scores.json", json.dumps(scores, indent=1).encode())
    return scores
