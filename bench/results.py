"""``<workspace>/<suite>/results.json``: the final table, one entry per variant (atomic write).

Schema::

    {"suite", "suite_version", "config_hash", "seeds",
     "mlflow": {"tracking_uri", "experiment", "parent_run_id"},
     "metric_specs": [{"name", "higher_is_better"}],
     "skipped_samples": faulty dataset files left out (dataset.on_bad_sample: skip), 0 otherwise,
     "provenance": {"git_commit", "date", "python", "platform", "packages"},
     "subsets": [n, ...] (only with dataset.subsets),
     "variants": [{"name", "kind": "baseline"|"synthetic"|"oracle"|"rerender", "params": {...},
                   "metrics": {...}, "metrics_std": {...}, "per_seed": [{"seed", "metrics"}],
                   "declared", "n" (only with dataset.subsets: ``plain`` and 16 for ``plain@n16``)}]}

Every variant has ``downstream_miou``, ``downstream_oa``, ``downstream_macc`` and ``per_class_iou``
({class: IoU}); synthetic ones add ``fid``, ``kid``, ``fid_extractor``, ``fid_comparable``, ``fid_n_real`` and
``fid_n_synthetic`` (the image counts FID/KID were computed on: FID's bias depends on them), ``fid_resize`` (how
images reached the extractor), ``mask_miou``, ``mask_oa``, ``evaluator_real_miou`` (the evaluator's mIoU on the real images of the masks the synthetic
images were generated from: the ceiling of ``mask_miou``) and ``seconds_per_image``. With several seeds, ``metrics`` holds the mean over seeds
and ``metrics_std`` the population standard deviation (``ddof=0``; empty with one seed); non-numeric
values (``fid_extractor``, ``fid_comparable``) are the common value across seeds. Raw floats, never rounded;
undefined values (NaN, e.g. FID with fewer than 2 images or IoU of a class absent from Val) are written as null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.graph import node_key
from bench.metrics import FEATURE_METRICS, LABELS, METRICS, TABLE_COLUMNS, finite_number, produced_by
from bench.provenance import provenance
from bench.schema import CEILING_KINDS, CRFM, ResolvedVariant, Sampling, Suite, resolve_variants

# results.json's keys per stage: the registry's metrics of that stage plus the non-numeric companions
DOWNSTREAM_KEYS = (*produced_by("downstream"), "per_class_iou")
SYNTHETIC_KEYS = (*produced_by("evaluate"), "fid_extractor", "fid_comparable", "fid_resize")


def results_path(suite: Suite) -> Path:
    """``<workspace>/<suite>/results.json``."""
    return suite.workspace / suite.name / "results.json"


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std; equal values give exactly their value and 0.0 (not a 1e-16 round-off)."""
    if all(v == values[0] for v in values):
        return values[0], 0.0
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def aggregate(per_seed: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-seed metric dicts -> (mean-or-common-value dict, std dict); nested dicts per key."""
    keys = list(dict.fromkeys(k for m in per_seed for k in m))
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for k in keys:
        vals = [m[k] for m in per_seed if k in m]
        if all(isinstance(v, dict) for v in vals):
            mean[k], std[k] = aggregate(vals)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            mean[k], spread = _mean_std([float(v) for v in vals])
            if len(vals) > 1:  # a value of one seed has no std (not 0.0), also when other seeds lack the key
                std[k] = spread
        else:
            mean[k] = vals[0] if all(v == vals[0] for v in vals) else vals
    return mean, std


def seed_metrics(done: Mapping[str, CachedStage], variant: str, seed: int) -> dict[str, Any]:
    """One variant's metrics for one seed, from its finished ``downstream`` and ``evaluate`` stages.

    Either stage may be absent: a baseline has no ``evaluate``, a tuning trial may stop before ``downstream``.
    """
    metrics: dict[str, Any] = {}
    down = done.get(node_key("downstream", variant, seed))
    if down is not None:
        m = down.artifacts.get("metrics", {})
        metrics.update({k: m[k] for k in DOWNSTREAM_KEYS if k in m})
    ev = done.get(node_key("evaluate", variant, seed))
    if ev is not None:
        m = ev.artifacts.get("metrics", {})
        metrics.update({k: m[k] for k in SYNTHETIC_KEYS if k in m})
    return metrics


def variant_params(suite: Suite, v: ResolvedVariant) -> dict[str, Any]:
    """What makes a variant, as a params dict.

    Its sampling and CRFM settings (synthetic only), the ratio of added to real images (all but the baseline), and
    its labelled subset (with ``dataset.subsets``). results.json, the MLflow variant runs and tuning trials use it.
    """
    params: dict[str, Any] = {}
    if v.kind == "synthetic":
        params |= {"sampling": Sampling.values_of(v.sampling), "crfm": CRFM.values_of(v.crfm)}
    if v.kind != "baseline":
        params["ratio"] = suite.downstream.ratio
    if v.subset is not None:
        params["subset"] = {"n": v.subset, "seed": suite.dataset.subset_seed}
    return params


def collect_results(
    suite: Suite, done: Mapping[str, CachedStage], config_hash: str, parent_run_id: str | None
) -> dict[str, Any]:
    """Assemble results.json from the finished ``evaluate``/``downstream`` stages."""
    variants = []
    for v in resolve_variants(suite):
        per_seed: list[dict[str, Any]] = [{"seed": seed, "metrics": seed_metrics(done, v.name, seed)}
                                          for seed in suite.seeds]
        mean, std = aggregate([p["metrics"] for p in per_seed])
        if len(per_seed) < 2:  # a std over one seed is undefined, not 0.0
            std = {}
        params: dict[str, Any] = {"seeds": list(suite.seeds), **variant_params(suite, v),
                                  "downstream": suite.downstream.model_dump(mode="json", exclude={"ratio"})}
        row: dict[str, Any] = {"name": v.name, "kind": v.kind, "params": params, "metrics": mean,
                               "metrics_std": std, "per_seed": per_seed}
        if v.subset is not None:
            row |= {"declared": v.declared, "n": v.subset}
        variants.append(row)
    subsets = {"subsets": list(suite.dataset.subsets)} if suite.dataset.subsets is not None else {}
    return {
        "suite": suite.name,
        "suite_version": suite.version,
        "config_hash": config_hash,
        "seeds": list(suite.seeds),
        "mlflow": {"tracking_uri": suite.tracking_uri, "experiment": suite.experiment, "parent_run_id": parent_run_id},
        "metric_specs": [m.model_dump() for m in suite.metrics],
        "skipped_samples": int(done["data"].artifacts.get("metrics", {}).get("skipped_samples", 0)) if "data" in done else 0,
        "provenance": provenance(),
        **subsets,
        "variants": variants,
    }


def strict_json(obj: Any) -> Any:
    """NaN/inf -> None, recursively, so the file is standard JSON (undefined metrics read as null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write standard JSON (non-finite numbers as null) atomically.

    Through :func:`todsynth.files.atomic_write_bytes`: a full disk leaves the previous results and no temp file.
    """
    from todsynth.files import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(strict_json(results), indent=2, allow_nan=False).encode())


def read_results(path: Path) -> dict[str, Any]:
    """Load a results.json.

    Raises:
        ConfigError: the file cannot be read, is not JSON or is not a results object (the message names it).
    """
    from todsynth.errors import ConfigError
    from todsynth.files import read_json

    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("variants"), list):
        raise ConfigError(f"{path} is not a results.json (no list of variants)")
    return results


COLUMN_FORMATS = {m.name: m.fmt for m in METRICS}


# The terminal table leaves columns out, in this order, when the console is too narrow for all of them; downstream
# mIoU, mask mIoU and its ceiling (evaluator on real) always stay.
NARROW_DROP_ORDER = ("seconds_per_image", "kid", "precision", "downstream_macc", "downstream_oa", "fid", "recall")


def _table_cell(v: Mapping[str, Any], col: str, several: bool) -> str:
    """One cell of the terminal table.

    The value; ``± std`` on a line below it with several seeds; ``*`` on a fallback extractor's feature metrics
    (FID, KID, precision, recall); ``-`` where the variant has no such metric.
    """
    val = v["metrics"].get(col)
    if not isinstance(val, int | float) or isinstance(val, bool):
        return "-"
    cell = f"{val:{COLUMN_FORMATS[col]}}"
    if several and col in v.get("metrics_std", {}):
        cell += f"\n± {v['metrics_std'][col]:{COLUMN_FORMATS[col]}}"
    if col in FEATURE_METRICS and v["metrics"].get("fid_comparable") is False:
        cell += "*"
    return cell


def results_table(results: dict[str, Any], width: int | None = None) -> Any:
    """A rich Table of the variants (mean with ``± std`` below it when several seeds).

    Every column is as wide as its widest value or the longest word of its label (labels wrap at their spaces), so
    no number is ever cut short. Given the console's ``width``, the columns that do not fit are left out in
    :data:`NARROW_DROP_ORDER` and the caption names them.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    several = len(results.get("seeds", [])) > 1
    rows = [(v["name"], {col: _table_cell(v, col, several) for col in TABLE_COLUMNS}) for v in results["variants"]]

    def col_width(col: str) -> int:
        return max([len(word) for word in LABELS[col].split()]
                   + [len(line) for _, cells in rows for line in cells[col].split("\n")])

    def build(columns: list[str]) -> Any:
        table = Table(title=f"{results['suite']} ({results['config_hash'][:8]})", box=box.SIMPLE_HEAD)
        table.add_column("variant", no_wrap=True)
        for col in columns:
            table.add_column(LABELS[col], justify="right", width=col_width(col))
        for name, cells in rows:
            table.add_row(name, *(cells[col] for col in columns))
        return table

    columns = list(TABLE_COLUMNS)
    left_out: list[str] = []
    measure = Console(width=10_000)
    for col in NARROW_DROP_ORDER:
        if width is None or measure.measure(build(columns)).maximum <= width:
            break
        columns.remove(col)
        left_out.append(LABELS[col])
    table = build(columns)
    notes = []
    fallback = any(v["metrics"].get("fid_comparable") is False for v in results["variants"])
    if fallback and set(FEATURE_METRICS) & set(columns):
        notes.append("* from a fallback feature extractor: not comparable with published Inception values")
    notes.append("mIoU/OA/mAcc: downstream model on real Val; mask mIoU: evaluator on synthetic pairs; evaluator on "
                 "real: the same evaluator on the real images of those masks (the ceiling of mask mIoU); precision: "
                 "share of synthetic images that look real, recall: share of real images the synthetic set covers "
                 "(k-NN feature manifolds); the baseline trains on real data only")
    ceilings = sorted({v["name"].split("@")[0] for v in results["variants"] if v.get("kind") in CEILING_KINDS})
    if ceilings:
        notes.append(f"{', '.join(ceilings)}: a ceiling, not a method (real data plus as many images as good as images "
                     "can be, in the synthetic images' place): the most synthetic data could add here; its image "
                     "metrics are what a perfect generator reads")
    if left_out:
        notes.append(f"left out at this width: {', '.join(left_out)} (results.json and the report have them)")
    table.caption = "\n".join(notes)
    return table


# ---------------------------------------------------------------- MLflow variant runs
# One MLflow run per variant and seed (and one per tuning trial) carries these, under the same names for every
# variant, so MLflow's compare view, parallel coordinates and scatter plots line variants up without NaN.
RUN_METRICS = (*produced_by("downstream"), *produced_by("evaluate"))


def run_metrics(metrics: Mapping[str, Any], real_only_miou: float | None = None) -> dict[str, float]:
    """A variant's numeric metrics as its MLflow run logs them.

    Adds ``per_class_iou/<class>``, ``mask_miou_of_ceiling`` (mask mIoU over the evaluator's mIoU on the real
    images of the same masks) and, given the real-only baseline's downstream mIoU (same seed and subset),
    ``real_only_miou`` and ``downstream_gain`` (downstream mIoU minus it). Undefined values are left out.
    """
    out = {k: x for k in RUN_METRICS if (x := finite_number(metrics.get(k))) is not None}
    out |= {f"per_class_iou/{c}": x for c, v in (metrics.get("per_class_iou") or {}).items()
            if (x := finite_number(v)) is not None}
    if "mask_miou" in out and out.get("evaluator_real_miou"):
        out["mask_miou_of_ceiling"] = out["mask_miou"] / out["evaluator_real_miou"]
    if (base := finite_number(real_only_miou)) is not None and "downstream_miou" in out:
        out["real_only_miou"] = base
        out["downstream_gain"] = out["downstream_miou"] - base
    return out


def run_params(name: str, seed: int | str, params: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A variant's MLflow run params, from results.json's ``params``.

    They are ``variant``, ``seed``, ``n`` (labelled subset or ``all``), ``sampling.*``, ``crfm.*``, ``ratio`` and
    ``fid.extractor``/``fid.resize`` (synthetic).
    """
    out: dict[str, Any] = {"variant": name, "seed": seed, "n": (params.get("subset") or {}).get("n", "all")}
    out |= {k: params[k] for k in ("sampling", "crfm", "ratio") if k in params}
    if "fid_extractor" in metrics:
        out["fid"] = {"extractor": metrics["fid_extractor"], "resize": metrics.get("fid_resize", "unknown")}
    return out


def variant_runs(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The MLflow variant runs of a results dict: one per variant and seed.

    Each is ``{"variant", "kind", "seed", "params", "metrics"}``. A synthetic or ceiling variant's gain is over the
    baseline of the same subset and seed.
    """
    baselines = {(v.get("n"), p["seed"]): p["metrics"].get("downstream_miou")
                 for v in results["variants"] if v["kind"] == "baseline" for p in v["per_seed"]}
    out = []
    for v in results["variants"]:
        for p in v["per_seed"]:
            base = baselines.get((v.get("n"), p["seed"])) if v["kind"] != "baseline" else None
            out.append({"variant": v["name"], "kind": v["kind"], "seed": p["seed"],
                        "params": run_params(v["name"], p["seed"], v["params"], p["metrics"]),
                        "metrics": run_metrics(p["metrics"], base)})
    return out
