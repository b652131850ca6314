"""Train a named MMSeg segmentor on (image, raw mask) pairs with mmengine's iteration-based Runner.

The Runner is given built objects (model, DataLoader, OptimWrapper, PolyLR), not registry strings.
Console output is limited to errors (and an optional rich progress bar); mmengine's full log goes
to ``work_dir/<timestamp>/<timestamp>.log``. ``work_dir/train_log.json`` records the loss per
iteration. mmengine's Runner seeds the global RNGs (``randomness.seed``); we save and restore the
global random/numpy/torch states around training so callers' RNG streams are unaffected.
No mmengine ``.pth`` checkpoint is written: save the returned model with
:func:`todsynth.seg.io.save_segmentor` (safetensors + JSON).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from todsynth.data.classes import CLASSES, NUM_CLASSES, PALETTE
from todsynth.files import atomic_write_bytes
from todsynth.seg.evaluate import evaluate_segmentor
from todsynth.seg.items import SegItem, as_seg_items

if TYPE_CHECKING:
    from torch.utils.data import DataLoader


def _make_hook(max_iters: int, progress: bool) -> Any:
    """An mmengine hook that records each iteration's loss and drives an optional progress bar."""
    from contextlib import ExitStack

    from mmengine.hooks import Hook

    from todsynth.progress import progress_bar

    class RecordHook(Hook):  # type: ignore[misc]  # mmengine ships no types: Hook is Any
        priority = "VERY_LOW"

        def __init__(self) -> None:
            self.losses: list[float] = []
            self._bar = ExitStack()
            self._update: Any = None

        def before_train(self, runner: Any) -> None:
            self._update = self._bar.enter_context(progress_bar("seg train", max_iters, enabled=progress))

        def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
            loss = float(torch.as_tensor(outputs["loss"]).detach()) if outputs and "loss" in outputs else float("nan")
            self.losses.append(loss)
            if self._update is not None:
                self._update(advance=1, loss=loss)

        def after_train(self, runner: Any) -> None:
            self._bar.close()
            self._update = None

    return RecordHook()


def _quiet_console(logger: logging.Logger) -> None:
    """Console shows errors only; the log file in work_dir keeps everything."""
    for h in logger.handlers:
        if type(h) is logging.StreamHandler:
            h.setLevel(logging.ERROR)


def _close_file_handlers(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler):
            h.close()
            logger.removeHandler(h)


def _check_train_inputs(items: Sequence[SegItem], max_iters: int, batch_size: int, lr: float,
                        repeat_factors: Sequence[float] | None, optimizer: str) -> None:
    """Raise ValueError, naming the argument, before any work (see ``train_segmentor``'s Raises)."""
    if not items:
        raise ValueError("train_items is empty")
    if max_iters < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need max_iters >= 1, batch_size >= 1, lr > 0; got {max_iters}, {batch_size}, {lr}")
    if repeat_factors is not None and len(repeat_factors) != len(items):
        raise ValueError(f"repeat_factors has {len(repeat_factors)} entries for {len(items)} items")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer={optimizer!r} is not one of sgd, adamw")


def _train_loader(items: Sequence[SegItem], class_names: Sequence[str], crop_size: tuple[int, int] | None,
                  batch_size: int, seed: int, repeat_factors: Sequence[float] | None,
                  num_workers: int) -> DataLoader[Any]:
    """The endless training DataLoader: MMSeg pipeline over the pairs, epochs by ``repeat_factors`` (None: uniform)."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    from todsynth.seg.mmdata import PairSegDataset, RepeatFactorSampler, train_pipeline

    palette = [list(c) for c in PALETTE] if len(class_names) == len(PALETTE) else None
    metainfo: dict[str, Any] = {"classes": tuple(class_names)}
    if palette is not None:
        metainfo["palette"] = palette
    dataset = PairSegDataset(
        [(str(i.image_path), str(i.mask_path)) for i in items],
        metainfo=metainfo,
        pipeline=train_pipeline(crop_size),
        serialize_data=False,
    )
    # One sampler for every training: equal weights are mmengine's InfiniteSampler, so only the data differ
    sampler = RepeatFactorSampler(dataset, [1.0] * len(items) if repeat_factors is None else repeat_factors, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      persistent_workers=num_workers > 0, collate_fn=pseudo_collate, drop_last=False)


def _optim_schedule(model: nn.Module, optimizer: Literal["sgd", "adamw"], lr: float,
                    max_iters: int) -> tuple[Any, Any]:
    """``(OptimWrapper, PolyLR)``: SGD (momentum 0.9, wd 5e-4) or AdamW (wd 1e-2), poly decay to lr * 1e-2."""
    from mmengine.optim import OptimWrapper, PolyLR

    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    optim_wrapper = OptimWrapper(opt)
    scheduler = PolyLR(optim_wrapper, eta_min=lr * 1e-2, power=0.9, begin=0, end=max_iters, by_epoch=False)
    return optim_wrapper, scheduler


def _build_runner(name: str, model: nn.Module, work_dir: Path, loader: DataLoader[Any], optim_wrapper: Any,
                  scheduler: Any, *, max_iters: int, log_interval: int, seed: int) -> Any:
    """The iteration-based mmengine Runner over built objects, its console limited to errors."""
    from mmengine.runner import Runner

    from todsynth.seg.compat import quiet_mmengine

    class _QuietRunner(Runner):  # type: ignore[misc]  # mmengine ships no types: Runner is Any
        def build_logger(self, log_level: Any = "INFO", log_file: Any = None, **kwargs: Any) -> Any:
            logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
            _quiet_console(logger)
            return logger

    with quiet_mmengine():
        return _QuietRunner(
            model=model,
            work_dir=str(work_dir),
            train_dataloader=loader,
            optim_wrapper=optim_wrapper,
            param_scheduler=[scheduler],
            train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=max_iters + 1),
            default_hooks=dict(
                checkpoint=None,
                logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=False),
            ),
            log_processor=dict(by_epoch=False),
            # unique: mmengine keys its global logger/message hub/visualizer by this name
            experiment_name=f"todsynth-seg-{name}-{uuid.uuid4().hex[:8]}",
            launcher="none",
            # mp_cfg: keep the process's start method for loader workers (mmengine would force fork, and warn in
            # a spawned bench pool process, whose method is spawn)
            env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"),
                         mp_cfg=dict(mp_start_method=multiprocessing.get_start_method(allow_none=True) or "fork")),
            randomness=dict(seed=seed, deterministic=False),
            default_scope="mmseg",
        )


def _run_training(runner: Any, hook: Any) -> tuple[float, float]:
    """Train with ``hook`` registered; closes mmengine's log file even on failure. -> (wall s, CPU s)."""
    runner.register_hook(hook)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        runner.train()
    finally:
        _close_file_handlers(runner.logger)
    return time.perf_counter() - t0, time.process_time() - c0


def train_segmentor(
    name: str,
    train_items: Sequence[Any],
    work_dir: str | Path,
    *,
    max_iters: int,
    batch_size: int,
    lr: float,
    seed: int,
    crop_size: tuple[int, int] | None = None,
    val_items: Sequence[Any] | None = None,
    repeat_factors: Sequence[float] | None = None,
    optimizer: Literal["sgd", "adamw"] = "sgd",
    num_classes: int = NUM_CLASSES,
    class_names: Sequence[str] = CLASSES,
    progress: bool = True,
    log_interval: int = 10,
    num_workers: int = 0,
) -> nn.Module:
    """Train ``name`` (see ``todsynth.seg.models.SEG_MODELS``) for ``max_iters`` iterations; return it in eval mode.

    Args:
        train_items: SegItems (or ``Sample``s / (image, mask) pairs); masks raw LoveDA (0 ignored).
        work_dir: receives mmengine's log dir and ``train_log.json`` (+ ``val_scores.json``).
        max_iters, batch_size, lr, seed: schedule (PolyLR to lr * 1e-2, power 0.9), batch, peak LR, seed.
        crop_size: random crop (h, w) before flipping; None trains on full tiles.
        val_items: if given, the final model is scored on them (``val_scores.json``).
        repeat_factors: per-item sampling weights (same length as ``train_items``): items are drawn in
            proportion to them, in epochs (``todsynth.seg.mmdata.RepeatFactorSampler``). None draws uniformly,
            each item once an epoch. See ``todsynth.seg.downstream.downstream_items`` for the synthetic:real rule.
        optimizer: SGD (momentum 0.9, wd 5e-4; MMSeg's default) or AdamW (wd 1e-2).
        num_workers: DataLoader workers (0 = load in the training process; raise it for 1024 px LoveDA on GPU).

    Raises:
        ValueError: empty training set, non-positive schedule values, or mismatched repeat factors.
    """
    items = as_seg_items(train_items)
    _check_train_inputs(items, max_iters, batch_size, lr, repeat_factors, optimizer)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # Snapshot before the (first-time) heavy imports too: some of them draw from `random`.
    rng_state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        from todsynth.seg.compat import register_mmseg
        from todsynth.seg.models import build_segmentor

        register_mmseg()
        model = build_segmentor(name, num_classes, crop_size=crop_size, seed=seed)
        loader = _train_loader(items, class_names, crop_size, batch_size, seed, repeat_factors, num_workers)
        optim_wrapper, scheduler = _optim_schedule(model, optimizer, lr, max_iters)
        hook = _make_hook(max_iters, progress)
        runner = _build_runner(name, model, work_dir, loader, optim_wrapper, scheduler,
                               max_iters=max_iters, log_interval=log_interval, seed=seed)
        seconds, cpu_seconds = _run_training(runner, hook)
    finally:
        random.setstate(rng_state[0])
        np.random.set_state(rng_state[1])
        torch.set_rng_state(rng_state[2])

    trained: nn.Module = runner.model.module if hasattr(runner.model, "module") else runner.model
    trained.eval()
    log = {
        "model": name, "max_iters": max_iters, "batch_size": batch_size, "lr": lr, "seed": seed,
        "optimizer": optimizer, "crop_size": list(crop_size) if crop_size else None,
        "n_items": len(items), "weighted": repeat_factors is not None and len(set(repeat_factors)) > 1,
        "train_seconds": seconds, "train_cpu_seconds": cpu_seconds, "losses": hook.losses,
    }
    atomic_write_bytes(work_dir / "train_log.json", json.dumps(log, indent=1).encode())
    if val_items:
        scores = evaluate_segmentor(trained, val_items, num_classes=num_classes, class_names=class_names)
        atomic_write_bytes(work_dir / "val_scores.json", json.dumps(scores, indent=1).encode())
    return trained
