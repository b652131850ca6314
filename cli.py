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
