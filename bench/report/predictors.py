"""Which image metric predicts downstream gain: the report's section blocks.

The suite's synthetic variants (and the tuning study's trials) as settings of
:func:`bench.correlation.gain_correlations`, their display rows, and the report's section blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.metrics import LABELS
from bench.report.efficiency import seed_values
from bench.report.gather import ReportData
from bench.report.plots import plot_gain_correlation
from bench.report.tables import as_number, metric_directions


def paired_gain(v: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Downstream mIoU of ``v`` minus ``base``'s, per seed, mean over the seeds both ran (as :func:`data_efficiency`).

    From the means when neither row has per-seed numbers. None when the per-seed numbers share no seed (or only one
    row has them), or when a mean is missing.
    """
    got, ref = seed_values(v), seed_values(base)
    seeds = [s for s in got if s in ref]
    if seeds:
        return sum(got[s] - ref[s] for s in seeds) / len(seeds)
    if got or ref:
        return None
    a, b = as_number(v["metrics"].get("downstream_miou")), as_number(base["metrics"].get("downstream_miou"))
    return None if a is None or b is None else a - b


def gain_settings(results: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The suite's synthetic variants as settings of :func:`bench.correlation.gain_correlations`.

    The gain is over the matching real-only (with ``dataset.subsets`` the real-only of the same n). Returns
    (settings, pairing rule).
    """
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
    return as_number(base[0]["metrics"].get("downstream_miou")) if base and "subsets" not in results else None


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


def predictor_sections(data: ReportData, out: Path) -> list[dict[str, Any]]:
    """The report's "which image metric predicts downstream gain" blocks.

    One for the suite's variants, and one for the tuning study's trials when they have a downstream mIoU; each with
    its one-line reason when not computed.
    """
    from bench.correlation import GAIN_LABEL, gain_correlations, study_settings

    dirs = metric_directions(data.results)
    blocks = []
    settings, rule = gain_settings(data.results)
    sources = [("suite", f"Suite variants ({rule})", settings, GAIN_LABEL, "gain_correlation.png")]
    trials = [{"name": f"trial-{t['number']}" if t["number"] is not None else t["run_id"][:8], "metrics": t["metrics"]}
              for t in data.trials]
    study_set, target = study_settings(trials, _real_only_miou(data.results))
    if study_set:
        name = data.study_name if data.study_name is not None else "?"
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
