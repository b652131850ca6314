"""MLflow tracking of suite runs: parent/child runs, params/metrics/artifacts, reuse, KILLED marking."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from bench.engine import run_suite
from bench.suites import config_hash, validate_data
from bench.tracking import Tracker, clean_key, cut, flatten


def _suite(data, ws):
    return validate_data({**data, "workspace": str(ws)}, "test")


def _children(client, exp_id, parent):
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")


def test_parent_and_child_runs(tiny_suite_data, bench_workspace, fake_stages):
    fns, calls = fake_stages
    suite = _suite(tiny_suite_data, bench_workspace)
    out = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    exp = client.get_experiment_by_name("todsynth/t")
    assert exp is not None
    parent = client.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["todsynth.kind"] == "suite" and tags["todsynth.config_hash"] == config_hash(suite)
    assert tags["todsynth.git_commit"] and "todsynth.version.torch" in tags
    assert parent.data.params["sampling.num_inference_steps"] == "4"
    assert not any("/" in k for k in parent.data.metrics)  # variant metrics live on variant runs, not prefixed here
    assert parent.data.metrics["stages_computed"] == len(calls)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"suite.resolved.yaml", "stages.json", "results.json"} <= arts

    children = [c for c in _children(client, exp.experiment_id, out.parent_run_id)
                if c.data.tags["todsynth.kind"] == "stage"]
    assert len(children) == len(calls)  # one child per executed stage
    by_name = {c.info.run_name: c for c in children}
    assert all(c.info.status == "FINISHED" for c in children)
    syn = by_name["synthesize[crfm,seed=0]"]
    assert syn.data.params["crfm.rectified_step"] == "2"
    assert syn.data.tags["todsynth.variant"] == "crfm" and syn.data.tags["todsynth.stage"] == "synthesize"
    assert [a.path for a in client.list_artifacts(syn.info.run_id)] == ["grid.png"]
    ev = by_name["evaluate[crfm,seed=0]"]
    assert ev.data.metrics["fid"] == pytest.approx(94.0) and "stage_seconds" in ev.data.metrics
    down = by_name["downstream[plain,seed=0]"]
    assert down.data.metrics["per_class_iou/building"] == pytest.approx(0.65)
    assert "per_class_iou.json" in {a.path for a in client.list_artifacts(down.info.run_id)}


def test_one_run_per_variant_and_seed(tiny_suite_data, bench_workspace, fake_stages):
    fns, _ = fake_stages
    suite = _suite({**tiny_suite_data, "seeds": [0, 1]}, bench_workspace)
    out = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    exp = client.get_experiment_by_name("todsynth/t")
    runs = client.search_runs([exp.experiment_id], "tags.`todsynth.kind` = 'variant'")
    assert sorted(r.info.run_name for r in runs) == ["crfm[seed=0]", "crfm[seed=1]", "plain[seed=0]", "plain[seed=1]"]
    assert all(r.data.tags["mlflow.parentRunId"] == out.parent_run_id and r.info.status == "FINISHED" for r in runs)
    # the same parameter and metric keys on every variant run: MLflow's compare view has no empty cells
    assert len({tuple(sorted(r.data.params)) for r in runs}) == 1
    assert len({tuple(sorted(r.data.metrics)) for r in runs}) == 1
    by = {r.info.run_name: r for r in runs}
    crfm, plain = by["crfm[seed=1]"].data, by["plain[seed=1]"].data
    assert crfm.params["crfm.rectified_step"] == "2" and plain.params["crfm.rectified_step"] == "0"
    assert crfm.params["sampling.num_inference_steps"] == "4" and crfm.params["seed"] == "1"
    assert crfm.params["fid.extractor"] == "evaluator" and crfm.params["n"] == "all"
    # fake stages: downstream mIoU 0.5 + 0.01 seed + 0.05 + 0.01 rs (synthetic); real-only 0.5 + 0.01 seed
    assert crfm.metrics["downstream_miou"] == pytest.approx(0.58)
    assert crfm.metrics["downstream_gain"] == pytest.approx(0.07) and crfm.metrics["real_only_miou"] == pytest.approx(0.51)
    assert plain.metrics["downstream_gain"] == pytest.approx(0.05)
    assert crfm.metrics["fid"] == pytest.approx(94.0) and crfm.metrics["mask_miou"] == pytest.approx(0.44)
    assert crfm.metrics["mask_miou_of_ceiling"] == pytest.approx(0.44 / 0.6)
    assert crfm.metrics["per_class_iou/building"] == pytest.approx(0.68)
    # links to its stage runs, and its sample grid
    stage_runs = {c.info.run_name: c.info.run_id for c in _children(client, exp.experiment_id, out.parent_run_id)}
    assert crfm.tags["todsynth.run.synthesize"] == stage_runs["synthesize[crfm,seed=1]"]
    assert crfm.tags["todsynth.run.downstream"] == stage_runs["downstream[crfm,seed=1]"]
    assert f"#/experiments/{exp.experiment_id}/runs/{stage_runs['evaluate[crfm,seed=1]']}" in crfm.tags["mlflow.note.content"]
    assert [a.path for a in client.list_artifacts(by["crfm[seed=1]"].info.run_id)] == ["grid.png"]
    # the baseline has its own kind (no image metrics), and results.json names every variant run
    base = client.search_runs([exp.experiment_id], "tags.`todsynth.kind` = 'baseline'")
    assert [r.info.run_name for r in sorted(base, key=lambda r: r.info.run_name)] == ["real-only[seed=0]", "real-only[seed=1]"]
    assert "fid" not in base[0].data.metrics and "downstream_gain" not in base[0].data.metrics
    ids = out.results["mlflow"]["variant_runs"]
    assert ids["crfm"]["1"] == by["crfm[seed=1]"].info.run_id and set(ids) == {"real-only", "plain", "crfm"}
    # a rerun that changes nothing reuses them
    again = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    assert again.results["mlflow"]["variant_runs"] == ids
    assert len(client.search_runs([exp.experiment_id], "tags.`todsynth.kind` = 'variant'")) == 4


def test_store_uri_is_absolute(tiny_suite_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = validate_data({**tiny_suite_data, "workspace": "runs", "tracking": {"artifacts": "arts"}}, "test")
    assert suite.tracking_uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert suite.artifact_location == str(tmp_path / "arts")
    rel = validate_data({**tiny_suite_data, "tracking": {"uri": "sqlite:///x/m.db"}}, "test")
    assert rel.tracking_uri == f"sqlite:///{tmp_path}/x/m.db"
    served = validate_data({**tiny_suite_data, "tracking": {"uri": "http://127.0.0.1:5000"}}, "test")
    assert served.tracking_uri == "http://127.0.0.1:5000"


def test_rerun_logs_no_duplicate_children(tiny_suite_data, bench_workspace, fake_stages):
    fns, _ = fake_stages
    suite = _suite(tiny_suite_data, bench_workspace)
    first = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    second = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    exp = client.get_experiment_by_name("todsynth/t")
    assert _children(client, exp.experiment_id, second.parent_run_id) == []  # no stage runs, variant runs reused
    parents = client.search_runs([exp.experiment_id], "tags.`todsynth.kind` = 'suite'")
    assert len(parents) == 2
    # the reuse is recorded on the second parent, pointing at the first invocation's child runs
    path = client.download_artifacts(second.parent_run_id, "stages.json", str(bench_workspace.parent))
    rows = json.loads(open(path).read())
    assert {r["status"] for r in rows} == {"cached"}
    first_children = {c.info.run_id for c in _children(client, exp.experiment_id, first.parent_run_id)
                      if c.data.tags["todsynth.kind"] == "stage"}
    assert {r["mlflow_run_id"] for r in rows} == first_children
    assert client.get_run(second.parent_run_id).data.metrics["stages_cached"] == len(rows)


def test_failed_stage_marks_runs_failed(tiny_suite_data, bench_workspace, fake_stages):
    from todsynth.errors import StageError

    fns, _ = fake_stages

    def boom(spec, inputs, out_dir):
        raise RuntimeError("no")

    suite = _suite(tiny_suite_data, bench_workspace)
    with pytest.raises(StageError):
        run_suite(suite, stage_fns={**fns, "judge": boom}, stage_versions={}, progress=False)
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    exp = client.get_experiment_by_name("todsynth/t")
    runs = client.search_runs([exp.experiment_id])
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert statuses["judge"] == "FAILED"
    assert statuses[f"t@{config_hash(suite)[:8]}"] == "FAILED"


def test_stale_running_runs_marked_killed(bench_workspace):
    uri = f"sqlite:///{bench_workspace / 'mlflow.db'}"
    tracker = Tracker(uri, str(bench_workspace / "mlartifacts"), "todsynth/x", bench_workspace)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    client = MlflowClient(tracking_uri=uri)
    host = socket.gethostname()
    stale = client.create_run(tracker.experiment_id, tags={"todsynth.pid": str(dead), "todsynth.host": host}).info.run_id
    alive = client.create_run(tracker.experiment_id, tags={"todsynth.pid": str(os.getppid()), "todsynth.host": host}).info.run_id
    other_host = client.create_run(tracker.experiment_id, tags={"todsynth.pid": str(dead), "todsynth.host": "elsewhere"}).info.run_id
    foreign = client.create_run(tracker.experiment_id).info.run_id  # not ours: no pid tag
    assert tracker.mark_stale_killed() == [stale]
    assert client.get_run(stale).info.status == "KILLED"
    for run_id in (alive, other_host, foreign):
        assert client.get_run(run_id).info.status == "RUNNING"


def test_killed_process_run_is_marked_on_next_invocation(tiny_suite_data, bench_workspace, fake_stages, tmp_path):
    """A `bench run` killed mid-stage leaves RUNNING runs; the next run marks them KILLED and completes."""
    fns, _ = fake_stages
    suite = _suite(tiny_suite_data, bench_workspace)
    suite_json = tmp_path / "suite.json"
    suite_json.write_text(json.dumps({**tiny_suite_data, "workspace": str(bench_workspace)}))
    script = f"""
import json, os, sys
sys.path.insert(0, {os.getcwd()!r})
from bench.engine import run_suite
from bench.suites import validate_data
suite = validate_data(json.loads(open({str(suite_json)!r}).read()), 'x')
def fake(spec, inputs, out):
    (out / 'f.txt').write_text('1')
    if out.parent.name == 'generator':
        os.kill(os.getpid(), 9)  # die hard, mid-stage
    return {{}}
run_suite(suite, stage_fns={{s: fake for s in {sorted(fns)!r}}}, stage_versions={{}}, progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    exp = client.get_experiment_by_name("todsynth/t")
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert {r.info.run_name for r in running} == {f"t@{config_hash(suite)[:8]}", "generator"}
    leftovers = list((bench_workspace / "cache" / "generator").glob(".tmp-*"))
    assert len(leftovers) == 1
    out = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    for r in running:
        assert client.get_run(r.info.run_id).info.status == "KILLED"
    assert not list((bench_workspace / "cache" / "generator").glob(".tmp-*"))
    assert "data" in out.cached and "generator" in out.computed
    from bench.workspace import list_suites

    (row,) = list_suites(bench_workspace)
    assert row["suite"] == "t" and row["runs"] == 2 and row["last_status"] == "FINISHED" and row["variants"] == 3


def test_flatten_and_limits():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "null", "e": "x"}
    assert clean_key("synthesize[crfm,seed=0]") == "synthesize_crfm_seed_0_"
    assert len(cut("x" * 7000, 6000)) == 6000 and cut("abc", 6000) == "abc"


def test_retry_backs_off_on_sqlite_lock_only():
    from bench.tracking import retry

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry(flaky) == "ok" and len(calls) == 3

    def broken():
        calls.append(2)
        raise ValueError("bad param")

    with pytest.raises(ValueError, match="bad param"):
        retry(broken)
    assert calls.count(2) == 1  # other errors are not retried


def test_two_concurrent_runs_compute_each_stage_once(tiny_suite_data, bench_workspace, tmp_path):
    """Two `bench run` processes on one workspace: every stage runs once in total, both finish, both tracked."""
    from bench.graph import build_graph

    suite = _suite(tiny_suite_data, bench_workspace)
    suite_json = tmp_path / "suite.json"
    suite_json.write_text(json.dumps({**tiny_suite_data, "workspace": str(bench_workspace)}))
    calls = tmp_path / "calls.txt"
    script = f"""
import json, sys, time
sys.path.insert(0, {os.getcwd()!r})
from bench.engine import run_suite
from bench.suites import validate_data
suite = validate_data(json.loads(open({str(suite_json)!r}).read()), 'x')
def make(stage):
    def fn(spec, inputs, out):
        with open({str(calls)!r}, 'a') as f:
            f.write(stage + '\\n')
        time.sleep(0.3)
        (out / 'f.txt').write_text(stage)
        m = {{'downstream_miou': 0.5, 'downstream_oa': 0.5, 'downstream_macc': 0.5, 'per_class_iou': {{}}}}
        return {{'metrics': m}}
    return fn
stages = {sorted(['data', 'prompts', 'autoencoder', 'generator', 'judge', 'evaluator', 'real_features',
                  'synthesize', 'evaluate', 'downstream'])!r}
out = run_suite(suite, stage_fns={{s: make(s) for s in stages}}, stage_versions={{}}, progress=False)
print(len(out.computed), len(out.cached))
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    n = len(build_graph(suite))
    assert len(calls.read_text().splitlines()) == n
    computed = sorted(int(o[0].split()[0]) for o in outs)
    assert sum(computed) == n  # split between the two runs, nothing twice
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    exp = client.get_experiment_by_name("todsynth/t")
    parents = client.search_runs([exp.experiment_id], "tags.`todsynth.kind` = 'suite'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    children = client.search_runs([exp.experiment_id], "tags.`todsynth.kind` = 'stage'")
    assert len(children) == n


def test_a_store_that_cannot_be_opened_is_named(tmp_path):
    """A truncated mlflow.db (its header intact) and a URI MLflow does not know raised SQLAlchemy's or MLflow's
    traceback from `bench run`/`report`/`tune`; they are StoreDamagedError naming the store (exit 2)."""
    from bench.tracking.queries import experiment_id_by_name
    from bench.tracking.server import StoreDamagedError
    from bench.tracking.tracker import Tracker

    db = tmp_path / "mlflow.db"
    Tracker(f"sqlite:///{db}", str(tmp_path / "art"), "e", tmp_path)
    db.write_bytes(db.read_bytes()[:20000])
    for uri in (f"sqlite:///{db}", "bogus://x"):
        with pytest.raises(StoreDamagedError, match=f"cannot open the MLflow store {uri}"):
            Tracker(uri, str(tmp_path / "art"), "e", tmp_path)
        with pytest.raises(StoreDamagedError, match=f"cannot open the MLflow store {uri}"):
            experiment_id_by_name(uri, "e")


def _closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_tracking_server_that_does_not_answer_is_named_in_seconds(tmp_path):
    """An http tracking URI with no server behind it waited ~4 min on MLflow's HTTP retries before `bench run`'s
    first stage (or after `bench perf` had measured); one short probe now names it, without the URI's password."""
    import socket
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from bench.tracking.server import StoreDamagedError, server_problem
    from bench.tracking.tracker import Tracker

    port = _closed_port()
    uri = f"http://someone:secret@127.0.0.1:{port}"
    t0 = time.monotonic()
    problem = server_problem(uri)
    assert problem is not None and time.monotonic() - t0 < 5
    assert problem.startswith(f"the MLflow tracking server http://someone:***@127.0.0.1:{port} does not answer (")
    assert "secret" not in problem
    with pytest.raises(StoreDamagedError, match="does not answer"):
        Tracker(f"http://127.0.0.1:{port}", None, "e", tmp_path)

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        t0 = time.monotonic()
        problem = server_problem(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        assert problem is not None and "ReadTimeout within 0.5 s" in problem and time.monotonic() - t0 < 3

    class Forbidden(BaseHTTPRequestHandler):  # a proxy asking for a login still answers
        def do_GET(self) -> None:
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server_problem(f"http://127.0.0.1:{server.server_port}") is None
    finally:
        server.shutdown()
    assert server_problem(f"sqlite:///{tmp_path / 'mlflow.db'}") is None  # not a server: not probed


def test_bench_run_names_an_unanswering_tracking_server_before_any_stage(tiny_suite_data, bench_workspace, tmp_path,
                                                                         capsys, monkeypatch):
    import sys

    import yaml

    from cli import main

    suite = tmp_path / "t.yaml"
    suite.write_text(yaml.safe_dump(tiny_suite_data))
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(sys, "argv", ["todsynth", "bench", "run", str(suite), "-w", str(bench_workspace),
                                      "--set", f"tracking.uri={uri}"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"tracking: the MLflow tracking server {uri} does not answer" in err, err
    assert not (bench_workspace / "cache").exists()  # no stage ran
