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
