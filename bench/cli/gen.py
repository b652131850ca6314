"""``todsynth gen train``: the mask-conditioned MM-DiT trained from a LoveDA-layout root.

``gen sample`` stays in ``cli.py``. A plain command function; ``cli.py`` registers it on ``gen_app``. Imports :mod:`bench.cli.common` and (inside the
command) ``todsynth.data``, ``todsynth.models``, ``todsynth.text``, ``todsynth.train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: F401  (Optional used by typer signatures)

import typer

from bench.cli.common import console, fail, out_folder, positive


def gen_train(
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root (Train split is used).")],
    out: Annotated[Path, typer.Option("--out", help="Run dir: vae/, checkpoint-*/, log.jsonl, generator/.",
                                      callback=out_folder)],
    preset: Annotated[str, typer.Option("--preset", help="Generator preset: tiny (scratch, CPU) or sd3.5-medium.")] = "tiny",
    source: Annotated[Path | None, typer.Option("--source", help="Local SD3.5 dir for sd3.5-medium (default: preset / $TODSYNTH_SD3_DIR).")] = None,
    vae: Annotated[Path | None, typer.Option("--vae", help="Trained VAE dir for scratch presets (default: train one into OUT/vae).")] = None,
    vae_steps: Annotated[int | None, typer.Option("--vae-steps", min=1, help="Scratch VAE steps (default: preset's vae_train).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimizer steps (default: preset's budget).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Samples per step and process.")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", min=1, help="Micro-batches per step.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", callback=positive, help="AdamW learning rate.")] = None,
    trainable: Annotated[str | None, typer.Option("--trainable", help="branches (image + mask streams) or lora.")] = None,
    mask_init: Annotated[str | None, typer.Option("--mask-init", help="fresh (zero AdaLN-Zero) or image (copy image stream).")] = None,
    timestep_sampling: Annotated[str | None, typer.Option("--timestep-sampling", help="uniform (release) or logit_normal.")] = None,
    caption_dropout: Annotated[float | None, typer.Option("--caption-dropout", help="Prob. of the empty prompt (for CFG); 1 = never a prompt.")] = None,
    mask_dropout: Annotated[float | None, typer.Option("--mask-dropout", help="Prob. of training without the mask (for mask guidance; drawn with the prompt's); 1 with --caption-dropout 1 = unconditional pretraining.")] = None,
    init_from: Annotated[Path | None, typer.Option("--init-from", help="Start from the transformer weights of a generator dir (e.g. an unconditional pretraining run's OUT/generator).")] = None,
    ema_decay: Annotated[float | None, typer.Option("--ema-decay", help="EMA of the weights (saved as the generator).")] = None,
    mixed_precision: Annotated[str | None, typer.Option("--mixed-precision", help="no, fp16 or bf16 (GPU).")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute blocks in backward.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", min=0, help="Checkpoint every K steps (0 = never).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of all training randomness.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N training samples.")] = None,
    prompt_cache: Annotated[Path | None, typer.Option("--prompt-cache", callback=out_folder, help="Prompt-embedding cache dir (default: OUT/prompt_cache).")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Start over instead of resuming OUT's last checkpoint.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Train the mask-conditioned MM-DiT (flow matching; works under `accelerate launch`)."""
    import json

    from todsynth.data.loveda import LoveDA
    from todsynth.errors import TodsynthError
    from todsynth.models.generator import saved_generator_meta
    from todsynth.models.presets import is_scratch
    from todsynth.text import PromptCache, preset_prompt_encoder
    from todsynth.train import TrainConfig, train_generator
    from todsynth.train.vae import train_preset_vae, vae_budget

    resolved, overrides = _resolve(preset, source)
    dataset = LoveDA(data, "Train")
    if limit:
        dataset = LoveDA(data, "Train", samples=dataset.samples[:limit])
    given = {
        "steps": steps, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr, "trainable": trainable,
        "mask_init": mask_init, "timestep_sampling": timestep_sampling, "caption_dropout": caption_dropout,
        "mask_dropout": mask_dropout, "init_from": str(init_from) if init_from is not None else None,
        "ema_decay": ema_decay, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
        "checkpoint_every": checkpoint_every,
    }
    try:
        cfg = TrainConfig.from_preset(
            preset, preset_overrides=overrides, seed=seed,
            vae_dir=str(vae or out / "vae") if is_scratch(resolved) else None,
            **{k: v for k, v in given.items() if v is not None},
        )
        if init_from is not None:  # before any training: a missing or foreign dir is named at once
            saved_generator_meta(init_from)
    except TodsynthError as exc:
        fail(str(exc))
    if is_scratch(resolved) and vae is None and not (out / "vae" / "config.json").is_file():
        budget = {"steps": vae_steps, "seed": seed}  # the autoencoder stage's function, with this command's budget
        console.print(f"autoencoder ({resolved['vae'].get('kind', 'AutoencoderKL')}; a trainable VAE trains "
                      f"{vae_budget(resolved, budget).get('steps')} steps) -> {out / 'vae'}", highlight=False)
        train_preset_vae(dataset, resolved, out / "vae", budget, progress=not no_progress)
    encoder = preset_prompt_encoder(resolved.get("text"), sd3_dir=resolved.get("source"))
    cache = PromptCache(prompt_cache or out / "prompt_cache", encoder)
    gen_dir = train_generator(cfg, dataset, cache, out, resume=not no_resume, progress=not no_progress)
    summary = json.loads((out / "train_summary.json").read_text()) if (out / "train_summary.json").is_file() else {}
    console.print(
        f"generator -> {gen_dir} ({summary.get('steps')} steps, final loss {summary.get('final_loss', float('nan')):.4f}, "
        f"{summary.get('samples_per_s') or 0:.1f} samples/s, peak RSS {summary.get('peak_rss_mb', 0):.0f} MB)",
        highlight=False,
        soft_wrap=True,
    )


def _resolve(preset: str, source: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved preset and its overrides: ``--source``, else ``$TODSYNTH_SD3_DIR`` for a non-tiny preset."""
    import os

    from todsynth.errors import TodsynthError
    from todsynth.models.presets import resolve_preset

    overrides: dict[str, Any] = {}
    if source is None and os.environ.get("TODSYNTH_SD3_DIR") and preset != "tiny":
        source = Path(os.environ["TODSYNTH_SD3_DIR"])
    if source is not None:
        overrides["source"] = str(source)
    try:
        return resolve_preset(preset, overrides), overrides
    except TodsynthError as exc:
        fail(str(exc))
