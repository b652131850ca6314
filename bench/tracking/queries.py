"""The read side: runs, children and artifacts of a store as plain dicts and files.

That is what the report and the tests read, so callers never handle mlflow types.

Imports :mod:`bench.tracking.limits` and mlflow (lazily, inside the functions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.tracking.limits import retry
from bench.tracking.server import opening_store


def run_record(run: Any) -> dict[str, Any]:
    """An MLflow Run -> a plain dict, so callers never handle mlflow types.

    Keys: ``run_id``, ``run_name``, ``status``, ``start_time``/``end_time`` in ms, ``experiment_id``, ``tags``,
    ``params``, ``metrics``.
    """
    info, data = run.info, run.data
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "experiment_id": info.experiment_id,
        "tags": dict(data.tags),
        "params": dict(data.params),
        "metrics": dict(data.metrics),
    }


def _reader(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id_by_name(tracking_uri: str, experiment: str) -> str | None:
    """Id of the experiment named ``experiment`` (None when the store has no such experiment)."""
    with opening_store(tracking_uri):
        exp = retry(_reader(tracking_uri).get_experiment_by_name, experiment)
    return None if exp is None else exp.experiment_id


def find_runs(
    tracking_uri: str, experiment: str, kind: str, status: str | None = "FINISHED", suite: str | None = None
) -> list[dict[str, Any]]:
    """Runs tagged ``todsynth.kind=<kind>`` (optionally of ``status`` and ``todsynth.suite``), newest first."""
    exp_id = experiment_id_by_name(tracking_uri, experiment)
    if exp_id is None:
        return []
    query = f"tags.`todsynth.kind` = '{kind}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    if suite is not None:
        query += f" and tags.`todsynth.suite` = '{suite}'"
    runs = retry(_reader(tracking_uri).search_runs, [exp_id], query, max_results=10000,
                 order_by=["attributes.start_time DESC"])
    return [run_record(r) for r in runs]


def get_run_record(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """One run by id, as :func:`run_record` (raises mlflow's error when it does not exist)."""
    return run_record(retry(_reader(tracking_uri).get_run, run_id))


def find_children(tracking_uri: str, parent: dict[str, Any]) -> list[dict[str, Any]]:
    """Child runs (``mlflow.parentRunId``) of a run record, oldest first."""
    runs = retry(
        _reader(tracking_uri).search_runs, [parent["experiment_id"]],
        f"tags.mlflow.parentRunId = '{parent['run_id']}'", max_results=10000, order_by=["attributes.start_time ASC"],
    )
    return [run_record(r) for r in runs]


def list_run_artifacts(tracking_uri: str, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run (recursive), as paths relative to the run's artifact root."""
    client = _reader(tracking_uri)
    out: list[str] = []
    for item in retry(client.list_artifacts, run_id, path):
        if item.is_dir:
            out += list_run_artifacts(tracking_uri, run_id, item.path)
        else:
            out.append(item.path)
    return out


def fetch_artifact(tracking_uri: str, run_id: str, path: str, dst_dir: Path) -> Path | None:
    """Download one artifact of a run into ``dst_dir``; None when the run has no such artifact."""
    parent = str(Path(path).parent)
    names = {a.path for a in retry(_reader(tracking_uri).list_artifacts, run_id, None if parent == "." else parent)}
    if path not in names:
        return None
    dst_dir.mkdir(parents=True, exist_ok=True)
    quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no tqdm bar per small file
    try:
        return Path(retry(_reader(tracking_uri).download_artifacts, run_id, path, str(dst_dir)))
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet
