"""MLflow tracking: the ONLY package that imports mlflow.

mlflow is imported in :mod:`~bench.tracking.tracker` and :mod:`~bench.tracking.queries`, lazily, inside functions;
nothing else in the project imports it.

Rooms: :mod:`~bench.tracking.tracker` (the write side: :class:`Tracker`, the run layout of suites, stages,
variants and studies), :mod:`~bench.tracking.queries` (the read side: runs, children and artifacts as plain dicts
and files, for reports), :mod:`~bench.tracking.server` (the ``todsynth ui`` server: workspace store, ``mlflow
server`` command, ports, landing URLs; no mlflow import) and :mod:`~bench.tracking.limits` (MLflow's limits, key
cleaning, flattening and the sqlite-lock retry the other two share).

This package re-exports their public names, so ``from bench.tracking import Tracker, find_runs, check_store``
works.
"""

from __future__ import annotations

from bench.tracking.limits import (
    BATCH,
    MAX_KEY,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    clean_key,
    cut,
    flatten,
    retry,
)
from bench.tracking.queries import (
    experiment_id_by_name,
    fetch_artifact,
    find_children,
    find_runs,
    get_run_record,
    list_run_artifacts,
    run_record,
)
from bench.tracking.server import (
    SERVER_ENV,
    VARIANT_FILTER,
    StoreDamagedError,
    StoreNotFoundError,
    bind_error,
    check_store,
    damaged_store,
    is_loopback,
    listens_on,
    newest_suite_experiment,
    runs_view_url,
    server_command,
    store_uri,
    variants_view_url,
)
from bench.tracking.tracker import Tracker

__all__ = [
    "BATCH", "MAX_KEY", "MAX_PARAM_VALUE", "MAX_TAG_VALUE", "SERVER_ENV", "VARIANT_FILTER", "StoreDamagedError",
    "StoreNotFoundError", "Tracker", "bind_error", "check_store", "clean_key", "cut", "damaged_store",
    "experiment_id_by_name", "fetch_artifact",
    "find_children", "find_runs", "flatten", "get_run_record", "is_loopback", "list_run_artifacts", "listens_on",
    "newest_suite_experiment", "retry", "run_record", "runs_view_url", "server_command", "store_uri",
    "variants_view_url",
]
