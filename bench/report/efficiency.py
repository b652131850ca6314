"""Data efficiency (``dataset.subsets``): its table rows and ``data_efficiency.csv``.

The downstream mIoU gain of each synthetic variant over the real-only model at the same labelled-subset size,
paired by seed.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from bench.report.tables import as_number
from bench.schema.variants import CEILING_KINDS

EFFICIENCY_RULE = (
    "Difference of downstream mIoU on real Val, (real + synthetic) minus real-only, computed per seed at the same "
    "labelled-subset size n and seed; mean and sample std (ddof 1) over seeds. † marks a difference whose |mean| "
    "exceeds one std; with a single seed there is no std and nothing is marked. Ceiling rows add other images in the "
    "synthetic images' place (as many, at the same ratio): oracle, held-out real scenes (what more labelled data "
    "adds); rerender, the same training masks painted anew by the scenes' own renderer (what a perfect generator "
    "could add). A synthetic cell gives its mean as a share of each ceiling's where that is positive and exceeds one "
    "std."
)


def data_efficiency(results: dict[str, Any]) -> dict[str, Any] | None:
    """Downstream mIoU gain of each synthetic (and ceiling) variant over the real-only baseline, per subset size n.

    Plain numbers for the plot and table (see :data:`EFFICIENCY_RULE`). None without ``subsets`` or without a
    baseline variant. Returns ``{"baseline", "sizes": [n ascending], "series": [{"variant", "kind", "points": [{"n",
    "seeds", "diffs", "mean", "std" (None with one seed), "exceeds", "of_ceiling"}]}]}``; a point needs both rows'
    seed. ``of_ceiling``: for a synthetic point, ceiling kind -> its mean over that ceiling's at the same n (only
    where the ceiling has a point there whose mean is positive and exceeds one std); empty for a ceiling.
    """
    if "subsets" not in results:
        return None
    rows = [v for v in results["variants"] if v.get("n") is not None]
    base = {v["n"]: v for v in rows if v["kind"] == "baseline"}
    if not base:
        return None

    series: dict[str, list[dict[str, Any]]] = {}
    kinds: dict[str, str] = {}
    for v in rows:
        if v["kind"] == "baseline" or v["n"] not in base:
            continue
        ref, got = seed_values(base[v["n"]]), seed_values(v)
        seeds = [s for s in got if s in ref]
        if not seeds:
            continue
        diffs = [got[s] - ref[s] for s in seeds]
        mean = sum(diffs) / len(diffs)
        std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else None
        series.setdefault(v["declared"], []).append({"n": v["n"], "seeds": seeds, "diffs": diffs, "mean": mean,
                                                     "std": std, "exceeds": std is not None and abs(mean) > std})
        kinds[v["declared"]] = v["kind"]
    ceilings = {(kinds[name], p["n"]): p["mean"] for name, points in series.items() if kinds[name] in CEILING_KINDS
                for p in points if p["exceeds"]}  # a share of a gain inside its own noise would read as anything
    for name, points in series.items():
        for p in points:
            p["of_ceiling"] = {} if kinds[name] in CEILING_KINDS else {
                kind: p["mean"] / top for kind in CEILING_KINDS if (top := ceilings.get((kind, p["n"]))) is not None
                and top > 0}
    return {"baseline": next(iter(base.values()))["declared"], "sizes": sorted(base),
            "series": [{"variant": name, "kind": kinds[name], "points": sorted(points, key=lambda p: p["n"])}
                       for name, points in series.items()]}


def seed_values(v: dict[str, Any], key: str = "downstream_miou") -> dict[int, float]:
    """Seed -> the variant's value of ``key`` in that seed's run (from ``per_seed``)."""
    out = {}
    for p in v.get("per_seed", []):
        x = as_number(p["metrics"].get(key))
        if x is not None:
            out[int(p["seed"])] = x
    return out


def efficiency_table(eff: dict[str, Any]) -> list[dict[str, Any]]:
    """Display rows of :func:`data_efficiency`: per variant, per n ``{"text", "exceeds"}`` (``–`` where missing).

    A gain's text names its share of each ceiling's gain; a loss (negative mean) names none.
    """
    names = {s["kind"]: s["variant"] for s in eff["series"] if s.get("kind") in CEILING_KINDS}  # shares name the row
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
            text += " †" if p["exceeds"] else ""
            # a share of the ceiling's gain reads for a gain only: a loss prints its sign alone (the CSV keeps the ratio)
            of_ceiling = p.get("of_ceiling", {}) if p["mean"] >= 0 else {}
            shares = [f"{100 * x:.0f} % of {names.get(kind, kind)}" for kind, x in of_ceiling.items()]
            text += f" ({', '.join(shares)})" if shares else ""
            cells[n] = {"text": text, "exceeds": p["exceeds"]}
        rows.append({"variant": s["variant"], "cells": cells})
    return rows


def render_efficiency_csv(eff: dict[str, Any]) -> str:
    """One row per (variant, n): kind, the difference's mean and std (empty with one seed), seeds, diffs, shares.

    ``of_oracle`` / ``of_rerender``: the share of that ceiling's mean, empty without one (or for a ceiling).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "kind", "n", "mean_diff", "std_diff", "exceeds_std", "n_seeds", "diffs",
                *(f"of_{k}" for k in CEILING_KINDS)])
    for s in eff["series"]:
        for p in s["points"]:
            shares = p.get("of_ceiling", {})
            w.writerow([s["variant"], s.get("kind", "synthetic"), p["n"], repr(p["mean"]),
                        "" if p["std"] is None else repr(p["std"]), str(p["exceeds"]).lower(), len(p["seeds"]),
                        " ".join(repr(d) for d in p["diffs"]),
                        *("" if (x := shares.get(k)) is None else repr(x) for k in CEILING_KINDS)])
    return buf.getvalue()
