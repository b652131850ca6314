"""`todsynth` command line: thin. Parses, calls ``bench`` or ``todsynth``, prints with rich.

Heavy imports (torch, diffusers, mmseg, mlflow, optuna) stay inside the commands so that
``todsynth --help`` is instant. Every :class:`todsynth.errors.TodsynthError` becomes a one-line
message on stderr and exit code 2; no traceback reaches the user for bad input.

This module assembles the app: most commands live in the rooms of :mod:`bench.cli` (one module per group) and are
registered here in the order ``--help`` lists them; ``gen sample``, ``bench tune``, ``bench perf``, ``doctor`` and
``ui`` are defined here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional  # noqa: F401  (Optional used by typer signatures)

import typer

from bench.cli.checks import bench_check_conditioning, bench_check_crfm
from bench.cli.common import (
    SetOpt,
    WorkspaceOpt,
    console,
    err_console,
    fail,
    finite,
    load_suite_or_exit,
    out_file,
    out_folder,
)
from bench.cli.common import suite_file_problems as _suite_file_problems
from bench.cli.data import data_index, data_procedural, data_validate, prompts_vectorize
from bench.cli.gen import gen_train
from bench.cli.seg import seg_eval, seg_models, seg_train
from bench.cli.suites import bench_ls, bench_report, bench_run, bench_validate
from todsynth.sample.config import (  # the sampling options' defaults (a light import)
    CRFMConfig,
    SamplerConfig,
)

if TYPE_CHECKING:
    from todsynth.seg.judge import SegmentorLogits

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


# ---------------------------------------------------------------- data, prompts (bench/cli/data.py)
data_app.command("procedural")(data_procedural)
data_app.command("validate")(data_validate)
data_app.command("index")(data_index)
prompts_app.command("vectorize")(prompts_vectorize)

# ---------------------------------------------------------------- gen
# (section: gen)
gen_app.command("train")(gen_train)  # bench/cli/gen.py


def _sample_device() -> str:
    """This process's device: accelerate's under a multi-process launch, else CUDA when present, else CPU."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return str(PartialState().device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_judge(path: Path, model_name: str, trust: bool, num_classes: int, device: str) -> SegmentorLogits:
    """A frozen differentiable judge from a saved segmentor dir, or a user .pth (weights_only unless trusted).

    Exits with code 2 (:func:`bench.cli.common.fail`) when ``path`` does not exist.
    """
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
    out: Annotated[Path, typer.Option("--out", help="Output root: Train/<domain>/{images_png,masks_png} + manifest.json.",
                                      callback=out_folder)],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Euler steps (release: 28 plain, 23 with CRFM).")] = SamplerConfig.num_inference_steps,
    crfm: Annotated[bool, typer.Option("--crfm", help="Control-rectify the first --rectified-step steps (needs --judge).")] = False,
    rectified_step: Annotated[int, typer.Option("--rectified-step", min=0, help="Rectified leading steps with --crfm.")] = 4,
    max_step_size: Annotated[float, typer.Option("--max-step-size", min=0.0, callback=finite, help="CRFM alpha_max.")] = CRFMConfig.max_step_size,
    step_scheme: Annotated[str, typer.Option("--step-scheme", help="CRFM step sizes: C, LI, LD or cosine.")] = CRFMConfig.step_scheme,
    judge: Annotated[Path | None, typer.Option("--judge", help="Judge segmentor: dir from `todsynth seg train`, or a .pth.")] = None,
    judge_model: Annotated[str, typer.Option("--judge-model", help="Model name of a .pth judge (e.g. deeplabv3plus-r18).")] = "deeplabv3plus-r18",
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling of a .pth judge you trust.")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Run seed; each image's seed derives from it and the sample id.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N training masks.")] = None,
    guidance: Annotated[float, typer.Option("--guidance", callback=finite, help="CFG scale; 1.0 = off (the release's setting).")] = SamplerConfig.guidance_scale,
    mask_guidance: Annotated[bool, typer.Option("--mask-guidance", help="The CFG negative has no mask either (a generator trained with mask_dropout, e.g. the tiny preset).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per transformer call.")] = SamplerConfig.batch_size,
    prompt_cache: Annotated[Path | None, typer.Option("--prompt-cache", callback=out_folder, help="Prompt-embedding cache dir (default: OUT/prompt_cache).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 or bf16 (default: bf16 weights + autocast on CUDA, fp32 on CPU).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the transformer (pays on long runs; first batch compiles).")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Generate one image per real training mask (optionally CRFM-guided) into a LoveDA-layout dataset."""
    from todsynth.data.loveda import list_samples
    from todsynth.models.generator import load_generator
    from todsynth.sample.config import STEP_SCHEMES, rectified_step_problem
    from todsynth.sample.speed import prepare_sampling_run
    from todsynth.sample.synthesize import synthesize
    from todsynth.text import PromptCache, preset_prompt_encoder

    if precision not in (None, "fp32", "bf16"):
        fail(f"--precision {precision!r}: choose fp32 or bf16")
    if step_scheme not in STEP_SCHEMES:
        fail(f"--step-scheme {step_scheme!r} is not one of {', '.join(STEP_SCHEMES)}")
    if crfm and judge is None:
        fail("--crfm needs --judge (a segmentor trained on the same real training set)")
    if crfm and (why := rectified_step_problem(rectified_step, steps, "--steps")):
        fail(f"--rectified-step {why}")
    if guidance < 1.0:
        fail(f"--guidance {guidance} must be >= 1.0 (1.0 = CFG off)")
    if out.resolve() == data.resolve():
        fail(f"--out {out} is the --data root: the synthetic images would overwrite the real ones; give another folder")
    device = _sample_device()
    gen = load_generator(generator, device=device)
    samples = list_samples(data, "Train")
    samples = samples[:limit] if limit else samples
    encoder = preset_prompt_encoder(gen.config.get("text"), sd3_dir=gen.config["source"], device=device)
    cache = PromptCache(prompt_cache or out / "prompt_cache", encoder)
    cfg = SamplerConfig(num_inference_steps=steps, guidance_scale=guidance, mask_guidance=mask_guidance, batch_size=batch_size)
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


# ---------------------------------------------------------------- seg (bench/cli/seg.py)
seg_app.command("models")(seg_models)
seg_app.command("train")(seg_train)
seg_app.command("eval")(seg_eval)

# ---------------------------------------------------------------- bench
# (section: bench)
bench_app.command("validate")(bench_validate)  # validate, run, ls, report: bench/cli/suites.py
bench_app.command("run")(bench_run)


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
    from bench.suites import SuiteError
    from bench.tune import TuneOptions, summary_tables, tune_suite

    sets = list(set_ or [])
    if tracking_uri:
        sets.append(f"tracking.uri={tracking_uri}")
    if sampler is not None and sampler not in ("tpe", "gp", "random", "grid", "nsga2"):
        fail(f"--sampler {sampler!r}: choose tpe, gp, random, grid or nsga2")
    s = load_suite_or_exit(suite, sets, workspace)
    try:
        preflight(s)
    except SuiteError as exc:
        _suite_file_problems(exc, suite)
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




bench_app.command("ls")(bench_ls)
bench_app.command("report")(bench_report)


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
    clock: Annotated[str, typer.Option("--clock", help="CPU clock of the sampling rows: wall | cpu (process CPU seconds); CUDA uses events; the train-step, transformer and FID rows are wall time.")] = "wall",
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 | bf16 (default: bf16 on cuda, fp32 on cpu).")] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last", help="NHWC VAE + judge (default: on, on every device).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the transformer (compile time excluded).")] = False,
    judge: Annotated[str | None, typer.Option("--judge", help="Judge segmentor (default: fcn-tiny for tiny, fcn-r18 otherwise).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch intra-op threads (default: torch's, one per core).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.", callback=out_file)] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="Log the report to this MLflow store (e.g. sqlite:///runs/mlflow.db).")] = None,
) -> None:
    """Where the time goes: training step, plain and CRFM sampling (with breakdown), VAE/judge passes, FID, FLOP/s."""
    from rich.markup import escape
    from rich.table import Table

    from bench.perf import PerfConfig, log_perf, perf_rows, perf_tracker, run_perf, write_json

    cfg = PerfConfig(preset=preset, device=device, batch=batch, res=res, steps=steps, rectified=rectified,
                     repeats=repeats, train_batch=train_batch, clock=clock, precision=precision,
                     channels_last=channels_last, compile=compile_, judge=judge, threads=threads)
    tracker = perf_tracker(tracking_uri) if tracking_uri else None  # a bad store is named before measuring
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
    if tracker is not None:
        console.print(f"MLflow run {log_perf(report, tracker, json_out)} in {tracking_uri}", highlight=False,
                      soft_wrap=True)




bench_app.command("check-conditioning")(bench_check_conditioning)  # bench/cli/checks.py
bench_app.command("check-crfm")(bench_check_crfm)


# ---------------------------------------------------------------- ui
# (section: ui)


@app.command("ui")
def ui(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (default loopback only; 0.0.0.0 exposes it).")] = "127.0.0.1",
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Workspace dir holding mlflow.db.")] = Path("runs"),
    workers: Annotated[int, typer.Option("--workers", help="Server worker processes.")] = 1,
    create_store: Annotated[bool, typer.Option("--create-store", help="Start an empty store when the workspace has none (a new shared tracking server).")] = False,
) -> None:
    """MLflow UI + REST API over the workspace store (sqlite:///<ws>/mlflow.db, artifacts <ws>/mlartifacts)."""
    from bench.ui import UIError, UIOutput, serve_ui

    out = UIOutput(say=lambda line: console.print(line, highlight=False, soft_wrap=True),
                   warn=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    try:
        serve_ui(workspace, host=host, port=port, workers=workers, create_store=create_store, out=out)
    except UIError as exc:
        for line in exc.log:  # the server's last log lines explain its failure
            err_console.print(line.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        fail(str(exc), code=exc.code)
    console.print("MLflow UI stopped", highlight=False)


def main() -> None:
    """Console-script entry point: run the app, turning domain errors into exit code 2.

    Nothing is downloaded at run time: every model loads from a local path (``local_files_only=True``), and the
    Hugging Face libraries are told so too (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, unless already set).
    """
    import os

    from todsynth.errors import TodsynthError

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")

    try:
        app()
    except TodsynthError as exc:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
