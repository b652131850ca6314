"""What the report's templates are given: the context :func:`build_context` builds.

:func:`build_context` draws every figure into the report dir and collects the sections (results table, figures
with captions, data efficiency, Pareto trials, metric-vs-gain blocks, samples, provenance) and the notes saying what
is missing and why.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.correlation import MIN_SETTINGS
from bench.metrics import LABELS
from bench.report.efficiency import EFFICIENCY_RULE, data_efficiency, efficiency_table, render_efficiency_csv
from bench.report.gather import ReportData
from bench.report.plots import (
    MIN_REL_SPAN,
    pareto_front,
    plot_data_efficiency,
    plot_pareto,
    plot_per_class,
    plot_rectified_steps,
    rectified_series,
)
from bench.report.predictors import predictor_sections
from bench.report.provenance import device_text, store_text
from bench.report.samples import image_grid, logged_grids
from bench.report.tables import (
    fid_counts,
    metric_directions,
    pareto_rows,
    several_seeds,
    table_columns,
    table_rows,
)
from bench.schema import CEILING_KINDS, Suite


def build_context(suite: Suite, data: ReportData, out: Path, scratch: Path) -> dict[str, Any]:
    """Write the figures (and ``data_efficiency.csv``) into ``out`` and return the templates' context.

    Notes go to ``data.notes`` in the order the report lists them; ``scratch`` receives fetched grid artifacts.
    """
    results = data.results
    several = several_seeds(results)
    figures = [f for f in (_rectified_figure(data, out, several), _per_class_figure(results, out, several)) if f]
    efficiency = _efficiency_section(data, out)
    pareto, front = _pareto_figure(data, out)
    if pareto is not None:
        figures.append(pareto)
    predictors = predictor_sections(data, out)
    grid, grids = _samples_section(suite, data, out, scratch)
    rows = table_rows(results)
    dirs = metric_directions(results)
    return {
        "suite": data.suite, "description": str(data.parent["params"].get("description", "")).strip(),
        "results": results, "rows": rows,
        "columns": [{"key": c, "label": LABELS[c], "arrow": "↑" if dirs.get(c, True) else "↓"}
                    for c in table_columns(results)],
        "several_seeds": several, "figures": figures, "grid": grid is not None,
        "grid_headers": grid[1] if grid else [], "grids": grids, "notes": data.notes,
        "provenance": provenance_rows(data), "efficiency": efficiency, "predictors": predictors,
        "fid_counts": fid_counts(results),
        "min_settings": MIN_SETTINGS,
        "non_comparable": any(r["comparable"] == "no" for r in rows),
        "pareto": pareto_rows([data.trials[i] for i in front]), "n_trials": len(data.trials),
        "pareto_axes": [{"label": LABELS.get(m, m), "arrow": "↑" if dirs.get(m, True) else "↓"} for m in data.axes],
        "study": data.study_name,
        "ceiling_note": CEILING_NOTE if any(r["kind"] in CEILING_KINDS for r in rows) else "",
    }


CEILING_NOTE = (
    "Rows of kind rerender or oracle are ceilings, not methods (never bold): the downstream model trained on real data "
    "plus as many images as a synthetic variant adds, at the same ratio, that are as good as images can be: the same "
    "training masks painted anew by the scenes' own renderer (rerender: what a perfect generator would draw) or "
    "held-out real scenes (oracle: more labelled data). A synthetic variant's gain over real-only reads against "
    "theirs. A rerender row's image metrics (mask mIoU, FID, KID, precision, recall) are those of its painted images, "
    "measured like the synthetic ones: what each image metric reads for a perfect generator at these image counts."
)


def _rectified_figure(data: ReportData, out: Path, several: bool) -> dict[str, str] | None:
    """``rectified_steps.png`` and its caption; a note instead when no variants differ only in the rectified step."""
    results = data.results
    series = rectified_series(results)
    if not series:
        data.notes.append("No rectified-steps plot: the suite has no two synthetic variants that differ only in "
                          "crfm.rectified_step (add e.g. a matrix over crfm.rectified_step: [0, 2, 4, 6]).")
        return None
    steps = {v["params"]["sampling"]["num_inference_steps"] for v in results["variants"] if "sampling" in v.get("params", {})}
    plot_rectified_steps(series, steps.pop() if len(steps) == 1 else None, out / "rectified_steps.png", several)
    return {"file": "rectified_steps.png", "title": "Downstream mIoU and FID vs rectified steps",
            "caption": "Synthetic variants that differ only in `crfm.rectified_step` (plain sampling = 0 "
                       "steps). Top: downstream mIoU (higher is better); bottom: FID (lower is better); "
                       f"each panel's y range spans at least {MIN_REL_SPAN:.0%} of its largest value, so a "
                       "small difference looks small. "
                       + (f"Error bars: std over seeds {', '.join(str(x) for x in results['seeds'])}. "
                          if several else "One seed: no error bars. ")
                       + "The paper's LoveDA/FUSU ablation shows the two optima differ."}


def _per_class_figure(results: dict[str, Any], out: Path, several: bool) -> dict[str, str] | None:
    """``per_class_iou.png`` and its caption; None without per-class numbers."""
    if plot_per_class(results, out / "per_class_iou.png") is None:
        return None
    return {"file": "per_class_iou.png", "title": "Per-class IoU (downstream)",
            "caption": "IoU of each LoveDA class on the real validation set, for the segmentation model "
                       "trained on each variant's data"
                       + (" (error bars: std over seeds)." if several else " (one seed: no error bars).")}


def _efficiency_section(data: ReportData, out: Path) -> dict[str, Any] | None:
    """``data_efficiency.png`` + ``.csv`` and the table's rows; a note when subsets give no comparable pair."""
    results = data.results
    eff = data_efficiency(results)
    if eff is not None and eff["series"]:
        plot_data_efficiency(eff, out / "data_efficiency.png")
        (out / "data_efficiency.csv").write_text(render_efficiency_csv(eff))
        return {"file": "data_efficiency.png", "sizes": eff["sizes"], "rows": efficiency_table(eff),
                "baseline": eff["baseline"], "caption": EFFICIENCY_RULE}
    if "subsets" in results:
        data.notes.append("No data-efficiency plot: it needs a baseline (real-only) variant and at least one synthetic "
                          "variant with downstream mIoU at a common labelled-subset size and seed.")
    return None


def _pareto_figure(data: ReportData, out: Path) -> tuple[dict[str, str] | None, list[int]]:
    """``pareto.png`` with its caption, and the indices of the feasible trials' Pareto front.

    The front is over the suite's tuning objectives (``data.axes``, directions from the metric registry). Without
    tuning trials: ``(None, [])`` and a note.
    """
    from bench.metrics import label, scored

    xm, ym = data.axes
    names = f"{label(xm)} vs {label(ym)}"
    if not data.trials:
        data.notes.append(f"No tuning trials in MLflow for this suite (run `todsynth bench tune` to add the {names} "
                          "Pareto plot).")
        return None, []
    hib = (scored().get(xm, True), scored().get(ym, True))
    better = " and ".join(f"{'higher' if h else 'lower'} {label(m)}" for m, h in zip(data.axes, hib, strict=True))
    feasible = [i for i, t in enumerate(data.trials) if t["feasible"]]
    front = [feasible[i] for i in pareto_front([(data.trials[i]["x"], data.trials[i]["y"]) for i in feasible], hib)]
    plot_pareto(data.trials, front, data.results["variants"], out / "pareto.png", data.axes)
    study = data.study_name if data.study_name is not None else "?"
    return {"file": "pareto.png", "title": f"Tuning: {names}",
            "caption": f"{len(data.trials)} finished trials of study {study}; "
                       f"red: the Pareto front of the feasible trials (no other has both {better}); "
                       "stars: the suite's variants."}, front


def _samples_section(suite: Suite, data: ReportData, out: Path, scratch: Path
                     ) -> tuple[tuple[Path, list[str]] | None, list[dict[str, str]]]:
    """``samples.png`` and its headers; else copies of the logged ``grid.png`` artifacts (``grid_<variant>.png``)."""
    grid = image_grid(suite, data, out / "samples.png")
    grids: list[dict[str, str]] = []
    if grid is None:
        for name, p in logged_grids(data, scratch / "grids").items():
            dst = out / f"grid_{name}.png"
            shutil.copy(p, dst)
            grids.append({"file": dst.name, "variant": name})
        if not grids:
            data.notes.append("No sample images found (synthesize stage outputs are gone from the workspace cache "
                              "and no grid artifacts were logged).")
    return grid, grids


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
