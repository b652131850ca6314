"""What a report shows, read from MLflow and cross-checked before anything is drawn: :func:`load_report_data`.

The suite run (latest FINISHED, or a given run id), its ``results.json`` and ``stages.json`` artifacts, its
per-variant runs' metrics (which must equal the artifact's), the workspace's ``<suite>/results.json`` (a
cross-check only) and the latest tuning study's finished trials.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report.provenance import display_path
from bench.schema import Suite
from todsynth.errors import TodsynthError

REL_TOL = 1e-9


class ReportError(TodsynthError):
    """The report cannot be built (no store, no finished run, inconsistent records)."""


@dataclass
class ReportData:
    """Everything a report shows, gathered from MLflow before anything is rendered."""

    suite: str
    experiment: str
    tracking_uri: str
    parent: dict[str, Any]
    results: dict[str, Any]
    stages: list[dict[str, Any]]
    current_config_hash: str
    study: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workspace: Path | None = None
    axes: tuple[str, str] = ("fid", "mask_miou")  # the tuning plot's (x, y): tuning_axes(suite)

    @property
    def study_name(self) -> str | None:
        """The tuning study's name (tag ``optuna.study``, else its run name); None without a study."""
        return self.study["tags"].get("optuna.study", self.study["run_name"]) if self.study else None


def _check_store(suite: Suite) -> None:
    """Refuse a missing sqlite store up front (:func:`bench.tracking.check_store`), as a report error."""
    from bench.tracking import StoreNotFoundError, check_store

    try:
        check_store(suite.tracking_uri, suite.workspace)
    except StoreNotFoundError as exc:
        raise ReportError(str(exc)) from None


def _parent_run(suite: Suite, run_id: str | None) -> dict[str, Any]:
    from bench.tracking import find_runs, get_run_record

    if run_id is not None:
        try:
            run = get_run_record(suite.tracking_uri, run_id)
        except Exception as exc:  # mlflow's RESOURCE_DOES_NOT_EXIST
            raise ReportError(f"--run {run_id}: no such MLflow run in {suite.tracking_uri} ({type(exc).__name__})") from None
        if run["tags"].get("todsynth.kind") != "suite":
            raise ReportError(f"--run {run_id} is not a suite run (todsynth.kind={run['tags'].get('todsynth.kind')!r})")
        return run
    runs = find_runs(suite.tracking_uri, suite.experiment, "suite", status="FINISHED")
    if not runs:
        raise ReportError(
            f"no finished `bench run` of suite {suite.name!r} in experiment {suite.experiment!r} at {suite.tracking_uri}; "
            f"run `todsynth bench run` first"
        )
    return runs[0]


def cross_check(results: dict[str, Any], tracking_uri: str) -> list[str]:
    """Disagreements between a results dict and its MLflow variant runs, one line each (empty: they agree).

    The runs are one per variant and seed, listed in ``results["mlflow"]["variant_runs"]``: every metric the run
    should carry, as :func:`bench.results.run_metrics` derives it, must be logged with the same value.
    """
    from bench.results import variant_runs
    from bench.tracking import clean_key, get_run_record

    ids = results.get("mlflow", {}).get("variant_runs")
    if ids is None:
        return ["results.json names no MLflow variant runs (written before todsynth logged one run per variant); "
                "rerun `todsynth bench run`"]
    problems = []
    for r in variant_runs(results):
        where = f"{r['variant']} seed {r['seed']}"
        run_id = ids.get(r["variant"], {}).get(str(r["seed"]))
        if run_id is None:
            problems.append(f"{where}: no variant run")
            continue
        logged = get_run_record(tracking_uri, run_id)["metrics"]
        for key, val in r["metrics"].items():
            got = logged.get(clean_key(key))
            if got is None:
                problems.append(f"{where}: {key} not logged to run {run_id}")
            elif not math.isclose(got, val, rel_tol=REL_TOL, abs_tol=1e-12):
                problems.append(f"{where}: {key}: run {run_id} has {got!r}, results.json {val!r}")
    return problems


def load_report_data(suite: Suite, scratch: Path, run_id: str | None = None) -> ReportData:
    """Read the suite run (latest finished, or ``run_id``), its artifacts, and tuning trials from MLflow."""
    from bench.suites import config_hash
    from bench.tracking import fetch_artifact

    _check_store(suite)
    uri = suite.tracking_uri
    parent = _parent_run(suite, run_id)
    rid = parent["run_id"]
    res_path = fetch_artifact(uri, rid, "results.json", scratch / rid)
    if res_path is None:
        raise ReportError(f"MLflow run {rid} has no results.json artifact (did the run finish?); rerun `todsynth bench run`")
    results = json.loads(res_path.read_text())
    stages_path = fetch_artifact(uri, rid, "stages.json", scratch / rid)
    stages = json.loads(stages_path.read_text()) if stages_path is not None else []
    problems = cross_check(results, uri)
    if problems:
        raise ReportError(f"MLflow run {rid}: its metrics disagree with its results.json artifact: " + "; ".join(problems[:5]))
    data = ReportData(suite=suite.name, experiment=suite.experiment, tracking_uri=uri, parent=parent, results=results,
                      stages=stages, current_config_hash=config_hash(suite), workspace=suite.workspace)
    if results.get("config_hash") != data.current_config_hash:
        data.notes.append(
            f"The suite file's config hash is now {data.current_config_hash[:12]}; this report shows the last finished "
            f"run, made with config {str(results.get('config_hash'))[:12]}. Rerun `todsynth bench run` to refresh it."
        )
    _workspace_cross_check(suite, data)
    data.axes = tuning_axes(suite)
    _load_trials(suite, data)
    return data


def _workspace_cross_check(suite: Suite, data: ReportData) -> None:
    """Compare with ``<workspace>/<suite>/results.json`` when it belongs to the same run."""
    from bench.results import read_results, results_path
    from todsynth.errors import ConfigError

    path = results_path(suite)
    if not path.is_file():
        return
    try:
        ws = read_results(path)
    except ConfigError as exc:  # the report reads MLflow's copy; the workspace's damaged one is named, not fatal
        data.notes.append(f"{exc}; this report uses the results.json logged to MLflow run {data.parent['run_id']}. "
                          "Rerun `todsynth bench run` to rewrite the workspace's copy.")
        return
    ws_run = ws.get("mlflow", {}).get("parent_run_id")
    if ws_run != data.parent["run_id"]:
        data.notes.append(f"{display_path(path, suite.workspace)} belongs to MLflow run {ws_run}, not to the reported "
                          f"run {data.parent['run_id']}.")
        return
    if _numbers(ws["variants"]) != _numbers(data.results["variants"]):
        raise ReportError(f"{path} differs from the results.json logged to MLflow run {data.parent['run_id']}")


def _numbers(variants: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(v["name"], json.dumps(v["metrics"], sort_keys=True)) for v in variants]


def tuning_axes(suite: Suite) -> tuple[str, str]:
    """The tuning plot's (x, y) metrics, from the suite's tune objectives.

    y is the first objective, x the second; with one objective, x is FID (or mask mIoU when FID is the objective);
    without ``tune``, FID vs mask mIoU.
    """
    objectives = [o.metric for o in suite.tune.objectives] if suite.tune is not None else []
    if len(objectives) >= 2:
        return objectives[1], objectives[0]
    if objectives:
        return ("mask_miou" if objectives[0] == "fid" else "fid"), objectives[0]
    return "fid", "mask_miou"


def _load_trials(suite: Suite, data: ReportData) -> None:
    """Fill ``data.study`` and ``data.trials`` from the latest tuning study.

    The trials are the finished ones (``todsynth.kind=trial`` children of a ``study`` run) with both axis metrics
    (``x``, ``y``: ``data.axes``); ``params`` are the tuned ones (tag ``optuna.params``), ``feasible`` from the
    trial's constraints.
    """
    from bench.tracking import find_children, find_runs

    studies = find_runs(suite.tracking_uri, suite.experiment, "study", status=None)
    if not studies:
        return
    finished = [s for s in studies if s["status"] == "FINISHED"]
    data.study = (finished or studies)[0]
    children = find_children(suite.tracking_uri, data.study)
    if any(c["tags"].get("todsynth.kind") == "trial" for c in children):
        children = [c for c in children if c["tags"].get("todsynth.kind") == "trial"]
    for run in children:
        if run["status"] != "FINISHED":
            continue
        x, y = (_trial_metric(run["metrics"], m) for m in data.axes)
        if x is None or y is None:
            continue
        number = run["tags"].get("optuna.trial_number", "")
        try:
            params = json.loads(run["tags"]["optuna.params"])
        except (KeyError, json.JSONDecodeError):
            params = {k: v for k, v in run["params"].items() if k.startswith(("crfm.", "sampling."))}
        data.trials.append({"number": int(number) if number.isdigit() else None, "run_id": run["run_id"],
                            "x": x, "y": y, "params": params, "metrics": dict(run["metrics"]),
                            "feasible": run["metrics"].get("feasible", 1.0) > 0})
    data.trials.sort(key=lambda t: (t["number"] is None, t["number"] or 0))


def _trial_metric(metrics: dict[str, float], name: str) -> float | None:
    """``name`` or ``<prefix>/name`` (trial runs may namespace their objective values)."""
    if name in metrics:
        return float(metrics[name])
    hits = [v for k, v in metrics.items() if k.endswith("/" + name)]
    return float(hits[0]) if len(hits) == 1 else None
