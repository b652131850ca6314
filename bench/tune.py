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

Stage functions passed to :func:`tune_suite` run in every worker: spawned workers receive them pickled, so they
must be importable module-level callables (functions, or instances of module-level classes).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cache import CachedStage, StageCache, process_alive
from bench.engine import StageFn, preflight, run_nodes, variant_graph
from bench.graph import node_key
from bench.results import aggregate, run_metrics, run_params, seed_metrics, variant_params, write_results
from bench.schema import CRFM, ResolvedVariant, Sampling, SearchDim, Suite, Tune, resolve_variants
from bench.suites import canonical_json, resolved_dict, resolved_yaml
from todsynth.errors import ConfigError, StageError, TodsynthError

JOURNAL = "optuna.journal"
TUNE_JSON = "tune.json"
ATTR_HOST, ATTR_PID, ATTR_BEAT = "todsynth:host", "todsynth:pid", "todsynth:heartbeat"
FINGERPRINT = "todsynth:fingerprint"
PARENT = "mlflow_parent_run_id"
REFERENCE = "todsynth:reference"
WORKERS = "todsynth:workers_started"
# tune: keys that may change between invocations of one study (they do not change what a trial computes).
RUNTIME_TUNE_KEYS = ("n_trials", "timeout_s", "storage", "sampler", "seed", "heartbeat_s", "grace_s", "max_retry",
                     "enqueue_default")


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


@dataclass
class TuneOutcome:
    """A finished ``bench tune``: the tune.json content and where it went."""

    summary: dict[str, Any]
    path: Path
    trials_run_here: int = 0
    worker_exitcodes: list[int | None] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------- study set-up
def tune_spec(suite: Suite) -> Tune:
    """The suite's ``tune:`` section, or a ConfigError naming the fix."""
    if suite.tune is None:
        raise ConfigError(f"suite {suite.name!r} has no `tune:` section; add tune.search_space and tune.objectives")
    return suite.tune


def journal_path(suite: Suite) -> Path:
    """Default storage file: ``<workspace>/<suite>/optuna.journal``."""
    return suite.workspace / suite.name / JOURNAL


def storage_url(suite: Suite, storage: str | None = None) -> str:
    """The storage in use: ``--storage``, else ``tune.storage``, else ``journal:<workspace>/<suite>/optuna.journal``."""
    url = storage or tune_spec(suite).storage
    return url if url else f"journal:{journal_path(suite)}"


def redact(url: str) -> str:
    """A storage URL without its password (safe for tags, logs and tune.json)."""
    if url.startswith("journal:") or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: drop anything between :// and @
        head, _, rest = url.partition("://")
        return f"{head}://***@{rest.split('@', 1)[1]}" if "@" in rest else url


def study_fingerprint(suite: Suite) -> str:
    """Hash of what a trial computes (suite config minus workspace/tracking and the runtime-only tune keys)."""
    data = resolved_dict(suite)
    data = {k: v for k, v in data.items() if k not in ("workspace", "tracking")}
    data["tune"] = {k: v for k, v in (data.get("tune") or {}).items() if k not in RUNTIME_TUNE_KEYS}
    return hashlib.sha256(canonical_json({"suite": data, "version": str(suite.version)}).encode()).hexdigest()


def artifact_location(suite: Suite) -> str | None:
    """Artifact root of a new experiment: ``tracking.artifacts``; with an http(s) tracking server and none set,
    the server's own (proxied) root, so workers on other machines upload through it; else ``<ws>/mlartifacts``."""
    if suite.tracking.artifacts is None and suite.tracking_uri.startswith(("http://", "https://")):
        return None
    return suite.artifact_location


def base_variant(suite: Suite) -> ResolvedVariant:
    """The variant a trial's parameters override: ``tune.base_variant``, else the suite's sampling/crfm defaults."""
    tune = tune_spec(suite)
    if tune.base_variant is not None:
        for v in resolve_variants(suite):
            if v.name == tune.base_variant:
                return v
        raise ConfigError(f"tune.base_variant: {tune.base_variant!r} is not a variant of suite {suite.name!r}")
    return ResolvedVariant(name="tune-base", kind="synthetic", sampling=suite.sampling, crfm=suite.crfm,
                           origin="suite defaults")


def distributions(tune: Tune) -> dict[str, Any]:
    """Search space -> Optuna distributions, in declaration order."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, dim in tune.search_space.items():
        match dim.type:
            case "categorical":
                out[key] = CategoricalDistribution(list(dim.choices or []))
            case "int":
                out[key] = IntDistribution(int(dim.low or 0), int(dim.high or 0), log=dim.log, step=int(dim.step or 1))
            case "float":
                out[key] = FloatDistribution(float(dim.low or 0.0), float(dim.high or 0.0), log=dim.log, step=dim.step)
    return out


def grid_values(dim: SearchDim, key: str = "?") -> list[Any]:
    """Every value of a discrete dimension (the grid sampler's axis)."""
    if dim.choices is not None:
        return list(dim.choices)
    if dim.step is None and dim.type == "float":
        raise ConfigError(f"tune.search_space.{key}: the grid sampler needs a step (or type: categorical)")
    low, high, step = float(dim.low or 0), float(dim.high or 0), float(dim.step or 1)
    n = int(math.floor((high - low) / step + 1e-9)) + 1
    values = [low + i * step for i in range(n)]
    return [int(round(v)) for v in values] if dim.type == "int" else values


def make_sampler(name: str, tune: Tune, seed: int) -> Any:
    """An Optuna sampler by name (``tpe`` multivariate with constant liar, Optuna 5's defaults)."""
    import optuna

    match name:
        case "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        case "gp":
            return optuna.samplers.GPSampler(seed=seed)
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        case "grid":
            return optuna.samplers.GridSampler({k: grid_values(d, k) for k, d in tune.search_space.items()}, seed=seed)
    raise ConfigError(f"--sampler {name!r}: choose tpe, gp, random, grid or nsga2")


def default_params(suite: Suite) -> dict[str, Any]:
    """The base variant's own values of the searched keys that lie inside the space (the first trial)."""
    tune = tune_spec(suite)
    base = base_variant(suite)
    out: dict[str, Any] = {}
    for key, dist in distributions(tune).items():
        section, _, name = key.partition(".")
        value = getattr(getattr(base, section), name)
        try:
            if dist._contains(dist.to_internal_repr(value)):
                out[key] = value
        except (ValueError, TypeError):
            continue
    return out


def trial_variant(suite: Suite, params: Mapping[str, Any], name: str) -> ResolvedVariant:
    """The base variant with ``params`` (``crfm.<field>``/``sampling.<field>``) applied, validated."""
    base = base_variant(suite)
    sampling, crfm = base.sampling.model_dump(), base.crfm.model_dump()
    for key, value in params.items():
        section, _, fname = key.partition(".")
        (sampling if section == "sampling" else crfm)[fname] = value
    variant = ResolvedVariant(name=name, kind="synthetic", sampling=Sampling(**sampling), crfm=CRFM(**crfm),
                              origin=f"tune {name}")
    if variant.crfm.rectified_step > variant.sampling.num_inference_steps:
        raise ConfigError(f"{name}: crfm.rectified_step {variant.crfm.rectified_step} > "
                          f"sampling.num_inference_steps {variant.sampling.num_inference_steps}")
    return variant


def trial_stages(tune: Tune) -> tuple[str, ...]:
    """Stages a trial runs: synthesize and evaluate, plus downstream when an objective/constraint needs it."""
    metrics = [o.metric for o in tune.objectives] + [c.metric for c in tune.constraints]
    return ("synthesize", "evaluate") + (("downstream",) if any(m.startswith("downstream_") for m in metrics) else ())


def variant_metrics(suite: Suite, variant: ResolvedVariant, done: Mapping[str, CachedStage]) -> dict[str, Any]:
    """Metrics of a variant from its finished stages, mean over the suite's seeds (as in results.json)."""
    return aggregate([seed_metrics(done, variant.name, seed) for seed in suite.seeds])[0]


def _number(metrics: Mapping[str, Any], metric: str, where: str) -> float:
    value = metrics.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(float(value)):
        raise StageError(f"{where}: the stages produced no numeric {metric} (got {value!r})")
    return float(value)


def constraint_values(tune: Tune, metrics: Mapping[str, Any], reference: Mapping[str, Mapping[str, float]]
                      ) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0), one per bound, keyed ``fid<=plain+5``."""
    out: dict[str, float] = {}
    for c in tune.constraints:
        value = _number(metrics, c.metric, f"constraint {c.name}")
        ref = reference[c.relative_to][c.metric] if c.relative_to else 0.0
        names = c.bound_names()
        if c.max is not None:
            out[names["max"]] = value - (ref + c.max)
        if c.min is not None:
            out[names["min"]] = (ref + c.min) - value
    return out


# ---------------------------------------------------------------------- storage, lock, heartbeat
def open_storage(url: str, tune: Tune) -> Any:
    """Optuna storage: JournalStorage over a file for ``journal:<path>``, else RDBStorage with heartbeat + retry."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"--storage {url!r}: give an SQLAlchemy URL (postgresql+psycopg2://user@host/db, "
                          "sqlite:///path.db) or leave it out for the workspace journal file")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval / failed_trial_callback are "experimental"
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=tune.heartbeat_s, grace_period=tune.grace_period_s,
                failed_trial_callback=RetryCopy(tune.max_retry), **kwargs,
            )
    except ImportError as exc:
        raise ConfigError(f"--storage {redact(url)}: database driver missing ({exc}); pip install psycopg2-binary "
                          "for PostgreSQL") from None
    except Exception as exc:  # sqlalchemy OperationalError, ArgumentError ...
        raise ConfigError(f"--storage {redact(url)}: cannot open ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


class StudyLock:
    """A lock held by one process of the study at a time (around count-and-ask, reaping, set-up).

    Journal and sqlite: a file lock beside the file; PostgreSQL: a session advisory lock; MySQL: GET_LOCK.
    Other databases get no lock (the cap may then overshoot by up to workers - 1; a warning says so).
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url, self.study_name = url, study_name
        self.kind = "none"
        self._file: Any = None
        self._engine: Any = None
        if url.startswith("journal:"):
            from filelock import FileLock

            self.kind, self._file = "file", FileLock(url.removeprefix("journal:") + ".tune.lock")
        elif url.startswith("sqlite"):
            from filelock import FileLock
            from sqlalchemy.engine import make_url

            db = make_url(url).database
            if db and db != ":memory:":
                self.kind, self._file = "file", FileLock(str(Path(db).absolute()) + ".tune.lock")
        elif url.startswith(("postgresql", "mysql")):
            import sqlalchemy

            self.kind = "postgresql" if url.startswith("postgresql") else "mysql"
            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.key = int.from_bytes(hashlib.sha256(f"todsynth-tune:{study_name}".encode()).digest()[:8], "big",
                                  signed=True)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the ``with`` body."""
        if self.kind == "file":
            with self._file:
                yield
            return
        if self.kind in ("postgresql", "mysql"):
            import sqlalchemy

            with self._engine.connect() as conn:
                if self.kind == "postgresql":
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                else:
                    conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": f"todsynth-{self.key}"})
                try:
                    yield
                finally:
                    if self.kind == "postgresql":
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                    else:
                        conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"todsynth-{self.key}"})
            return
        yield


class RetryCopy:
    """``RetryFailedTrialCallback`` that leaves out the dead run's liveness attrs, constraints and MLflow id."""

    def __init__(self, max_retry: int) -> None:
        from optuna.storages import RetryFailedTrialCallback

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning
            self._inner = RetryFailedTrialCallback(max_retry=max_retry)

    def __call__(self, study: Any, trial: Any) -> None:
        trial = copy.deepcopy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items()
                              if not k.startswith(("todsynth:", "constraints"))}
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("mlflow_run_id", "metrics")}
        self._inner(study, trial)


class Heartbeat:
    """Background thread proving a trial's worker is alive (RDB: Optuna's heartbeat; journal: a system attr)."""

    def __init__(self, storage: Any, trial_id: int, interval_s: float) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def beat(self) -> None:
        """Record one heartbeat now."""
        from optuna.storages import RDBStorage

        if isinstance(self.storage, RDBStorage):
            self.storage.record_heartbeat(self.trial_id)
        else:
            self.storage.set_trial_system_attr(self.trial_id, ATTR_BEAT, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # the trial was finished (or failed by a reaper): nothing left to prove
                return

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def stale_trials(study: Any, tune: Tune, now: float | None = None) -> list[Any]:
    """RUNNING trials whose worker is gone: same host and dead pid, or (journal) no heartbeat for ``grace_s``."""
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    now = time.time() if now is None else now
    host = socket.gethostname()
    journal = not isinstance(study._storage, RDBStorage)
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.system_attrs
        pid = attrs.get(ATTR_PID)
        if attrs.get(ATTR_HOST) == host and pid is not None and int(pid) != os.getpid() and not process_alive(int(pid)):
            out.append(t)
        elif journal and ATTR_BEAT in attrs and now - float(attrs[ATTR_BEAT]) > tune.grace_period_s:
            out.append(t)
    return out


def reap(study: Any, tune: Tune) -> list[int]:
    """Fail the trials of dead workers and enqueue their retries; returns the failed trial numbers."""
    import optuna
    from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
    from optuna.trial import TrialState

    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB heartbeat (no-op for the journal)
    retry = RetryCopy(tune.max_retry)
    for t in stale_trials(study, tune):
        try:
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        retry(study, study._storage.get_trial(t._trial_id))
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(after - before)


# ---------------------------------------------------------------------- the study session of one process
class Session:
    """One process's view of the study: storage, lock, study, tracker, options."""

    def __init__(self, suite: Suite, opts: TuneOptions, *, stage_fns: Mapping[str, StageFn] | None = None,
                 stage_versions: Mapping[str, int] | None = None, console: Any = None, create: bool = False) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.suite, self.opts, self.tune = suite, opts, tune_spec(suite)
        self.stage_fns, self.stage_versions = stage_fns, stage_versions
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.console = console
        self.target = opts.trials or self.tune.n_trials
        self.url = storage_url(suite, opts.storage)
        self.study_name = opts.study or suite.name
        self.lock = StudyLock(self.url, self.study_name)
        with self.lock.hold():  # two processes creating the RDB schema at once collide on a fresh database
            self.storage = open_storage(self.url, self.tune)
        self.directions = [o.optuna_direction for o in self.tune.objectives]
        self.tracker: Any = None
        self.worker_index = 0
        with self.lock.hold():
            self.study = self._open_study(create)
            if opts.track:
                from bench.tracking import Tracker

                self.tracker = Tracker(suite.tracking_uri, artifact_location(suite), suite.experiment, suite.workspace)
                if create:
                    self._parent()
                else:
                    self.tracker.parent_run_id = self.study.user_attrs.get(PARENT)
            started = int(self.study.user_attrs.get(WORKERS, 0))
            self.study.set_user_attr(WORKERS, started + 1)
            self.worker_index = started
        sampler_name = opts.sampler or self.tune.sampler
        self.study.sampler = make_sampler(sampler_name, self.tune, self.tune.seed + self.worker_index)
        if sampler_name == "grid":
            size = math.prod(len(grid_values(d, k)) for k, d in self.tune.search_space.items())
            if self.target > size:
                console.print(f"[yellow]grid has {size} points; --trials {self.target} capped to {size}[/]")
                self.target = size

    def _open_study(self, create: bool) -> Any:
        import optuna

        fp = study_fingerprint(self.suite)
        if create:
            try:
                study = optuna.create_study(storage=self.storage, study_name=self.study_name,
                                            directions=self.directions, load_if_exists=True)
            except ValueError as exc:
                raise ConfigError(f"study {self.study_name!r} in {redact(self.url)}: {exc}; pass --study NEW") from None
        else:
            try:
                study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            except KeyError:
                raise ConfigError(f"study {self.study_name!r} not found in {redact(self.url)}") from None
        if [d.name.lower() for d in study.directions] != self.directions:
            raise ConfigError(
                f"study {self.study_name!r} in {redact(self.url)} optimises "
                f"{[d.name.lower() for d in study.directions]}, the suite asks {self.directions}; pass --study NEW")
        have = study.user_attrs.get(FINGERPRINT)
        if have is None and create:
            study.set_user_attr(FINGERPRINT, fp)
            study.set_user_attr("suite", self.suite.name)
            study.set_user_attr("objectives", [o.metric for o in self.tune.objectives])
        elif have is not None and have != fp:
            raise ConfigError(
                f"study {self.study_name!r} in {redact(self.url)} was created for another configuration of suite "
                f"{self.suite.name!r} (search space, objectives or stages changed); pass --study NEW to start a new one")
        if create and self.tune.enqueue_default:
            params = default_params(self.suite)
            if params:
                study.enqueue_trial(params, user_attrs={"default": True}, skip_if_exists=True)
        return study

    def _parent(self) -> None:
        """Create (or reopen) the study's MLflow parent run; its id is a study user attr."""
        from bench.provenance import git_commit

        tracker = self.tracker
        for run_id in tracker.mark_stale_killed():
            self.console.print(f"[yellow]marked MLflow run {run_id} KILLED (its process is gone)[/]")
        run_id = self.study.user_attrs.get(PARENT)
        if run_id and tracker.reopen(run_id):
            tracker.set_tags(run_id, {"todsynth.n_trials_target": self.target})
            return
        tags = {"todsynth.suite": self.suite.name, "todsynth.study": self.study_name, "optuna.study": self.study_name,
                "optuna.storage": redact(self.url), "todsynth.git_commit": git_commit(),
                "todsynth.n_trials_target": str(self.target), "todsynth.objectives": ",".join(
                    o.metric for o in self.tune.objectives)}
        run_id = tracker.start_parent(f"tune:{self.study_name}", resolved_dict(self.suite), tags,
                                      resolved_yaml(self.suite), kind="study")
        self.study.set_user_attr(PARENT, run_id)
        self.study.set_user_attr("mlflow_tracking_uri", redact(self.suite.tracking_uri))

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
        run_nodes(self.suite, nodes, tracker=self.tracker if self.tracker and self.tracker.parent_run_id else None,
                  stage_fns=self.stage_fns, stage_versions=self.stage_versions, console=self.console,
                  progress=self.opts.progress)
        self.reference()

    def reference(self) -> dict[str, dict[str, float]]:
        """Metric values of the variants constraints are relative to (computed once, kept in the study)."""
        stored = dict(self.study.user_attrs.get(REFERENCE) or {})
        wanted: dict[str, set[str]] = {}
        for c in self.tune.constraints:
            if c.relative_to is not None:
                wanted.setdefault(c.relative_to, set()).add(c.metric)
        if all(m in stored.get(v, {}) for v, ms in wanted.items() for m in ms):
            return stored
        variants = {v.name: v for v in resolve_variants(self.suite)}
        for name, metrics in wanted.items():
            v = variants[name]
            stages: tuple[str, ...] = ("downstream",) if v.kind == "baseline" else (
                ("synthesize", "evaluate") + (("downstream",) if any(m.startswith("downstream_") for m in metrics) else ()))
            self.console.print(f"[bold]tune[/] reference variant {name}: {', '.join(sorted(metrics))}", highlight=False)
            out = self.run_variant(v, stages, self.tracker if self.tracker and self.tracker.parent_run_id else None)
            stored[name] = {m: _number(out["metrics"], m, f"reference variant {name}") for m in sorted(metrics)}
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
            storage = self.study._storage
            storage.set_trial_system_attr(trial._trial_id, ATTR_HOST, socket.gethostname())
            storage.set_trial_system_attr(trial._trial_id, ATTR_PID, os.getpid())
            storage.set_trial_system_attr(trial._trial_id, ATTR_BEAT, time.time())
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

    def run_trial(self, trial: Any) -> None:
        """Suggest, run the stages, log, tell; a failure marks the trial FAIL and stops this worker with the error."""
        import optuna

        t0 = time.perf_counter()
        name = f"trial-{trial.number}"
        run_id = None
        try:
            params = suggest(trial, self.tune)
            variant = trial_variant(self.suite, params, name)
            if self.tracker is not None and self.tracker.parent_run_id:
                seeds = ",".join(str(s) for s in self.suite.seeds)  # a trial's metrics are the seeds' mean
                run_id = self.tracker.start_child(
                    name, run_params(name, seeds, variant_params(self.suite, variant), {}),
                    {"todsynth.kind": "trial", "todsynth.suite": self.suite.name, "optuna.study": self.study_name,
                     "optuna.trial_number": str(trial.number), "optuna.params": json.dumps(params, sort_keys=True),
                     "todsynth.worker": str(self.worker_index), "todsynth.variant": name})
                trial.set_user_attr("mlflow_run_id", run_id)
            with Heartbeat(self.study._storage, trial._trial_id, self.tune.heartbeat_s):
                stage_tracker = self.tracker.with_parent(run_id) if run_id else None
                out = self.run_variant(variant, trial_stages(self.tune), stage_tracker)
            metrics = out["metrics"]
            values = [_number(metrics, o.metric, name) for o in self.tune.objectives]
            cons = constraint_values(self.tune, metrics, self.study.user_attrs.get(REFERENCE) or {})
            numeric = {k: float(v) for k, v in metrics.items()
                       if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(float(v))}
            trial.set_user_attr("metrics", numeric)
            for key, value in cons.items():
                trial.set_constraint(key, value)
            seconds = time.perf_counter() - t0
            if run_id:
                self._log_trial(run_id, out["done"], variant, metrics, cons, seconds)
            self.study.tell(trial, values if len(values) > 1 else values[0])
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if run_id:
                with contextlib.suppress(Exception):
                    self.tracker.end(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
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

    def _log_trial(self, run_id: str, done: Mapping[str, CachedStage], variant: ResolvedVariant,
                   metrics: dict[str, Any], cons: dict[str, float], seconds: float) -> None:
        """The trial's run has a variant run's params and metrics (:func:`bench.results.run_metrics`), plus its
        constraints, time and feasibility."""
        tracker = self.tracker
        if "fid_extractor" in metrics:
            tracker.log_params(run_id, {"fid": run_params(variant.name, "", {}, metrics)["fid"]})
        tracker.log_metrics(run_id, {**run_metrics(metrics), **{f"constraint/{k}": v for k, v in cons.items()},
                                     "trial_seconds": seconds,
                                     "feasible": float(all(v <= 0 for v in cons.values()))})
        for seed in self.suite.seeds:
            syn = done.get(node_key("synthesize", variant.name, seed))
            if syn is None:
                continue
            for rel in syn.artifacts.get("mlflow_artifacts", []):
                path = syn.dir / rel
                if path.exists():
                    tracker.log_artifact(run_id, path, f"synthesize/seed{seed}")
            tracker.set_tags(run_id, {f"todsynth.synthesize_dir.seed{seed}": str(syn.dir)})

    # ------------------------------------------------------------------ the end
    def finish(self) -> tuple[dict[str, Any], Path]:
        """Summarise the study into tune.json (atomically) and the MLflow parent run."""
        with self.lock.hold():
            reap(self.study, self.tune)
            summary = summarize(self.study, self.suite, self.url, self.target)
            path = self.suite.workspace / self.suite.name / TUNE_JSON
            write_results(path, summary)
        parent = self.tracker.parent_run_id if self.tracker is not None else None
        if parent:
            self.tracker.log_artifact(parent, path)
            best = summary["best"]
            if len(best) == 1:
                self.tracker.log_metrics(parent, {f"best/{k}": v for k, v in best[0]["values"].items()})
            self.tracker.log_metrics(parent, {"n_complete": summary["n_complete"], "n_fail": summary["n_fail"],
                                              "pareto_size": len(summary["pareto"])})
            corr = summary["downstream_correlation"]
            if corr is not None:  # the same numbers as tune.json's (and the report's) section
                from bench.correlation import mlflow_metrics

                self.tracker.log_metrics(parent, mlflow_metrics(corr))
                self.tracker.set_tags(parent, {"todsynth.gain_spearman": corr["reason"] or "computed"})
            self.tracker.set_tags(parent, {"todsynth.complete": str(summary["n_complete"] >= self.target).lower()})
            self.tracker.end(parent, "FINISHED")  # a rerun reopens it to add trials
        return summary, path


def suggest(trial: Any, tune: Tune) -> dict[str, Any]:
    """The trial's value of every dimension (enqueued and retried trials return their fixed values)."""
    out: dict[str, Any] = {}
    for key, dim in tune.search_space.items():
        match dim.type:
            case "categorical":
                out[key] = trial.suggest_categorical(key, list(dim.choices or []))
            case "int":
                out[key] = trial.suggest_int(key, int(dim.low or 0), int(dim.high or 0), step=int(dim.step or 1),
                                             log=dim.log)
            case "float":
                out[key] = trial.suggest_float(key, float(dim.low or 0), float(dim.high or 0), step=dim.step,
                                               log=dim.log)
    return out


# ---------------------------------------------------------------------- summary
def _trial_record(t: Any, objectives: list[str]) -> dict[str, Any]:
    values = dict(zip(objectives, t.values, strict=True)) if t.values is not None else None
    cons = t.constraints
    return {
        "number": t.number,
        "state": t.state.name,
        "params": dict(t.params),
        "values": values,
        "metrics": t.user_attrs.get("metrics"),
        "constraints": cons,
        "feasible": all(v <= 0 for v in cons.values()),
        "retry_of": t.system_attrs.get("failed_trial"),
        "default": bool(t.user_attrs.get("default", False)),
        "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        "duration_s": t.duration.total_seconds() if t.duration is not None else None,
    }


def importances(study: Any, objectives: list[str]) -> tuple[dict[str, dict[str, float]], str | None]:
    """Parameter importances per objective (PED-ANOVA, Optuna's default); a note instead when not computable."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"needs at least 2 COMPLETE trials (have {len(complete)})"
    out: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, metric in enumerate(objectives):
                target = None if len(objectives) == 1 else (lambda t, i=i: t.values[i])
                imp = optuna.importance.get_param_importances(study, target=target)
                out[metric] = {k: float(v) for k, v in imp.items()}
    except Exception as exc:  # too few distinct values, a degenerate space ...
        return out, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out, None


def summarize(study: Any, suite: Suite, url: str, target: int) -> dict[str, Any]:
    """The tune.json content: study, storage, directions, trials, best trial(s), Pareto front, importances."""
    from optuna.trial import TrialState

    tune = tune_spec(suite)
    objectives = [o.metric for o in tune.objectives]
    trials = study.get_trials(deepcopy=False)
    records = [_trial_record(t, objectives) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    try:
        front = sorted(study.best_trials, key=lambda t: t.number) if complete else []
    except ValueError:  # no feasible trial
        front = []
    if len(objectives) == 1:
        try:
            best = [study.best_trial] if complete else []
        except ValueError:
            best = []
    else:
        best = front
    imp, note = importances(study, objectives)
    return {
        "study": study.study_name,
        "storage": redact(url),
        "suite": suite.name,
        "directions": [d.name.lower() for d in study.directions],
        "objectives": objectives,
        "constraints": [c.model_dump(mode="json") | {"name": c.name} for c in tune.constraints],
        "reference": study.user_attrs.get(REFERENCE) or {},
        "search_space": {k: d.model_dump(mode="json", exclude_none=True) for k, d in tune.search_space.items()},
        "n_trials_target": target,
        "n_complete": len(complete),
        "n_fail": sum(t.state == TrialState.FAIL for t in trials),
        "mlflow": {"tracking_uri": redact(suite.tracking_uri), "experiment": suite.experiment,
                   "parent_run_id": study.user_attrs.get(PARENT)},
        "trials": records,
        "best": [_trial_record(t, objectives) for t in best],
        "pareto": [_trial_record(t, objectives) for t in front],
        "importances": imp,
        "importances_note": note,
        "downstream_correlation": downstream_correlation(suite, [r for r in records if r["state"] == "COMPLETE"],
                                                         study.user_attrs.get(REFERENCE) or {}),
    }


def downstream_correlation(suite: Suite, records: list[dict[str, Any]], reference: Mapping[str, Mapping[str, float]]
                           ) -> dict[str, Any] | None:
    """Which image metric predicts downstream gain, over the COMPLETE trials (:mod:`bench.correlation`, as the report
    computes it); None when no trial has a downstream mIoU. The real-only value is the study's reference of a baseline
    variant when a constraint made one; else the target is the downstream mIoU (one shared real-only: same ranks, same
    rho)."""
    from bench.correlation import gain_correlations, study_settings
    from bench.schema import KNOWN_METRICS

    real_only = next((float(reference[v.name]["downstream_miou"]) for v in resolve_variants(suite)
                      if v.kind == "baseline" and "downstream_miou" in reference.get(v.name, {})), None)
    settings, target = study_settings([{"name": f"trial-{r['number']}", "metrics": r["metrics"] or {}}
                                       for r in records], real_only)
    if not settings:
        return None
    directions = dict(KNOWN_METRICS) | {m.name: bool(m.higher_is_better) for m in suite.metrics}
    return {"target": target, "real_only_miou": real_only, **gain_correlations(settings, directions)}


def summary_tables(summary: Mapping[str, Any]) -> list[Any]:
    """Rich tables: the best trial(s) / Pareto front, and parameter importances."""
    from rich.table import Table

    objectives = list(summary["objectives"])
    params = list(summary["search_space"])
    rows = summary["best"] if len(objectives) == 1 else summary["pareto"]
    title = "best trial" if len(objectives) == 1 else f"Pareto front ({len(rows)} trials)"
    arrows = {"maximize": "↑", "minimize": "↓"}
    best = Table(title=f"{summary['study']}: {title} of {summary['n_complete']} complete")
    best.add_column("trial", justify="right")
    for p in params:
        best.add_column(p, justify="right")
    for o, d in zip(objectives, summary["directions"], strict=True):
        best.add_column(f"{o} {arrows[d]}", justify="right")
    if summary["constraints"]:
        best.add_column("feasible")
    for r in rows:
        cells = [str(r["number"])] + [_fmt(r["params"].get(p)) for p in params]
        cells += [_fmt((r["values"] or {}).get(o)) for o in objectives]
        if summary["constraints"]:
            cells.append("yes" if r["feasible"] else "no")
        best.add_row(*cells)
    imp = Table(title="parameter importances (PED-ANOVA)")
    imp.add_column("parameter")
    for o in objectives:
        imp.add_column(o, justify="right")
    for p in params:
        imp.add_row(p, *[_fmt(summary["importances"].get(o, {}).get(p)) for o in objectives])
    if summary.get("importances_note"):
        imp.caption = f"not computed: {summary['importances_note']}"
    return [best, imp]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ---------------------------------------------------------------------- entry points
def worker_threads(workers: int, cpus: int | None, env: Mapping[str, str]) -> int | None:
    """Torch intra-op threads for each of ``workers`` tune processes on one machine (None: leave torch's default).

    Every process defaults to one thread per core, so W workers oversubscribe the CPU W times; OpenMP threads
    then spin against each other (tiny-preset generator training on 2 cores: 20 it/s alone with 1 thread, 2 it/s
    with 2 threads beside another busy process). Cores are split evenly instead, unless the user pinned
    ``OMP_NUM_THREADS`` (respected as given).
    """
    if workers <= 1 or env.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cpus or 1) // workers)


def _work_sharing_cpu(session: Session, workers: int) -> int:
    """``session.work()`` with this process's share of the cores (:func:`worker_threads`); returns trials run."""
    from bench.perf import torch_threads

    with torch_threads(worker_threads(workers, os.cpu_count(), os.environ)):
        return session.work()


def _spawned_worker(suite: Suite, opts: TuneOptions, stage_fns: Mapping[str, StageFn] | None,
                    stage_versions: Mapping[str, int] | None) -> None:
    """Body of a ``--workers`` child process (spawned): join the study and work until the cap."""
    try:
        session = Session(suite, opts, stage_fns=stage_fns, stage_versions=stage_versions)
        _work_sharing_cpu(session, opts.workers)
    except TodsynthError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] tune worker {os.getpid()}: {exc}", highlight=False)
        raise SystemExit(2) from None


def _check_picklable(stage_fns: Mapping[str, StageFn] | None, stage_versions: Mapping[str, int] | None) -> None:
    """Spawned workers receive the stage functions pickled (by reference): refuse ones they could not import."""
    try:
        pickle.dumps((stage_fns, stage_versions))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(f"--workers > 1: the stage functions must be importable module-level callables to reach "
                          f"spawned workers ({type(exc).__name__}: {exc})") from None


def tune_suite(
    suite: Suite,
    opts: TuneOptions,
    *,
    stage_fns: Mapping[str, StageFn] | None = None,
    stage_versions: Mapping[str, int] | None = None,
    console: Any = None,
) -> TuneOutcome:
    """Create or continue the study, run trials here and in ``opts.workers - 1`` spawned processes, summarise.

    ``stage_fns``/``stage_versions`` (default :mod:`bench.stages`) run in this process and in the spawned workers,
    which receive them pickled: with ``workers > 1`` they must be importable module-level callables.
    """
    tune_spec(suite)
    if opts.workers < 1:
        raise ConfigError(f"--workers {opts.workers}: needs at least 1")
    if opts.trials is not None and opts.trials < 1:
        raise ConfigError(f"--trials {opts.trials}: needs at least 1")
    if opts.workers > 1:
        _check_picklable(stage_fns, stage_versions)
    preflight(suite)
    t0 = time.perf_counter()
    (suite.workspace / suite.name).mkdir(parents=True, exist_ok=True)
    StageCache(suite.workspace).cleanup_stale()
    session = Session(suite, opts, stage_fns=stage_fns, stage_versions=stage_versions, console=console, create=True)
    session.prepare()
    complete, running = session.counts()
    session.console.print(
        f"[bold]tune[/] study {session.study_name} in {redact(session.url)}: {complete} of {session.target} trials "
        f"complete, {running} running; {opts.workers} worker(s) here", highlight=False, soft_wrap=True)
    procs = []
    ctx = multiprocessing.get_context("spawn")
    for _ in range(opts.workers - 1):
        p = ctx.Process(target=_spawned_worker, args=(suite, opts, stage_fns, stage_versions), daemon=False)
        p.start()
        procs.append(p)
    ran = 0
    try:
        ran = _work_sharing_cpu(session, opts.workers)  # the shared stages above ran with every core
    except BaseException as exc:
        for p in procs:
            if p.is_alive():
                p.terminate()
        parent = session.tracker.parent_run_id if session.tracker is not None else None
        if parent:
            with contextlib.suppress(Exception):
                session.tracker.end(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        for p in procs:
            p.join()
    codes = [p.exitcode for p in procs]
    for i, code in enumerate(codes, start=1):
        if code not in (0, None):
            session.console.print(f"[yellow]worker process {i} exited with code {code}[/]")
    summary, path = session.finish()
    return TuneOutcome(summary=summary, path=path, trials_run_here=ran, worker_exitcodes=codes,
                       seconds=time.perf_counter() - t0)


def read_tune_json(path: Path) -> dict[str, Any]:
    """Load a tune.json."""
    return json.loads(Path(path).read_text())


__all__ = [
    "Session", "StudyLock", "TuneOptions", "TuneOutcome", "base_variant", "constraint_values",
    "default_params", "distributions", "journal_path", "read_tune_json", "redact", "storage_url", "summarize",
    "summary_tables", "trial_stages", "trial_variant", "tune_suite",
]
