"""``bench report``: a suite's comparison report, read from MLflow: Markdown, HTML, CSV, LaTeX, plots, image grid.

Source of truth is the MLflow store (through :mod:`bench.tracking`): the latest FINISHED suite run of the
suite's experiment (or ``run_id``), its ``results.json`` and ``stages.json`` artifacts, its per-variant
metrics (cross-checked against the artifact), the synthesize stages' outputs found through ``stages.json``
(child run ids, cache hashes) and the latest tuning study's trial runs. The workspace's
``<suite>/results.json`` is only a cross-check. Everything is written into a temp dir beside ``out_dir``
and swapped into place, so an interrupted report never leaves half a report.

Files: ``report.md`` (+ the PNGs beside it), ``index.html`` (self-contained: PNGs as data URIs),
``results.csv`` (raw floats), ``results.tex`` (booktabs), ``rectified_steps.png``, ``per_class_iou.png``,
``pareto.png`` (when tuning trials exist), ``samples.png``; with ``dataset.subsets`` also
``data_efficiency.png`` and ``data_efficiency.csv`` (:func:`bench.report.efficiency.data_efficiency` holds their
numbers); with 4+ synthetic settings that have a downstream gain ``gain_correlation.png`` (and
``gain_correlation_study.png`` for a tuning study with downstream trials): which image metric predicts the gain
(:mod:`bench.correlation`).

Rooms: :mod:`~bench.report.gather` (MLflow, cross-checks, ``ReportData``), :mod:`~bench.report.tables` (results
table, CSV, LaTeX), :mod:`~bench.report.plots` (figures), :mod:`~bench.report.efficiency` (data efficiency),
:mod:`~bench.report.predictors` (metric vs downstream gain), :mod:`~bench.report.samples` (sample images),
:mod:`~bench.report.provenance` (paths, store, device as shown), :mod:`~bench.report.context` (what the templates
get), :mod:`~bench.report.render` (:func:`write_report`).
"""

from bench.report.gather import ReportError
from bench.report.render import write_report

__all__ = ["ReportError", "write_report"]
