"""The benchmark harness: declared suites, their stage graph and cache, tracking, tuning, reports and perf.

The command line (``cli.py`` and :mod:`bench.cli`) drives it; it drives the method library ``todsynth``.
"""
