"""A perf report out: standard JSON on disk, rows for the CLI's table, an MLflow run (experiment ``todsynth/perf``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.perf.config import SCHEMA
from todsynth.files import atomic_write_bytes

if TYPE_CHECKING:
    from bench.tracking import Tracker


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (standard JSON) and keys as strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as standard JSON (non-finite -> null), atomically."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(json_safe(report), indent=2) + "\n").encode())
    return path


def _fmt_s(s: dict[str, float]) -> str:
    def f(x: float) -> str:
        return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"

    return f"{f(s['median'])}  [{f(s['min'])} .. {f(s['max'])}]"


def _fmt_rate(s: dict[str, float], unit: str) -> str:
    return f"{s['median']:.1f} {unit}  [{s['min']:.1f} .. {s['max']:.1f}]"


def _fmt_mem(m: dict[str, Any]) -> str:
    return f"{m['peak_mb']:.0f} MiB ({'RSS' if m['kind'] == 'rss' else 'CUDA max allocated'})"


def perf_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, value, note) rows of a report, in reading order (the CLI prints them as a table)."""
    c, cr, tr, t = r["config"], r["crfm"], r["transformer"], r["train"]
    b = cr["breakdown_seconds_per_image"]
    rows = [
        ("device", r["device"]["name"], f"{r['device']['torch_threads']} threads, {c['precision']}, torch {r['device']['torch']}"),
        ("transformer forward", _fmt_s(tr["forward_seconds"]), f"batch {tr['batch']}, {tr['flops_per_forward'] / 1e9:.3g} GFLOP"),
        ("transformer FLOP/s", f"{tr['achieved_tflops'] * 1e3:.2f} GFLOP/s",
         f"{100 * tr['fraction_of_peak']:.1f}% of peak {tr['peak_tflops'] * 1e3:.0f} GFLOP/s ({r['device']['peak_source'].split(':')[0]})"),
        ("plain sampling", _fmt_s(r["plain"]["seconds_per_image"]) + " /image", f"{c['steps']} steps, batch {c['batch']}, {c['res']} px"),
        ("CRFM sampling", _fmt_s(cr["seconds_per_image"]) + " /image", f"{c['rectified']} of {c['steps']} steps rectified"),
        ("  transformer", _fmt_s(b["transformer"]) + " /image", "in loop, all steps"),
        ("  VAE decode fwd+bwd", _fmt_s(b["vae_decode"]) + " /image", "in loop, all rectified steps"),
        ("  judge fwd+bwd", _fmt_s(b["judge"]) + " /image", f"in loop, {r['judge']['model']}"),
        ("  Euler + final decode", _fmt_s({k: b["euler"][k] + b["final_decode"][k] for k in ("median", "min", "max")}) + " /image", ""),
        ("  other", _fmt_s(b["other"]) + " /image", "loop bookkeeping"),
        ("VAE decode fwd+bwd (standalone)", _fmt_s(r["vae"]["decode_fwd_bwd_seconds_per_image"]) + " /image", "per rectified step"),
        ("judge fwd+bwd (standalone)", _fmt_s(r["judge"]["fwd_bwd_seconds_per_image"]) + " /image", "per rectified step"),
        ("CRFM / plain", f"{r['crfm_over_plain']:.3f}x", f"median of rounds; from minima {r['crfm_over_plain_min']:.3f}x"),
        ("CRFM overhead vs parts", f"{r['crfm_overhead_vs_parts']:.3f}x",
         f"extra / ({c['rectified']} x (decode+judge fwd+bwd)), median of rounds; from minima {r['crfm_overhead_vs_parts_min']:.3f}x"),
        ("  beyond the passes", ", ".join(f"{k.replace('_', ' ')} {100 * v:+.1f}%" for k, v in cr["beyond_parts_fraction"].items()),
         "of the passes, median of rounds"),
        ("peak memory plain / CRFM", f"{_fmt_mem(r['plain']['memory'])} / {_fmt_mem(cr['memory'])}", ""),
        ("training step", _fmt_rate(t["samples_per_s"], "samples/s"),
         f"batch {t['batch']}, {_fmt_s(t['step_seconds'])}, peak {_fmt_mem(t['memory'])}"),
        ("FID features", _fmt_rate(r["fid"]["images_per_s"], "images/s"), f"{r['fid']['extractor']}, {r['fid']['feature_dim']} dims"),
        ("total", f"{r['seconds']:.1f} s", f"{c['repeats']} repeats after warm-up; [min .. max]"),
    ]
    return rows


def perf_tracker(tracking_uri: str) -> Tracker:
    """The :class:`bench.tracking.Tracker` of experiment ``todsynth/perf`` in a store, opened before measuring.

    A store that cannot be opened (damaged, unknown URI, a server not answering) is named up front, not after the
    minutes of measurement.

    Raises:
        StoreDamagedError: see :func:`bench.tracking.opening_store` and :func:`bench.tracking.server_problem`.
    """
    import tempfile

    from bench.tracking import Tracker

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        lock_dir, artifacts = db.parent, str(db.parent / "mlartifacts")
    else:
        lock_dir, artifacts = Path(tempfile.gettempdir()) / "todsynth-perf-locks", None
    return Tracker(tracking_uri, artifacts, "todsynth/perf", lock_dir)


def log_perf(report: dict[str, Any], tracker: Tracker, json_path: Path | None = None) -> str:
    """Log a report to MLflow through ``tracker`` (:func:`perf_tracker`); returns the run id.

    The config goes in as params, the numbers as metrics, the JSON as an artifact.
    """
    import yaml

    c = report["config"]
    run = tracker.start_parent(
        f"perf-{c['preset']}-{c['device']}-{c['res']}px",
        params=c,
        tags={"todsynth.device": report["device"]["name"], "todsynth.schema": SCHEMA},
        resolved_yaml=yaml.safe_dump(c, sort_keys=True),
        kind="perf",
    )
    try:
        metrics = {k: v for k, v in report.items() if k not in ("config", "schema", "created")}
        tracker.log_metrics(run, metrics)
        if json_path is not None:
            tracker.log_artifact(run, Path(json_path))
        else:
            tracker.log_text(run, json.dumps(json_safe(report), indent=2), "perf.json")
    except BaseException:
        tracker.end(run, "FAILED")
        raise
    tracker.end(run)
    return run
