"""`todsynth` command line: thin. Parses, calls ``bench`` or ``todsynth``, prints with rich.

Heavy imports (torch, diffusers, mmseg, mlflow, optuna) stay inside the commands so that
``todsynth --help`` is instant. Every :class:`todsynth.errors.TodsynthError` becomes a one-line
message on stderr and exit code 2; no traceback reaches the user for bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: F401  (Optional used by typer signatures)

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="todsynth",
    help="Benchmark task-oriented data synthesis (mask-conditioned MM-DiT + CRFM) for remote-sensing segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: procedural LoveDA-format scenes, validation, index files.", no_args_is_help=True)
prompts_app = typer.Typer(help="Prompt vectorization (SD3 CLIP-L/G + T5 from a local dir, or the tiny encoder).", no_args_is_help=True)
gen_app = typer.Typer(help="Generator: train the mask-conditioned MM-DiT, sample image/mask pairs (optionally with CRFM).", no_args_is_help=True)
seg_app = typer.Typer(help="Segmentation models (MMSegmentation): train, evaluate.", no_args_is_help=True)
bench_app = typer.Typer(help="Declared suites: validate, run, tune, report, perf; acceptance checks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(prompts_app, name="prompts")
app.add_typer(gen_app, name="gen")
app.add_typer(seg_app, name="seg")
app.add_typer(bench_app, name="bench")


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (2 = bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------- doctor
# (section: foundation)


@app.command("doctor")
def doctor_cmd(
    sd3_dir: Annotated[Path | None, typer.Option("--sd3-dir", help="Local SD3.5 dir (default: $TODSYNTH_SD3_DIR).")] = None,
    inception: Annotated[
        Path | None, typer.Option("--inception", help="Inception weights file (default: $TODSYNTH_INCEPTION_WEIGHTS).")
    ] = None,
    loveda_root: Annotated[
        Path | None, typer.Option("--loveda-root", help="LoveDA root (default: $TODSYNTH_LOVEDA_ROOT).")
    ] = None,
) -> None:
    """Versions, hardware, and whether the local SD3.5 / Inception / LoveDA paths exist (always exit 0)."""
    from rich.table import Table

    from todsynth.doctor import doctor_rows

    colours = {"ok": "green", "missing": "red", "not set": "yellow", "info": "cyan"}
    table = Table(title="todsynth doctor")
    for col in ("item", "value", "status"):
        table.add_column(col, overflow="fold")
    for row in doctor_rows(sd3_dir, inception, loveda_root):
        table.add_row(row.item, row.value, f"[{colours.get(row.status, 'white')}]{row.status}[/]")
    console.print(table)

# ---------------------------------------------------------------- data
# (section: data)


@data_app.command("procedural")
def data_procedural(
    out: Annotated[Path, typer.Argument(help="Output root; gets {Train,Val}/{Urban,Rural}/{images_png,masks_png}.")],
    n_train: Annotated[int, typer.Option("--n-train", help="Train scenes (split Urban/Rural).")] = 16,
    n_val: Annotated[int, typer.Option("--n-val", help="Val scenes (split Urban/Rural).")] = 8,
    size: Annotated[int, typer.Option("--size", help="Tile size in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed writes byte-identical PNGs.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing Train/Val under OUT.")] = False,
) -> None:
    """Write seeded procedural land-cover scenes in LoveDA's exact layout."""
    import time

    from todsynth.data.procedural import generate_dataset

    start = time.perf_counter()
    try:
        generate_dataset(out, n_train, n_val, size, seed, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    console.print(
        f"wrote {n_train} Train + {n_val} Val scenes ({size} px, seed {seed}) to {out} "
        f"in {time.perf_counter() - start:.2f} s"
    )


@data_app.command("validate")
def data_validate(root: Annotated[Path, typer.Argument(help="Dataset root in LoveDA layout.")]) -> None:
    """Check pairing, PNG readability, modes, sizes and mask values; list every problem (exit 2 if any)."""
    from rich.progress import Progress

    from todsynth.data.validate import count_files, validate_dataset

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("validating", total=count_files(root))
        problems = validate_dataset(root, progress=lambda _path: progress.advance(task))
    for problem in problems:
        console.print(f"[red]x[/] {problem}", highlight=False, soft_wrap=True)
    if problems:
        fail(f"{len(problems)} problem(s) in {root}")
    console.print(f"[green]ok[/] {root}: {count_files(root)} images checked", highlight=False, soft_wrap=True)


@data_app.command("index")
def data_index(
    root: Annotated[Path, typer.Argument(help="Dataset root in LoveDA layout.")],
    split: Annotated[str, typer.Option("--split", help="Train or Val (Test has no masks).")] = "Train",
    out: Annotated[
        Path | None, typer.Option("--out", help="Output .jsonl (default ROOT/index.jsonl, ROOT/index_val.jsonl).")
    ] = None,
) -> None:
    """Write index.jsonl: source (mask), target (image), prompt; paths relative to ROOT."""
    from todsynth.data.index import read_index, write_index

    if out is None:
        out = root / ("index.jsonl" if split == "Train" else f"index_{split.lower()}.jsonl")
    try:
        path = write_index(root, split, out)
    except ValueError as exc:
        fail(str(exc))
    entries = read_index(path)
    n_prompts = len({e["prompt"] for e in entries})
    console.print(f"wrote {len(entries)} entries ({n_prompts} distinct prompts) to {path}", highlight=False, soft_wrap=True)

# ---------------------------------------------------------------- prompts
# (section: prompts)


@prompts_app.command("vectorize")
def prompts_vectorize(
    index: Annotated[Path, typer.Argument(help="index.jsonl (from `todsynth data index`).")],
    encoder: Annotated[str, typer.Option("--encoder", help="sd3 (CLIP-L + CLIP-G + T5 from --sd3-dir) or tiny.")],
    sd3_dir: Annotated[Path | None, typer.Option("--sd3-dir", help="Local SD3.5 dir (default: $TODSYNTH_SD3_DIR).")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Cache dir (default: INDEX's dir/prompt_cache).")] = None,
    device: Annotated[str, typer.Option("--device", help="sd3: torch device.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="sd3: float32, float16 or bfloat16.")] = "float32",
    t5_max_length: Annotated[int, typer.Option("--t5-max-length", help="sd3: T5 tokens.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per encoder call.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="tiny: tokens.")] = 16,
    joint_dim: Annotated[int, typer.Option("--joint-dim", help="tiny: embedding width.")] = 64,
    pooled_dim: Annotated[int, typer.Option("--pooled-dim", help="tiny: pooled width.")] = 64,
) -> None:
    """Encode every distinct prompt of INDEX once into a safetensors cache (cached prompts are skipped)."""
    import os

    import torch
    from rich.progress import Progress

    from todsynth.data.index import read_index
    from todsynth.text import ENCODER_KINDS, PromptCache, build_prompt_encoder

    if encoder not in ENCODER_KINDS:
        fail(f"--encoder {encoder!r} is not one of {', '.join(ENCODER_KINDS)}")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        fail(f"--dtype {dtype!r} is not one of {', '.join(dtypes)}")
    if batch_size < 1:
        fail(f"--batch-size must be >= 1, got {batch_size}")
    prompts = list(dict.fromkeys(e["prompt"] for e in read_index(index)))
    if not prompts:
        fail(f"{index} holds no entries")
    if encoder == "sd3":
        sd3_dir = sd3_dir or (Path(os.environ["TODSYNTH_SD3_DIR"]) if os.environ.get("TODSYNTH_SD3_DIR") else None)
        if sd3_dir is None:
            fail("--encoder sd3 needs --sd3-dir DIR (or TODSYNTH_SD3_DIR)")
        kw: dict = {"sd3_dir": sd3_dir, "device": device, "dtype": dtypes[dtype], "t5_max_length": t5_max_length}
    else:
        kw = {"seq_len": seq_len, "joint_dim": joint_dim, "pooled_dim": pooled_dim}
    store = PromptCache(cache or index.parent / "prompt_cache", build_prompt_encoder(encoder, **kw))  # type: ignore[arg-type]
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(f"vectorizing ({store.encoder.name})", total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            store.get(chunk)
            progress.advance(task, len(chunk))
    console.print(
        f"{len(prompts)} distinct prompts: {store.prompts_encoded} encoded, {store.prompts_cached} cached "
        f"-> {store.dir} ({store.encoder.name})",
        highlight=False,
        soft_wrap=True,
    )

# ---------------------------------------------------------------- gen
# (section: gen)


@gen_app.command("train")
def gen_train(
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root (Train split is used).")],
    out: Annotated[Path, typer.Option("--out", help="Run dir: vae/, checkpoint-*/, log.jsonl, generator/.")],
    preset: Annotated[str, typer.Option("--preset", help="Generator preset: tiny (scratch, CPU) or sd3.5-medium.")] = "tiny",
    source: Annotated[Path | None, typer.Option("--source", help="Local SD3.5 dir for sd3.5-medium (default: preset / $TODSYNTH_SD3_DIR).")] = None,
    vae: Annotated[Path | None, typer.Option("--vae", help="Trained VAE dir for scratch presets (default: train one into OUT/vae).")] = None,
    vae_steps: Annotated[int | None, typer.Option("--vae-steps", min=1, help="Scratch VAE steps (default: preset's vae_train).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimizer steps (default: preset's budget).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Samples per step and process.")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", min=1, help="Micro-batches per step.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="AdamW learning rate.")] = None,
    trainable: Annotated[str | None, typer.Option("--trainable", help="branches (image + mask streams) or lora.")] = None,
    mask_init: Annotated[str | None, typer.Option("--mask-init", help="fresh (zero AdaLN-Zero) or image (copy image stream).")] = None,
    timestep_sampling: Annotated[str | None, typer.Option("--timestep-sampling", help="uniform (release) or logit_normal.")] = None,
    caption_dropout: Annotated[float | None, typer.Option("--caption-dropout", help="Prob. of the empty prompt (for CFG).")] = None,
    ema_decay: Annotated[float | None, typer.Option("--ema-decay", help="EMA of the weights (saved as the generator).")] = None,
    mixed_precision: Annotated[str | None, typer.Option("--mixed-precision", help="no, fp16 or bf16 (GPU).")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute blocks in backward.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", min=0, help="Checkpoint every K steps (0 = never).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of all training randomness.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N training samples.")] = None,
    prompt_cache: Annotated[Path | None, typer.Option("--prompt-cache", help="Prompt-embedding cache dir (default: OUT/prompt_cache).")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Start over instead of resuming OUT's last checkpoint.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Train the mask-conditioned MM-DiT (flow matching; works under `accelerate launch`)."""
    import json
    import os

    from todsynth.data.loveda import LoveDA
    from todsynth.errors import TodsynthError
    from todsynth.models.presets import is_scratch, resolve_preset
    from todsynth.text import PromptCache, build_prompt_encoder
    from todsynth.train import TrainConfig, train_generator, train_vae

    overrides: dict = {}
    if source is None and os.environ.get("TODSYNTH_SD3_DIR") and preset != "tiny":
        source = Path(os.environ["TODSYNTH_SD3_DIR"])
    if source is not None:
        overrides["source"] = str(source)
    try:
        resolved = resolve_preset(preset, overrides)
    except TodsynthError as exc:
        fail(str(exc))
    dataset = LoveDA(data, "Train")
    if limit:
        dataset = LoveDA(data, "Train", samples=dataset.samples[:limit])
    given = {
        "steps": steps, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr, "trainable": trainable,
        "mask_init": mask_init, "timestep_sampling": timestep_sampling, "caption_dropout": caption_dropout,
        "ema_decay": ema_decay, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
        "checkpoint_every": checkpoint_every,
    }
    try:
        cfg = TrainConfig.from_preset(
            preset, preset_overrides=overrides, seed=seed,
            vae_dir=str(vae or out / "vae") if is_scratch(resolved) else None,
            **{k: v for k, v in given.items() if v is not None},
        )
    except TodsynthError as exc:
        fail(str(exc))
    if is_scratch(resolved) and vae is None:
        vae = out / "vae"
        if not (vae / "config.json").is_file():
            budget = dict(resolved.get("vae_train") or {})
            if vae_steps is not None:
                budget["steps"] = vae_steps
            console.print(f"autoencoder ({resolved['vae'].get('kind', 'AutoencoderKL')}; a trainable VAE trains "
                          f"{budget.get('steps')} steps) -> {vae}", highlight=False)
            train_vae(dataset, resolved["vae"], vae, steps=budget["steps"], batch_size=budget["batch_size"],
                      lr=budget["lr"], seed=seed, image_size=resolved["image_size"], progress=not no_progress)
    text = dict(resolved.get("text") or {"kind": "tiny"})
    kind = text.pop("kind")
    kw = {"sd3_dir": resolved["source"], **text} if kind == "sd3" else text
    cache = PromptCache(prompt_cache or out / "prompt_cache", build_prompt_encoder(kind, **kw))
    gen_dir = train_generator(cfg, dataset, cache, out, resume=not no_resume, progress=not no_progress)
    summary = json.loads((out / "train_summary.json").read_text()) if (out / "train_summary.json").is_file() else {}
    console.print(
        f"generator -> {gen_dir} ({summary.get('steps')} steps, final loss {summary.get('final_loss', float('nan')):.4f}, "
        f"{summary.get('samples_per_s') or 0:.1f} samples/s, peak RSS {summary.get('peak_rss_mb', 0):.0f} MB)",
        highlight=False,
        soft_wrap=True,
    )


def _sample_device() -> str:
    """This process's device: accelerate's under a multi-process launch, else CUDA when present, else CPU."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return str(PartialState().device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_judge(path: Path, model_name: str, trust: bool, num_classes: int, device: str):  # noqa: ANN202
    """A frozen differentiable judge from a saved segmentor dir, or a user .pth (weights_only unless trusted)."""
    from todsynth.seg.judge import SegmentorLogits

    if path.is_dir():
        from todsynth.seg.io import load_segmentor

        model = load_segmentor(path, device=device)
    elif path.is_file():
        from todsynth.seg.io import load_user_checkpoint

        model = load_user_checkpoint(path, model_name, trust=trust, num_classes=num_classes)
    else:
        fail(f"--judge {path} does not exist (a dir written by `todsynth seg train`, or a .pth with --judge-model)")
    return SegmentorLogits(model.to(device), num_classes=num_classes)


@gen_app.command("sample")
def gen_sample(
    generator: Annotated[Path, typer.Option("--generator", help="Generator dir (written by `todsynth gen train`).")],
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root whose Train masks condition the images.")],
    out: Annotated[Path, typer.Option("--out", help="Output root: Train/<domain>/{images_png,masks_png} + manifest.json.")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Euler steps (release: 28 plain, 23 with CRFM).")] = 28,
    crfm: Annotated[bool, typer.Option("--crfm", help="Control-rectify the first --rectified-step steps (needs --judge).")] = False,
    rectified_step: Annotated[int, typer.Option("--rectified-step", min=0, help="Rectified leading steps with --crfm.")] = 4,
    max_step_size: Annotated[float, typer.Option("--max-step-size", min=0.0, help="CRFM alpha_max.")] = 0.1,
    step_scheme: Annotated[str, typer.Option("--step-scheme", help="CRFM step sizes: C, LI, LD or cosine.")] = "LD",
    judge: Annotated[Path | None, typer.Option("--judge", help="Judge segmentor: dir from `todsynth seg train`, or a .pth.")] = None,
    judge_model: Annotated[str, typer.Option("--judge-model", help="Model name of a .pth judge (e.g. deeplabv3plus-r18).")] = "deeplabv3plus-r18",
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling of a .pth judge you trust.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Run seed; each image's seed derives from it and the sample id.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N training masks.")] = None,
    guidance: Annotated[float, typer.Option("--guidance", help="CFG scale; 1.0 = off (the release's setting).")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per transformer call.")] = 4,
    prompt_cache: Annotated[Path | None, typer.Option("--prompt-cache", help="Prompt-embedding cache dir (default: OUT/prompt_cache).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 or bf16 (default: bf16 weights + autocast on CUDA, fp32 on CPU).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the transformer (pays on long runs; first batch compiles).")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Generate one image per real training mask (optionally CRFM-guided) into a LoveDA-layout dataset."""
    from todsynth.data.loveda import list_samples
    from todsynth.models.generator import load_generator
    from todsynth.sample.crfm import STEP_SCHEMES, CRFMConfig
    from todsynth.sample.sampler import SamplerConfig
    from todsynth.sample.speed import prepare_sampling_run
    from todsynth.sample.synthesize import synthesize
    from todsynth.text import PromptCache, build_prompt_encoder

    if precision not in (None, "fp32", "bf16"):
        fail(f"--precision {precision!r}: choose fp32 or bf16")
    if step_scheme not in STEP_SCHEMES:
        fail(f"--step-scheme {step_scheme!r} is not one of {', '.join(STEP_SCHEMES)}")
    if crfm and judge is None:
        fail("--crfm needs --judge (a segmentor trained on the same real training set)")
    if crfm and rectified_step > steps:
        fail(f"--rectified-step {rectified_step} exceeds --steps {steps}")
    if guidance < 1.0:
        fail(f"--guidance {guidance} must be >= 1.0 (1.0 = CFG off)")
    device = _sample_device()
    gen = load_generator(generator, device=device)
    samples = list_samples(data, "Train")
    samples = samples[:limit] if limit else samples
    text = dict(gen.config.get("text", {"kind": "tiny"}))
    kind = text.pop("kind")
    kw = {"sd3_dir": gen.config["source"], "device": device, **text} if kind == "sd3" else text
    cache = PromptCache(prompt_cache or out / "prompt_cache", build_prompt_encoder(kind, **kw))
    cfg = SamplerConfig(num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size)
    crfm_cfg = CRFMConfig(rectified_step=rectified_step, max_step_size=max_step_size, step_scheme=step_scheme) if crfm else None  # type: ignore[arg-type]
    judge_fn = _load_judge(judge, judge_model, trust_checkpoint, gen.num_classes, device) if crfm and judge else None
    cfg = prepare_sampling_run(gen, judge_fn, cfg, precision=precision, compile=compile_)  # what `bench perf` measures
    manifest = synthesize(gen, samples, out, cache, cfg, crfm_cfg, judge_fn, seed=seed, progress=not no_progress)
    totals = manifest["totals"]
    console.print(
        f"[green]wrote[/] {totals['n_images']} images to {out} ({totals['seconds_per_image']:.2f} s/image"
        f"{f', CRFM {rectified_step}/{steps} steps' if crfm else ''}); manifest: {out / 'manifest.json'}",
        highlight=False, soft_wrap=True,
    )

# ---------------------------------------------------------------- seg
# (section: seg)


def _print_seg_scores(scores: dict, title: str) -> None:
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


@seg_app.command("models")
def seg_models() -> None:
    """List the named segmentation models."""
    from todsynth.seg.models import SEG_MODELS

    for name, builder in SEG_MODELS.items():
        console.print(f"[bold]{name}[/]  {(builder.__doc__ or '').strip().splitlines()[0]}", highlight=False)


@seg_app.command("train")
def seg_train(
    model: Annotated[str, typer.Option("--model", help="Model name (see `todsynth seg models`).")] = "fcn-r18",
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root (Train used for training, Val for scores).")] = Path("data"),
    out: Annotated[Path, typer.Option("--out", help="Output dir: model.safetensors + segmentor.json + logs.")] = Path("seg"),
    iters: Annotated[int, typer.Option("--iters", min=1, help="Training iterations.")] = 200,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per iteration.")] = 8,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default 0.01 for sgd, 0.001 for adamw).")] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (MMSeg default) or adamw.")] = "sgd",
    crop: Annotated[int | None, typer.Option("--crop", min=8, help="Random square crop size (LoveDA: 512).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
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
    train_items = list_samples(data, "Train")
    val_items = None if no_val or not (data / "Val").is_dir() else list_samples(data, "Val")
    rate = lr if lr is not None else (0.01 if optimizer == "sgd" else 1e-3)
    trained = train_segmentor(
        model, train_items, out, max_iters=iters, batch_size=batch_size, lr=rate, seed=seed,
        crop_size=(crop, crop) if crop else None, val_items=val_items, optimizer=optimizer,  # type: ignore[arg-type]
        progress=not no_progress,
    )
    save_segmentor(trained, model, out, trained.decode_head.num_classes)
    log = json.loads((out / "train_log.json").read_text())
    console.print(
        f"[green]trained[/] {model} on {len(train_items)} images, {iters} iterations in {log['train_seconds']:.1f} s; "
        f"saved to {out}", highlight=False, soft_wrap=True,
    )
    if val_items:
        _print_seg_scores(json.loads((out / "val_scores.json").read_text()), f"{model} on {data}/Val ({len(val_items)} images)")


@seg_app.command("eval")
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

        seg = load_segmentor(model_dir)
        label = f"{read_segmentor_meta(model_dir)['name']} ({model_dir})"
    items = list_samples(data, split)
    scores = evaluate_segmentor(seg, items, batch_size, num_classes=seg.decode_head.num_classes,
                                class_names=_class_names(seg.decode_head.num_classes))
    _print_seg_scores(scores, f"{label} on {data}/{split} ({len(items)} images)")


def _class_names(num_classes: int) -> tuple[str, ...]:
    """LoveDA's names for 7 classes, else class0..classN-1."""
    from todsynth.data.classes import CLASSES

    return CLASSES if num_classes == len(CLASSES) else tuple(f"class{i}" for i in range(num_classes))


# ---------------------------------------------------------------- bench
# (section: bench)
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w", help="Workspace dir (default: the suite's, ./runs).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a suite value: key.path=value (YAML scalar); repeatable.")]


def _suite_problems(exc: Exception) -> None:
    """Print each problem of a SuiteError on its own line and exit 2."""
    for problem in getattr(exc, "problems", [str(exc)]):
        err_console.print(f"[bold red]error:[/] {getattr(exc, 'source', 'suite')}: {problem}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@bench_app.command("validate")
def bench_validate(
    suite: Annotated[Path, typer.Argument(help="Suite YAML (e.g. suites/loveda.yaml).")],
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check a suite (schema, key paths, cross-field rules) without creating anything."""
    from bench.graph import build_graph
    from bench.schema import resolve_variants
    from bench.suites import SuiteError, config_hash, load_suite

    try:
        s = load_suite(suite, set_ or [], workspace)
    except SuiteError as exc:
        _suite_problems(exc)
    variants = resolve_variants(s)
    console.print(
        f"[green]ok[/] {s.name} v{s.version}: {len(variants)} variants ({', '.join(v.name for v in variants)}) "
        f"x {len(s.seeds)} seed(s), {len(build_graph(s))} stages, config {config_hash(s)[:12]}",
        highlight=False,
    )


@bench_app.command("run")
def bench_run(
    suite: Annotated[Path | None, typer.Argument(help="Suite YAML; default: the embedded smoke suite.")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="Recompute a stage (name or key) and its dependents; repeatable.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain output, no progress bars.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and list the stage graph (cached or to "
                                          "compute); run nothing, create nothing.")] = False,
) -> None:
    """Run (or resume) a suite: cached stages, MLflow tracking, <workspace>/<suite>/results.json."""
    from bench.engine import plan, preflight, run_suite
    from bench.results import results_table
    from bench.suites import SuiteError, load_suite, resolve_suite_path

    try:
        s = load_suite(suite, set_ or [], workspace)
    except SuiteError as exc:
        _suite_problems(exc)
    try:
        rows = plan(s, force or []) if dry_run else None
        if rows is None:
            preflight(s, force or [])
    except SuiteError as exc:  # name the file, as schema errors do
        exc.source = str(resolve_suite_path(suite))
        _suite_problems(exc)
    if rows is not None:
        _print_plan(s, rows)
        return
    outcome = run_suite(s, force=force or [], progress=not no_progress, console=err_console)
    console.print(results_table(outcome.results))
    console.print(
        f"{len(outcome.computed)} stages computed, {len(outcome.cached)} reused, {outcome.seconds:.1f}s; "
        f"results: {outcome.results_file}; MLflow run {outcome.parent_run_id} in {s.tracking_uri}",
        highlight=False, soft_wrap=True,
    )


def _print_plan(s: Any, rows: list[dict[str, Any]]) -> None:
    """The dry-run table: every stage of the graph in run order, its inputs and whether it would be computed."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{s.name}: {len(rows)} stages (dry run, nothing executed)", box=box.SIMPLE_HEAD)
    for col in ("#", "stage key", "inputs", "status", "hash"):
        table.add_column(col, no_wrap=col != "inputs")
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), escape(r["key"]), escape(", ".join(r["deps"]) or "-"), r["status"], r["hash"][:12])
    console.print(table)
    todo = sum(r["status"] != "cached" for r in rows)
    console.print(f"{todo} to compute, {len(rows) - todo} cached in {s.workspace}", highlight=False, soft_wrap=True)


@bench_app.command("tune")
def bench_tune(
    suite: Annotated[Path, typer.Argument(help="Suite YAML with a `tune:` section (e.g. suites/loveda.yaml).")],
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="Total COMPLETE trials of the study (default tune.n_trials); a rerun adds the missing ones.")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Local worker processes sharing the study.")] = 1,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (postgresql+psycopg2://..., sqlite:///...); default: <workspace>/<suite>/optuna.journal.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: the suite name).")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="tpe | gp | random | grid | nsga2 (default tune.sampler).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI, e.g. http://host:5000 of a shared server (default: the suite's).")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain output, no progress bars.")] = False,
) -> None:
    """Optuna study over the suite's tune.search_space; each trial runs synthesize -> evaluate [-> downstream]."""
    from bench.engine import preflight
    from bench.suites import SuiteError, load_suite
    from bench.tune import TuneOptions, summary_tables, tune_suite

    sets = list(set_ or [])
    if tracking_uri:
        sets.append(f"tracking.uri={tracking_uri}")
    if sampler is not None and sampler not in ("tpe", "gp", "random", "grid", "nsga2"):
        fail(f"--sampler {sampler!r}: choose tpe, gp, random, grid or nsga2")
    try:
        s = load_suite(suite, sets, workspace)
        preflight(s)
    except SuiteError as exc:
        _suite_problems(exc)
    if s.tune is None:
        fail(f"{suite}: the suite has no `tune:` section (add tune.search_space and tune.objectives)")
    opts = TuneOptions(trials=trials, workers=workers, storage=storage, study=study, sampler=sampler,
                       progress=not no_progress)
    outcome = tune_suite(s, opts, console=err_console)
    for table in summary_tables(outcome.summary):
        console.print(table)
    summ = outcome.summary
    console.print(
        f"study {summ['study']}: {summ['n_complete']} complete, {summ['n_fail']} failed, {outcome.seconds:.1f}s; "
        f"tune.json: {outcome.path}; storage {summ['storage']}; MLflow run {summ['mlflow']['parent_run_id']} in "
        f"{summ['mlflow']['tracking_uri']}",
        highlight=False, soft_wrap=True,
    )


@bench_app.command("ls")
def bench_ls(workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Workspace dir.")] = Path("runs")) -> None:
    """Suites run in a workspace, with their invocations and last status."""
    from rich.table import Table

    from bench.workspace import list_suites

    rows = list_suites(workspace)
    if not rows:
        console.print(f"no suite runs in {workspace}")
        return
    table = Table(title=f"suites in {workspace}")
    for col in ("suite", "runs", "last status", "last started", "config", "variants", "results"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["suite"], str(r["runs"]), r["last_status"], r["last_started"], str(r["config_hash"])[:12],
                      str(r["variants"]), r["results"] or "-")
    console.print(table)


@bench_app.command("report")
def bench_report(
    suite: Annotated[Path | None, typer.Argument(help="Suite YAML; default: the embedded smoke suite.")] = None,
    workspace: WorkspaceOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report dir (default: reports/<suite>).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="MLflow run id of the suite run (default: the latest finished).")] = None,
    set_: SetOpt = None,
) -> None:
    """Markdown + HTML comparison report (with CSV, LaTeX, plots, sample grid) of a suite's run, read from MLflow."""
    from bench.report import write_report
    from bench.suites import SuiteError, load_suite

    try:
        s = load_suite(suite, set_ or [], workspace)
    except SuiteError as exc:
        _suite_problems(exc)
    path = write_report(s, out, run_id=run)
    console.print(f"report: {path / 'report.md'} and {path / 'index.html'} (+ results.csv, results.tex)", highlight=False,
                  soft_wrap=True)


@bench_app.command("perf")
def bench_perf(
    preset: Annotated[str, typer.Option("--preset", help="Generator shape: tiny | sd3.5-medium (random init, no checkpoint).")] = "tiny",
    device: Annotated[str, typer.Option("--device", help="cpu | cuda.")] = "cpu",
    batch: Annotated[int | None, typer.Option("--batch", help="Images per sampling call (default: 8 for tiny, 2 for sd3.5-medium).")] = None,
    res: Annotated[int | None, typer.Option("--res", help="Image size in px (default: the preset's).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Euler steps.")] = 23,
    rectified: Annotated[int, typer.Option("--rectified", help="CRFM-rectified leading steps.")] = 4,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed rounds per measurement, after one warm-up.")] = 20,
    train_batch: Annotated[int | None, typer.Option("--train-batch", help="Samples per training step (default: the preset's).")] = None,
    clock: Annotated[str, typer.Option("--clock", help="CPU timing clock: wall | cpu (process CPU seconds); CUDA uses events.")] = "wall",
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 | bf16 (default: bf16 on cuda, fp32 on cpu).")] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last", help="NHWC VAE + judge (default: on for cuda).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the transformer (compile time excluded).")] = False,
    judge: Annotated[str | None, typer.Option("--judge", help="Judge segmentor (default: fcn-tiny for tiny, fcn-r18 otherwise).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch intra-op threads (default: torch's, one per core).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="Log the report to this MLflow store (e.g. sqlite:///runs/mlflow.db).")] = None,
) -> None:
    """Where the time goes: training step, plain and CRFM sampling (with breakdown), VAE/judge passes, FID, FLOP/s."""
    from rich.markup import escape
    from rich.table import Table

    from bench.perf import PerfConfig, log_perf, perf_rows, run_perf, write_json

    cfg = PerfConfig(preset=preset, device=device, batch=batch, res=res, steps=steps, rectified=rectified,
                     repeats=repeats, train_batch=train_batch, clock=clock, precision=precision,
                     channels_last=channels_last, compile=compile_, judge=judge, threads=threads)
    with err_console.status("bench perf") as status:
        report = run_perf(cfg, progress=lambda phase: status.update(f"bench perf: {phase}"))
    table = Table(title=f"todsynth bench perf: {preset} on {device}")
    for col in ("measure", "value (median \\[min .. max])", "note"):
        table.add_column(col)
    for row in perf_rows(report):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    if json_out is not None:
        console.print(f"json: {write_json(report, json_out)}", highlight=False, soft_wrap=True)
    if tracking_uri:
        console.print(f"MLflow run {log_perf(report, tracking_uri, json_out)} in {tracking_uri}", highlight=False, soft_wrap=True)


@bench_app.command("check-conditioning")
def bench_check_conditioning(
    work_dir: Annotated[Path, typer.Argument(help="Work dir: stage cache (cache/), prompt vectors, results/<hash>/.")],
    preset: Annotated[str, typer.Option("--preset", help="Generator preset.")] = "tiny",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Preset override key.path=value, e.g. train.steps=800 or transformer.num_layers=4; repeatable.")] = None,
    n_train: Annotated[int, typer.Option("--n-train", help="Procedural Train scenes.")] = 400,
    n_val: Annotated[int, typer.Option("--n-val", help="Procedural Val scenes.")] = 64,
    masks: Annotated[int, typer.Option("--masks", help="Masks sampled (true and shuffled).")] = 16,
    mask_split: Annotated[str, typer.Option("--mask-split", help="Train | Val (Val: held out from generator training).")] = "Val",
    steps: Annotated[int, typer.Option("--steps", help="Euler steps (the smoke suite's).")] = 12,
    evaluator: Annotated[str, typer.Option("--evaluator", help="The instrument (smoke's evaluator: dcnn, 500 it).")] = "dcnn",
    evaluator_iters: Annotated[int, typer.Option("--evaluator-iters", help="Evaluator training iterations.")] = 500,
    evaluator_lr: Annotated[float, typer.Option("--evaluator-lr", help="AdamW peak LR of the evaluator.")] = 2e-3,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads (default: torch's).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain output, no progress bars.")] = False,
) -> None:
    """Does the generator draw its mask? Evaluator mIoU of samples from true vs shuffled masks (one JSON line)."""
    import json
    import os

    from bench.checks.conditioning import measure_conditioning, parse_overrides

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = measure_conditioning(
        work_dir, preset=preset, overrides=parse_overrides(set_ or []), n_train=n_train, n_val=n_val, n_masks=masks,
        mask_split=mask_split, num_inference_steps=steps, evaluator=evaluator, evaluator_iters=evaluator_iters,
        evaluator_lr=evaluator_lr, progress=not no_progress,
        log=lambda line: err_console.print(f"[dim]{line}[/]", highlight=False, soft_wrap=True),
    )
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "run_dir"}, default=str))
    err_console.print(f"results: {result['run_dir']}", highlight=False, soft_wrap=True)


@bench_app.command("check-crfm")
def bench_check_crfm(
    generator: Annotated[Path, typer.Option("--generator", help="save_generator dir (a workspace's cache/generator/*/generator).")],
    judge: Annotated[Path, typer.Option("--judge", help="save_segmentor dir of the CRFM judge.")],
    evaluator: Annotated[Path, typer.Option("--evaluator", help="save_segmentor dir of the independent evaluator.")],
    data: Annotated[Path, typer.Option("--data", help="LoveDA-layout root whose masks are sampled.")],
    split: Annotated[str, typer.Option("--split", help="Train | Val.")] = "Val",
    masks: Annotated[int, typer.Option("--masks", help="Masks sampled per setting.")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="Euler steps.")] = 12,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (the same for every setting).")] = 0,
    scorer: Annotated[list[Path] | None, typer.Option("--scorer", help="Another save_segmentor dir to score with (e.g. one the settings were not chosen with); repeatable.")] = None,
    setting: Annotated[list[str] | None, typer.Option("--setting", help="CRFMConfig fields as YAML; repeatable (default: the paper's three).")] = None,
    prompt_cache: Annotated[Path | None, typer.Option("--prompt-cache", help="PromptCache dir (default: a temporary one).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads (default: torch's).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain output, no progress spinner.")] = False,
) -> None:
    """CRFM settings vs plain sampling, same seeds: evaluator, judge and scorers' mIoU (one JSON line per setting)."""
    import json
    import os
    from contextlib import nullcontext

    from bench.checks.crfm import check_crfm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
                   scorers=scorer or [], settings=setting or [], prompt_cache=prompt_cache, on_row=on_row)
    for row in rows:
        typer.echo(json.dumps(row))


# ---------------------------------------------------------------- ui
# (section: ui)
UI_START_TIMEOUT_S = 180  # generous: ready after 5.5-7.5 s on 2 busy cores (README "Browsing runs")
UI_LOG_TAIL = 20  # server log lines shown when it fails


@app.command("ui")
def ui(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (default loopback only; 0.0.0.0 exposes it).")] = "127.0.0.1",
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Workspace dir holding mlflow.db.")] = Path("runs"),
    workers: Annotated[int, typer.Option("--workers", help="Server worker processes.")] = 1,
    create_store: Annotated[bool, typer.Option("--create-store", help="Start an empty store when the workspace has none (a new shared tracking server).")] = False,
) -> None:
    """MLflow UI + REST API over the workspace store (sqlite:///<ws>/mlflow.db, artifacts <ws>/mlartifacts)."""
    import collections
    import errno
    import os
    import signal
    import subprocess
    import threading
    import time

    from bench.tracking.server import (
        SERVER_ENV,
        StoreNotFoundError,
        bind_error,
        check_store,
        is_loopback,
        listens_on,
        server_command,
        store_uri,
    )

    if not 0 < port < 65536:
        fail(f"--port {port}: not a TCP port (1-65535)")
    if workers < 1:
        fail(f"--workers {workers}: needs at least 1")
    ws = workspace.expanduser().absolute()
    try:
        check_store(store_uri(ws), ws)
    except StoreNotFoundError as exc:
        if not create_store:
            fail(f"{exc}; --create-store starts an empty one")
        try:
            ws.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file in the way, no permission
            fail(f"--workspace {ws}: {'not a directory' if ws.exists() else err.strerror}")
    if (taken := bind_error(host, port)) is not None:  # before starting: another server would answer our health check
        if taken.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is already in use; choose another with --port")
        fail(f"cannot listen on {host}:{port} ({taken.strerror}); check --host and --port")
    if not is_loopback(host):
        err_console.print(
            f"[bold red]WARNING: binding to {host} exposes the MLflow UI and its REST API to the network, with no "
            "authentication: anyone who can reach this port can read and delete runs. Use --host 127.0.0.1 (default) "
            "and an SSH tunnel unless this network is trusted.[/]", highlight=False, soft_wrap=True)
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard bind is reachable locally here
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"
    proc = subprocess.Popen(server_command(ws, host, port, workers), env={**os.environ, **SERVER_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    console.print(f"MLflow UI for {ws} starting at {url} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
    log: collections.deque[str] = collections.deque(maxlen=UI_LOG_TAIL)
    ready = threading.Event()

    def pump() -> None:  # the server's log is held back until it is ready (its tail explains a failed start), then passed on
        for line in proc.stdout or ():
            log.append(line)
            if ready.is_set():
                sys.stderr.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    stop: list[float] = []

    def forward(signum: int, _frame: object) -> None:  # Ctrl-C / SIGTERM -> the server's whole process group
        stop.append(time.monotonic())
        try:
            os.killpg(proc.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline, late = time.monotonic() + UI_START_TIMEOUT_S, False
    try:
        while proc.poll() is None:
            time.sleep(0.25)
            if stop and time.monotonic() - stop[0] > 10:
                os.killpg(proc.pid, signal.SIGKILL)
            if ready.is_set() or stop:
                continue
            if listens_on(proc.pid, port) and _answers(url + "health"):  # ours listening, not merely someone answering
                link = _landing(url)
                ready.set()  # from here on the server's log is passed on
                console.print(f"[green]ready[/] {link}", highlight=False, soft_wrap=True)
                if link != url:
                    from bench.tracking.server import variants_view_url

                    console.print(f"compare variants: {variants_view_url(link)}", highlight=False, soft_wrap=True)
            elif time.monotonic() > deadline:
                late = True
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:  # whatever the server left in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if stop:
        console.print("MLflow UI stopped", highlight=False)
        return
    if not ready.is_set() or proc.returncode != 0:
        reader.join(timeout=2)
        for line in log:
            err_console.print(line.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        if late:
            fail(f"mlflow server did not listen on port {port} within {UI_START_TIMEOUT_S} s (stopped); its last log lines "
                 "are above", code=1)
        what = "exited before it was ready" if not ready.is_set() else "exited"
        fail(f"mlflow server {what} (exit code {proc.returncode}); its last log lines are above", code=1)
    console.print("MLflow UI stopped", highlight=False)


def _landing(url: str) -> str:
    """The runs table of the newest suite experiment on the server at ``url``, else ``url`` itself."""
    from bench.tracking.server import newest_suite_experiment, runs_view_url

    try:
        exp_id = newest_suite_experiment(url)
    except (OSError, ValueError, KeyError) as err:  # the server is up; only the shortcut is lost
        err_console.print(f"[yellow]note:[/] could not list suite runs ({type(err).__name__}: {err})", highlight=False,
                          soft_wrap=True)
        return url
    return url if exp_id is None else runs_view_url(url, exp_id)


def _answers(url: str) -> bool:
    """True when ``url`` answers a GET within a second."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    """Console-script entry point: run the app, turning domain errors into exit code 2."""
    from todsynth.errors import TodsynthError

    try:
        app()
    except TodsynthError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
