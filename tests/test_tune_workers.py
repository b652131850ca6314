"""bench tune with several worker processes sharing one study: exact global cap, continuation, a killed worker.

Fast variants run the coordinator in this process with stand-in stages (tests/test_tune_fakes.py) that reach the
spawned workers pickled; the slow variants run the real CLI on the real tiny stages (suites/tests.yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import test_tune_fakes as fakes
import yaml
from test_tune_fakes import BARRIER_ENV, BARRIER_KIND_ENV

from bench.suites import validate_data
from bench.tune import TuneOptions, tune_suite
from bench.tune.storage import ATTR_PID

REPO = Path(__file__).resolve().parent.parent
TUNE = {
    "search_space": {
        "crfm.rectified_step": {"type": "int", "low": 0, "high": 3},
        "crfm.max_step_size": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "crfm.step_scheme": {"type": "categorical", "choices": ["C", "LI", "LD"]},
    },
    "objectives": ["mask_miou", "fid"],
    "sampler": "random",
    "heartbeat_s": 2,
}


def _journal_trials(path: Path, study: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _mlflow_trial_runs(tracking_uri: str, parent: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(parent)
    return run, client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and "
                                   "tags.`todsynth.kind` = 'trial'")


def _check_study(summary: dict, tracking_uri: str, n: int) -> None:
    """Exactly n COMPLETE trials, each its own FINISHED MLflow child run of the study run, with its values."""
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert summary["n_complete"] == len(complete) == n
    assert not [t for t in summary["trials"] if t["state"] == "RUNNING"]
    parent, runs = _mlflow_trial_runs(tracking_uri, summary["mlflow"]["parent_run_id"])
    assert parent.data.tags["todsynth.kind"] == "study"
    finished = {r.info.run_id: r for r in runs if r.info.status == "FINISHED"}
    assert len(finished) == n
    for t in complete:
        run = finished[t["mlflow_run_id"]]
        assert int(run.data.tags["optuna.trial_number"]) == t["number"]
        for metric, value in t["values"].items():
            assert run.data.metrics[metric] == pytest.approx(value)
    assert summary["pareto"] and all(p["state"] == "COMPLETE" for p in summary["pareto"])
    for key in ("study", "storage", "directions", "objectives", "trials", "best", "pareto", "importances"):
        assert key in summary


@pytest.fixture
def fake_suite(tiny_suite_data, bench_workspace, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # spawned workers unpickle test_tune_fakes' stages
    data = json.loads(json.dumps(tiny_suite_data))
    data["workspace"] = str(bench_workspace)
    data["sampling"]["num_inference_steps"] = 3
    data["tune"] = json.loads(json.dumps(TUNE))
    return validate_data(data, "test")


def test_two_workers_finish_exactly_n_then_continue(fake_suite, monkeypatch, tmp_path):
    # each trial waits until both worker processes have reached a trial: the spawned one needs seconds to import
    # torch, long enough on a loaded machine for this process to take all 6 trials
    monkeypatch.setenv(BARRIER_ENV, str(tmp_path / "barrier"))
    opts = TuneOptions(trials=6, workers=2, progress=False)
    out = tune_suite(fake_suite, opts, stage_fns=fakes.STAGES, stage_versions=fakes.STAGE_VERSIONS)
    assert out.worker_exitcodes == [0]
    _check_study(out.summary, fake_suite.tracking_uri, 6)
    pids = {t.system_attrs[ATTR_PID] for t in _journal_trials(fake_suite.workspace / "t" / "optuna.journal", "t")}
    assert len(pids) == 2  # both processes ran trials
    assert json.loads((fake_suite.workspace / "t" / "tune.json").read_text()) == out.summary
    more = tune_suite(fake_suite, TuneOptions(trials=8, workers=2, progress=False), stage_fns=fakes.STAGES,
                      stage_versions=fakes.STAGE_VERSIONS)
    _check_study(more.summary, fake_suite.tracking_uri, 8)
    assert [t["number"] for t in more.summary["trials"]] == list(range(8))  # exactly 2 added


def _kill_first_foreign_running(journal: Path, study: str, killed: list, stop: threading.Event) -> None:
    """Poll the study; SIGKILL the worker process (not this one) of the first RUNNING trial."""
    while not stop.is_set():
        try:
            trials = _journal_trials(journal, study) if journal.exists() else []
        except Exception:  # the study does not exist yet
            trials = []
        for t in trials:
            pid = t.system_attrs.get(ATTR_PID)
            started = "mlflow_run_id" in t.user_attrs  # its parameters are set and its run is open: mid-trial
            if t.state.name == "RUNNING" and started and pid is not None and pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                killed.append((t.number, pid, dict(t.params)))
                return
        time.sleep(0.2)


def test_killed_worker_trial_is_retried_not_lost(fake_suite, monkeypatch, tmp_path):
    # this process's first trial waits until the spawned worker is up, so the killer always finds a foreign trial
    monkeypatch.setenv(BARRIER_ENV, str(tmp_path / "barrier"))
    monkeypatch.setenv(BARRIER_KIND_ENV, "up")
    killed: list = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_foreign_running,
                              args=(fake_suite.workspace / "t" / "optuna.journal", "t", killed, stop), daemon=True)
    killer.start()
    try:
        # every trial runs long enough to be killed mid-way
        out = tune_suite(fake_suite, TuneOptions(trials=4, workers=2, progress=False),
                         stage_fns=fakes.stages(trial_seconds=1.8), stage_versions=fakes.STAGE_VERSIONS)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1 and out.worker_exitcodes == [-signal.SIGKILL]
    number, _, params = killed[0]
    s = out.summary
    _check_study(s, fake_suite.tracking_uri, 4)
    failed = [t for t in s["trials"] if t["state"] == "FAIL"]
    assert [t["number"] for t in failed] == [number] and s["n_fail"] == 1
    retries = [t for t in s["trials"] if t["retry_of"] == number]
    assert len(retries) == 1 and retries[0]["state"] == "COMPLETE"
    assert len(params) == 3 and retries[0]["params"] == params  # the same parameters, run again
    assert retries[0]["mlflow_run_id"] != failed[0]["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=fake_suite.tracking_uri).get_run(failed[0]["mlflow_run_id"]).info.status == "KILLED"


# ---------------------------------------------------------------------- real stages, real CLI (slow)
def _real_suite_file(tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "suites" / "tests.yaml").read_text())
    data["tune"] = json.loads(json.dumps(TUNE)) | {"sampler": "tpe"}
    data["tune"]["search_space"]["crfm.rectified_step"]["high"] = data["sampling"]["num_inference_steps"]
    path = tmp_path / "tune-tests.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(*args: str, trial_sleep_s: float | None = None, **kw) -> subprocess.Popen:
    """``todsynth bench tune ARGS``; with ``trial_sleep_s``, every trial waits that long before its stages."""
    main = "import cli; cli.main()"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if trial_sleep_s is not None:
        main = f"import test_tune_fakes; test_tune_fakes.cli_with_slow_trials({trial_sleep_s!r})"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-c", main, "bench", "tune", *args, "--no-progress"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_real_stages_two_workers_cap_continue_and_kill(tmp_path, mlflow_db_template):
    """The acceptance run on the real tiny stages: 6 trials with 2 workers, then 8, then a killed worker."""
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(mlflow_db_template, ws / "mlflow.db")
    suite = _real_suite_file(tmp_path)
    proc = _cli(str(suite), "-w", str(ws), "--trials", "6", "--workers", "2")
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out
    summary = json.loads((ws / "tests" / "tune.json").read_text())
    _check_study(summary, f"sqlite:///{ws / 'mlflow.db'}", 6)
    assert summary["trials"][0]["default"] and summary["trials"][0]["params"]["crfm.rectified_step"] == 2
    proc = _cli(str(suite), "-w", str(ws), "--trials", "8", "--workers", "2")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    summary = json.loads((ws / "tests" / "tune.json").read_text())
    _check_study(summary, f"sqlite:///{ws / 'mlflow.db'}", 8)
    assert [t["number"] for t in summary["trials"]] == list(range(8))
    # a new study on the same (now cached) workspace; SIGKILL a spawned worker while its trial waits to start
    journal = ws / "tests" / "optuna.journal"
    proc = _cli(str(suite), "-w", str(ws), "--trials", "3", "--workers", "2", "--study", "killed", trial_sleep_s=20.0)
    killed: list = []
    deadline = time.time() + 600
    while not killed and time.time() < deadline and proc.poll() is None:
        for t in _journal_trials(journal, "killed") if _has_study(journal, "killed") else []:
            pid = t.system_attrs.get(ATTR_PID)
            if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs and pid not in (None, proc.pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(t.number)
                break
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=900)
    assert killed and proc.returncode == 0, out
    assert "exited with code -9" in out
    summary = json.loads((ws / "tests" / "tune.json").read_text())
    assert summary["study"] == "killed"
    _check_study(summary, f"sqlite:///{ws / 'mlflow.db'}", 3)
    assert [t["number"] for t in summary["trials"] if t["state"] == "FAIL"] == killed
    assert [t["state"] for t in summary["trials"] if t["retry_of"] == killed[0]] == ["COMPLETE"]
    # the whole workspace after three invocations and a kill: nothing half-written, no run left RUNNING, and
    # every stage (shared by the workers through the cache lock) logged by exactly one FINISHED child run
    assert not [d for pat in (".tmp-*", ".trash-*", ".work-*") for d in (ws / "cache").glob(f"*/{pat}")]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("todsynth/tests").experiment_id], max_results=5000)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    hashes = [r.data.tags["todsynth.stage_hash"] for r in runs
              if r.data.tags.get("todsynth.kind") == "stage" and r.info.status == "FINISHED"]
    assert hashes and len(hashes) == len(set(hashes)) == len(list((ws / "cache").glob("*/[0-9a-f]*")))
    assert [r.info.status for r in runs if r.data.tags.get("todsynth.kind") == "study"].count("FINISHED") == 2


def _has_study(journal: Path, name: str) -> bool:
    if not journal.exists():
        return False
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    return name in [s.study_name for s in storage.get_all_studies()]


def test_worker_threads_split_the_cores_unless_pinned():
    from bench.pool import worker_threads

    assert worker_threads(1, 2, {}) is None  # one process keeps torch's default
    assert worker_threads(2, 2, {}) == 1
    assert worker_threads(4, 16, {}) == 4
    assert worker_threads(3, 2, {}) == 1  # never zero
    assert worker_threads(2, None, {}) == 1
    assert worker_threads(2, 16, {"OMP_NUM_THREADS": "8"}) is None  # the user's pin wins


def test_torch_threads_sets_and_restores():
    import torch

    from bench.perf import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
