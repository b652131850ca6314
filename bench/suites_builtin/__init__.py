"""Suites shipped inside the package (the embedded default ``smoke.yaml``)."""
