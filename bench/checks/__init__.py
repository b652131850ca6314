"""Acceptance checks outside the suites, run as ``todsynth bench check-conditioning`` / ``check-crfm``.

- :mod:`bench.checks.conditioning`: does a generator preset draw the layout of the mask it is given?
- :mod:`bench.checks.crfm`: does a CRFM setting raise an independent evaluator's mIoU over plain sampling?
- :mod:`bench.checks.scoring`: the dataset-wide mIoU of in-memory images both report.
"""
