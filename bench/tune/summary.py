"""What a study amounts to: the ``tune.json`` content and its rich tables.

The content is the trials, best trial(s), Pareto front, importances, and which image metric predicts the downstream
gain.

Reads the study only; writing tune.json and the MLflow study run are the session's. Optuna and rich are imported
inside.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.correlation import gain_correlations, study_settings
from bench.schema import KNOWN_METRICS, Suite
from bench.tune.space import real_only_miou, tune_spec
from bench.tune.storage import redact
from bench.tune.study import PARENT, REFERENCE

TUNE_JSON = "tune.json"


def trial_record(t: Any, objectives: list[str]) -> dict[str, Any]:
    """One trial as tune.json lists it: state, params, objective values, metrics, constraints, retry, run id."""
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


def best_and_front(study: Any, n_objectives: int) -> tuple[list[Any], list[Any]]:
    """(best trial(s), Pareto front) among feasible COMPLETE trials; with several objectives best is the front."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return [], []
    try:
        front = sorted(study.best_trials, key=lambda t: t.number)
    except ValueError:  # no feasible trial
        front = []
    if n_objectives > 1:
        return front, front
    try:
        return [study.best_trial], front
    except ValueError:
        return [], front


def summarize(study: Any, suite: Suite, url: str, target: int) -> dict[str, Any]:
    """The tune.json content: study, storage, directions, trials, best trial(s), Pareto front, importances."""
    from optuna.trial import TrialState

    tune = tune_spec(suite)
    objectives = [o.metric for o in tune.objectives]
    trials = study.get_trials(deepcopy=False)
    records = [trial_record(t, objectives) for t in trials]
    best, front = best_and_front(study, len(objectives))
    imp, note = importances(study, objectives)
    reference = study.user_attrs.get(REFERENCE) or {}
    return {
        "study": study.study_name,
        "storage": redact(url),
        "suite": suite.name,
        "directions": [d.name.lower() for d in study.directions],
        "objectives": objectives,
        "constraints": [c.model_dump(mode="json") | {"name": c.name} for c in tune.constraints],
        "reference": reference,
        "search_space": {k: d.model_dump(mode="json", exclude_none=True) for k, d in tune.search_space.items()},
        "n_trials_target": target,
        "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "n_fail": sum(t.state == TrialState.FAIL for t in trials),
        "mlflow": {"tracking_uri": redact(suite.tracking_uri), "experiment": suite.experiment,
                   "parent_run_id": study.user_attrs.get(PARENT)},
        "trials": records,
        "best": [trial_record(t, objectives) for t in best],
        "pareto": [trial_record(t, objectives) for t in front],
        "importances": imp,
        "importances_note": note,
        "downstream_correlation": downstream_correlation(suite, [r for r in records if r["state"] == "COMPLETE"],
                                                         reference),
    }


def downstream_correlation(suite: Suite, records: list[dict[str, Any]], reference: Mapping[str, Mapping[str, float]]
                           ) -> dict[str, Any] | None:
    """Which image metric predicts downstream gain, over the COMPLETE trials; None when none has a downstream mIoU.

    Computed by :mod:`bench.correlation`, as the report computes it. The real-only value is the study's reference
    of the trials' baseline (:func:`bench.tune.space.gain_baseline`); without one (a suite with no baseline) the
    target is the downstream mIoU (one shared real-only: same ranks, same rho).
    """
    real_only = real_only_miou(suite, reference)
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
    for p in params:  # "crfm.rectified_step" breaks after its dot; anything still too wide folds, never cut to "…"
        best.add_column(p.replace(".", ".\n"), justify="right", overflow="fold")
    for o, d in zip(objectives, summary["directions"], strict=True):
        best.add_column(f"{o} {arrows[d]}", justify="right", overflow="fold")
    if summary["constraints"]:
        best.add_column("feasible")
    for r in rows:
        cells = [str(r["number"])] + [_fmt(r["params"].get(p)) for p in params]
        cells += [_fmt((r["values"] or {}).get(o)) for o in objectives]
        if summary["constraints"]:
            cells.append("yes" if r["feasible"] else "no")
        best.add_row(*cells)
    imp = Table(title="parameter importances (PED-ANOVA)")
    imp.add_column("parameter", overflow="fold")
    for o in objectives:
        imp.add_column(o, justify="right", overflow="fold")
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


def read_tune_json(path: Path) -> dict[str, Any]:
    """Load a tune.json."""
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data
