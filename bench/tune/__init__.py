"""``bench tune``: an Optuna study over a suite's ``tune.search_space``, each trial running the suite's stages.

A trial is a variant built from the base variant (``tune.base_variant`` or the suite's sampling/crfm
defaults) with the trial's parameters; it runs the SAME stage functions as ``bench run``
(``synthesize -> evaluate [-> downstream]``, through :func:`bench.engine.run_nodes`) on top of the cached
data/generator/judge/evaluator stages, so a setting seen before is a cache hit.

Several processes (``--workers K`` local ones, or the same command on several machines with an RDB URL)
share one study. Exactly ``N`` trials finish (``--trials`` is the study's total): before asking a trial,
a worker takes a study-wide lock (a file lock for the journal file / sqlite, a PostgreSQL advisory lock,
MySQL ``GET_LOCK``), fails dead workers' trials, counts COMPLETE + RUNNING trials and asks only when that
is below ``N``; a worker waits while the running ones could still fail. A dead worker's RUNNING trial is
found by its pid (same host, immediately) or by a stale heartbeat (RDB: Optuna's heartbeat table;
journal: a ``todsynth:heartbeat`` system attribute) and set to FAIL; a copy is enqueued
(``RetryFailedTrialCallback``) and the next ask runs it, so nothing is lost or counted twice.

MLflow: one parent run per study (``todsynth.kind=study``), a child run per trial (params, objective and
metric values, the synthesis sample grid), the trial's new stage runs below it; the Optuna trial keeps the
run id as user attr ``mlflow_run_id``. The study summary goes to ``<workspace>/<suite>/tune.json``; with trials that
reach downstream, it and the study run carry which image metric predicts the downstream gain (``bench.correlation``).

Stage functions and the ``on_trial_start`` callback passed to :func:`tune_suite` run in every worker: spawned
workers receive them pickled, so they must be importable module-level callables (functions, or instances of
module-level classes).

Rooms: :mod:`.space` (search space, trial variant, constraints), :mod:`.storage` (storage URLs, lock,
heartbeats, reaping), :mod:`.study` (open/check the study, its MLflow run), :mod:`.session` (one process's
trial loop), :mod:`.summary` (tune.json, tables), :mod:`.workers` (spawned worker processes); this module
holds the entry point.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cache import StageCache
from bench.engine import preflight
from bench.pool import check_picklable
from bench.schema import Suite
from bench.tune.session import Session, TrialStartFn, TuneOptions
from bench.tune.space import (
    base_variant,
    constraint_values,
    default_params,
    distributions,
    trial_stages,
    trial_variant,
    tune_spec,
)
from bench.tune.storage import StudyLock, journal_path, redact, storage_url
from bench.tune.summary import read_tune_json, summarize, summary_tables
from bench.tune.workers import work_with_core_share, worker_processes
from todsynth.errors import ConfigError

if TYPE_CHECKING:
    from bench.stages import StageFn


@dataclass
class TuneOutcome:
    """A finished ``bench tune``: the tune.json content and where it went."""

    summary: dict[str, Any]
    path: Path
    trials_run_here: int = 0
    worker_exitcodes: list[int | None] = field(default_factory=list)
    seconds: float = 0.0


def check_options(opts: TuneOptions, stage_fns: Mapping[str, StageFn] | None,
                  stage_versions: Mapping[str, int] | None, on_trial_start: TrialStartFn | None = None) -> None:
    """ConfigError for options no study can run with (before anything is created)."""
    if opts.workers < 1:
        raise ConfigError(f"--workers {opts.workers}: needs at least 1")
    if opts.trials is not None and opts.trials < 1:
        raise ConfigError(f"--trials {opts.trials}: needs at least 1")
    if opts.workers > 1:
        check_picklable((stage_fns, stage_versions, on_trial_start),
                        "--workers > 1: the stage functions and on_trial_start")


def tune_suite(
    suite: Suite,
    opts: TuneOptions,
    *,
    stage_fns: Mapping[str, StageFn] | None = None,
    stage_versions: Mapping[str, int] | None = None,
    on_trial_start: TrialStartFn | None = None,
    console: Any = None,
) -> TuneOutcome:
    """Create or continue the study, run trials here and in ``opts.workers - 1`` spawned processes, summarise.

    ``stage_fns``/``stage_versions`` (default :mod:`bench.stages`) and ``on_trial_start(trial)`` (called as each
    trial starts, before its stages: see :class:`Session`) run in this process and in the spawned workers, which
    receive them pickled: with ``workers > 1`` they must be importable module-level callables.
    """
    tune_spec(suite)
    check_options(opts, stage_fns, stage_versions, on_trial_start)
    preflight(suite, every_stage=True)
    t0 = time.perf_counter()
    session = Session(suite, opts, stage_fns=stage_fns, stage_versions=stage_versions, on_trial_start=on_trial_start,
                      console=console, create=True)  # a storage it cannot use is named before anything is made
    (suite.workspace / suite.name).mkdir(parents=True, exist_ok=True)
    StageCache(suite.workspace).cleanup_stale()
    session.prepare()
    complete, running = session.counts()
    session.console.print(
        f"[bold]tune[/] study {session.study_name} in {redact(session.url)}: {complete} of {session.target} trials "
        f"complete, {running} running; {opts.workers} worker(s) here", highlight=False, soft_wrap=True)
    try:
        with worker_processes(suite, opts, stage_fns, stage_versions, on_trial_start) as procs:
            ran = work_with_core_share(session, opts.workers)  # the shared stages above ran with every core
    except BaseException as exc:
        session.abort(exc)
        raise
    codes = [p.exitcode for p in procs]
    for i, code in enumerate(codes, start=1):
        if code not in (0, None):
            session.console.print(f"[yellow]worker process {i} exited with code {code}[/]")
    summary, path = session.finish()
    return TuneOutcome(summary=summary, path=path, trials_run_here=ran, worker_exitcodes=codes,
                       seconds=time.perf_counter() - t0)


__all__ = [
    "Session", "StudyLock", "TuneOptions", "TuneOutcome", "base_variant", "constraint_values",
    "default_params", "distributions", "journal_path", "read_tune_json", "redact", "storage_url", "summarize",
    "summary_tables", "trial_stages", "trial_variant", "tune_suite",
]
