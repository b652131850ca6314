"""Which image metric predicts downstream gain: a Spearman rank correlation per image metric.

Each image metric is correlated with the downstream mIoU gain over real-only, across synthetic settings (a suite's
variants or a tuning study's trials).

One implementation for ``bench report`` (the report section and its scatter) and ``bench tune`` (``tune.json`` and
the study's MLflow run), so both carry the same numbers. A setting is ``{"name", "gain", "metrics"}``: ``gain`` is
the downstream mIoU of real + this setting's synthetic data minus that of the matching real-only model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.metrics import REGISTRY, finite_number, of_kind

MIN_SETTINGS = 4  # fewer points give a rank correlation that is mostly noise: not computed
# Image metrics: the registry's ``image`` kind (bench.metrics), feature-based ones (FID, KID) first, then any unregistered number a
# setting carries. Everything else registered (downstream scores, the evaluator's ceiling, cost, the image counts
# behind FID that follow the subset's size) and tuning bookkeeping is left out, as are nested keys (``a/b``).
BOOKKEEPING = frozenset({"fid_comparable", "trial_seconds", "feasible"})
ORDER = tuple(sorted(of_kind("image"), key=lambda n: not REGISTRY[n].features))  # FID, KID, then mask metrics


def image_metrics(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The image metrics with a number in at least one setting: :data:`ORDER` first, then unregistered ones sorted."""
    seen = {k for s in settings for k, v in s["metrics"].items()
            if finite_number(v) is not None and "/" not in k and k not in BOOKKEEPING and (k not in REGISTRY or k in ORDER)}
    return [m for m in ORDER if m in seen] + sorted(seen - set(ORDER))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties, scipy's); None when undefined (a constant input)."""
    if len(x) != len(y):
        raise ValueError(f"x and y need the same length (got {len(x)} and {len(y)})")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    return rho if math.isfinite(rho) else None


def gain_correlations(settings: Sequence[Mapping[str, Any]], directions: Mapping[str, bool] | None = None,
                      min_settings: int = MIN_SETTINGS) -> dict[str, Any]:
    """Per image metric, its Spearman correlation with ``gain`` over the settings that have both numbers.

    Returns ``{"n_settings", "min_settings", "reason" (None, or why nothing was computed), "metrics": [{"metric",
    "higher_is_better", "rho" (None when undefined), "n", "note" (why rho is None), "agrees" (True when a better
    value by the metric's direction goes with more gain, None when rho is None or 0), "points": [{"name", "x",
    "gain"}]}]}``. With fewer than ``min_settings`` settings that have a gain, ``metrics`` is empty.
    """
    directions = directions or {}
    usable = [s for s in settings if finite_number(s.get("gain")) is not None]
    out: dict[str, Any] = {"n_settings": len(usable), "min_settings": min_settings, "reason": None, "metrics": []}
    if len(usable) < min_settings:
        out["reason"] = (f"{len(usable)} synthetic setting{'s' if len(usable) != 1 else ''} with a downstream gain; "
                         f"a rank correlation needs at least {min_settings}, so none is computed")
        return out
    for metric in image_metrics(usable):
        points: list[dict[str, Any]] = [{"name": str(s["name"]), "x": x, "gain": float(s["gain"])}
                  for s in usable if (x := finite_number(s["metrics"].get(metric))) is not None]
        hi = directions.get(metric)
        rho, note = None, None
        if len(points) < min_settings:
            note = f"only {len(points)} settings have it (needs {min_settings})"
        else:
            xs, ys = [p["x"] for p in points], [p["gain"] for p in points]
            rho = spearman(xs, ys)
            if rho is None:
                note = ("the metric" if len(set(xs)) < 2 else "the gain") + " is the same in every setting: no ranking"
        agrees = None if rho is None or rho == 0 or hi is None else (rho > 0) == hi
        out["metrics"].append({"metric": metric, "higher_is_better": hi, "rho": rho, "n": len(points), "note": note,
                               "agrees": agrees, "points": points})
    return out


def mlflow_metrics(corr: Mapping[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of :func:`gain_correlations`: ``gain_spearman/<metric>`` (defined ones) and ``.../n``."""
    out: dict[str, float] = {"gain_spearman/n_settings": float(corr["n_settings"])}
    for m in corr["metrics"]:
        out[f"gain_spearman_n/{m['metric']}"] = float(m["n"])
        if m["rho"] is not None:
            out[f"gain_spearman/{m['metric']}"] = m["rho"]
    return out


GAIN_LABEL = "downstream mIoU gain over real-only"
MIOU_LABEL = "downstream mIoU (one real-only shared by every trial: same ranks as the gain)"


def study_settings(trials: Sequence[Mapping[str, Any]], real_only: float | None = None
                   ) -> tuple[list[dict[str, Any]], str]:
    """Tuning trials (``{"name", "metrics"}``) that have a downstream mIoU, as settings; returns (settings, target).

    The gain is the trial's downstream mIoU minus ``real_only``. Without a real-only value the target is the downstream
    mIoU itself: every trial is compared with the same real-only model, so the ranks, and Spearman's rho, are equal.
    """
    settings = []
    for t in trials:
        miou = finite_number(t["metrics"].get("downstream_miou"))
        if miou is not None:
            settings.append({"name": str(t["name"]), "metrics": dict(t["metrics"]),
                             "gain": miou - real_only if real_only is not None else miou})
    return settings, GAIN_LABEL if real_only is not None else MIOU_LABEL
