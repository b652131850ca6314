"""The write side: :class:`Tracker`, one MLflow client bound to a store, an experiment and a parent run.

Layout: experiment ``todsynth/<suite>`` (per suite) -> parent run per ``bench run`` invocation (resolved
suite YAML artifact, tags: git commit, package versions, config hash, ``todsynth.kind=suite``) -> a
child run per stage that did new work (flat params = the stage spec, metrics, artifacts such as the
sample grid and per-class IoU table).

After the stages, one run per variant and seed (``todsynth.kind=variant``; ``baseline`` for real-only) carries the
variant's params and final metrics under the same names for every variant (``bench.results.variant_runs``), links
to its stage runs (tags ``todsynth.run.<stage>`` and the run description) and its sample grid: the runs to
compare. A rerun that changes nothing reuses them (tag ``todsynth.variant_hash``).

Reused cached stages are NOT logged again as children: their metrics already live in the child run of
the invocation that computed them, whose id the cache marker keeps. The parent lists every stage with
``status`` (computed/cached) and that original run id in its ``stages.json`` artifact, so no rerun duplicates
children of new work.

Runs left RUNNING by a killed process (``todsynth.pid``/``todsynth.host`` tags, process gone) are marked
KILLED at the start of the next invocation. All writes go through one client in the main process and
retry with backoff on sqlite ``database is locked``.

Imports :mod:`bench.tracking.limits`, :mod:`bench.tracking.server` (``opening_store``, ``server_problem``),
:mod:`bench.cache` (``process_alive``) and mlflow (lazily, inside the methods).
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from bench.cache import process_alive
from bench.tracking.limits import BATCH, MAX_PARAM_VALUE, MAX_TAG_VALUE, clean_key, cut, flatten, retry
from bench.tracking.server import StoreDamagedError, opening_store, server_problem


class Tracker:
    """One MLflow client bound to a store, an experiment and (after :meth:`start_parent`) a parent run."""

    def __init__(self, tracking_uri: str, artifact_location: str | None, experiment: str, lock_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        if (problem := server_problem(tracking_uri)) is not None:
            raise StoreDamagedError(problem)
        lock_dir.mkdir(parents=True, exist_ok=True)
        # The first client on a fresh sqlite file runs alembic migrations: one process at a time.
        with FileLock(str(lock_dir / ".mlflow.lock")), opening_store(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = retry(self.client.get_experiment_by_name, experiment)
            if exp is None:
                if artifact_location is not None and "://" not in artifact_location:  # None: the server's default
                    Path(artifact_location).mkdir(parents=True, exist_ok=True)
                self.experiment_id = retry(self.client.create_experiment, experiment, artifact_location=artifact_location)
            else:
                self.experiment_id = exp.experiment_id
        self.parent_run_id: str | None = None

    # ------------------------------------------------------------------ runs
    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str], resolved_yaml: str,
                     kind: str = "suite") -> str:
        """Create the top run (``todsynth.kind=suite``, or ``study`` for ``bench tune``); returns its run id.

        The run gets the flattened params and the resolved YAML (``suite.resolved.yaml``).
        """
        run = self._create(run_name, {**tags, "todsynth.kind": kind})
        self.parent_run_id = run
        self.log_params(run, params)
        self.log_text(run, resolved_yaml, "suite.resolved.yaml")
        return run

    def start_child(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Create a child run of the parent (``mlflow.parentRunId``) for one stage's new work."""
        if self.parent_run_id is None:
            raise RuntimeError("start_parent() first")
        run = self._create(run_name, {**tags, "mlflow.parentRunId": self.parent_run_id})
        self.log_params(run, params)
        return run

    def _create(self, run_name: str, tags: dict[str, str]) -> str:
        tags = {**tags, "todsynth.pid": str(os.getpid()), "todsynth.host": socket.gethostname()}
        tags = {clean_key(k): cut(str(v), MAX_TAG_VALUE) for k, v in tags.items()}
        run = retry(self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        run_id: str = run.info.run_id
        return run_id

    def variant_run(self, run_name: str, params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str],
                    identity: str, artifacts: list[Path]) -> tuple[str, bool]:
        """One finished run per variant and seed under the parent; ``(run_id, reused)``.

        ``identity`` (tag ``todsynth.variant_hash``) hashes what the run shows: a FINISHED run of this experiment
        with the same identity is reused, so a cached rerun adds no duplicate variant runs.
        """
        found = retry(self.client.search_runs, [self.experiment_id],
                      f"tags.`todsynth.variant_hash` = '{identity}' and attributes.status = 'FINISHED'", max_results=1)
        if found:
            return found[0].info.run_id, True
        run = self.start_child(run_name, params, {**tags, "todsynth.variant_hash": identity})
        self.log_metrics(run, metrics)
        for path in artifacts:
            self.log_artifact(run, path)
        self.end(run, "FINISHED")
        return run, False

    def run_link(self, run_id: str) -> str:
        """The MLflow UI's relative link to a run of this experiment (for run descriptions)."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"

    def reopen(self, run_id: str) -> bool:
        """Make an existing run of this experiment the parent again and mark it RUNNING (a continued study).

        Returns False when this store has no such run (e.g. the study moved to another tracking server).
        """
        from mlflow.exceptions import MlflowException

        try:
            run = retry(self.client.get_run, run_id)
        except MlflowException:
            return False
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return False
        retry(self.client.update_run, run_id, status="RUNNING")
        self.set_tags(run_id, {"todsynth.pid": os.getpid(), "todsynth.host": socket.gethostname()})
        self.parent_run_id = run_id
        return True

    def with_parent(self, run_id: str) -> Tracker:
        """A tracker sharing this client whose children hang under ``run_id`` (stage runs of a tuning trial)."""
        other = copy.copy(self)
        other.parent_run_id = run_id
        return other

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """Terminate a run (FINISHED, FAILED or KILLED)."""
        retry(self.client.set_terminated, run_id, status=status)

    # ------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Flatten and log params (values cut to MLflow's limit, 100 per batch)."""
        from mlflow.entities import Param

        flat = [Param(clean_key(k), cut(v, MAX_PARAM_VALUE)) for k, v in flatten(params).items()]
        for i in range(0, len(flat), BATCH):
            retry(self.client.log_batch, run_id, params=flat[i : i + BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Set tags (values cut to MLflow's limit)."""
        from mlflow.entities import RunTag

        items = [RunTag(clean_key(k), cut(str(v), MAX_TAG_VALUE)) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            retry(self.client.log_batch, run_id, tags=items[i : i + BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Log the numeric entries of a (nested) metrics dict as ``a/b`` keys; others are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(clean_key(k), float(v), now, step)
            for k, v in _numeric(metrics).items()
        ]
        for i in range(0, len(items), 1000):
            retry(self.client.log_batch, run_id, metrics=items[i : i + 1000])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's files) into the run's artifacts."""
        if path.is_dir():
            retry(self.client.log_artifacts, run_id, str(path), artifact_path)
        else:
            retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file``."""
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(artifact_file).name
            p.write_text(text)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(run_id, p, None if parent == "." else parent)

    # ------------------------------------------------------------------ housekeeping
    def mark_stale_killed(self) -> list[str]:
        """Mark RUNNING runs whose recorded process (on this host) is gone as KILLED; returns their ids."""
        from mlflow.entities import ViewType

        host = socket.gethostname()
        killed: list[str] = []
        exps = retry(self.client.search_experiments, view_type=ViewType.ALL)
        ids = [e.experiment_id for e in exps]
        if not ids:
            return killed
        runs = retry(self.client.search_runs, ids, "attributes.status = 'RUNNING'", max_results=5000)
        for run in runs:
            pid = run.data.tags.get("todsynth.pid")
            if not pid or run.data.tags.get("todsynth.host") != host:
                continue
            if not process_alive(int(pid)):  # this process counts as alive
                self.end(run.info.run_id, "KILLED")
                killed.append(run.info.run_id)
        return killed


def _numeric(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict -> flat ``a/b`` keys for int/float values (bools and strings dropped)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_numeric(v, key))
        elif isinstance(v, int | float) and not isinstance(v, bool) and v == v:  # drop NaN
            out[key] = float(v)
    return out
