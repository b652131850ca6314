"""`todsynth ui`: an MLflow server over the workspace store on 127.0.0.1, found through its REST API, stopped cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from bench.engine import run_suite
from bench.suites import validate_data
from bench.tracking import Tracker, is_loopback, listens_on, server_command

TODSYNTH = Path(sys.executable).parent / "todsynth"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(workspace: Path, port: int, log_path: Path) -> tuple[subprocess.Popen, re.Match]:
    """Start the real `todsynth ui` over ``workspace`` with its output in ``log_path`` (read through the path: seeking
    the child's own handle moves its write offset); returns the process and its ``ready <url>`` line's match."""
    log = log_path.open("w")
    proc = subprocess.Popen([str(TODSYNTH), "ui", "--port", str(port), "--workspace", str(workspace)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()  # the child keeps its own handle
    deadline = time.monotonic() + 120
    while not (ready := re.search(r"^ready (\S+)$", log_path.read_text(), re.M)) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.25)
    if not ready:
        proc.kill()
        pytest.fail(f"no 'ready' from the UI on port {port}; its output:\n{log_path.read_text()}")
    return proc, ready


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, json.JSONDecodeError):
        return None


def test_ui_serves_the_workspace_store(tiny_suite_data, bench_workspace, fake_stages, tmp_path):
    fns, _ = fake_stages
    uri, arts = f"sqlite:///{bench_workspace / 'mlflow.db'}", str(bench_workspace / "mlartifacts")
    older = Tracker(uri, arts, "todsynth/older", bench_workspace)  # an older suite experiment
    older.end(older.start_parent("old", {}, {}, ""))
    suite = validate_data({**tiny_suite_data, "workspace": str(bench_workspace)}, "test")
    out = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    perf = Tracker(uri, arts, "todsynth/perf", bench_workspace)  # the newest run, but not a suite run
    perf.end(perf.start_parent("perf", {}, {}, "", kind="perf"))
    port = _free_port()
    log_path = tmp_path / "ui.log"
    proc, ready = start_ui(bench_workspace, port, log_path)
    try:
        tree = [" ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True)]
        assert not [c for c in tree if "mlflow.server.jobs" in c or "huey" in c], tree  # no job runner, no consumers
        assert len(tree) == 2, tree  # `mlflow server` and its one uvicorn worker
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        exp = _get(f"{api}/experiments/get-by-name?{urllib.parse.urlencode({'experiment_name': suite.experiment})}")
        exp_id = exp["experiment"]["experiment_id"]
        assert exp["experiment"]["artifact_location"] == str(bench_workspace / "mlartifacts")
        assert ready[1] == f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        assert exp_id != older.experiment_id and _get(f"{api}/experiments/get?experiment_id={exp_id}") is not None
        runs = _post(f"{api}/runs/search", {"experiment_ids": [exp_id], "filter": "tags.`todsynth.kind` = 'suite'"})
        assert [r["info"]["run_id"] for r in runs["runs"]] == [out.parent_run_id]
    finally:
        proc.send_signal(signal.SIGTERM)  # forwarded to the server's process group
        rc = proc.wait(timeout=30)
    text = log_path.read_text()
    assert rc == 0, text
    assert f"http://127.0.0.1:{port}/" in text and "MLflow UI stopped" in text
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # the server and its workers are gone
        s.connect(("127.0.0.1", port))


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_server_command_and_loopback(tmp_path):
    cmd = server_command(tmp_path / "ws", "127.0.0.1", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "ws" / "mlartifacts")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


@pytest.mark.parametrize("args, message", [(["--port", "0"], "not a TCP port"), (["--workers", "0"], "at least 1")])
def test_ui_rejects_bad_options(args, message, tmp_path):
    from cli import app

    result = CliRunner().invoke(app, ["ui", "--workspace", str(tmp_path / "ws"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "ws").exists()


def _ui(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run the real console script (its exit code and stderr, as a user sees them) and time it."""
    t0 = time.monotonic()
    done = subprocess.run([str(TODSYNTH), "ui", *args], capture_output=True, text=True, timeout=30)
    return done, time.monotonic() - t0


@pytest.mark.parametrize("extra", [[], ["--port", "1"]])  # the store is checked before the port
def test_ui_refuses_a_workspace_without_store(tmp_path, extra):
    ws = tmp_path / "missing" / "ws"
    done, seconds = _ui("--workspace", str(ws), *extra)
    assert done.returncode == 2 and seconds < 5, (done, seconds)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no MLflow store at {ws / 'mlflow.db'}" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "missing").exists()  # nothing created


def test_ui_create_store_names_a_file_in_the_way(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    done, _ = _ui("--workspace", str(tmp_path / "taken" / "ws"), "--create-store")
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout, done
    assert f"--workspace {tmp_path / 'taken' / 'ws'}: {tmp_path / 'taken'} is a file, not a folder" in done.stderr
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_ui_refuses_a_taken_port_before_starting(bench_workspace):
    with socket.socket() as other:  # another server already listening there
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done, seconds = _ui("--port", str(port), "--workspace", str(bench_workspace))
    assert done.returncode == 2 and seconds < 5, (done, seconds)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "--port" in lines[0], done.stderr
    assert "ready" not in done.stdout and "starting" not in done.stdout, done.stdout


def test_ui_reports_a_server_that_dies_before_ready(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    import sqlite3

    # an SQLite file (it passes the store checks) at a schema revision MLflow does not know: the server dies migrating
    db = sqlite3.connect(ws / "mlflow.db")
    db.execute("create table alembic_version (version_num varchar(32) not null)")
    db.execute("insert into alembic_version values ('deadbeefcafe')")
    db.commit()
    db.close()
    done, seconds = _ui("--port", str(_free_port()), "--workspace", str(ws))
    assert done.returncode == 1 and seconds < 25, (done, seconds)
    lines = done.stderr.strip().splitlines()
    assert "Can't locate revision identified by 'deadbeefcafe'" in done.stderr  # the server's own last lines, not hidden
    assert lines[-1].startswith("error: mlflow server exited before it was ready"), lines[-1]
    assert "ready" not in done.stdout, done.stdout


def test_listens_on_tells_our_server_from_another():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with socket.socket() as other:  # a listener outside the sleeper's process tree
            other.bind(("127.0.0.1", 0))
            other.listen()
            port = other.getsockname()[1]
            assert listens_on(os.getpid(), port)
            assert not listens_on(sleeper.pid, port)
        assert not listens_on(sleeper.pid + 10**7, port)  # no such process
    finally:
        sleeper.kill()
        sleeper.wait()
