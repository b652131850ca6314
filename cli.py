"""`todsynth` command line: thin. Parses, calls ``bench`` or ``todsynth``, prints with rich.

Heavy imports (torch, diffusers, mmseg, mlflow, optuna) stay inside the commands so that
``todsynth --help`` is instant. Every :class:`todsynth.errors.TodsynthError` becomes a one-line
message on stderr and exit code 2; no traceback reaches the user for bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional  # noqa: F401  (Optional used by typer signatures)

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
bench_app = typer.Typer(help="Declared suites: validate, run, tune, report, perf.", no_args_is_help=True)
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

# ---------------------------------------------------------------- data
# (section: data)

# ---------------------------------------------------------------- prompts
# (section: prompts)

# ---------------------------------------------------------------- gen
# (section: gen)


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
    judge: Annotated[Optional[Path], typer.Option("--judge", help="Judge segmentor: dir from `todsynth seg train`, or a .pth.")] = None,
    judge_model: Annotated[str, typer.Option("--judge-model", help="Model name of a .pth judge (e.g. deeplabv3plus-r18).")] = "deeplabv3plus-r18",
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling of a .pth judge you trust.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Run seed; each image's seed derives from it and the sample id.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use only the first N training masks.")] = None,
    guidance: Annotated[float, typer.Option("--guidance", help="CFG scale; 1.0 = off (the release's setting).")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per transformer call.")] = 4,
    prompt_cache: Annotated[Optional[Path], typer.Option("--prompt-cache", help="Prompt-embedding cache dir (default: OUT/prompt_cache).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Generate one image per real training mask (optionally CRFM-guided) into a LoveDA-layout dataset."""
    from todsynth.data.loveda import list_samples
    from todsynth.models.generator import load_generator
    from todsynth.sample.crfm import STEP_SCHEMES, CRFMConfig
    from todsynth.sample.sampler import SamplerConfig
    from todsynth.sample.synthesize import synthesize
    from todsynth.text import PromptCache, build_prompt_encoder

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
    manifest = synthesize(gen, samples, out, cache, cfg, crfm_cfg, judge_fn, seed=seed, progress=not no_progress)
    totals = manifest["totals"]
    console.print(
        f"[green]wrote[/] {totals['n_images']} images to {out} ({totals['seconds_per_image']:.2f} s/image"
        f"{f', CRFM {rectified_step}/{steps} steps' if crfm else ''}); manifest: {out / 'manifest.json'}",
        highlight=False, soft_wrap=True,
    )

# ---------------------------------------------------------------- seg
# (section: seg)

# ---------------------------------------------------------------- bench
# (section: bench)
WorkspaceOpt = Annotated[Optional[Path], typer.Option("--workspace", "-w", help="Workspace dir (default: the suite's, ./runs).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a suite value: key.path=value (YAML scalar); repeatable.")]


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
    suite: Annotated[Optional[Path], typer.Argument(help="Suite YAML; default: the embedded smoke suite.")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Recompute a stage (name or key) and its dependents; repeatable.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain output, no progress bars.")] = False,
) -> None:
    """Run (or resume) a suite: cached stages, MLflow tracking, <workspace>/<suite>/results.json."""
    from bench.engine import preflight, run_suite
    from bench.results import results_table
    from bench.suites import SuiteError, load_suite

    try:
        s = load_suite(suite, set_ or [], workspace)
        preflight(s, force or [])
    except SuiteError as exc:
        _suite_problems(exc)
    outcome = run_suite(s, force=force or [], progress=not no_progress, console=err_console)
    console.print(results_table(outcome.results))
    console.print(
        f"{len(outcome.computed)} stages computed, {len(outcome.cached)} reused, {outcome.seconds:.1f}s; "
        f"results: {outcome.results_file}; MLflow run {outcome.parent_run_id} in {s.tracking_uri}",
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


# ---------------------------------------------------------------- ui
# (section: ui)


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
