"""``todsynth seg``: list, train and score segmentation models (MMSegmentation).

Plain command functions; ``cli.py`` registers them on its Typer apps. Imports :mod:`bench.cli.common` and (inside
the commands) ``todsynth.data``, ``todsynth.seg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: F401  (Optional used by typer signatures)

import typer

from bench.cli.common import console, err_console, fail, out_folder, positive
from todsynth.seg.defaults import SEG_BATCH_SIZE, SEG_DEFAULT_LR, SEG_ITERS, SEG_MODEL, SEG_OPTIMIZER


def _num_classes(seg: Any) -> int:
    """A built segmentor's class count (its MMSeg decode head's)."""
    return int(seg.decode_head.num_classes)


def _print_seg_scores(scores: dict[str, Any], title: str) -> None:
    """Per-class IoU and the summary scores as a rich table (values in %)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("Acc %", justify="right")
    for name, iou in scores["per_class_iou"].items():
        acc = scores["per_class_acc"][name]
        table.add_row(name, "-" if iou != iou else f"{100 * iou:.2f}", "-" if acc != acc else f"{100 * acc:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU[/]", f"[bold]{100 * scores['miou']:.2f}[/]", "")
    table.add_row("OA", f"{100 * scores['oa']:.2f}", "")
    table.add_row("mAcc", f"{100 * scores['macc']:.2f}", "")
    console.print(table)


def seg_models() -> None:
    """List the named segmentation models."""
    from todsynth.seg.models import SEG_MODELS

    for name, builder in SEG_MODELS.items():
        console.print(f"[bold]{name}[/]  {(builder.__doc__ or '').strip().splitlines()[0]}", highlight=False)


def seg_train(
    model: Annotated[str, typer.Option("--model", help="Model name (see `todsynth seg models`).")] = SEG_MODEL,
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root (Train used for training, Val for scores).")] = Path("data"),
    out: Annotated[Path, typer.Option("--out", help="Output dir: model.safetensors + segmentor.json + logs.",
                                      callback=out_folder)] = Path("seg"),
    iters: Annotated[int, typer.Option("--iters", min=1, help="Training iterations.")] = SEG_ITERS,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per iteration.")] = SEG_BATCH_SIZE,
    lr: Annotated[float | None, typer.Option("--lr", callback=positive, help="Peak learning rate (default 0.01 for sgd, 0.001 for adamw).")] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (MMSeg default) or adamw.")] = SEG_OPTIMIZER,
    crop: Annotated[int | None, typer.Option("--crop", min=8, help="Random square crop size (LoveDA: 512).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Training seed.")] = 0,
    no_val: Annotated[bool, typer.Option("--no-val", help="Skip scoring on Val after training.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Train a segmentor on ROOT/Train (MMSeg Runner), save it as safetensors, score it on ROOT/Val."""
    import json

    from todsynth.data.loveda import list_samples
    from todsynth.seg.io import save_segmentor
    from todsynth.seg.models import SEG_MODELS
    from todsynth.seg.train import train_segmentor

    if model not in SEG_MODELS:
        fail(f"--model {model!r} is not one of {', '.join(SEG_MODELS)}")
    if optimizer not in ("sgd", "adamw"):
        fail(f"--optimizer {optimizer!r} is not one of sgd, adamw")
    valid_data(data)
    train_items = list_samples(data, "Train")
    val_items = None if no_val or not (data / "Val").is_dir() else list_samples(data, "Val")
    rate = lr if lr is not None else SEG_DEFAULT_LR[optimizer]
    trained = train_segmentor(
        model, train_items, out, max_iters=iters, batch_size=batch_size, lr=rate, seed=seed,
        crop_size=(crop, crop) if crop else None, val_items=val_items, optimizer=optimizer,  # type: ignore[arg-type]
        progress=not no_progress,
    )
    save_segmentor(trained, model, out, _num_classes(trained))
    log = json.loads((out / "train_log.json").read_text())
    console.print(
        f"[green]trained[/] {model} on {len(train_items)} images, {iters} iterations in {log['train_seconds']:.1f} s; "
        f"saved to {out}", highlight=False, soft_wrap=True,
    )
    if val_items:
        _print_seg_scores(json.loads((out / "val_scores.json").read_text()), f"{model} on {data}/Val ({len(val_items)} images)")


def seg_eval(
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root.")],
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="Dir written by `todsynth seg train`.")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="A user MMSeg .pth (with --model).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name of --checkpoint (see `todsynth seg models`).")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling of a .pth you trust.")] = False,
    split: Annotated[str, typer.Option("--split", help="Split to score (Train or Val).")] = "Val",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
) -> None:
    """Score a segmentor (mIoU, OA, mAcc, per-class IoU) on a LoveDA-layout split."""
    from todsynth.data.loveda import list_samples
    from todsynth.seg.evaluate import evaluate_segmentor

    if (model_dir is None) == (checkpoint is None):
        fail("give exactly one of --model-dir DIR or --checkpoint PATH --model NAME")
    if split not in ("Train", "Val"):
        fail(f"--split {split!r} must be Train or Val (Test has no masks)")
    if checkpoint is not None:
        if model is None:
            fail("--checkpoint needs --model NAME (the architecture the .pth was trained with)")
        from todsynth.seg.io import load_user_checkpoint

        seg = load_user_checkpoint(checkpoint, model, trust=trust_checkpoint)
        label = f"{model} ({checkpoint.name})"
    else:
        from todsynth.seg.io import load_segmentor, read_segmentor_meta

        assert model_dir is not None  # exactly one of the two, checked above
        seg = load_segmentor(model_dir)
        label = f"{read_segmentor_meta(model_dir)['name']} ({model_dir})"
    valid_data(data)
    items = list_samples(data, split)
    n_classes = _num_classes(seg)
    scores = evaluate_segmentor(seg, items, batch_size, num_classes=n_classes, class_names=_class_names(n_classes))
    _print_seg_scores(scores, f"{label} on {data}/{split} ({len(items)} images)")


def valid_data(data: Path) -> None:
    """Exit 2 naming the first files of ``data`` that are not LoveDA-format (:func:`validate_dataset`).

    MMSeg's loader reads what it is given: a grey image was trained on as three equal channels, a 16-bit mask's
    values as labels. The generator's and the suite's data paths refuse such files; the segmentation commands too.
    """
    from todsynth.data.validate import validate_dataset
    from todsynth.errors import first_few

    with err_console.status(f"checking {data}"):
        problems = validate_dataset(data)
    if problems:
        fail(f"--data {data}: {first_few(problems, sep='; ')}; fix or remove the files (`todsynth data validate "
             f"{data}` lists all)")


def _class_names(num_classes: int) -> tuple[str, ...]:
    """LoveDA's names for 7 classes, else class0..classN-1."""
    from todsynth.data.classes import CLASSES

    return CLASSES if num_classes == len(CLASSES) else tuple(f"class{i}" for i in range(num_classes))
