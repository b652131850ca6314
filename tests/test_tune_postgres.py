"""Several machines: two ``bench tune`` processes (own workspaces) share a PostgreSQL study and an MLflow server.

Slow: it starts a throw-away PostgreSQL 15 server (initdb/pg_ctl as the postgres user) and ``todsynth ui``,
and both processes compute the real tiny stages (suites/tests.yaml) before their trials.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "tune-s3cret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


def _ensure_postgres() -> None:
    if _pg_bin("initdb") and _pg_bin("pg_ctl"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("PostgreSQL is not installed and cannot be installed here (needs root and apt-get)")
    subprocess.run(["apt-get", "install", "-y", "postgresql"], check=False, capture_output=True, timeout=600)
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        pytest.skip("apt-get install postgresql failed; cannot start a PostgreSQL server")


@pytest.fixture
def postgres():
    """A PostgreSQL server on 127.0.0.1 with a fresh data dir and a database ``optuna``; yields its URL."""
    _ensure_postgres()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        pytest.skip("no postgres system user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="todsynth-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if as_pg:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*as_pg, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "120",
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=180)
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE optuna")
            cur.execute(f"ALTER USER postgres PASSWORD '{PASSWORD}'")
        conn.close()
        yield f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path, mlflow_db_template):
    """``todsynth ui`` over a fresh workspace store; yields its http URL."""
    ws = tmp_path / "server-ws"
    ws.mkdir()
    shutil.copy(mlflow_db_template, ws / "mlflow.db")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", "ui", "--port", str(port), "-w", str(ws)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"todsynth ui did not come up on {url}")
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_two_machines_share_postgres_study_and_mlflow_server(tmp_path, postgres, mlflow_server):
    from mlflow.tracking import MlflowClient

    data = yaml.safe_load((REPO / "suites" / "tests.yaml").read_text())
    data["tune"] = {
        "search_space": {"crfm.rectified_step": {"type": "int", "low": 0, "high": data["sampling"]["num_inference_steps"]},
                         "crfm.step_scheme": {"type": "categorical", "choices": ["C", "LD"]}},
        "objectives": ["mask_miou"], "sampler": "random", "heartbeat_s": 5,
    }
    suite = tmp_path / "pg-tune.yaml"
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    procs = []
    for machine in ("a", "b"):  # the same command on two "machines" (own workspace, shared storage + tracking)
        cmd = [sys.executable, "-c", "import cli; cli.main()", "bench", "tune", str(suite), "--trials", "3",
               "--storage", postgres, "--tracking-uri", mlflow_server, "-w", str(tmp_path / f"ws-{machine}"),
               "--no-progress"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    assert not any(PASSWORD in out for out in outs)

    import optuna

    study = optuna.load_study(study_name="tests", storage=postgres)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states
    assert study.trials[0].user_attrs.get("default") is True

    summaries = [json.loads((tmp_path / f"ws-{m}" / "tests" / "tune.json").read_text()) for m in ("a", "b")]
    for s in summaries:
        assert s["n_complete"] == 3 and PASSWORD not in json.dumps(s)
        assert s["storage"].startswith("postgresql+psycopg2://postgres:***@127.0.0.1:")
    parent = summaries[0]["mlflow"]["parent_run_id"]
    assert summaries[1]["mlflow"]["parent_run_id"] == parent  # one study run, shared by both processes
    client = MlflowClient(tracking_uri=mlflow_server)
    prun = client.get_run(parent)
    assert prun.data.tags["todsynth.kind"] == "study" and PASSWORD not in prun.data.tags["optuna.storage"]
    kids = client.search_runs([prun.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent}' and tags.`todsynth.kind` = 'trial'")
    complete = {t.number: t.user_attrs["mlflow_run_id"] for t in study.trials if t.state.name == "COMPLETE"}
    finished = {r.info.run_id for r in kids if r.info.status == "FINISHED"}
    assert set(complete.values()) <= finished and len(finished) == 3
    some = next(iter(complete.values()))
    assert [a.path for a in client.list_artifacts(some, "synthesize/seed0")] == ["synthesize/seed0/grid.png"]
