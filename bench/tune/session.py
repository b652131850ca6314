"""One process's part in a study: open it, prepare, run the trial loop, end the study.

It opens the study, prepares the shared stages and constraint references, then runs the trial loop (reap dead
workers' trials and ask under the study lock, run the trial's stages, log it, tell Optuna), and the study's end
(tune.json and the MLflow study run).

A trial runs the SAME stage functions as ``bench run`` through :func:`bench.engine.run_nodes`; its MLflow run is
a child of the study run, the trial's new stage runs below it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from bench.cache import CachedStage
from bench.engine import run_nodes
from bench.graph import node_key, variant_graph
from bench.results import aggregate, run_metrics, run_params, seed_metrics, variant_params, write_results
from bench.schema import ResolvedVariant, Suite, resolve_variants
from bench.tune.space import (
    base_variant,
    constraint_values,
    gain_baseline,
    grid_size,
    make_sampler,
    metric_value,
    real_only_miou,
    reference_metrics,
    reference_stages,
    suggest,
    trial_stages,
    trial_variant,
    tune_spec,
)
from bench.tune.storage import (
    Heartbeat,
    StudyLock,
    claim_trial,
    open_storage,
    reap,
    redact,
    repair_journal,
    storage_file,
    storage_file_problem,
    storage_url,
)
from bench.tune.study import (
    PARENT,
    REFERENCE,
    artifact_location,
    close_study_run,
    join_study,
    open_study,
    start_study_run,
)
from bench.tune.summary import TUNE_JSON, summarize
from todsynth.errors import ConfigError, StageError, TodsynthError

if TYPE_CHECKING:
    from bench.stages import StageFn


@dataclass(frozen=True)
class TuneOptions:
    """What the command line decides: the trial total, local workers, storage URL, study name, sampler."""

    trials: int | None = None
    workers: int = 1
    storage: str | None = None
    study: str | None = None
    sampler: str | None = None
    progress: bool = True
    track: bool = True


def variant_metrics(suite: Suite, variant: ResolvedVariant, done: Mapping[str, CachedStage]) -> dict[str, Any]:
    """Metrics of a variant from its finished stages, mean over the suite's seeds (as in results.json)."""
    return aggregate([seed_metrics(done, variant.name, seed) for seed in suite.seeds])[0]


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are numbers (not NaN, not bools): what a trial keeps as its ``metrics`` user attr."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(float(v))}


TrialStartFn = Callable[[Any], None]  # called with the Optuna trial once it is claimed, before its stages run


class Session:
    """One process's view of the study: storage, lock, study, tracker, options.

    ``stage_fns``/``stage_versions`` default to :mod:`bench.stages`; ``on_trial_start(trial)``, when given, runs in
    each trial once its parameters are suggested, its MLflow run is open and its heartbeat beats, before its stages.
    """

    def __init__(self, suite: Suite, opts: TuneOptions, *, stage_fns: Mapping[str, StageFn] | None = None,
                 stage_versions: Mapping[str, int] | None = None, on_trial_start: TrialStartFn | None = None,
                 console: Any = None, create: bool = False) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.suite, self.opts, self.tune = suite, opts, tune_spec(suite)
        self.stage_fns, self.stage_versions, self.on_trial_start = stage_fns, stage_versions, on_trial_start
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.console = console
        self.target = opts.trials or self.tune.n_trials
        self.url = storage_url(suite, opts.storage)
        if (problem := storage_file_problem(self.url)) is not None:
            raise ConfigError(f"--storage {redact(self.url)}: {problem}")
        self.study_name = opts.study or suite.name
        self.lock = StudyLock(self.url, self.study_name)
        with self.lock.hold():  # two processes creating the RDB schema at once collide on a fresh database
            journal = storage_file(self.url) if self.url.startswith("journal:") else None
            if journal is not None and (cut := repair_journal(journal)):
                console.print(f"[yellow]{escape(str(journal))}: removed the last record, {cut} bytes a killed process "
                              f"left unfinished (kept in {escape(journal.name)}.cut)[/]", soft_wrap=True)
            self.storage = open_storage(self.url, self.tune)
        self.directions = [o.optuna_direction for o in self.tune.objectives]
        self.tracker: Any = None
        with self.lock.hold():
            self.study = open_study(self.storage, suite, self.study_name, self.url, create=create,
                                    stage_versions=stage_versions)
            if opts.track:
                from bench.tracking import Tracker

                self.tracker = Tracker(suite.tracking_uri, artifact_location(suite), suite.experiment, suite.workspace)
                if create:
                    start_study_run(self.tracker, self.study, suite, url=self.url, target=self.target,
                                    console=console)
                else:
                    self.tracker.parent_run_id = self.study.user_attrs.get(PARENT)
            self.worker_index = join_study(self.study)
        sampler_name = opts.sampler or self.tune.sampler
        self.study.sampler = make_sampler(sampler_name, self.tune, self.tune.seed + self.worker_index)
        if sampler_name == "grid":
            size = grid_size(self.tune)
            if self.target > size:
                console.print(f"[yellow]grid has {size} points; --trials {self.target} capped to {size}[/]")
                self.target = size

    @property
    def study_tracker(self) -> Any:
        """The tracker when the study has an MLflow run (new stage runs become its children), else None."""
        return self.tracker if self.tracker is not None and self.tracker.parent_run_id else None

    # ------------------------------------------------------------------ stages
    def run_variant(self, variant: ResolvedVariant, stages: tuple[str, ...], tracker: Any) -> dict[str, Any]:
        """Run (or reuse) the variant's stages; returns its seed-mean metrics and the finished stages."""
        nodes = variant_graph(self.suite, variant, stages)
        done = run_nodes(self.suite, nodes, tracker=tracker, stage_fns=self.stage_fns,
                         stage_versions=self.stage_versions, console=self.console, progress=False)
        return {"metrics": variant_metrics(self.suite, variant, done), "done": done}

    def prepare(self) -> None:
        """Compute the shared stages (data ... real_features) and the constraint references once, up front."""
        base = base_variant(self.suite)
        nodes = [n for n in variant_graph(self.suite, base, trial_stages(self.tune)) if n.variant is None]
        self.console.print(f"[bold]tune[/] {self.study_name}: preparing {len(nodes)} shared stages", highlight=False)
        run_nodes(self.suite, nodes, tracker=self.study_tracker, stage_fns=self.stage_fns,
                  stage_versions=self.stage_versions, console=self.console, progress=self.opts.progress)
        self.reference()

    def reference(self) -> dict[str, dict[str, float]]:
        """Metric values of the variants constraints are relative to (computed once, kept in the study)."""
        stored = dict(self.study.user_attrs.get(REFERENCE) or {})
        wanted = reference_metrics(self.tune)
        if (baseline := gain_baseline(self.suite)) is not None:  # each trial's downstream gain is over it
            wanted.setdefault(baseline.name, set()).add("downstream_miou")
        if all(m in stored.get(v, {}) for v, ms in wanted.items() for m in ms):
            return stored
        variants = {v.name: v for v in resolve_variants(self.suite)}
        for name, metrics in wanted.items():
            v = variants[name]
            self.console.print(f"[bold]tune[/] reference variant {name}: {', '.join(sorted(metrics))}", highlight=False)
            out = self.run_variant(v, reference_stages(v, metrics), self.study_tracker)
            stored[name] = {m: metric_value(out["metrics"], m, f"reference variant {name}") for m in sorted(metrics)}
        with self.lock.hold():
            have = dict(self.study.user_attrs.get(REFERENCE) or {})
            for name, vals in stored.items():  # first writer wins: every process compares with the same numbers
                have.setdefault(name, vals)
            self.study.set_user_attr(REFERENCE, have)
        return have

    # ------------------------------------------------------------------ the worker loop
    def counts(self) -> tuple[int, int]:
        """(COMPLETE, RUNNING) trials of the study."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        return complete, len(trials) - complete

    def next_trial(self) -> tuple[Any, bool]:
        """Under the lock: reap dead workers' trials, then ask one if COMPLETE + RUNNING < target.

        Returns ``(trial or None, done)``; ``done`` when the study has ``target`` COMPLETE trials.
        """
        with self.lock.hold():
            for number in reap(self.study, self.tune):
                self.console.print(f"[yellow]trial {number}: its worker is gone; marked FAIL, retrying its "
                                   "parameters[/]", highlight=False)
                self._end_run_of(number, "KILLED")
            complete, running = self.counts()
            if complete >= self.target:
                return None, True
            if complete + running >= self.target:
                return None, False
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = self.study.ask()
            claim_trial(self.study._storage, trial._trial_id)
            return trial, False

    def _end_run_of(self, number: int, status: str) -> None:
        if self.tracker is None:
            return
        run_id = self.study.trials[number].user_attrs.get("mlflow_run_id")
        if run_id:
            with contextlib.suppress(Exception):
                self.tracker.end(run_id, status)

    def work(self) -> int:
        """Run trials until the study has ``target`` COMPLETE ones (or ``tune.timeout_s``); returns trials run."""
        t0 = time.monotonic()
        ran = 0
        poll = min(2.0, self.tune.heartbeat_s / 2)
        while True:
            if self.tune.timeout_s is not None and time.monotonic() - t0 > self.tune.timeout_s:
                self.console.print(f"[yellow]tune.timeout_s {self.tune.timeout_s:g} reached; stopping this worker[/]")
                return ran
            trial, done = self.next_trial()
            if done:
                return ran
            if trial is None:
                time.sleep(poll)
                continue
            self.run_trial(trial)
            ran += 1

    # ------------------------------------------------------------------ one trial
    def run_trial(self, trial: Any) -> None:
        """Suggest, run the stages, log, tell; a failure marks the trial FAIL and stops this worker with the error."""
        t0 = time.perf_counter()
        name = f"trial-{trial.number}"
        run_id = None
        try:
            params = suggest(trial, self.tune)
            variant = trial_variant(self.suite, params, name)
            run_id = self._start_trial_run(trial, name, variant, params)
            with Heartbeat(self.study._storage, trial._trial_id, self.tune.heartbeat_s):
                if self.on_trial_start is not None:
                    self.on_trial_start(trial)
                stage_tracker = self.tracker.with_parent(run_id) if run_id else None
                out = self.run_variant(variant, trial_stages(self.tune), stage_tracker)
            metrics = out["metrics"]
            values = [metric_value(metrics, o.metric, name) for o in self.tune.objectives]
            cons = constraint_values(self.tune, metrics, self.study.user_attrs.get(REFERENCE) or {})
            trial.set_user_attr("metrics", numeric_metrics(metrics))
            for key, value in cons.items():
                trial.set_constraint(key, value)
            seconds = time.perf_counter() - t0
            if run_id:
                log_trial(self.tracker, run_id, self.suite, out["done"], variant, metrics, cons, seconds,
                          real_only_miou(self.suite, self.study.user_attrs.get(REFERENCE) or {}))
            self.study.tell(trial, values if len(values) > 1 else values[0])
        except BaseException as exc:
            self._fail_trial(trial, run_id, exc)
            if isinstance(exc, TodsynthError | KeyboardInterrupt | SystemExit):
                raise
            log = self.suite.workspace / self.suite.name / "logs" / f"tune-{self.study_name}-{name}.traceback.txt"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            raise StageError(f"{name} failed: {type(exc).__name__}: {exc} (traceback in {log}; the trial is FAIL, "
                             "rerun to continue the study)") from exc
        if run_id:
            self.tracker.end(run_id, "FINISHED")
        shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(self.tune.objectives, values, strict=True))
        infeasible = [k for k, v in cons.items() if v > 0]
        self.console.print(
            f"trial {trial.number} [dim](worker {self.worker_index}, {seconds:.1f}s)[/]: "
            f"{json.dumps(params)} -> {shown}" + (f" [yellow]infeasible: {', '.join(infeasible)}[/]" if infeasible else ""),
            highlight=False, soft_wrap=True)

    def _start_trial_run(self, trial: Any, name: str, variant: ResolvedVariant, params: Mapping[str, Any]
                         ) -> str | None:
        """The trial's MLflow run, a child of the study run (None without one); its id becomes a trial user attr."""
        if self.study_tracker is None:
            return None
        seeds = ",".join(str(s) for s in self.suite.seeds)  # a trial's metrics are the seeds' mean
        run_id: str = self.tracker.start_child(
            name, run_params(name, seeds, variant_params(self.suite, variant), {}),
            {"todsynth.kind": "trial", "todsynth.suite": self.suite.name, "optuna.study": self.study_name,
             "optuna.trial_number": str(trial.number), "optuna.params": json.dumps(dict(params), sort_keys=True),
             "todsynth.worker": str(self.worker_index), "todsynth.variant": name})
        trial.set_user_attr("mlflow_run_id", run_id)
        return run_id

    def _fail_trial(self, trial: Any, run_id: str | None, exc: BaseException) -> None:
        """Tell Optuna the trial FAILed and end its run (KILLED on Ctrl-C); errors doing so are ignored."""
        import optuna

        with contextlib.suppress(Exception):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if run_id:
            with contextlib.suppress(Exception):
                self.tracker.end(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    # ------------------------------------------------------------------ the end
    def finish(self) -> tuple[dict[str, Any], Path]:
        """Summarise the study into tune.json (atomically) and the MLflow parent run."""
        with self.lock.hold():
            reap(self.study, self.tune)
            summary = summarize(self.study, self.suite, self.url, self.target)
            path = self.suite.workspace / self.suite.name / TUNE_JSON
            write_results(path, summary)
        if self.study_tracker is not None:
            close_study_run(self.tracker, summary, path, self.target)
        return summary, path

    def abort(self, exc: BaseException) -> None:
        """End the study's MLflow run after ``exc`` stopped this process (KILLED on Ctrl-C, else FAILED)."""
        if self.study_tracker is not None:
            with contextlib.suppress(Exception):
                self.tracker.end(self.tracker.parent_run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")


def log_trial(tracker: Any, run_id: str, suite: Suite, done: Mapping[str, CachedStage], variant: ResolvedVariant,
              metrics: Mapping[str, Any], cons: Mapping[str, float], seconds: float,
              real_only: float | None = None) -> None:
    """Log a finished trial to its MLflow run ``run_id``.

    The trial's run gets a variant run's params and metrics (:func:`bench.results.run_metrics`; with ``real_only``,
    the baseline's downstream mIoU, also ``real_only_miou`` and ``downstream_gain``), plus its constraints, time and
    feasibility, and each seed's synthesis artifacts (the sample grid).
    """
    if "fid_extractor" in metrics:
        tracker.log_params(run_id, {"fid": run_params(variant.name, "", {}, metrics)["fid"]})
    tracker.log_metrics(run_id, {**run_metrics(metrics, real_only), **{f"constraint/{k}": v for k, v in cons.items()},
                                 "trial_seconds": seconds,
                                 "feasible": float(all(v <= 0 for v in cons.values()))})
    for seed in suite.seeds:
        syn = done.get(node_key("synthesize", variant.name, seed))
        if syn is None:
            continue
        for rel in syn.artifacts.get("mlflow_artifacts", []):
            path = syn.dir / rel
            if path.exists():
                tracker.log_artifact(run_id, path, f"synthesize/seed{seed}")
        tracker.set_tags(run_id, {f"todsynth.synthesize_dir.seed{seed}": str(syn.dir)})
