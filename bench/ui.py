"""``todsynth ui``: an ``mlflow server`` over a workspace's store, supervised until Ctrl-C.

Checked before anything starts (:func:`check_ui`; a :class:`UIError` with ``code`` 2): the port and worker count,
the store (``create_store`` starts an empty one), the port being free (another server would answer our health
check). The server then runs in its own process group with :data:`~bench.tracking.server.SERVER_ENV`; its log is
held back until it listens (its tail explains a failed start) and passed on after; Ctrl-C / SIGTERM go to its
whole group. A server not listening within :data:`UI_START_TIMEOUT_S`, or exiting on its own, is a ``UIError``
with ``code`` 1 and the log's tail.

Imports :mod:`bench.tracking.server` and :mod:`todsynth.errors`; never mlflow (the server is a subprocess).
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.tracking.server import (
    SERVER_ENV,
    StoreNotFoundError,
    bind_error,
    check_store,
    is_loopback,
    listens_on,
    newest_suite_experiment,
    runs_view_url,
    server_command,
    store_uri,
    variants_view_url,
)
from todsynth.errors import TodsynthError
from todsynth.files import folder_problem

UI_START_TIMEOUT_S = 180  # generous: ready after 5.5-7.5 s on 2 busy cores (README "Browsing runs")
UI_LOG_TAIL = 20  # server log lines shown when it fails


class UIError(TodsynthError):
    """The UI could not be served: ``code`` 2 for bad input (options, store, port), 1 for a server that failed.

    ``log`` holds the server's last log lines (shown before the message).
    """

    def __init__(self, message: str, code: int = 2, log: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.log = list(log)


def _write_stderr(line: str) -> None:
    sys.stderr.write(line)


@dataclass(frozen=True)
class UIOutput:
    """How the supervisor talks to the user.

    ``say`` (stdout) and ``warn`` (stderr) take one rich-markup line each; ``log`` takes a raw line of the server's
    own log, passed on once it is ready.
    """

    say: Callable[[str], None]
    warn: Callable[[str], None]
    log: Callable[[str], None] = _write_stderr


def check_ui(workspace: Path, host: str, port: int, workers: int, create_store: bool) -> Path:
    """The absolute workspace, once options, store and port are fine; else a :class:`UIError` (code 2).

    With ``create_store`` a workspace without a store is created (the server starts an empty one).
    """
    if not 0 < port < 65536:
        raise UIError(f"--port {port}: not a TCP port (1-65535)")
    if workers < 1:
        raise UIError(f"--workers {workers}: needs at least 1")
    ws = workspace.expanduser().absolute()
    try:
        check_store(store_uri(ws), ws)
    except StoreNotFoundError as exc:
        if not create_store:
            raise UIError(f"{exc}; --create-store starts an empty one") from None
        if (problem := folder_problem(ws)) is not None:  # a file in the way, no permission
            raise UIError(f"--workspace {ws}: {problem}") from None
        ws.mkdir(parents=True, exist_ok=True)
    if (taken := bind_error(host, port)) is not None:  # before starting: another server would answer our health check
        if taken.errno == errno.EADDRINUSE:
            raise UIError(f"port {port} on {host} is already in use; choose another with --port")
        raise UIError(f"cannot listen on {host}:{port} ({taken.strerror}); check --host and --port")
    return ws


def serve_ui(workspace: Path, *, host: str = "127.0.0.1", port: int = 5000, workers: int = 1,
             create_store: bool = False, out: UIOutput) -> None:
    """Serve the MLflow UI over ``workspace``'s store; returns when the user stopped it (or it exited cleanly).

    Raises:
        UIError: bad options, no store, a taken port (code 2, nothing started); a server that never got ready or
            exited on its own (code 1, with its last log lines).
    """
    ws = check_ui(workspace, host, port, workers, create_store)
    if not is_loopback(host):
        out.warn(
            f"[bold red]WARNING: binding to {host} exposes the MLflow UI and its REST API to the network, with no "
            "authentication: anyone who can reach this port can read and delete runs. Use --host 127.0.0.1 (default) "
            "and an SSH tunnel unless this network is trusted.[/]")
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard bind is reachable locally here
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"
    proc = subprocess.Popen(server_command(ws, host, port, workers), env={**os.environ, **SERVER_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    out.say(f"MLflow UI for {ws} starting at {url} (Ctrl-C to stop)")
    run = _ServerRun(proc, port, url, out)
    run.supervise()
    if run.stop:
        return
    if not run.ready.is_set() or proc.returncode != 0:
        run.reader.join(timeout=2)
        if run.late:
            raise UIError(f"mlflow server did not listen on port {port} within {UI_START_TIMEOUT_S} s (stopped); its "
                          "last log lines are above", code=1, log=run.log)
        what = "exited before it was ready" if not run.ready.is_set() else "exited"
        raise UIError(f"mlflow server {what} (exit code {proc.returncode}); its last log lines are above", code=1,
                      log=run.log)


class _ServerRun:
    """One started server: its log (held back until ready), readiness, and the user's stop request."""

    def __init__(self, proc: subprocess.Popen[str], port: int, url: str, out: UIOutput) -> None:
        self.proc, self.port, self.url, self.out = proc, port, url, out
        self.log: collections.deque[str] = collections.deque(maxlen=UI_LOG_TAIL)
        self.ready = threading.Event()
        self.stop: list[float] = []
        self.late = False
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:  # the server's log is held back until it is ready (its tail explains a failed start), then passed on
        for line in self.proc.stdout or ():
            self.log.append(line)
            if self.ready.is_set():
                self.out.log(line)

    def _forward(self, signum: int, _frame: object) -> None:  # Ctrl-C / SIGTERM -> the server's whole process group
        self.stop.append(time.monotonic())
        try:
            os.killpg(self.proc.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        except ProcessLookupError:
            pass

    def supervise(self) -> None:
        """Wait for the server to exit: announce it when ready, kill it when late or slow to stop, reap its group."""
        proc = self.proc
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        deadline = time.monotonic() + UI_START_TIMEOUT_S
        try:
            while proc.poll() is None:
                time.sleep(0.25)
                if self.stop and time.monotonic() - self.stop[0] > 10:
                    os.killpg(proc.pid, signal.SIGKILL)
                if self.ready.is_set() or self.stop:
                    continue
                if listens_on(proc.pid, self.port) and _answers(self.url + "health"):  # ours listening, not merely someone answering
                    self._announce()
                elif time.monotonic() > deadline:
                    self.late = True
                    os.killpg(proc.pid, signal.SIGKILL)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            try:  # whatever the server left in its group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _announce(self) -> None:
        link = _landing(self.url, self.out)
        self.ready.set()  # from here on the server's log is passed on
        self.out.say(f"[green]ready[/] {link}")
        if link != self.url:
            self.out.say(f"compare variants: {variants_view_url(link)}")


def _landing(url: str, out: UIOutput) -> str:
    """The runs table of the newest suite experiment on the server at ``url``, else ``url`` itself."""
    try:
        exp_id = newest_suite_experiment(url)
    except (OSError, ValueError, KeyError) as err:  # the server is up; only the shortcut is lost
        out.warn(f"[yellow]note:[/] could not list suite runs ({type(err).__name__}: {err})")
        return url
    return url if exp_id is None else runs_view_url(url, exp_id)


def _answers(url: str) -> bool:
    """True when ``url`` answers a GET within a second."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False
