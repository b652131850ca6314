"""The study itself: opening it, its workers and its MLflow study run.

Open or create it in its storage, refuse one made for another configuration, count the workers that joined it,
and its MLflow study run (started or reopened, summarised and ended).

The tracker is passed in (:class:`bench.tracking.Tracker`); nothing here imports MLflow. Optuna is imported inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.schema import Suite, resolve_variants
from bench.suites import hashed_dict, resolved_dict, resolved_yaml, suite_digest
from bench.tune.space import (
    base_variant,
    default_params,
    reference_metrics,
    reference_stages,
    trial_stages,
    tune_spec,
)
from bench.tune.storage import redact
from todsynth.errors import ConfigError

# study user attrs
FINGERPRINT = "todsynth:fingerprint"
PARENT = "mlflow_parent_run_id"
REFERENCE = "todsynth:reference"
STAGES = "todsynth:stages"
WORKERS = "todsynth:workers_started"
# tune: keys that may change between invocations of one study (they do not change what a trial computes).
RUNTIME_TUNE_KEYS = ("n_trials", "timeout_s", "storage", "sampler", "seed", "heartbeat_s", "grace_s", "max_retry",
                     "enqueue_default")


def study_fingerprint(suite: Suite) -> str:
    """Hash of what a trial computes (:func:`bench.suites.hashed_dict` minus the runtime-only tune keys)."""
    data = hashed_dict(suite)
    data["tune"] = {k: v for k, v in (data.get("tune") or {}).items() if k not in RUNTIME_TUNE_KEYS}
    return suite_digest(data, suite)


def study_stages(suite: Suite, stage_versions: Mapping[str, int] | None = None) -> dict[str, str]:
    """Cache keys of what every trial builds on, and the code tags of what each trial runs.

    The shared stages of the base variant's graph, every stage of the constraints' reference variants, and
    ``code:<stage>`` for the trial stages: what :func:`study_fingerprint` (the suite's settings) cannot see, such as
    new weights at the same path, an edited preset or another todsynth version.
    """
    from bench import stages as stage_table
    from bench.engine import graph_hashes, stage_code_version
    from bench.graph import variant_graph

    versions = stage_versions if stage_versions is not None else stage_table.STAGE_VERSIONS
    tune = tune_spec(suite)
    shared = variant_graph(suite, base_variant(suite), trial_stages(tune))
    hashes = graph_hashes(shared, versions)
    keys = {n.key: hashes[n.key] for n in shared if n.variant is None}
    by_name = {v.name: v for v in resolve_variants(suite)}
    for name, metrics in sorted(reference_metrics(tune).items()):
        v = by_name[name]
        keys.update(graph_hashes(variant_graph(suite, v, reference_stages(v, metrics)), versions))
    keys.update({f"code:{stage}": stage_code_version(stage, versions) for stage in trial_stages(tune)})
    return keys


def artifact_location(suite: Suite) -> str | None:
    """Artifact root of a new experiment; None leaves it to the tracking server.

    ``tracking.artifacts`` when set; with an http(s) tracking server and none set, None: the server's own (proxied)
    root, so workers on other machines upload through it; else ``<ws>/mlartifacts``.
    """
    if suite.tracking.artifacts is None and suite.tracking_uri.startswith(("http://", "https://")):
        return None
    return suite.artifact_location


def open_study(storage: Any, suite: Suite, name: str, url: str, *, create: bool,
               stage_versions: Mapping[str, int] | None = None) -> Any:
    """Create (``create``, enqueueing the default trial) or load the study; returns the Optuna study.

    A study records :func:`study_stages` when first opened (a study from before the record gets it then).

    Raises:
        ConfigError: the study was made with other objectives or for another configuration of the suite
            (:func:`study_fingerprint`), its trials ran on other stages (:func:`study_stages`: their values would
            not compare), or it cannot be created or found.
    """
    import optuna

    tune = tune_spec(suite)
    directions = [o.optuna_direction for o in tune.objectives]
    if create:
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
        except ValueError as exc:
            raise ConfigError(f"study {name!r} in {redact(url)}: {exc}; pass --study NEW") from None
    else:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(f"study {name!r} not found in {redact(url)}") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"study {name!r} in {redact(url)} optimises "
            f"{[d.name.lower() for d in study.directions]}, the suite asks {directions}; pass --study NEW")
    fp = study_fingerprint(suite)
    have = study.user_attrs.get(FINGERPRINT)
    if have is None and create:
        study.set_user_attr(FINGERPRINT, fp)
        study.set_user_attr("suite", suite.name)
        study.set_user_attr("objectives", [o.metric for o in tune.objectives])
    elif have is not None and have != fp:
        raise ConfigError(
            f"study {name!r} in {redact(url)} was created for another configuration of suite "
            f"{suite.name!r} (search space, objectives or stages changed); pass --study NEW to start a new one")
    stages = study_stages(suite, stage_versions)
    ran_on = study.user_attrs.get(STAGES)
    if ran_on is None:
        study.set_user_attr(STAGES, stages)
    elif ran_on != stages:
        changed = sorted(k for k in stages.keys() | ran_on.keys() if stages.get(k) != ran_on.get(k))
        raise ConfigError(
            f"study {name!r} in {redact(url)} ran its trials on other inputs: {', '.join(changed)} changed since (new "
            "weights at the same path, an edited preset or another todsynth version), so new trials would not "
            "compare with its old ones; pass --study NEW to start a new one")
    if create and tune.enqueue_default:
        params = default_params(suite)
        if params:
            study.enqueue_trial(params, user_attrs={"default": True}, skip_if_exists=True)
    return study


def join_study(study: Any) -> int:
    """Count this process among the study's workers; returns its index (0 for the first ever). Call under the lock."""
    started = int(study.user_attrs.get(WORKERS, 0))
    study.set_user_attr(WORKERS, started + 1)
    return started


def start_study_run(tracker: Any, study: Any, suite: Suite, *, url: str, target: int, console: Any) -> None:
    """Create (or reopen) the study's MLflow parent run; its id is a study user attr."""
    from bench.provenance import git_commit

    for run_id in tracker.mark_stale_killed():
        console.print(f"[yellow]marked MLflow run {run_id} KILLED (its process is gone)[/]")
    run_id = study.user_attrs.get(PARENT)
    if run_id and tracker.reopen(run_id):
        tracker.set_tags(run_id, {"todsynth.n_trials_target": target})
        return
    name = study.study_name
    tags = {"todsynth.suite": suite.name, "todsynth.study": name, "optuna.study": name,
            "optuna.storage": redact(url), "todsynth.git_commit": git_commit(),
            "todsynth.n_trials_target": str(target), "todsynth.objectives": ",".join(
                o.metric for o in tune_spec(suite).objectives)}
    run_id = tracker.start_parent(f"tune:{name}", resolved_dict(suite), tags, resolved_yaml(suite), kind="study")
    study.set_user_attr(PARENT, run_id)
    study.set_user_attr("mlflow_tracking_uri", redact(suite.tracking_uri))


def close_study_run(tracker: Any, summary: Mapping[str, Any], path: Path, target: int) -> None:
    """Log tune.json, the best values, counts and the downstream correlation on the study run; end it FINISHED."""
    from bench.correlation import mlflow_metrics

    parent = tracker.parent_run_id
    tracker.log_artifact(parent, path)
    best = summary["best"]
    if len(best) == 1:
        tracker.log_metrics(parent, {f"best/{k}": v for k, v in best[0]["values"].items()})
    tracker.log_metrics(parent, {"n_complete": summary["n_complete"], "n_fail": summary["n_fail"],
                                 "pareto_size": len(summary["pareto"])})
    corr = summary["downstream_correlation"]
    if corr is not None:  # the same numbers as tune.json's (and the report's) section
        tracker.log_metrics(parent, mlflow_metrics(corr))
        tracker.set_tags(parent, {"todsynth.gain_spearman": corr["reason"] or "computed"})
    tracker.set_tags(parent, {"todsynth.complete": str(summary["n_complete"] >= target).lower()})
    tracker.end(parent, "FINISHED")  # a rerun reopens it to add trials
