"""``todsynth bench check-conditioning | check-crfm``: the acceptance checks outside suites (:mod:`bench.checks`).

Plain command functions; ``cli.py`` registers them on ``bench_app``. Imports :mod:`bench.cli.common` and (inside
the commands) ``bench.checks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: F401  (Optional used by typer signatures)

import typer
from rich.markup import escape

from bench.cli.common import err_console, out_folder, positive


def bench_check_conditioning(
    work_dir: Annotated[Path, typer.Argument(help="Work dir: stage cache (cache/), prompt vectors, results/<hash>/.",
                                             callback=out_folder)],
    preset: Annotated[str, typer.Option("--preset", help="Generator preset.")] = "tiny",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Preset override key.path=value, e.g. train.steps=800 or transformer.num_layers=4; repeatable.")] = None,
    n_train: Annotated[int, typer.Option("--n-train", min=1, help="Procedural Train scenes.")] = 400,
    n_val: Annotated[int, typer.Option("--n-val", min=1, help="Procedural Val scenes.")] = 64,
    masks: Annotated[int, typer.Option("--masks", help="Masks sampled (true and shuffled).")] = 16,
    mask_split: Annotated[str, typer.Option("--mask-split", help="Train | Val (Val: held out from generator training).")] = "Val",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Euler steps (the smoke suite's).")] = 12,
    guidance: Annotated[float, typer.Option("--guidance", help="CFG scale (1 = off; the negative is the empty prompt); default: the smoke suite's.")] = 1.5,
    mask_guidance: Annotated[bool, typer.Option("--mask-guidance/--no-mask-guidance", help="The CFG negative has no mask either (the tiny preset trains with train.mask_dropout for it); default: the smoke suite's.")] = True,
    evaluator: Annotated[str, typer.Option("--evaluator", help="The instrument (smoke's evaluator: dcnn, 500 it).")] = "dcnn",
    evaluator_iters: Annotated[int, typer.Option("--evaluator-iters", min=1, help="Evaluator training iterations.")] = 500,
    evaluator_lr: Annotated[float, typer.Option("--evaluator-lr", callback=positive, help="AdamW peak LR of the evaluator.")] = 2e-3,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads (default: torch's).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain output, no progress bars.")] = False,
) -> None:
    """Does the generator draw its mask? Evaluator mIoU of samples from true vs shuffled masks (one JSON line)."""
    import json

    from bench.checks.conditioning import measure_conditioning, parse_overrides

    if threads:
        import torch

        torch.set_num_threads(threads)
    result = measure_conditioning(
        work_dir, preset=preset, overrides=parse_overrides(set_ or []), n_train=n_train, n_val=n_val, n_masks=masks,
        mask_split=mask_split, num_inference_steps=steps, evaluator=evaluator, evaluator_iters=evaluator_iters,
        evaluator_lr=evaluator_lr, guidance_scale=guidance, mask_guidance=mask_guidance, progress=not no_progress,
        log=lambda line: err_console.print(f"[dim]{escape(line)}[/]", highlight=False, soft_wrap=True),
    )
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "run_dir"}, default=str))
    err_console.print(f"results: {result['run_dir']}", highlight=False, soft_wrap=True)


def bench_check_crfm(
    generator: Annotated[Path, typer.Option("--generator", help="save_generator dir (a workspace's cache/generator/*/generator).")],
    judge: Annotated[Path, typer.Option("--judge", help="save_segmentor dir of the CRFM judge.")],
    evaluator: Annotated[Path, typer.Option("--evaluator", help="save_segmentor dir of the independent evaluator.")],
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root whose masks are sampled.")],
    split: Annotated[str, typer.Option("--split", help="Train | Val.")] = "Val",
    masks: Annotated[int, typer.Option("--masks", help="Masks sampled per setting.")] = 64,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Euler steps.")] = 12,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (the same for every setting).")] = 0,
    guidance: Annotated[float, typer.Option("--guidance", help="CFG scale (1 = off; the negative is the empty prompt); default: the smoke suite's.")] = 1.5,
    mask_guidance: Annotated[bool, typer.Option("--mask-guidance/--no-mask-guidance", help="The CFG negative has no mask either; default: the smoke suite's.")] = True,
    scorer: Annotated[list[Path] | None, typer.Option("--scorer", help="Another save_segmentor dir to score with (e.g. one the settings were not chosen with); repeatable.")] = None,
    setting: Annotated[list[str] | None, typer.Option("--setting", help="CRFMConfig fields as YAML; repeatable (default: the paper's three).")] = None,
    prompt_cache: Annotated[Path | None, typer.Option("--prompt-cache", help="PromptCache dir (default: a temporary one).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads (default: torch's).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain output, no progress spinner.")] = False,
) -> None:
    """CRFM settings vs plain sampling, same seeds: evaluator, judge and scorers' mIoU (one JSON line per setting)."""
    import json
    from contextlib import nullcontext

    from bench.checks.crfm import check_crfm

    if threads:
        import torch

        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    with nullcontext() if no_progress else err_console.status("check-crfm: loading") as status:
        def on_row(row: dict[str, Any]) -> None:
            rows.append(row)
            if status is not None:
                status.update(f"check-crfm: {len(rows)} setting(s) scored, sampling the next")

        check_crfm(generator, judge, evaluator, data, split=split, n_masks=masks, steps=steps, seed=seed,
                   guidance_scale=guidance, mask_guidance=mask_guidance,
                   scorers=scorer or [], settings=setting or [], prompt_cache=prompt_cache, on_row=on_row)
    for row in rows:
        typer.echo(json.dumps(row))
