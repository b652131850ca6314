"""The results table, and the display helpers every other table of the report shares.

Which columns, which cells (one number of decimals per column, best per column), and its ``results.csv`` (raw
floats) and ``results.tex`` (booktabs) renderings; plus the shared helpers (:func:`as_number`, :func:`fmt`,
:func:`column_decimals`).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from bench.metrics import FEATURE_METRICS, LABELS, TABLE_COLUMNS, of_kind, scored
from bench.schema.variants import CEILING_KINDS

# Table columns, in order, labels and directions: the metric registry (bench.metrics); a run's metric specs may
# restate directions.
COLUMNS = TABLE_COLUMNS
# Instruments, not contestants: shown, never marked best (the evaluator's ceiling is the same model's score on real
# images).
UNRANKED = frozenset(of_kind("instrument"))


def as_number(v: Any) -> float | None:
    """``v`` as a float when it is a real number (not a bool, not NaN), else None."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v == v else None


def class_names(results: dict[str, Any]) -> list[str]:
    """The classes with a per-class IoU in some variant: LoveDA's order first, then any others as seen."""
    from todsynth.data.classes import CLASSES

    seen = list(dict.fromkeys(c for v in results["variants"] for c in v["metrics"].get("per_class_iou", {})))
    return [c for c in CLASSES if c in seen] + [c for c in seen if c not in CLASSES]


def metric_directions(results: dict[str, Any]) -> dict[str, bool]:
    """Metric -> higher_is_better, from the run's metric specs, else the known direction."""
    out = scored()
    out.update({m["name"]: bool(m["higher_is_better"]) for m in results.get("metric_specs", [])})
    return out


def table_columns(results: dict[str, Any]) -> list[str]:
    """The columns with at least one numeric value, in :data:`COLUMNS` order."""
    return [c for c in COLUMNS if any(as_number(v["metrics"].get(c)) is not None for v in results["variants"])]


def best_variants(results: dict[str, Any]) -> dict[str, set[str]]:
    """Column -> variants whose mean, as displayed, is the best (direction from higher_is_better); empty when all tie.

    Ranked within each labelled-subset size ``n`` (a suite with ``dataset.subsets``): rows of different n train on
    different data (and FIDs count other numbers of images), so they are not rivals. "As displayed" is at the
    column's display decimals (:func:`column_places`). A ceiling row (oracle, rerender) measures what added data could
    be worth, not a result: never ranked, like the instrument columns.
    """
    dirs = metric_directions(results)
    places = column_places(results)
    best: dict[str, set[str]] = {}
    for col in table_columns(results):
        best[col] = set()
        if col in UNRANKED:
            continue
        groups: dict[Any, dict[str, float]] = {}
        for v in results["variants"]:
            x = as_number(v["metrics"].get(col))
            if v["kind"] not in CEILING_KINDS and x is not None:
                groups.setdefault(v.get("n"), {})[v["name"]] = x
        for vals in groups.values():
            if len(vals) < 2:
                continue
            target = fmt(max(vals.values()) if dirs.get(col, True) else min(vals.values()), decimals=places[col])
            winners = {k for k, x in vals.items() if fmt(x, decimals=places[col]) == target}  # ties as shown all win
            if len(winners) < len(vals):  # all equal: nobody is best
                best[col] |= winners
    return best


def column_places(results: dict[str, Any]) -> dict[str, int]:
    """Column -> the decimals its cells are displayed with (:func:`column_decimals` over every row, ceilings too)."""
    return {c: column_decimals([x for v in results["variants"] if (x := as_number(v["metrics"].get(c))) is not None])
            for c in table_columns(results)}


def column_decimals(values: list[float]) -> int:
    """Decimals of a table column: one number for all its cells, so they align at the point.

    By the largest |value|: 4 below 10, 2 below 100, 1 above; more when the smallest non-zero |value| is below 0.01
    (3 significant digits).
    """
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
    """The results table's display rows, one per variant.

    A row holds the display cells per column (``mean`` or ``mean ± std`` at the column's fixed decimals), best
    flags, FID extractor/comparable. ``std`` is None with one seed.
    """
    several = several_seeds(results)
    best = best_variants(results)
    cols = table_columns(results)
    places = column_places(results)
    rows = []
    for v in results["variants"]:
        cells = {}
        for col in cols:
            mean = as_number(v["metrics"].get(col))
            std = as_number(v.get("metrics_std", {}).get(col)) if several else None
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
    """The text of ``results.csv``: one row per variant.

    Every metric's mean and std as raw floats (std empty with one seed), FID extractor/comparable, per-class IoU.
    """
    cols = table_columns(results)
    several = several_seeds(results)
    classes = class_names(results)
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
    x = as_number(v)
    return "" if x is None else repr(x)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    """Escape LaTeX's special characters."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def render_latex(results: dict[str, Any]) -> str:
    r"""The text of ``results.tex``: a booktabs table (needs ``\usepackage{booktabs}``).

    Best per column bold, feature metrics (FID, KID, precision, recall) from a fallback extractor daggered, with the
    dagger explained in a footnote row.
    """
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
            if c in FEATURE_METRICS and r["comparable"] == "no" and cell["mean"] is not None:
                text += r"$^\dagger$"
                dagger = True
            cells.append(text)
        lines.append(_tex(r["name"]) + " & " + " & ".join(cells) + r" \\")
    lines.append(r"\bottomrule")
    if dagger:  # a footnote row of the table (a % comment would never reach the reader)
        lines.append(rf"\multicolumn{{{len(cols) + 1}}}{{l}}{{\footnotesize $^\dagger$ FID, KID, precision and "
                     r"recall from a fallback feature extractor (not Inception): they rank variants within this "
                     r"table but are not comparable with published values.} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


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


def pareto_rows(front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pareto-optimal trials with display texts (``x_text``, ``y_text``) at one number of decimals per column."""
    dx = column_decimals([t["x"] for t in front])
    dy = column_decimals([t["y"] for t in front])
    return [t | {"x_text": fmt(t["x"], decimals=dx), "y_text": fmt(t["y"], decimals=dy)} for t in front]
