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

EFFICIENCY_RULE = (
    "Difference of downstream mIoU on real Val, (real + synthetic) minus real-only, computed per seed at the same "
    "labelled-subset size n and seed; mean and sample std (ddof 1) over seeds. † marks a difference whose |mean| "
    "exceeds one std; with a single seed there is no std and nothing is marked. An oracle row (if any) adds held-out "
    "real scenes in the synthetic images' place (as many, at the same ratio): the most a synthetic set of that size "
    "could add; a synthetic cell then gives its mean as a share of the oracle's (when the oracle's is positive)."
)


def data_efficiency(results: dict[str, Any]) -> dict[str, Any] | None:
    """Downstream mIoU gain of each synthetic (and oracle) variant over the real-only baseline, per subset size n.

    Plain numbers for the plot and table (see :data:`EFFICIENCY_RULE`). None without ``subsets`` or without a
    baseline variant. Returns ``{"baseline", "sizes": [n ascending], "series": [{"variant", "kind", "points": [{"n",
    "seeds", "diffs", "mean", "std" (None with one seed), "exceeds", "of_oracle"}]}]}``; a point needs both rows' seed.
    ``of_oracle``: a synthetic point's mean over the oracle's at the same n (None without an oracle point there or
    when the oracle's mean is not positive; always None for the oracle itself).
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
    ceiling = {p["n"]: p["mean"] for name, points in series.items() if kinds[name] == "oracle" for p in points}
    for name, points in series.items():
        for p in points:
            top = ceiling.get(p["n"])
            p["of_oracle"] = p["mean"] / top if kinds[name] != "oracle" and top is not None and top > 0 else None
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
            text += " †" if p["exceeds"] else ""
            if p.get("of_oracle") is not None:
                text += f" ({100 * p['of_oracle']:.0f} % of oracle)"
            cells[n] = {"text": text, "exceeds": p["exceeds"]}
        rows.append({"variant": s["variant"], "cells": cells})
    return rows


def render_efficiency_csv(eff: dict[str, Any]) -> str:
    """One row per (variant, n): kind, the difference's mean and std (empty with one seed), seeds, diffs, of_oracle.

    ``of_oracle`` is empty without an oracle at that n.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "kind", "n", "mean_diff", "std_diff", "exceeds_std", "n_seeds", "diffs", "of_oracle"])
    for s in eff["series"]:
        for p in s["points"]:
            share = p.get("of_oracle")
            w.writerow([s["variant"], s.get("kind", "synthetic"), p["n"], repr(p["mean"]),
                        "" if p["std"] is None else repr(p["std"]), str(p["exceeds"]).lower(), len(p["seeds"]),
                        " ".join(repr(d) for d in p["diffs"]), "" if share is None else repr(share)])
    return buf.getvalue()
