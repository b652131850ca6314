"""The metric registry: every metric the harness produces, declared once.

Each :class:`MetricDef` says what a metric is called in results.json, MLflow and suite files (``name``), how the
report labels and formats it, whether higher is better (None: a count, not a score), which stage produces it and what
kind of number it is. Suite validation (``metrics:``, tune objectives and constraints), results.json's keys, the
MLflow variant runs, the report's table columns and the correlation section all read it from here.

Kinds: ``downstream`` (the segmentation model trained on the variant's data, scored on real Val), ``image`` (a
measurement of the synthetic images: a candidate predictor of downstream gain), ``instrument`` (the evaluator's
ceiling: shown beside mask fidelity, never ranked), ``cost`` and ``count`` (bookkeeping, never correlated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["downstream", "image", "instrument", "cost", "count"]


@dataclass(frozen=True)
class MetricDef:
    """One metric of the registry.

    Attributes:
        name: its key in results.json, MLflow and suite files.
        label: how the report labels it.
        higher_is_better: whether a higher value is better; None for counts (not a score).
        stage: the stage that produces it (``derived``: computed from other metrics when a variant run is logged).
        kind: what kind of number it is (the module docstring lists the kinds).
        unit: the unit of its values (``s``: seconds); empty when unitless.
        fmt: its terminal format.
        table: whether the results table shows it.
        features: whether it comes from the FID feature extractor.
    """

    name: str
    label: str
    higher_is_better: bool | None
    stage: Literal["downstream", "evaluate", "derived"]
    kind: Kind
    unit: str = ""
    fmt: str = ".3f"
    table: bool = False
    features: bool = False


METRICS: tuple[MetricDef, ...] = (
    MetricDef("downstream_miou", "mIoU", True, "downstream", "downstream", table=True),
    MetricDef("downstream_oa", "OA", True, "downstream", "downstream", table=True),
    MetricDef("downstream_macc", "mAcc", True, "downstream", "downstream", table=True),
    MetricDef("mask_miou", "mask mIoU", True, "evaluate", "image", table=True),
    MetricDef("mask_oa", "mask OA", True, "evaluate", "image"),
    MetricDef("evaluator_real_miou", "evaluator on real", True, "evaluate", "instrument", table=True),
    MetricDef("fid", "FID", False, "evaluate", "image", fmt=".2f", table=True, features=True),
    MetricDef("kid", "KID", False, "evaluate", "image", table=True, features=True),
    # improved precision / recall (k = 3) in the FID feature space: fidelity and variety, which FID mixes
    MetricDef("precision", "precision", True, "evaluate", "image", table=True, features=True),
    MetricDef("recall", "recall", True, "evaluate", "image", table=True, features=True),
    MetricDef("seconds_per_image", "s/image", False, "evaluate", "cost", unit="s", fmt=".2f", table=True),
    MetricDef("fid_n_real", "FID real images", None, "evaluate", "count"),
    MetricDef("fid_n_synthetic", "FID synthetic images", None, "evaluate", "count"),
    # logged on MLflow variant runs (bench.results.run_metrics), derived from the ones above
    MetricDef("downstream_gain", "mIoU gain", True, "derived", "downstream"),
    MetricDef("real_only_miou", "real-only mIoU", True, "derived", "instrument"),
    MetricDef("mask_miou_of_ceiling", "mask mIoU / ceiling", True, "derived", "image"),
)
REGISTRY: dict[str, MetricDef] = {m.name: m for m in METRICS}
TABLE_COLUMNS: tuple[str, ...] = tuple(m.name for m in METRICS if m.table)  # the results tables' columns, in order
LABELS: dict[str, str] = {m.name: m.label for m in METRICS}
FEATURE_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.features)  # from the FID feature extractor


def scored(stages: tuple[str, ...] = ("downstream", "evaluate")) -> dict[str, bool]:
    """Name -> higher_is_better of the scores a suite may declare, rank by or tune (produced by ``stages``)."""
    return {m.name: bool(m.higher_is_better) for m in METRICS if m.higher_is_better is not None and m.stage in stages}


def produced_by(stage: str) -> tuple[str, ...]:
    """The metrics ``stage`` writes (results.json's keys for it), in registry order."""
    return tuple(m.name for m in METRICS if m.stage == stage)


def needs_downstream(metric: str) -> bool:
    """Whether ``metric`` needs the downstream stage (a tune objective or constraint on it adds that stage)."""
    return metric in REGISTRY and REGISTRY[metric].stage == "downstream"


def label(metric: str) -> str:
    """The report's label of ``metric`` (its name when unregistered)."""
    return REGISTRY[metric].label if metric in REGISTRY else metric


def of_kind(*kinds: Kind) -> tuple[str, ...]:
    """The metrics of ``kinds``, in registry order."""
    return tuple(m.name for m in METRICS if m.kind in kinds)


def finite_number(v: Any) -> float | None:
    """``v`` as a float when it is a finite real number (not a bool, NaN or inf), else None."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None
