"""The UI server's helpers: store, server command, ports and landing URLs.

The workspace store (:func:`store_uri`, :func:`check_store`), the ``mlflow server`` command line and environment,
whether a port is free or ours, and the UI's landing URLs (asked of the server over its REST API).

Imports :mod:`todsynth.errors` only: never mlflow (the server runs as ``python -m mlflow``; the ``ui`` process
talks to it over plain HTTP).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from todsynth.errors import TodsynthError, first_line


class StoreNotFoundError(TodsynthError):
    """A workspace has no MLflow store (``<ws>/mlflow.db``)."""


class StoreDamagedError(TodsynthError):
    """An MLflow store that cannot be opened: a damaged SQLite file, an unknown URI, a server that does not answer."""


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store (a server)."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def damaged_store(tracking_uri: str) -> str | None:
    """Why the sqlite store of ``tracking_uri`` cannot be opened, or None.

    A missing or empty file is fine (MLflow creates its tables); server URIs are not looked at.
    """
    db = _sqlite_file(tracking_uri)
    if db is None or not db.exists():
        return None
    if not db.is_file():
        return f"MLflow store {db} is not a file"
    with db.open("rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head and head != SQLITE_HEADER:
        return (f"MLflow store {db} is not an SQLite database (damaged, or another file); move it away (the next run "
                "starts a new store) or pass another --workspace / --tracking-uri")
    return None


def _without_password(url: str) -> str:
    """``url`` with the password of its user info (``http://user:pw@host``) replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"))


def server_problem(tracking_uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the tracking server of an ``http(s)://`` URI does not answer, or None; other URIs are not looked at.

    One GET of the server's ``/health`` within ``timeout_s``: any HTTP answer counts (a proxy asking for a login, a
    server without that page). Without this check a server that is down costs minutes of MLflow's HTTP retries
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) before the first stage, or after a ``bench perf`` has measured.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).close()
    except requests.RequestException as exc:
        return (f"the MLflow tracking server {_without_password(tracking_uri)} does not answer "
                f"({type(exc).__name__} within {timeout_s:g} s); start it (`todsynth ui`, or `mlflow server` on that "
                "host) or pass another tracking.uri / --tracking-uri")
    return None


@contextlib.contextmanager
def opening_store(tracking_uri: str) -> Iterator[None]:
    """Around the first call to a store: one that cannot be opened raises :class:`StoreDamagedError` naming it.

    A damaged SQLite file or a URI MLflow does not know raised MLflow's or SQLAlchemy's traceback.
    """
    try:
        yield
    except TodsynthError:
        raise
    except Exception as exc:  # noqa: BLE001  (whatever the store's driver raises)
        raise StoreDamagedError(f"cannot open the MLflow store {tracking_uri} ({type(exc).__name__}: "
                                f"{first_line(exc)[:300]}); move a damaged mlflow.db away (the next run starts a new "
                                "store) or pass another --workspace / tracking.uri") from exc


def store_uri(workspace: Path) -> str:
    """The tracking URI of a workspace's own store: ``sqlite:///<ws>/mlflow.db``."""
    return f"sqlite:///{Path(workspace).expanduser().absolute() / 'mlflow.db'}"


def check_store(tracking_uri: str, workspace: Path) -> None:
    """Refuse a missing or damaged sqlite store, or a server that does not answer (:func:`server_problem`), up front.

    Opening a missing store would create an empty one; a damaged one fails deep in SQLAlchemy.

    Raises:
        StoreNotFoundError: no store file; StoreDamagedError: see :func:`damaged_store` and :func:`server_problem`.
    """
    if (problem := damaged_store(tracking_uri) or server_problem(tracking_uri)) is not None:
        raise StoreDamagedError(problem)
    db = _sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
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
    """Id of the experiment holding the newest ``todsynth.kind=suite`` run, asked of the server at ``url``.

    None when there is no such run.
    """
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
    """The UI page of an experiment's runs table.

    ``workflowType=machine_learning``: MLflow 3's UI otherwise opens in its GenAI mode (traces overview) unless the
    browser last chose otherwise.
    """
    return f"{url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


VARIANT_FILTER = "tags.todsynth.kind = 'variant'"


def variants_view_url(runs_url: str) -> str:
    """A runs-view URL (:func:`runs_view_url`) filtered to the suite's variant runs.

    In the UI: expand the suite run to see them nested below it, select them, then Compare.
    """
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
    """The ``mlflow server`` command line (argv) over a workspace's store.

    The store is ``sqlite:///<ws>/mlflow.db``, artifacts served from ``<ws>/mlartifacts`` (proxied, so clients on
    other machines can log artifacts too). Run it with :data:`SERVER_ENV` in the environment.
    """
    import sys

    ws = Path(workspace).expanduser().absolute()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", store_uri(ws),
        "--serve-artifacts", "--artifacts-destination", str(ws / "mlartifacts"),
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]
