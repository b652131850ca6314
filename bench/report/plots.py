"""The report's figures, each a function of plain numbers that writes one PNG (matplotlib, Agg) and closes it.

Rectified steps (:func:`rectified_series` groups the variants, :func:`rectified_panels` lays out the two panels),
per-class IoU, the tuning trials' FID vs mask mIoU with their Pareto front (:func:`pareto_front`), data efficiency
and the image-metric vs downstream-gain scatter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.metrics import LABELS
from bench.report.tables import as_number, class_names, several_seeds
from bench.schema.variants import CEILING_KINDS


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
    series: list[dict[str, Any]] = []
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
            **{f"{k}{suffix}": [as_number(points[s][src].get(m)) for s in steps]
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
    """The y limits around ``values`` (± ``errors``), widened to at least ``min_rel_span`` x max |value|, plus a margin.

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


def plot_pareto(trials: list[dict[str, Any]], front: list[int], variants: list[dict[str, Any]], path: Path,
                axes: tuple[str, str] = ("fid", "mask_miou")) -> Path:
    """Plot tuning trials' ``x`` vs ``y`` to ``path``; returns ``path``.

    ``x`` and ``y`` are the metrics ``axes`` (the suite's objectives; labels and directions from the registry); the
    Pareto front in red, the suite's variants as stars (not its ceilings: they are no setting to tune towards).
    """
    from bench.metrics import label, scored

    xm, ym = axes
    arrow = {m: "↑" if scored().get(m, True) else "↓" for m in axes}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ok = [t for t in trials if t.get("feasible", True)]
    bad = [t for t in trials if not t.get("feasible", True)]
    ax.scatter([t["x"] for t in ok], [t["y"] for t in ok], c="#8a8a8a", s=28, label="trials")
    if bad:
        ax.scatter([t["x"] for t in bad], [t["y"] for t in bad], c="#8a8a8a", marker="x", s=28,
                   label="infeasible trials (constraint violated)")
    pf = sorted((trials[i] for i in front), key=lambda t: t["x"])
    # above the stars (zorder 3): a suite variant that is also a trial must not hide the front the legend promises
    ax.plot([t["x"] for t in pf], [t["y"] for t in pf], "o-", color="#d62728", ms=7, label="Pareto front",
            zorder=4)
    for t in trials:
        if t["number"] is not None:
            ax.annotate(str(t["number"]), (t["x"], t["y"]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    refs = [v for v in variants if v.get("kind") not in CEILING_KINDS
            and as_number(v["metrics"].get(xm)) is not None and as_number(v["metrics"].get(ym)) is not None]
    if refs:
        ax.scatter([v["metrics"][xm] for v in refs], [v["metrics"][ym] for v in refs], marker="*", s=120,
                   c="#1f77b4", label="suite variants", zorder=3, alpha=0.8)
        for v in refs:
            ax.annotate(v["name"], (v["metrics"][xm], v["metrics"][ym]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="#1f77b4")
    ax.set_xlabel(f"{label(xm)} ({arrow[xm]})")
    ax.set_ylabel(f"{label(ym)} ({arrow[ym]})")
    ax.set_title(f"Tuning trials: {label(xm)} vs {label(ym)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def plot_per_class(results: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: downstream IoU per class, one bar per variant (std as error bars); None without per-class data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = class_names(results)
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
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, _nan([as_number(iou.get(c)) for c in classes]), width,
               yerr=_nan([as_number(std.get(c)) for c in classes]) if several else None, capsize=2, label=v["name"])
    ax.set_xticks(x, classes, rotation=20)
    ax.set_ylabel("downstream IoU")
    ax.set_ylim(0, 1)
    ax.set_title("Per-class IoU of the downstream model")
    ax.legend(fontsize=8, ncol=min(4, len(variants)))
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, path)


CEILING_STYLE = {  # kind -> marker, line style, colour, legend note
    "oracle": ("s", "--", "#777", "held-out real scenes"),
    "rerender": ("D", ":", "#444", "masks painted anew: a perfect generator"),
}


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
        style = CEILING_STYLE.get(s.get("kind", "synthetic"))  # a ceiling: grey and dashed, apart from the methods
        line = ax.errorbar(ns, means, yerr=None if all(x is None for x in std) else _nan(std), capsize=3,
                           marker=style[0] if style else "o", linestyle=style[1] if style else "-",
                           color=style[2] if style else None,
                           label=f"{s['variant']} ({style[3]})" if style else s["variant"])
        for x, p in zip(ns, s["points"], strict=True):
            if p["exceeds"]:
                ax.annotate("†", (x, p["mean"]), textcoords="offset points", xytext=(5, 3), color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xticks(eff["sizes"], [str(n) for n in eff["sizes"]])
    ax.minorticks_off()
    ax.set_xlabel("labelled training scenes n (log scale)")
    ax.set_ylabel("downstream mIoU: real+added − real-only")
    ax.set_title("Data efficiency: gain from synthetic data vs labelled subset size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


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
