"""MLflow tracking for suite runs. The ONLY module that imports mlflow.

Layout: experiment ``todsynth/<suite>`` (per suite) -> parent run per ``bench run`` invocation (resolved
suite YAML artifact, tags: git commit, package versions, config hash, ``todsynth.kind=suite``) -> a
child run per stage that did new work (flat params = the stage spec, metrics, artifacts such as the
sample grid and per-class IoU table).

After the stages, one run per variant and seed (``todsynth.kind=variant``; ``baseline`` for real-only) carries the
variant's params and final metrics under the same names for every variant (``bench.results.variant_runs``), links
to its stage runs (tags ``todsynth.run.<stage>`` and the run description) and its sample grid: the runs to
compare. A rerun that changes nothing reuses them (tag ``todsynth.variant_hash``).

Reused cached stages are NOT logged again as children: their metrics already live in the child run of
the invocation that computed them, whose id the cache marker keeps. The parent lists every stage with
``status`` (computed/cached) and that original run id in its ``stages.json`` artifact, so no rerun duplicates
children of new work.

Runs left RUNNING by a killed process (``todsynth.pid``/``todsynth.host`` tags, process gone) are marked
KILLED at the start of the next invocation. All writes go through one client in the main process and
retry with backoff on sqlite ``database is locked``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
from filelock import FileLock

from todsynth.errors import TodsynthError

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
T = TypeVar("T")


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}``; lists become JSON strings, None becomes ``"null"``."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = _scalar(v)
    elif prefix:
        out[prefix] = _scalar(data)
    return out


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def clean_key(key: str) -> str:
    """A key MLflow accepts: ``[\\w ./-]`` only, at most 250 characters."""
    return re.sub(r"[^\w ./-]", "_", key)[:MAX_KEY]


def cut(value: str, limit: int) -> str:
    """Truncate a value to MLflow's limit, marking the cut."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call ``fn``, retrying with exponential backoff while sqlite reports a lock."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if i == attempts - 1 or not _is_locked(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Tracker:
    """One MLflow client bound to a store, an experiment and (after :meth:`start_parent`) a parent run."""

    def __init__(self, tracking_uri: str, artifact_location: str | None, experiment: str, lock_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        lock_dir.mkdir(parents=True, exist_ok=True)
        # The first client on a fresh sqlite file runs alembic migrations: one process at a time.
        with FileLock(str(lock_dir / ".mlflow.lock")):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = retry(self.client.get_experiment_by_name, experiment)
            if exp is None:
                if artifact_location is not None and "://" not in artifact_location:  # None: the server's default
                    Path(artifact_location).mkdir(parents=True, exist_ok=True)
                self.experiment_id = retry(self.client.create_experiment, experiment, artifact_location=artifact_location)
            else:
                self.experiment_id = exp.experiment_id
        self.parent_run_id: str | None = None

    # ------------------------------------------------------------------ runs
    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str], resolved_yaml: str,
                     kind: str = "suite") -> str:
        """Create the top run (``todsynth.kind=suite``, or ``study`` for ``bench tune``) with flattened params and
        the resolved YAML."""
        run = self._create(run_name, {**tags, "todsynth.kind": kind})
        self.parent_run_id = run
        self.log_params(run, params)
        self.log_text(run, resolved_yaml, "suite.resolved.yaml")
        return run

    def start_child(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Create a child run of the parent (``mlflow.parentRunId``) for one stage's new work."""
        if self.parent_run_id is None:
            raise RuntimeError("start_parent() first")
        run = self._create(run_name, {**tags, "mlflow.parentRunId": self.parent_run_id})
        self.log_params(run, params)
        return run

    def _create(self, run_name: str, tags: dict[str, str]) -> str:
        tags = {**tags, "todsynth.pid": str(os.getpid()), "todsynth.host": socket.gethostname()}
        tags = {clean_key(k): cut(str(v), MAX_TAG_VALUE) for k, v in tags.items()}
        run = retry(self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def variant_run(self, run_name: str, params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str],
                    identity: str, artifacts: list[Path]) -> tuple[str, bool]:
        """One finished run per variant and seed under the parent; ``(run_id, reused)``.

        ``identity`` (tag ``todsynth.variant_hash``) hashes what the run shows: a FINISHED run of this experiment
        with the same identity is reused, so a cached rerun adds no duplicate variant runs.
        """
        found = retry(self.client.search_runs, [self.experiment_id],
                      f"tags.`todsynth.variant_hash` = '{identity}' and attributes.status = 'FINISHED'", max_results=1)
        if found:
            return found[0].info.run_id, True
        run = self.start_child(run_name, params, {**tags, "todsynth.variant_hash": identity})
        self.log_metrics(run, metrics)
        for path in artifacts:
            self.log_artifact(run, path)
        self.end(run, "FINISHED")
        return run, False

    def run_link(self, run_id: str) -> str:
        """The MLflow UI's relative link to a run of this experiment (for run descriptions)."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"

    def reopen(self, run_id: str) -> bool:
        """Make an existing run of this experiment the parent again and mark it RUNNING (a continued study).

        Returns False when this store has no such run (e.g. the study moved to another tracking server).
        """
        from mlflow.exceptions import MlflowException

        try:
            run = retry(self.client.get_run, run_id)
        except MlflowException:
            return False
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return False
        retry(self.client.update_run, run_id, status="RUNNING")
        self.set_tags(run_id, {"todsynth.pid": os.getpid(), "todsynth.host": socket.gethostname()})
        self.parent_run_id = run_id
        return True

    def with_parent(self, run_id: str) -> Tracker:
        """A tracker sharing this client whose children hang under ``run_id`` (stage runs of a tuning trial)."""
        other = copy.copy(self)
        other.parent_run_id = run_id
        return other

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """Terminate a run (FINISHED, FAILED or KILLED)."""
        retry(self.client.set_terminated, run_id, status=status)

    # ------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Flatten and log params (values cut to MLflow's limit, 100 per batch)."""
        from mlflow.entities import Param

        flat = [Param(clean_key(k), cut(v, MAX_PARAM_VALUE)) for k, v in flatten(params).items()]
        for i in range(0, len(flat), BATCH):
            retry(self.client.log_batch, run_id, params=flat[i : i + BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Set tags (values cut to MLflow's limit)."""
        from mlflow.entities import RunTag

        items = [RunTag(clean_key(k), cut(str(v), MAX_TAG_VALUE)) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            retry(self.client.log_batch, run_id, tags=items[i : i + BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Log the numeric entries of a (nested) metrics dict as ``a/b`` keys; others are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(clean_key(k), float(v), now, step)
            for k, v in _numeric(metrics).items()
        ]
        for i in range(0, len(items), 1000):
            retry(self.client.log_batch, run_id, metrics=items[i : i + 1000])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's files) into the run's artifacts."""
        if path.is_dir():
            retry(self.client.log_artifacts, run_id, str(path), artifact_path)
        else:
            retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file``."""
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(artifact_file).name
            p.write_text(text)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(run_id, p, None if parent == "." else parent)

    # ------------------------------------------------------------------ housekeeping
    def mark_stale_killed(self) -> list[str]:
        """Mark RUNNING runs whose recorded process (on this host) is gone as KILLED; returns their ids."""
        from mlflow.entities import ViewType

        host = socket.gethostname()
        killed: list[str] = []
        exps = retry(self.client.search_experiments, view_type=ViewType.ALL)
        ids = [e.experiment_id for e in exps]
        if not ids:
            return killed
        runs = retry(self.client.search_runs, ids, "attributes.status = 'RUNNING'", max_results=5000)
        for run in runs:
            pid = run.data.tags.get("todsynth.pid")
            if not pid or run.data.tags.get("todsynth.host") != host:
                continue
            if int(pid) != os.getpid() and not _alive(int(pid)):
                self.end(run.info.run_id, "KILLED")
                killed.append(run.info.run_id)
        return killed

    def child_runs(self, parent_run_id: str | None = None) -> list[Any]:
        """Child runs of a parent (default: this invocation's)."""
        pid = parent_run_id or self.parent_run_id
        return retry(
            self.client.search_runs, [self.experiment_id], f"tags.mlflow.parentRunId = '{pid}'", max_results=10000
        )


def _numeric(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict -> flat ``a/b`` keys for int/float values (bools and strings dropped)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_numeric(v, key))
        elif isinstance(v, int | float) and not isinstance(v, bool) and v == v:  # drop NaN
            out[key] = float(v)
    return out


# ---------------------------------------------------------------------- queries (reports)
def run_record(run: Any) -> dict[str, Any]:
    """An MLflow Run -> a plain dict (``run_id``, ``run_name``, ``status``, ``start_time``/``end_time`` in ms,
    ``experiment_id``, ``tags``, ``params``, ``metrics``), so callers never handle mlflow types."""
    info, data = run.info, run.data
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "experiment_id": info.experiment_id,
        "tags": dict(data.tags),
        "params": dict(data.params),
        "metrics": dict(data.metrics),
    }


def _reader(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id_by_name(tracking_uri: str, experiment: str) -> str | None:
    """Id of the experiment named ``experiment`` (None when the store has no such experiment)."""
    exp = retry(_reader(tracking_uri).get_experiment_by_name, experiment)
    return None if exp is None else exp.experiment_id


def find_runs(
    tracking_uri: str, experiment: str, kind: str, status: str | None = "FINISHED", suite: str | None = None
) -> list[dict[str, Any]]:
    """Runs tagged ``todsynth.kind=<kind>`` (optionally of ``status`` and ``todsynth.suite``), newest first."""
    exp_id = experiment_id_by_name(tracking_uri, experiment)
    if exp_id is None:
        return []
    query = f"tags.`todsynth.kind` = '{kind}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    if suite is not None:
        query += f" and tags.`todsynth.suite` = '{suite}'"
    runs = retry(_reader(tracking_uri).search_runs, [exp_id], query, max_results=10000,
                 order_by=["attributes.start_time DESC"])
    return [run_record(r) for r in runs]


def get_run_record(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """One run by id, as :func:`run_record` (raises mlflow's error when it does not exist)."""
    return run_record(retry(_reader(tracking_uri).get_run, run_id))


def find_children(tracking_uri: str, parent: dict[str, Any]) -> list[dict[str, Any]]:
    """Child runs (``mlflow.parentRunId``) of a run record, oldest first."""
    runs = retry(
        _reader(tracking_uri).search_runs, [parent["experiment_id"]],
        f"tags.mlflow.parentRunId = '{parent['run_id']}'", max_results=10000, order_by=["attributes.start_time ASC"],
    )
    return [run_record(r) for r in runs]


def list_run_artifacts(tracking_uri: str, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run (recursive), as paths relative to the run's artifact root."""
    client = _reader(tracking_uri)
    out: list[str] = []
    for item in retry(client.list_artifacts, run_id, path):
        if item.is_dir:
            out += list_run_artifacts(tracking_uri, run_id, item.path)
        else:
            out.append(item.path)
    return out


def fetch_artifact(tracking_uri: str, run_id: str, path: str, dst_dir: Path) -> Path | None:
    """Download one artifact of a run into ``dst_dir``; None when the run has no such artifact."""
    parent = str(Path(path).parent)
    names = {a.path for a in retry(_reader(tracking_uri).list_artifacts, run_id, None if parent == "." else parent)}
    if path not in names:
        return None
    dst_dir.mkdir(parents=True, exist_ok=True)
    quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no tqdm bar per small file
    try:
        return Path(retry(_reader(tracking_uri).download_artifacts, run_id, path, str(dst_dir)))
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet


# ---------------------------------------------------------------------- UI server
class StoreNotFoundError(TodsynthError):
    """A workspace has no MLflow store (``<ws>/mlflow.db``)."""


def store_uri(workspace: Path) -> str:
    """The tracking URI of a workspace's own store: ``sqlite:///<ws>/mlflow.db``."""
    return f"sqlite:///{Path(workspace).expanduser().absolute() / 'mlflow.db'}"


def check_store(tracking_uri: str, workspace: Path) -> None:
    """Refuse a missing sqlite store up front (opening one would create an empty DB); server URIs pass."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise StoreNotFoundError(
                f"no MLflow store at {db}; run `todsynth bench run <suite> --workspace {workspace}` first "
                "(or pass the --workspace the suite ran in)"
            )


def bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on now, or None: a trial bind with SO_REUSEADDR, as uvicorn binds."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as exc:  # socket.gaierror too: a host name that does not resolve
        return exc
    return None


def listens_on(pid: int, port: int) -> bool:
    """True when process ``pid`` or one of its descendants listens on TCP ``port``: the server answering is ours."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for proc in procs:
        try:
            conns = proc.net_connections("tcp")  # tcp4 and tcp6
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
    return False


def _rest(url: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the MLflow REST API of the server at ``url`` (plain HTTP: the ui process never imports mlflow)."""
    import urllib.request

    req = urllib.request.Request(f"{url.rstrip('/')}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.loads(r.read()))


def newest_suite_experiment(url: str) -> str | None:
    """Id of the experiment holding the newest ``todsynth.kind=suite`` run, asked of the server at ``url``; None when
    there is no such run."""
    ids: list[str] = []
    token = None
    while True:
        page = _rest(url, "experiments/search", {"max_results": 1000, **({"page_token": token} if token else {})})
        ids += [e["experiment_id"] for e in page.get("experiments", [])]
        token = page.get("next_page_token")
        if not token:
            break
    if not ids:
        return None
    runs = _rest(url, "runs/search", {"experiment_ids": ids, "filter": "tags.`todsynth.kind` = 'suite'",
                                      "order_by": ["attributes.start_time DESC"], "max_results": 1}).get("runs", [])
    return str(runs[0]["info"]["experiment_id"]) if runs else None


def runs_view_url(url: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs table. ``workflowType=machine_learning``: MLflow 3's UI otherwise opens
    in its GenAI mode (traces overview) unless the browser last chose otherwise."""
    return f"{url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


VARIANT_FILTER = "tags.todsynth.kind = 'variant'"


def variants_view_url(runs_url: str) -> str:
    """A runs-view URL (:func:`runs_view_url`) filtered to the suite's variant runs (expand the suite run to see
    them nested below it, select them, then Compare)."""
    from urllib.parse import quote

    return f"{runs_url}&searchFilter={quote(VARIANT_FILTER)}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# MLflow 3's job runner (a supervisor plus a huey consumer per GenAI job queue: scorers, evaluation, prompt
# optimisation, periodic trace tasks) is 8 of the server's 10 processes; todsynth submits no jobs.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(workspace: Path, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """``mlflow server`` over a workspace's store: ``sqlite:///<ws>/mlflow.db``, artifacts served from
    ``<ws>/mlartifacts`` (proxied, so clients on other machines can log artifacts too). Run it with
    :data:`SERVER_ENV` in the environment."""
    import sys

    ws = Path(workspace).expanduser().absolute()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", store_uri(ws),
        "--serve-artifacts", "--artifacts-destination", str(ws / "mlartifacts"),
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]
