"""What every command room shares: the two rich consoles, the one-line error exit, and the suite options.

Imports typer and rich only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from bench.schema import Suite

console = Console()
err_console = Console(stderr=True)

WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w", help="Workspace dir (default: the suite's, ./runs).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a suite value: key.path=value (YAML scalar); repeatable.")]


def out_folder(value: Path | None) -> Path | None:
    """Typer callback for an output folder option or argument.

    A path that cannot be a folder this user writes in (a file on it, no write permission) is a usage error (exit 2)
    before any work starts.
    """
    from todsynth.files import folder_problem

    if value is not None and (problem := folder_problem(value)) is not None:
        raise typer.BadParameter(problem)
    return value


def out_file(value: Path | None) -> Path | None:
    """Typer callback for an output file option.

    A folder there, or a parent that cannot be a folder this user writes in, is a usage error (exit 2) before any
    work starts (not after minutes of it).
    """
    from todsynth.files import file_problem

    if value is not None and (problem := file_problem(value)) is not None:
        raise typer.BadParameter(problem)
    return value


def positive(value: float | None) -> float | None:
    """Typer callback for a float that must be finite and > 0 (a learning rate): else a usage error (exit 2)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"{value} is not a finite number > 0")
    return value


def finite(value: float | None) -> float | None:
    """Typer callback for a float that must be finite (not nan or inf): else a usage error (exit 2)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit (2 = bad input)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def suite_problems(exc: Exception) -> NoReturn:
    """Print each problem of a SuiteError on its own line and exit 2."""
    source = getattr(exc, "source", "suite")
    for problem in getattr(exc, "problems", [str(exc)]):
        err_console.print(f"[bold red]error:[/] {escape(f'{source}: {problem}')}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def suite_file_problems(exc: Exception, suite: Path | None) -> NoReturn:
    """:func:`suite_problems` for a loaded suite's run-time checks (``preflight``).

    The problems are named by the suite's file, as schema errors are (``suite``: the command's argument; None: the
    embedded default).
    """
    from bench.suites import resolve_suite_path

    exc.source = str(resolve_suite_path(suite))  # type: ignore[attr-defined]
    suite_problems(exc)


def load_suite_or_exit(suite: Path | None, sets: list[str] | None, workspace: Path | None) -> Suite:
    """The validated suite (``None``: the embedded smoke suite), or each of its problems on a line and exit 2."""
    from bench.suites import SuiteError, load_suite

    try:
        return load_suite(suite, sets or [], workspace)
    except SuiteError as exc:
        suite_problems(exc)
