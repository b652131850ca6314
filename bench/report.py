"""``bench report``: a suite's comparison report, read from MLflow: Markdown, HTML, CSV, LaTeX, plots, image grid.

Source of truth is the MLflow store (through :mod:`bench.tracking`): the latest FINISHED suite run of the
suite's experiment (or ``run_id``), its ``results.json`` and ``stages.json`` artifacts, its per-variant
metrics (cross-checked against the artifact), the synthesize stages' outputs found through ``stages.json``
(child run ids, cache hashes) and the latest tuning study's trial runs. The workspace's
``<suite>/results.json`` is only a cross-check. Everything is written into a temp dir beside ``out_dir``
and swapped into place, so an interrupted report never leaves half a report.

Files: ``report.md`` (+ the PNGs beside it), ``index.html`` (self-contained: PNGs as data URIs),
``results.csv`` (raw floats), ``results.tex`` (booktabs), ``rectified_steps.png``, ``per_class_iou.png``,
``pareto.png`` (when tuning trials exist), ``samples.png``; with ``dataset.subsets`` also
``data_efficiency.png`` and ``data_efficiency.csv`` (:func:`data_efficiency` holds their numbers); with 4+ synthetic
settings that have a downstream gain ``gain_correlation.png`` (and ``gain_correlation_study.png`` for a tuning study
with downstream trials): which image metric predicts the gain (:mod:`bench.correlation`).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.correlation import MIN_SETTINGS
from bench.schema import KNOWN_METRICS, Suite
from todsynth.errors import TodsynthError

# Table columns, in order; direction from the suite's metric specs, else KNOWN_METRICS.
COLUMNS = ("downstream_miou", "downstream_oa", "downstream_macc", "mask_miou", "evaluator_real_miou", "fid", "kid",
           "seconds_per_image")
LABELS = {
    "downstream_miou": "mIoU", "downstream_oa": "OA", "downstream_macc": "mAcc", "mask_miou": "mask mIoU",
    "evaluator_real_miou": "evaluator on real", "fid": "FID", "kid": "KID", "seconds_per_image": "s/image",
    "mask_oa": "mask OA",
}
# Instruments, not contestants: shown, never marked best (the evaluator's ceiling is the same model's score on real
# images; a larger labelled subset has more masks, not a better variant).
UNRANKED = frozenset({"evaluator_real_miou"})
TEMPLATES = Path(__file__).parent / "templates"
GRID_ROWS = 4
GRID_CELL = 128  # px: small (32-64 px) samples are upscaled (nearest) to stay readable
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
    sample_grids: dict[str, Path] = field(default_factory=dict)  # variant -> grid.png logged by synthesize
    notes: list[str] = field(default_factory=list)
    workspace: Path | None = None


# ---------------------------------------------------------------------- gathering (MLflow)
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
    """Disagreements between a results dict and its MLflow variant runs (one per variant and seed, listed in
    ``results["mlflow"]["variant_runs"]``): every metric the run should carry, as :func:`bench.results.run_metrics`
    derives it, must be logged with the same value."""
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
    _load_trials(suite, data)
    return data


def _workspace_cross_check(suite: Suite, data: ReportData) -> None:
    """Compare with ``<workspace>/<suite>/results.json`` when it belongs to the same run."""
    from bench.results import read_results, results_path

    path = results_path(suite)
    if not path.is_file():
        return
    ws = read_results(path)
    ws_run = ws.get("mlflow", {}).get("parent_run_id")
    if ws_run != data.parent["run_id"]:
        data.notes.append(f"{display_path(path, suite.workspace)} belongs to MLflow run {ws_run}, not to the reported "
                          f"run {data.parent['run_id']}.")
        return
    if _numbers(ws["variants"]) != _numbers(data.results["variants"]):
        raise ReportError(f"{path} differs from the results.json logged to MLflow run {data.parent['run_id']}")


def _numbers(variants: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(v["name"], json.dumps(v["metrics"], sort_keys=True)) for v in variants]


def _load_trials(suite: Suite, data: ReportData) -> None:
    """Finished trials of the latest tuning study (``todsynth.kind=trial`` children of a ``study`` run) with FID and
    mask mIoU; ``params`` are the tuned ones (tag ``optuna.params``), ``feasible`` from the trial's constraints."""
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
        fid, miou = _trial_metric(run["metrics"], "fid"), _trial_metric(run["metrics"], "mask_miou")
        if fid is None or miou is None:
            continue
        number = run["tags"].get("optuna.trial_number", "")
        try:
            params = json.loads(run["tags"]["optuna.params"])
        except (KeyError, json.JSONDecodeError):
            params = {k: v for k, v in run["params"].items() if k.startswith(("crfm.", "sampling."))}
        data.trials.append({"number": int(number) if number.isdigit() else None, "run_id": run["run_id"],
                            "fid": fid, "mask_miou": miou, "params": params, "metrics": dict(run["metrics"]),
                            "feasible": run["metrics"].get("feasible", 1.0) > 0})
    data.trials.sort(key=lambda t: (t["number"] is None, t["number"] or 0))


def _trial_metric(metrics: dict[str, float], name: str) -> float | None:
    """``name`` or ``<prefix>/name`` (trial runs may namespace their objective values)."""
    if name in metrics:
        return float(metrics[name])
    hits = [v for k, v in metrics.items() if k.endswith("/" + name)]
    return float(hits[0]) if len(hits) == 1 else None


# ---------------------------------------------------------------------- table
def metric_directions(results: dict[str, Any]) -> dict[str, bool]:
    """Metric -> higher_is_better, from the run's metric specs, else the known direction."""
    out = dict(KNOWN_METRICS)
    out.update({m["name"]: bool(m["higher_is_better"]) for m in results.get("metric_specs", [])})
    return out


def table_columns(results: dict[str, Any]) -> list[str]:
    """The columns with at least one numeric value, in :data:`COLUMNS` order."""
    return [c for c in COLUMNS if any(_num(v["metrics"].get(c)) is not None for v in results["variants"])]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v == v else None


def best_variants(results: dict[str, Any]) -> dict[str, set[str]]:
    """Column -> variants whose mean, as displayed, is the best (direction from higher_is_better); empty when all tie."""
    dirs = metric_directions(results)
    best: dict[str, set[str]] = {}
    for col in table_columns(results):
        if col in UNRANKED:
            best[col] = set()
            continue
        vals = {v["name"]: _num(v["metrics"].get(col)) for v in results["variants"]}
        vals = {k: x for k, x in vals.items() if x is not None}
        if len(vals) < 2:
            best[col] = set()
            continue
        places = column_decimals(list(vals.values()))
        target = fmt(max(vals.values()) if dirs.get(col, True) else min(vals.values()), decimals=places)
        winners = {k for k, x in vals.items() if fmt(x, decimals=places) == target}  # ties as shown all win
        best[col] = winners if len(winners) < len(vals) else set()  # all equal: nobody is best
    return best


def column_decimals(values: list[float]) -> int:
    """Decimals of a table column, one number for all its cells so they align at the point: by the largest |value|
    4 below 10, 2 below 100, 1 above; more when the smallest non-zero |value| is below 0.01 (3 significant digits)."""
    mags = [abs(v) for v in values if v == v]
    if not mags:
        return 4
    top = max(mags)
    places = 1 if top >= 100 else 2 if top >= 10 else 4
    small = [m for m in mags if m > 0]
    if small and min(small) < 0.01:
        places = max(places, min(8, 2 - math.floor(math.log10(min(small)))))
    return places


def fmt(v: float, std: float | None = None, decimals: int | None = None) -> str:
    """``v`` (or ``v ± std``) with ``decimals`` places (default: :func:`column_decimals` of ``v`` alone)."""
    places = column_decimals([v]) if decimals is None else decimals
    return f"{v:.{places}f}" if std is None else f"{v:.{places}f} ± {std:.{places}f}"


def several_seeds(results: dict[str, Any]) -> bool:
    """A std over seeds exists only with 2+ seeds (results.json writes 0.0 with one: never shown)."""
    return len(results.get("seeds", [])) > 1


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: display cells per column (``mean`` or ``mean ± std`` at the column's fixed decimals), best flags,
    FID extractor/comparable. ``std`` is None with one seed."""
    several = several_seeds(results)
    best = best_variants(results)
    cols = table_columns(results)
    places = {c: column_decimals([x for v in results["variants"] if (x := _num(v["metrics"].get(c))) is not None])
              for c in cols}
    rows = []
    for v in results["variants"]:
        cells = {}
        for col in cols:
            mean = _num(v["metrics"].get(col))
            std = _num(v.get("metrics_std", {}).get(col)) if several else None
            if mean is None:
                cells[col] = {"text": "–", "best": False, "mean": None, "std": None}
                continue
            text = fmt(mean, std, places[col])
            cells[col] = {"text": text, "best": v["name"] in best.get(col, set()), "mean": mean, "std": std}
        comparable = v["metrics"].get("fid_comparable")
        rows.append({"name": v["name"], "kind": v["kind"], "cells": cells,
                     "extractor": v["metrics"].get("fid_extractor") or "–",
                     "comparable": "–" if comparable is None else ("yes" if comparable else "no")})
    return rows


def render_csv(results: dict[str, Any]) -> str:
    """One row per variant: every metric's mean and std as raw floats (std empty with one seed), FID
    extractor/comparable, per-class IoU."""
    cols = table_columns(results)
    several = several_seeds(results)
    classes = _classes(results)
    subsets = "subsets" in results
    header = ["variant", "kind"] + (["declared", "n"] if subsets else [])
    for c in cols:
        header += [c, f"{c}_std"]
    header += ["fid_extractor", "fid_comparable"] + [f"iou_{c}" for c in classes]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for v in results["variants"]:
        m, s = v["metrics"], v.get("metrics_std", {})
        row: list[Any] = [v["name"], v["kind"]] + ([v.get("declared", ""), v.get("n", "")] if subsets else [])
        for c in cols:
            row += [_csv(m.get(c)), _csv(s.get(c)) if several else ""]
        row += [m.get("fid_extractor", ""), "" if m.get("fid_comparable") is None else str(bool(m["fid_comparable"])).lower()]
        row += [_csv(m.get("per_class_iou", {}).get(c)) for c in classes]
        w.writerow(row)
    return buf.getvalue()


def _csv(v: Any) -> str:
    x = _num(v)
    return "" if x is None else repr(x)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    """Escape LaTeX's special characters."""
    return "".join(_TEX.get(ch, ch) for ch in text)


# Metrics computed on the FID feature extractor: both daggered when it is a fallback (``fid_comparable`` false).
FALLBACK_FEATURES = ("fid", "kid")


def render_latex(results: dict[str, Any]) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``): best per column bold, FID and KID from a fallback
    feature extractor daggered, with the dagger explained in a footnote row."""
    cols = table_columns(results)
    dirs = metric_directions(results)
    rows = table_rows(results)
    lines = [
        f"% {results['suite']} (config {str(results.get('config_hash'))[:12]}), generated by `todsynth bench report`",
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
        "Variant & " + " & ".join(_tex(LABELS[c]) + (r" $\uparrow$" if dirs.get(c, True) else r" $\downarrow$")
                                  for c in cols) + r" \\",
        r"\midrule",
    ]
    dagger = False
    for r in rows:
        cells = []
        for c in cols:
            cell = r["cells"][c]
            text = cell["text"].replace(" ± ", r" $\pm$ ").replace("–", "--")
            if cell["best"]:
                text = r"\textbf{" + text + "}"
            if c in FALLBACK_FEATURES and r["comparable"] == "no" and cell["mean"] is not None:
                text += r"$^\dagger$"
                dagger = True
            cells.append(text)
        lines.append(_tex(r["name"]) + " & " + " & ".join(cells) + r" \\")
    lines.append(r"\bottomrule")
    if dagger:  # a footnote row of the table (a % comment would never reach the reader)
        lines.append(rf"\multicolumn{{{len(cols) + 1}}}{{l}}{{\footnotesize $^\dagger$ FID/KID from a fallback feature "
                     r"extractor (not Inception): they rank variants within this table but are not comparable with "
                     r"published values.} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- plots
def _classes(results: dict[str, Any]) -> list[str]:
    from todsynth.data.classes import CLASSES

    seen = list(dict.fromkeys(c for v in results["variants"] for c in v["metrics"].get("per_class_iou", {})))
    return [c for c in CLASSES if c in seen] + [c for c in seen if c not in CLASSES]


def rectified_series(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Groups of synthetic variants differing only in ``crfm.rectified_step`` (plain = 0), each with >= 2 steps.

    Labels use the suite's parameter names (``crfm.step_scheme=LD, crfm.max_step_size=0.1``): the ``crfm.*`` and
    ``sampling.*`` values that tell the series apart (the step scheme and maximum step size when one series).
    Returns ``[{"label", "steps": [int], "variants": [name], "miou", "miou_std", "fid", "fid_std"}]``.
    """
    syn = [v for v in results["variants"] if v["kind"] == "synthetic" and "crfm" in v.get("params", {})]
    zeros: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for v in syn:  # one series per sampling setting and labelled-subset size
        skey = json.dumps([v["params"].get("sampling", {}), v.get("n")], sort_keys=True)
        crfm = dict(v["params"]["crfm"])
        rs = int(crfm.pop("rectified_step"))
        if rs == 0:
            zeros.setdefault(skey, v)
        else:
            groups.setdefault((skey, json.dumps(crfm, sort_keys=True)), []).append(v)
    series = []
    for (skey, _), members in groups.items():
        points: dict[int, dict[str, Any]] = {}
        for v in members:
            points.setdefault(int(v["params"]["crfm"]["rectified_step"]), v)
        if skey in zeros:
            points.setdefault(0, zeros[skey])
        if len(points) < 2:
            continue
        steps = sorted(points)
        series.append({
            "params": _series_params(members[0]), "n": members[0].get("n"),
            "steps": steps, "variants": [points[s]["name"] for s in steps],
            **{f"{k}{suffix}": [_num(points[s][src].get(m)) for s in steps]
               for k, m in (("miou", "downstream_miou"), ("fid", "fid"))
               for suffix, src in (("", "metrics"), ("_std", "metrics_std"))},
        })
    differ = {k for s in series for k in s["params"] if len({json.dumps(t["params"].get(k)) for t in series}) > 1}
    shown = [k for k in series[0]["params"] if k in differ] if differ else ["crfm.step_scheme", "crfm.max_step_size"]
    for s in series:
        parts = [f"{k}={_param_text(s['params'].get(k))}" for k in shown]
        s["label"] = ", ".join(parts + ([f"subset n={s['n']}"] if s["n"] is not None else []))
        del s["params"], s["n"]
    labels = [s["label"] for s in series]
    for s in series:
        if labels.count(s["label"]) > 1:
            s["label"] += f" ({s['variants'][-1]})"
    return series


def _series_params(v: dict[str, Any]) -> dict[str, Any]:
    """A variant's ``crfm.*`` (but the rectified step) and ``sampling.*`` values, under the suite's names."""
    crfm = {f"crfm.{k}": x for k, x in v["params"]["crfm"].items() if k != "rectified_step"}
    return crfm | {f"sampling.{k}": x for k, x in v["params"].get("sampling", {}).items()}


def _param_text(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write and close a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


MIN_REL_SPAN = 0.1  # a panel's y range spans at least this fraction of its largest |value|: small differences look small


def honest_limits(values: list[float], errors: list[float] | None = None, min_rel_span: float = MIN_REL_SPAN
                  ) -> tuple[float, float]:
    """y limits around ``values`` (± ``errors``), widened to at least ``min_rel_span`` x max |value|, plus a margin.

    A twin axis scaled to two points lets a 0.0003 mIoU difference fill the height; this does not.
    """
    errs = errors or [0.0] * len(values)
    lo = min(v - e for v, e in zip(values, errs, strict=True))
    hi = max(v + e for v, e in zip(values, errs, strict=True))
    span = max(hi - lo, min_rel_span * max(abs(v) for v in values), 1e-12)
    mid = (lo + hi) / 2
    return mid - 0.55 * span, mid + 0.55 * span


def rectified_panels(series: list[dict[str, Any]], with_std: bool) -> list[dict[str, Any]]:
    """What the rectified-steps figure draws: one panel per metric (downstream mIoU, FID) sharing the x axis.

    Returns ``[{"metric", "ylabel", "ylim": (lo, hi), "lines": [{"label", "x", "y", "yerr" (None with one seed),
    "variants"}]}]``; a panel appears only when some series has a value for its metric.
    """
    panels = []
    for key, metric, ylabel in (("miou", "downstream_miou", "downstream mIoU (↑)"), ("fid", "fid", "FID (↓)")):
        lines = []
        for s in series:
            pts = [(x, y, e, n) for x, y, e, n in zip(s["steps"], s[key], s[f"{key}_std"], s["variants"], strict=True)
                   if y is not None]
            if not pts:
                continue
            yerr = [e if e is not None else 0.0 for _, _, e, _ in pts] if with_std else None
            lines.append({"label": s["label"], "x": [p[0] for p in pts], "y": [p[1] for p in pts], "yerr": yerr,
                          "variants": [p[3] for p in pts]})
        if not lines:
            continue
        ys = [y for ln in lines for y in ln["y"]]
        errs = [e for ln in lines for e in (ln["yerr"] or [0.0] * len(ln["y"]))]
        panels.append({"metric": metric, "ylabel": ylabel, "ylim": honest_limits(ys, errs), "lines": lines})
    return panels


def plot_rectified_steps(series: list[dict[str, Any]], num_steps: int | None, path: Path,
                         with_std: bool = False) -> Path:
    """Downstream mIoU (top) and FID (bottom) against rectified steps: panels sharing x (:func:`rectified_panels`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = rectified_panels(series, with_std)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(6.4, 2.4 * len(panels) + 0.8 + 0.2 * len(series)), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = [s["label"] for s in series]
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        for ln in panel["lines"]:
            c = colours[labels.index(ln["label"]) % len(colours)]
            ax.errorbar(ln["x"], ln["y"], yerr=ln["yerr"], color=c, marker="o", capsize=3, label=ln["label"])
            for x, y, name in zip(ln["x"], ln["y"], ln["variants"], strict=True):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=c)
        ax.set_ylim(*panel["ylim"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(alpha=0.3)
    steps = sorted({x for s in series for x in s["steps"]})
    bottom = axes[-1, 0]
    bottom.set_xticks(steps)
    bottom.set_xlabel("crfm.rectified_step" + (f" (sampling.num_inference_steps = {num_steps})" if num_steps else ""))
    bottom.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1, frameon=False)
    axes[0, 0].set_title("Downstream mIoU and FID vs CRFM rectified steps")
    return _save_figure(fig, path)


def _nan(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def pareto_front(points: list[tuple[float, ...]], higher_is_better: tuple[bool, ...]) -> list[int]:
    """Indices of the non-dominated points (ties kept), in input order."""
    if any(len(p) != len(higher_is_better) for p in points):
        raise ValueError(f"every point needs {len(higher_is_better)} values (one per direction)")
    signed = [tuple(x if hi else -x for x, hi in zip(p, higher_is_better, strict=True)) for p in points]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))

    return [i for i, p in enumerate(signed) if not any(dominates(q, p) for j, q in enumerate(signed) if j != i)]


def plot_pareto(trials: list[dict[str, Any]], front: list[int], variants: list[dict[str, Any]], path: Path) -> Path:
    """FID (x, lower is better) vs mask mIoU (y, higher is better) of tuning trials; the Pareto front in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ok = [t for t in trials if t.get("feasible", True)]
    bad = [t for t in trials if not t.get("feasible", True)]
    ax.scatter([t["fid"] for t in ok], [t["mask_miou"] for t in ok], c="#8a8a8a", s=28, label="trials")
    if bad:
        ax.scatter([t["fid"] for t in bad], [t["mask_miou"] for t in bad], c="#8a8a8a", marker="x", s=28,
                   label="infeasible trials (constraint violated)")
    pf = sorted((trials[i] for i in front), key=lambda t: t["fid"])
    # above the stars (zorder 3): a suite variant that is also a trial must not hide the front the legend promises
    ax.plot([t["fid"] for t in pf], [t["mask_miou"] for t in pf], "o-", color="#d62728", ms=7, label="Pareto front",
            zorder=4)
    for t in trials:
        if t["number"] is not None:
            ax.annotate(str(t["number"]), (t["fid"], t["mask_miou"]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    refs = [v for v in variants if _num(v["metrics"].get("fid")) is not None and _num(v["metrics"].get("mask_miou")) is not None]
    if refs:
        ax.scatter([v["metrics"]["fid"] for v in refs], [v["metrics"]["mask_miou"] for v in refs], marker="*", s=120,
                   c="#1f77b4", label="suite variants", zorder=3, alpha=0.8)
        for v in refs:
            ax.annotate(v["name"], (v["metrics"]["fid"], v["metrics"]["mask_miou"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="#1f77b4")
    ax.set_xlabel("FID (↓)")
    ax.set_ylabel("mask mIoU (evaluator, ↑)")
    ax.set_title("Tuning trials: FID vs mask mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def plot_per_class(results: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: downstream IoU per class, one bar per variant (std as error bars); None without per-class data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = _classes(results)
    variants = [v for v in results["variants"] if v["metrics"].get("per_class_iou")]
    if not classes or not variants:
        return None
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(classes)), 4.0), dpi=110)
    width = 0.8 / len(variants)
    x = np.arange(len(classes))
    several = several_seeds(results)  # error bars only for a std over seeds
    for i, v in enumerate(variants):
        iou = v["metrics"]["per_class_iou"]
        std = v.get("metrics_std", {}).get("per_class_iou", {})
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, _nan([_num(iou.get(c)) for c in classes]), width,
               yerr=_nan([_num(std.get(c)) for c in classes]) if several else None, capsize=2, label=v["name"])
    ax.set_xticks(x, classes, rotation=20)
    ax.set_ylabel("downstream IoU")
    ax.set_ylim(0, 1)
    ax.set_title("Per-class IoU of the downstream model")
    ax.legend(fontsize=8, ncol=min(4, len(variants)))
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------- data efficiency (dataset.subsets)
EFFICIENCY_RULE = (
    "Difference of downstream mIoU on real Val, (real + synthetic) minus real-only, computed per seed at the same "
    "labelled-subset size n and seed; mean and sample std (ddof 1) over seeds. † marks a difference whose |mean| "
    "exceeds one std; with a single seed there is no std and nothing is marked."
)


def data_efficiency(results: dict[str, Any]) -> dict[str, Any] | None:
    """Downstream mIoU gain of each synthetic variant over the real-only baseline, per labelled-subset size n.

    Plain numbers for the plot and table (see :data:`EFFICIENCY_RULE`). None without ``subsets`` or without a
    baseline variant. Returns ``{"baseline", "sizes": [n ascending], "series": [{"variant", "points": [{"n",
    "seeds", "diffs", "mean", "std" (None with one seed), "exceeds"}]}]}``; a point needs both rows' seed.
    """
    if "subsets" not in results:
        return None
    rows = [v for v in results["variants"] if v.get("n") is not None]
    base = {v["n"]: v for v in rows if v["kind"] == "baseline"}
    if not base:
        return None

    series: dict[str, list[dict[str, Any]]] = {}
    for v in rows:
        if v["kind"] != "synthetic" or v["n"] not in base:
            continue
        ref, got = _seed_values(base[v["n"]]), _seed_values(v)
        seeds = [s for s in got if s in ref]
        if not seeds:
            continue
        diffs = [got[s] - ref[s] for s in seeds]
        mean = sum(diffs) / len(diffs)
        std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else None
        series.setdefault(v["declared"], []).append({"n": v["n"], "seeds": seeds, "diffs": diffs, "mean": mean,
                                                     "std": std, "exceeds": std is not None and abs(mean) > std})
    return {"baseline": next(iter(base.values()))["declared"], "sizes": sorted(base),
            "series": [{"variant": name, "points": sorted(points, key=lambda p: p["n"])}
                       for name, points in series.items()]}


def _seed_values(v: dict[str, Any], key: str = "downstream_miou") -> dict[int, float]:
    """Seed -> the variant's value of ``key`` in that seed's run (from ``per_seed``)."""
    out = {}
    for p in v.get("per_seed", []):
        x = _num(p["metrics"].get(key))
        if x is not None:
            out[int(p["seed"])] = x
    return out


def efficiency_table(eff: dict[str, Any]) -> list[dict[str, Any]]:
    """Display rows of :func:`data_efficiency`: per variant, per n ``{"text", "exceeds"}`` (``–`` where missing)."""
    rows = []
    for s in eff["series"]:
        by_n = {p["n"]: p for p in s["points"]}
        cells = {}
        for n in eff["sizes"]:
            p = by_n.get(n)
            if p is None:
                cells[n] = {"text": "–", "exceeds": False}
                continue
            text = f"{p['mean']:+.4f}" + ("" if p["std"] is None else f" ± {p['std']:.4f}")  # mIoU points: fixed
            cells[n] = {"text": text + (" †" if p["exceeds"] else ""), "exceeds": p["exceeds"]}
        rows.append({"variant": s["variant"], "cells": cells})
    return rows


def render_efficiency_csv(eff: dict[str, Any]) -> str:
    """One row per (variant, n): mean and std (empty with one seed) of the difference, the seeds, the per-seed diffs."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "n", "mean_diff", "std_diff", "exceeds_std", "n_seeds", "diffs"])
    for s in eff["series"]:
        for p in s["points"]:
            w.writerow([s["variant"], p["n"], repr(p["mean"]), "" if p["std"] is None else repr(p["std"]),
                        str(p["exceeds"]).lower(), len(p["seeds"]), " ".join(repr(d) for d in p["diffs"])])
    return buf.getvalue()


def plot_data_efficiency(eff: dict[str, Any], path: Path) -> Path:
    """Gain in downstream mIoU over real-only (y) against labelled scenes n (x, log), std error bars over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.axhline(0.0, color="#444", linewidth=1, label=f"{eff['baseline']} (no gain)")
    k = len(eff["series"])
    for i, s in enumerate(eff["series"]):
        dodge = 1 + 0.025 * (i - (k - 1) / 2)  # a small multiplicative shift on the log axis: error bars stay apart
        ns = [p["n"] * dodge for p in s["points"]]
        means = [p["mean"] for p in s["points"]]
        std = [p["std"] for p in s["points"]]
        line = ax.errorbar(ns, means, yerr=None if all(x is None for x in std) else _nan(std), marker="o", capsize=3,
                           label=s["variant"])
        for x, p in zip(ns, s["points"], strict=True):
            if p["exceeds"]:
                ax.annotate("†", (x, p["mean"]), textcoords="offset points", xytext=(5, 3), color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xticks(eff["sizes"], [str(n) for n in eff["sizes"]])
    ax.minorticks_off()
    ax.set_xlabel("labelled training scenes n (log scale)")
    ax.set_ylabel("downstream mIoU: real+synthetic − real-only")
    ax.set_title("Data efficiency: gain from synthetic data vs labelled subset size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------- which image metric predicts downstream gain
def paired_gain(v: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Downstream mIoU of ``v`` minus ``base``'s, per seed, mean over the seeds both ran (as :func:`data_efficiency`);
    from the means when neither row has per-seed numbers."""
    got, ref = _seed_values(v), _seed_values(base)
    seeds = [s for s in got if s in ref]
    if seeds:
        return sum(got[s] - ref[s] for s in seeds) / len(seeds)
    if got or ref:
        return None
    a, b = _num(v["metrics"].get("downstream_miou")), _num(base["metrics"].get("downstream_miou"))
    return None if a is None or b is None else a - b


def gain_settings(results: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The suite's synthetic variants as settings of :func:`bench.correlation.gain_correlations`: gain over the
    matching real-only (with ``dataset.subsets`` the real-only of the same n). Returns (settings, pairing rule)."""
    baselines = [v for v in results["variants"] if v["kind"] == "baseline"]
    if "subsets" in results:
        by_n = {v.get("n"): v for v in baselines}
        rule = ("gain = downstream mIoU of real + synthetic minus the real-only model's at the same labelled-subset "
                "size n, per seed, mean over seeds")
    else:
        by_n = {None: baselines[0]} if baselines else {}
        rule = (f"gain = downstream mIoU of real + synthetic minus `{baselines[0]['name']}`'s, per seed, mean over seeds"
                if baselines else "no real-only (baseline) variant to measure a gain against")
    settings = []
    for v in results["variants"]:
        base = by_n.get(v.get("n"))
        if v["kind"] != "synthetic" or base is None:
            continue
        gain = paired_gain(v, base)
        if gain is not None:
            settings.append({"name": v["name"], "gain": gain, "metrics": v["metrics"]})
    return settings, rule


def _real_only_miou(results: dict[str, Any]) -> float | None:
    """The downstream mIoU of the suite's one real-only model (no ``subsets``), else None."""
    base = [v for v in results["variants"] if v["kind"] == "baseline"]
    return _num(base[0]["metrics"].get("downstream_miou")) if base and "subsets" not in results else None


def predictor_rows(corr: dict[str, Any]) -> list[dict[str, Any]]:
    """Display rows of a :func:`bench.correlation.gain_correlations` result: rho as text (never NaN), n, a reading."""
    rows = []
    for m in corr["metrics"]:
        label = LABELS.get(m["metric"], m["metric"])
        hi = m["higher_is_better"]
        if m["rho"] is None:
            rho, reading = "undefined", m["note"]
        else:
            rho = f"{m['rho']:+.2f}"
            if m["rho"] == 0:
                reading = "no monotone relation"
            else:
                reading = f"{'higher' if m['rho'] > 0 else 'lower'} {label}, more gain"
                if m["agrees"] is not None:
                    reading += " (its better direction)" if m["agrees"] else " (against its better direction)"
        rows.append({"metric": m["metric"], "label": label, "arrow": "" if hi is None else ("↑" if hi else "↓"),
                     "rho": rho, "n": m["n"], "reading": reading})
    return rows


def plot_gain_correlation(corr: dict[str, Any], target: str, title: str, path: Path) -> Path | None:
    """One panel per image metric: its value (x) against the gain (y) of each setting; None without any point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in corr["metrics"] if m["points"]]
    if not metrics:
        return None
    cols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, squeeze=False, figsize=(3.4 * cols, 3.0 * nrows + 0.5), dpi=110)
    for ax, m in zip(axes.flat, metrics, strict=False):
        xs, ys = [p["x"] for p in m["points"]], [p["gain"] for p in m["points"]]
        ax.scatter(xs, ys, s=22, c="#1f77b4")
        if len(m["points"]) <= 12:
            for p in m["points"]:
                ax.annotate(p["name"], (p["x"], p["gain"]), textcoords="offset points", xytext=(3, 3), fontsize=6)
        label = LABELS.get(m["metric"], m["metric"])
        hi = m["higher_is_better"]
        ax.set_xlabel(label + ("" if hi is None else (" (↑)" if hi else " (↓)")))
        rho = "ρ undefined" if m["rho"] is None else f"ρ = {m['rho']:+.2f}"
        ax.set_title(f"{label}: {rho}, n = {m['n']}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(target if len(target) < 40 else target.split(" (")[0], fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, path)


def predictor_sections(data: ReportData, out: Path) -> list[dict[str, Any]]:
    """The report's "which image metric predicts downstream gain" blocks: the suite's variants, and the tuning
    study's trials when they have a downstream mIoU; each with its one-line reason when not computed."""
    from bench.correlation import GAIN_LABEL, gain_correlations, study_settings

    dirs = metric_directions(data.results)
    blocks = []
    settings, rule = gain_settings(data.results)
    sources = [("suite", f"Suite variants ({rule})", settings, GAIN_LABEL, "gain_correlation.png")]
    trials = [{"name": f"trial-{t['number']}" if t["number"] is not None else t["run_id"][:8], "metrics": t["metrics"]}
              for t in data.trials]
    study_set, target = study_settings(trials, _real_only_miou(data.results))
    if study_set:
        name = data.study["tags"].get("optuna.study", data.study["run_name"]) if data.study else "?"
        sources.append(("study", f"Tuning study {name} (finished trials with a downstream mIoU; {target})", study_set,
                        target, "gain_correlation_study.png"))
    for key, title, sets, target, file in sources:
        corr = gain_correlations(sets, dirs)
        block = {"key": key, "title": title, "target": target, "n_settings": corr["n_settings"],
                 "reason": corr["reason"], "rows": predictor_rows(corr), "file": None}
        if corr["reason"] is None and plot_gain_correlation(corr, target, title.split(" (")[0], out / file):
            block["file"] = file
        blocks.append(block)
    return blocks


# ---------------------------------------------------------------------- image grid
def _synth_variant(key: str) -> tuple[str, int] | None:
    """``synthesize[crfm,seed=0]`` -> ("crfm", 0)."""
    if not key.startswith("synthesize[") or not key.endswith("]"):
        return None
    name, _, seed = key[len("synthesize["):-1].rpartition(",seed=")
    return (name, int(seed)) if name and seed.lstrip("-").isdigit() else None


def _stage(suite: Suite, row: dict[str, Any]) -> Any:
    """The finished cache entry of a stages.json row (by workspace + hash; the logged dir as a fallback)."""
    from bench.cache import StageCache

    cached = StageCache(suite.workspace).lookup(row["stage"], row["hash"])
    if cached is None and row.get("dir") and Path(row["dir"], "done.json").is_file():
        from bench.cache import CachedStage

        cached = CachedStage(Path(row["dir"]), json.loads(Path(row["dir"], "done.json").read_text()))
    return cached


def grid_columns(suite: Suite, data: ReportData) -> tuple[int | None, list[tuple[str, Path]]]:
    """(seed, [(variant, first manifest.json of its synthesize stage)]) for the first seed: plain first."""
    found: dict[int, dict[str, Path]] = {}
    for row in data.stages:
        parsed = _synth_variant(row.get("key", ""))
        if parsed is None:
            continue
        cached = _stage(suite, row)
        copies = cached.artifacts.get("copies") if cached is not None else None
        if not copies:
            continue
        manifest = cached.dir / str(copies[0]) / "manifest.json"
        if manifest.is_file():
            found.setdefault(parsed[1], {})[parsed[0]] = manifest
    if not found:
        return None, []
    seed = min(found)
    order = {v["name"]: i for i, v in enumerate(data.results["variants"])}
    rs = {v["name"]: v.get("params", {}).get("crfm", {}).get("rectified_step", 0) for v in data.results["variants"]}
    names = sorted(found[seed], key=lambda n: (rs.get(n, 0) != 0, order.get(n, 1 << 30)))
    return seed, [(n, found[seed][n]) for n in names]


def _real_image(entry: dict[str, Any], suite: Suite, data: ReportData) -> Path | None:
    """The real image of a manifest entry: beside its source mask (LoveDA layout), else in the data stage."""
    from todsynth.data.loveda import IMAGES_DIR

    src = Path(entry.get("source_mask", ""))
    candidate = src.parent.parent / IMAGES_DIR / src.name
    if candidate.is_file():
        return candidate
    for row in data.stages:
        if row.get("stage") == "data":
            cached = _stage(suite, row)
            if cached is not None and "root" in cached.artifacts:
                from bench.stages import artifact_path

                p = artifact_path(cached, "root") / "Train" / entry["domain"] / IMAGES_DIR / f"{entry['id']}.png"
                if p.is_file():
                    return p
    return None


def image_grid(suite: Suite, data: ReportData, path: Path, n_rows: int = GRID_ROWS) -> tuple[Path, list[str]] | None:
    """PNG grid: per row the mask (palette colours), the real image, then each variant's sample (same seed).

    Returns (path, column headers) or None when no synthesize stage output is on disk.
    """
    import numpy as np

    from bench.grids import mask_rgb, read_rgb, save_grid

    seed, columns = grid_columns(suite, data)
    if not columns:
        return None
    manifests = {n: json.loads(p.read_text()) for n, p in columns}
    by_id = {n: {(e["domain"], e["id"]): e for e in m["images"]} for n, m in manifests.items()}
    first = columns[0][0]
    ids = [k for k in ((e["domain"], e["id"]) for e in manifests[first]["images"]) if all(k in b for b in by_id.values())]
    ids = ids[:n_rows]
    if not ids:
        return None
    headers = ["mask", "real"] + [n for n, _ in columns]
    rows = []
    for key in ids:
        e0 = by_id[first][key]
        mask = mask_rgb(columns[0][1].parent / e0["mask"])
        real_path = _real_image(e0, suite, data)
        real = read_rgb(real_path) if real_path else np.zeros_like(mask)
        rows.append([mask, real] + [read_rgb(p.parent / by_id[name][key]["image"]) for name, p in columns])
    save_grid(rows, path, headers=headers, min_cell=GRID_CELL, pad=4)
    data.notes.append(
        f"Samples: seed {seed}, ids {', '.join(f'{d}/{i}' for d, i in ids)}; every variant's image of an id comes from "
        "the same initial noise (per-sample seeds depend on the run seed and the id only)."
    )
    return path, headers


def _logged_grids(data: ReportData, dst: Path) -> dict[str, Path]:
    """Fallback: the ``grid.png`` artifacts of the synthesize child runs (first seed), by variant."""
    from bench.tracking import fetch_artifact

    out: dict[str, Path] = {}
    for row in data.stages:
        parsed = _synth_variant(row.get("key", ""))
        if parsed is None or not row.get("mlflow_run_id") or parsed[0] in out:
            continue
        got = fetch_artifact(data.tracking_uri, row["mlflow_run_id"], "grid.png", dst / row["mlflow_run_id"])
        if got is not None:
            out[parsed[0]] = got
    return out


# ---------------------------------------------------------------------- provenance
TEMP_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")


def _under_temp(path: Path) -> bool:
    roots = {Path(tempfile.gettempdir()).resolve(), *(Path(r).resolve() for r in TEMP_ROOTS)}
    p = path.resolve()
    return any(p == r or r in p.parents for r in roots)


def _shown_dir(path: Path) -> str:
    """Relative to the current directory when below it (as typed: ``runs``), else absolute."""
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def display_path(path: Path, workspace: Path | None = None) -> str:
    """A path as a committed report may show it: relative to the workspace, and never a temp dir's absolute path
    (a report built from a scratch workspace names only the file)."""
    p = Path(path).expanduser().absolute()
    ws = Path(workspace).expanduser().absolute() if workspace is not None else None
    if ws is not None and (p == ws or ws in p.parents):
        where = "a temporary workspace" if _under_temp(ws) else f"workspace {_shown_dir(ws)}"
        return where if p == ws else f"{p.relative_to(ws)} in {where}"
    if _under_temp(p):
        return f"{p.name} (in a temporary directory)"
    return _shown_dir(p)


def store_text(uri: str, workspace: Path | None = None) -> str:
    """The MLflow store for provenance: a sqlite file through :func:`display_path`, other URIs as given."""
    if uri.startswith("sqlite:///"):
        return "sqlite " + display_path(Path(uri.removeprefix("sqlite:///")), workspace)
    return uri


def device_text(device: str, gpus: Any) -> str:
    """The device a run used; the GPU count only for a CUDA (or unresolved auto) run, never "cpu ..., gpus=1"."""
    on_gpu = device.startswith(("cuda", "auto"))
    return device + (f", gpus={gpus}" if gpus and on_gpu else "")


def fid_counts(results: dict[str, Any]) -> str | None:
    """One sentence: the image counts and resize behind FID/KID (FID's bias depends on the counts), or None."""
    groups: dict[tuple[Any, Any, Any], list[str]] = {}
    for v in results["variants"]:
        m = v["metrics"]
        if "fid_n_real" in m or "fid_n_synthetic" in m:
            key = (_count(m.get("fid_n_real")), _count(m.get("fid_n_synthetic")), m.get("fid_resize", "unknown"))
            groups.setdefault(key, []).append(v["name"])
    if not groups:
        return None
    parts = [f"{n_real} real vs {n_syn} synthetic images, resize `{resize}`"
             + ("" if len(groups) == 1 else f" ({', '.join(names)})") for (n_real, n_syn, resize), names in groups.items()]
    return ("FID/KID per variant and seed: " + "; ".join(parts) + ". FID is biased upwards on small sets: "
            "compare FIDs only at equal counts.")


def _count(v: Any) -> str:
    return str(int(v)) if isinstance(v, int | float) and v == v and float(v).is_integer() else str(v)


def provenance_rows(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) pairs from the parent run's tags/params and the results' provenance."""
    import datetime as dt

    tags, params = data.parent["tags"], data.parent["params"]
    prov = data.results.get("provenance", {})
    start = data.parent.get("start_time")
    date = dt.datetime.fromtimestamp(start / 1000, dt.UTC).isoformat(timespec="seconds") if start else prov.get("date", "?")
    device = tags.get("todsynth.device") or params.get("resources.device", "?")
    if "todsynth.device" not in tags and device == "auto":
        device = "auto (cuda when visible, else cpu; the resolved device was not recorded)"
    gpus = params.get("resources.gpus")
    versions = {k.removeprefix("todsynth.version."): v for k, v in sorted(tags.items()) if k.startswith("todsynth.version.")}
    return [
        ("suite", f"{data.suite} v{tags.get('todsynth.suite_version', data.results.get('suite_version', '?'))}"),
        ("config hash", tags.get("todsynth.config_hash", str(data.results.get("config_hash")))),
        ("git commit", tags.get("todsynth.git_commit", str(prov.get("git_commit", "?")))),
        ("date (run start, UTC)", date),
        ("device", device_text(str(device), gpus)),
        ("seeds", ", ".join(str(s) for s in data.results.get("seeds", []))),
        ("python / platform", f"{prov.get('python', '?')} / {prov.get('platform', '?')}"),
        ("MLflow", f"run {data.parent['run_id']} ({data.parent.get('run_name')}) in experiment {data.experiment}, "
                   f"{store_text(data.tracking_uri, data.workspace)}"),
        ("packages", ", ".join(f"{k} {v}" for k, v in versions.items()) or "?"),
    ]


# ---------------------------------------------------------------------- rendering
def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def code_spans(text: str) -> Any:
    """HTML of a note or caption: escaped, with Markdown's `backtick` spans as ``<code>`` (not literal backticks)."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["code"] = code_spans
    return env


def write_report(suite: Suite, out_dir: Path | None = None, run_id: str | None = None) -> Path:
    """Build the report of ``suite``'s latest finished run (or ``run_id``) into ``out_dir`` (default ``reports/<suite>``).

    Written to a temp dir beside ``out_dir`` and swapped into place; returns ``out_dir``.
    """
    out = Path(out_dir) if out_dir is not None else Path("reports") / suite.name
    out = out.expanduser().absolute()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "report.md").is_file())):
        raise ReportError(f"--out {out} exists and is not a report dir (no report.md in it); it would be replaced "
                          "whole, so give a new or empty dir, or a previous report's dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a report dir is as readable as any new dir
    try:
        with tempfile.TemporaryDirectory(prefix="todsynth-report-") as scratch:
            _render_into(suite, tmp, Path(scratch), run_id)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` (rename; the old report is moved aside first, then deleted)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _render_into(suite: Suite, out: Path, scratch: Path, run_id: str | None) -> None:
    data = load_report_data(suite, scratch, run_id)
    results = data.results
    figures: list[dict[str, str]] = []

    several = several_seeds(results)
    series = rectified_series(results)
    steps = {v["params"]["sampling"]["num_inference_steps"] for v in results["variants"] if "sampling" in v.get("params", {})}
    if series:
        plot_rectified_steps(series, steps.pop() if len(steps) == 1 else None, out / "rectified_steps.png", several)
        figures.append({"file": "rectified_steps.png", "title": "Downstream mIoU and FID vs rectified steps",
                        "caption": "Synthetic variants that differ only in `crfm.rectified_step` (plain sampling = 0 "
                                   "steps). Top: downstream mIoU (higher is better); bottom: FID (lower is better); "
                                   f"each panel's y range spans at least {MIN_REL_SPAN:.0%} of its largest value, so a "
                                   "small difference looks small. "
                                   + (f"Error bars: std over seeds {', '.join(str(x) for x in results['seeds'])}. "
                                      if several else "One seed: no error bars. ")
                                   + "The paper's LoveDA/FUSU ablation shows the two optima differ."})
    else:
        data.notes.append("No rectified-steps plot: the suite has no two synthetic variants that differ only in "
                          "crfm.rectified_step (add e.g. a matrix over crfm.rectified_step: [0, 2, 4, 6]).")
    if plot_per_class(results, out / "per_class_iou.png") is not None:
        figures.append({"file": "per_class_iou.png", "title": "Per-class IoU (downstream)",
                        "caption": "IoU of each LoveDA class on the real validation set, for the segmentation model "
                                   "trained on each variant's data"
                                   + (" (error bars: std over seeds)." if several else " (one seed: no error bars).")})
    efficiency = None
    eff = data_efficiency(results)
    if eff is not None and eff["series"]:
        plot_data_efficiency(eff, out / "data_efficiency.png")
        (out / "data_efficiency.csv").write_text(render_efficiency_csv(eff))
        efficiency = {"file": "data_efficiency.png", "sizes": eff["sizes"], "rows": efficiency_table(eff),
                      "baseline": eff["baseline"], "caption": EFFICIENCY_RULE}
    elif "subsets" in results:
        data.notes.append("No data-efficiency plot: it needs a baseline (real-only) variant and at least one synthetic "
                          "variant with downstream mIoU at a common labelled-subset size and seed.")
    front: list[int] = []
    if data.trials:
        feasible = [i for i, t in enumerate(data.trials) if t["feasible"]]
        front = [feasible[i] for i in pareto_front([(data.trials[i]["fid"], data.trials[i]["mask_miou"]) for i in feasible],
                                                   (False, True))]
        plot_pareto(data.trials, front, results["variants"], out / "pareto.png")
        figures.append({"file": "pareto.png", "title": "Tuning: FID vs mask mIoU",
                        "caption": f"{len(data.trials)} finished trials of study "
                                   f"{data.study['tags'].get('optuna.study', data.study['run_name']) if data.study else '?'}; "
                                   "red: the Pareto front of the feasible trials (no other has both lower FID and higher mask mIoU); "
                                   "stars: the suite's variants."})
    else:
        data.notes.append("No tuning trials in MLflow for this suite (run `todsynth bench tune` to add the FID vs "
                          "mask-mIoU Pareto plot).")
    predictors = predictor_sections(data, out)
    grid = image_grid(suite, data, out / "samples.png")
    grids: list[dict[str, str]] = []
    if grid is None:
        for name, p in _logged_grids(data, scratch / "grids").items():
            dst = out / f"grid_{name}.png"
            shutil.copy(p, dst)
            grids.append({"file": dst.name, "variant": name})
        if not grids:
            data.notes.append("No sample images found (synthesize stage outputs are gone from the workspace cache "
                              "and no grid artifacts were logged).")

    rows = table_rows(results)
    cols = table_columns(results)
    context_fid = fid_counts(results)
    dirs = metric_directions(results)
    context = {
        "suite": data.suite, "description": _description(data), "results": results, "rows": rows,
        "columns": [{"key": c, "label": LABELS[c], "arrow": "↑" if dirs.get(c, True) else "↓"} for c in cols],
        "several_seeds": several, "figures": figures, "grid": grid is not None,
        "grid_headers": grid[1] if grid else [], "grids": grids, "notes": data.notes,
        "provenance": provenance_rows(data), "efficiency": efficiency, "predictors": predictors,
        "fid_counts": context_fid,
        "min_settings": MIN_SETTINGS,
        "non_comparable": any(r["comparable"] == "no" for r in rows),
        "pareto": _pareto_rows([data.trials[i] for i in front]), "n_trials": len(data.trials),
        "study": data.study["tags"].get("optuna.study", data.study["run_name"]) if data.study else None,
    }
    env = _env()
    (out / "results.csv").write_text(render_csv(results))
    (out / "results.tex").write_text(render_latex(results))
    (out / "report.md").write_text(env.get_template("report.md.j2").render(**context, uri=lambda f: f))
    (out / "index.html").write_text(env.get_template("report.html.j2").render(**context, uri=lambda f: _data_uri(out / f)))


def _pareto_rows(front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pareto-optimal trials with display texts at one number of decimals per column."""
    fid = column_decimals([t["fid"] for t in front])
    miou = column_decimals([t["mask_miou"] for t in front])
    return [t | {"fid_text": fmt(t["fid"], decimals=fid), "miou_text": fmt(t["mask_miou"], decimals=miou)} for t in front]


def _description(data: ReportData) -> str:
    return str(data.parent["params"].get("description", "")).strip()
