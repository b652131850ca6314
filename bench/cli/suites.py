"""``todsynth bench validate | run | ls | report``: a declared suite checked, run (or planned), listed, reported.

Plain command functions; ``cli.py`` registers them on ``bench_app`` (beside ``tune`` and ``perf``). Imports
:mod:`bench.cli.common` and (inside the commands) the harness: ``bench.suites``, ``bench.engine``, ``bench.results``,
``bench.workspace``, ``bench.report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional  # noqa: F401  (Optional used by typer signatures)

import typer

from bench.cli.common import (
    SetOpt,
    WorkspaceOpt,
    console,
    err_console,
    load_suite_or_exit,
    out_folder,
    suite_file_problems,
)


def bench_validate(
    suite: Annotated[Path, typer.Argument(help="Suite YAML (e.g. suites/loveda.yaml).")],
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check a suite (schema, key paths, cross-field rules) without creating anything.

    A valid suite exits 0 on any machine; what `bench run` would still stop at here (local data or weights, the
    workspace, the MLflow store) is listed after it.
    """
    from bench.graph import build_graph
    from bench.schema import check_runnable, resolve_variants
    from bench.suites import config_hash

    s = load_suite_or_exit(suite, set_, workspace)
    variants = resolve_variants(s)
    nodes = build_graph(s)
    console.print(
        f"[green]ok[/] {s.name} v{s.version}: {len(variants)} variant{'s' * (len(variants) != 1)} "
        f"({', '.join(v.name for v in variants)}) "
        f"x {len(s.seeds)} seed(s), {len(nodes)} stages, config {config_hash(s)[:12]}",
        highlight=False,
    )
    here = check_runnable(s, {n.stage for n in nodes})
    if here:
        console.print("[yellow]not runnable on this machine yet[/] (`bench run` would stop at):", highlight=False)
        for problem in here:
            console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)


def bench_run(
    suite: Annotated[Path | None, typer.Argument(help="Suite YAML; default: the embedded smoke suite.")] = None,
    workspace: WorkspaceOpt = None,
    set_: SetOpt = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="Recompute a stage (name or key) and its dependents; repeatable.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars (a line per stage still reports its start and end).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and list the stage graph (cached or to "
                                          "compute); run nothing, create nothing.")] = False,
) -> None:
    """Run (or resume) a suite: cached stages, MLflow tracking, <workspace>/<suite>/results.json."""
    from bench.engine import plan, preflight, run_suite
    from bench.results import results_table
    from bench.suites import SuiteError

    s = load_suite_or_exit(suite, set_, workspace)
    try:
        rows = plan(s, force or []) if dry_run else None
        if rows is None:
            preflight(s, force or [])
    except SuiteError as exc:
        suite_file_problems(exc, suite)
    if rows is not None:
        _print_plan(s, rows)
        return
    outcome = run_suite(s, force=force or [], progress=not no_progress, console=err_console)
    console.print(results_table(outcome.results, width=console.width))
    console.print(
        f"{len(outcome.computed)} stages computed, {len(outcome.cached)} reused, {outcome.seconds:.1f}s; "
        f"results: {outcome.results_file}; MLflow run {outcome.parent_run_id} in {s.tracking_uri}",
        highlight=False, soft_wrap=True,
    )
    import shlex

    args = (f" {shlex.quote(str(suite))}" if suite is not None else "") + (
        f" -w {shlex.quote(str(workspace))}" if workspace is not None else "")
    ui_ws = f" -w {shlex.quote(str(s.workspace))}" if Path(s.workspace) != Path("runs") else ""  # ui's default
    err_console.print(f"next: todsynth bench report{args}  (tables, plots and sample grids in reports/{s.name}/); "
                      f"todsynth ui{ui_ws}  (MLflow's compare view)", markup=False, highlight=False, soft_wrap=True)


def _print_plan(s: Any, rows: list[dict[str, Any]]) -> None:
    """The dry-run table: every stage of the graph in run order, its inputs and whether it would be computed."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{s.name}: {len(rows)} stages (dry run, nothing executed)", box=box.SIMPLE_HEAD)
    for col in ("#", "stage key", "inputs", "status", "hash"):  # a long input key folds rather than losing its end
        table.add_column(col, no_wrap=col != "inputs", overflow="fold")
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), escape(r["key"]), escape(", ".join(r["deps"]) or "-"), r["status"], r["hash"][:12])
    console.print(table)
    todo = sum(r["status"] != "cached" for r in rows)
    console.print(f"{todo} to compute, {len(rows) - todo} cached in {s.workspace}", highlight=False, soft_wrap=True)
    damaged = [r["key"] for r in rows if r["status"] == "damaged"]
    if damaged:
        import shlex

        console.print(f"damaged cache entries: bench run stops at them; delete their directories under "
                      f"{s.workspace}/cache or rerun with {' '.join(f'--force {shlex.quote(k)}' for k in damaged)}",
                      markup=False, highlight=False, soft_wrap=True)  # keys hold [...]: not rich markup


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
        table.add_column(col, overflow="fold", no_wrap=col in ("runs", "last status", "config"))  # a path folds
    for r in rows:
        table.add_row(r["suite"], str(r["runs"]), r["last_status"], r["last_started"], str(r["config_hash"])[:12],
                      str(r["variants"]), r["results"] or "-")
    console.print(table)


def bench_report(
    suite: Annotated[Path | None, typer.Argument(help="Suite YAML; default: the embedded smoke suite.")] = None,
    workspace: WorkspaceOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report dir (default: reports/<suite>).",
                                             callback=out_folder)] = None,
    run: Annotated[str | None, typer.Option("--run", help="MLflow run id of the suite run (default: the latest finished).")] = None,
    set_: SetOpt = None,
) -> None:
    """Markdown + HTML comparison report (with CSV, LaTeX, plots, sample grid) of a suite's run, read from MLflow."""
    from bench.report import write_report

    s = load_suite_or_exit(suite, set_, workspace)
    path = write_report(s, out, run_id=run)
    console.print(f"report: {path / 'report.md'} and {path / 'index.html'} (+ results.csv, results.tex)", highlight=False,
                  soft_wrap=True)
