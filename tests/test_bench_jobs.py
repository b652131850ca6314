"""``resources.jobs > 1``: independent stages side by side in pool processes, each with its share of the cores."""

from __future__ import annotations

import json

import jobs_fakes
import pytest

from bench.cache import StageCache
from bench.engine import graph_hashes, run_suite
from bench.graph import build_graph
from bench.pool import stage_threads, usable_cores
from bench.suites import config_hash, validate_data
from todsynth.errors import ConfigError, StageError


def _suite(data, ws, jobs):
    data = json.loads(json.dumps(data))
    data["workspace"] = str(ws)
    data["resources"]["jobs"] = jobs
    return validate_data(data, "test")


def _run(suite, fns=jobs_fakes.STAGES):
    return run_suite(suite, stage_fns=fns, stage_versions={}, track=False, progress=False)


def _log(folder):
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in folder.glob("*.jsonl")}


def test_jobs_2_runs_ready_stages_side_by_side_with_a_share_of_the_cores(tiny_suite_data, tmp_path, monkeypatch):
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv(jobs_fakes.LOG_ENV, str(log))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    one = _run(_suite(tiny_suite_data, tmp_path / "ws1", 1))
    for p in log.iterdir():
        p.unlink()
    monkeypatch.setenv(jobs_fakes.BARRIER_ENV, str(tmp_path / "barrier"))  # judge and evaluator must meet
    two = _run(_suite(tiny_suite_data, tmp_path / "ws2", 2))
    assert two.results["variants"] == one.results["variants"]  # same results
    assert sorted(two.computed) == sorted(n.key for n in build_graph(_suite(tiny_suite_data, tmp_path, 2)))
    runs = _log(log)
    judge, evaluator = runs["judge"][0], runs["evaluator"][0]
    assert judge["pid"] != evaluator["pid"]  # both need only the data: they ran at once, in two processes
    # a stage that other stages could run beside gets one core share
    share = max(1, usable_cores() // 2)
    assert judge["threads"] == evaluator["threads"] == share
    # the data stage starts alone and nothing can start beside it before it ends: every core
    assert runs["data"][0]["threads"] == usable_cores()


def test_side_by_side_cached_stages_are_reused_without_running(tiny_suite_data, tmp_path, monkeypatch):
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv(jobs_fakes.LOG_ENV, str(log))
    suite = _suite(tiny_suite_data, tmp_path / "ws", 2)
    first = _run(suite)
    n = sum(len(v) for v in _log(log).values())
    second = _run(suite)
    assert sum(len(v) for v in _log(log).values()) == n == len(first.computed)
    assert second.computed == [] and len(second.cached) == n
    assert second.results["variants"] == first.results["variants"]


def test_a_failing_stage_side_by_side_keeps_what_finished(tiny_suite_data, tmp_path, monkeypatch):
    monkeypatch.setenv(jobs_fakes.FAIL_ENV, "evaluator")
    suite = _suite(tiny_suite_data, tmp_path / "ws", 2)
    with pytest.raises(StageError, match=r"stage evaluator failed: RuntimeError: evaluator failed on purpose"):
        _run(suite)
    hashes = graph_hashes(build_graph(suite), {})
    cache = StageCache(suite.workspace)
    assert cache.lookup("judge", hashes["judge"]) is not None  # ran beside the evaluator and finished: kept
    assert cache.lookup("evaluator", hashes["evaluator"]) is None
    assert not (suite.workspace / "t" / "results.json").exists()
    monkeypatch.delenv(jobs_fakes.FAIL_ENV)
    rerun = _run(suite)
    assert "judge" in rerun.cached and "evaluator" in rerun.computed


def test_side_by_side_refuses_stage_functions_a_process_cannot_receive(tiny_suite_data, tmp_path):
    fns = {**jobs_fakes.STAGES, "judge": lambda spec, inputs, out: {}}
    with pytest.raises(ConfigError, match=r"resources.jobs 2: the stage functions must be importable"):
        _run(_suite(tiny_suite_data, tmp_path / "ws", 2), fns)


def test_stage_threads_give_a_lone_stage_every_core_and_split_them_otherwise():
    assert stage_threads(0, 2, 2, {}) == 2  # nothing in its graph can run beside it
    assert stage_threads(1, 2, 2, {}) == 1
    assert stage_threads(3, 2, 16, {}) == 8
    assert stage_threads(1, 3, 2, {}) == 1  # never zero
    assert stage_threads(0, 2, 16, {"OMP_NUM_THREADS": "4"}) is None  # the user's pin wins
    assert stage_threads(1, 2, 16, {"OMP_NUM_THREADS": "4"}) is None


def test_jobs_is_left_out_of_the_config_hash(tiny_suite_data, tmp_path):
    assert config_hash(_suite(tiny_suite_data, tmp_path, 1)) == config_hash(_suite(tiny_suite_data, tmp_path, 2))
    data = json.loads(json.dumps(tiny_suite_data))
    data["resources"]["device"] = "cuda"
    assert config_hash(_suite(data, tmp_path, 1)) != config_hash(_suite(tiny_suite_data, tmp_path, 1))


def test_side_by_side_stage_bars_reach_the_engine_display(tiny_suite_data, tmp_path, monkeypatch):
    from rich.console import Console

    import bench.schedule

    got: list[tuple] = []
    monkeypatch.setattr(bench.schedule.StageProgress, "report", lambda self, *a: got.append(a))
    suite = _suite(tiny_suite_data, tmp_path / "ws", 2)
    run_suite(suite, stage_fns=jobs_fakes.STAGES, stage_versions={}, track=False, progress=True,
              console=Console(file=open(tmp_path / "out.txt", "w")))
    downstream = {n.key for n in build_graph(suite) if n.stage == "downstream"}
    finals = {(key, label, completed, total) for key, label, completed, total, _ in got if completed == total}
    assert finals == {(k, "fake train", 3, 3) for k in downstream}  # each stage's last update, under its key
    assert all(fields == {"loss": 0.5} for key, _, completed, _, fields in got if completed > 0)
    log = (tmp_path / "out.txt").read_text()
    assert all(f"{k}: done" in log for k in downstream)  # the counter lines


def test_side_by_side_display_rows_are_for_stages_that_report(tmp_path):
    from rich.console import Console

    from bench.schedule import StageProgress

    console = Console(file=open(tmp_path / "out.txt", "w"))
    with StageProgress(3, console, enabled=True, live=True) as bar:
        rows = lambda: [t.description for t in bar._live.tasks]  # noqa: E731
        bar.start("data")
        bar.finish("data", computed=False, seconds=0.0)  # reused from the cache: never a row
        bar.start("judge")
        assert rows() == []
        bar.report("judge", "train", 2, 10, {"loss": 0.5})
        assert rows() == ["judge: train"]
        bar.finish("judge", computed=True, seconds=1.0)
        bar.report("judge", "train", 10, 10, {})  # a late report of a finished stage
        assert rows() == []
    assert "data: cached" in (tmp_path / "out.txt").read_text()


def test_ctrl_c_side_by_side_ends_the_pool_and_keeps_finished_stages(tiny_suite_data, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    started = tmp_path / "started"
    started.mkdir()
    data = json.loads(json.dumps(tiny_suite_data))
    data["workspace"] = str(tmp_path / "ws")
    data["resources"]["jobs"] = 2
    (tmp_path / "suite.json").write_text(json.dumps(data))
    env = {**os.environ, jobs_fakes.HANG_ENV: f"generator:{started}"}
    # as from a terminal: SIGINT at its default action (under a shell's background job, or a CI runner that ignores
    # SIGINT, the child would inherit the ignore and Python would install no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, jobs_fakes.__file__, str(tmp_path / "suite.json")], env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(started.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the generator stage never started"
        time.sleep(0.1)
    pool_pid = int(next(started.iterdir()).name.split(".")[0])
    proc.send_signal(signal.SIGINT)  # the parent only: the pool processes leave Ctrl-C to it
    assert proc.wait(timeout=60) == 130
    gone = time.monotonic() + 10
    while psutil.pid_exists(pool_pid) and psutil.Process(pool_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < gone, "the hung stage's pool process outlived the run"
        time.sleep(0.1)
    cache = tmp_path / "ws" / "cache"
    assert not [p for p in cache.rglob(".tmp-*")]  # no half-written output left behind
    suite = _suite(tiny_suite_data, tmp_path / "ws", 2)
    hashes = graph_hashes(build_graph(suite), {})
    assert StageCache(suite.workspace).lookup("data", hashes["data"]) is not None  # finished before: kept
    assert StageCache(suite.workspace).lookup("generator", hashes["generator"]) is None


def test_descendants_count_every_node_below(tiny_suite_data, tmp_path):
    from bench.schedule import descendants

    nodes = build_graph(_suite(tiny_suite_data, tmp_path / "ws", 2))
    below = descendants(nodes)
    assert len(below["data"]) == len(nodes) - 1  # everything depends on the data
    assert below["generator"] == {f"{s}[{v},seed=0]" for s in ("synthesize", "evaluate", "downstream")
                                  for v in ("plain", "crfm")}
    assert below["downstream[real-only,seed=0]"] == set()
    for n in nodes:  # a node has more below it than any node that depends on it
        assert all(len(below[dep]) > len(below[n.key]) for dep in n.deps.values()), n.key


def test_peers_are_the_nodes_neither_upstream_nor_downstream(tiny_suite_data, tmp_path):
    from bench.schedule import peers

    nodes = build_graph(_suite(tiny_suite_data, tmp_path / "ws", 2))
    beside = peers(nodes)
    assert beside["data"] == 0  # first, alone whatever the timing: every core
    assert beside["downstream[real-only,seed=0]"] == len(nodes) - 2  # needs only the data
    by_key = {n.key: n for n in nodes}
    assert "judge" in by_key["synthesize[crfm,seed=0]"].deps.values()
    # the generator could run beside the judge, the evaluator, real_features, real-only's downstream, ...
    assert beside["generator"] >= 4


def test_jobs_is_left_out_of_the_tune_study_fingerprint(tiny_suite_data, tmp_path):
    from bench.tune.study import study_fingerprint

    one, two = _suite(tiny_suite_data, tmp_path, 1), _suite(tiny_suite_data, tmp_path, 2)
    assert study_fingerprint(one) == study_fingerprint(two)  # a study goes on whatever --set resources.jobs says
    data = json.loads(json.dumps(tiny_suite_data))
    data["resources"]["device"] = "cuda"
    assert study_fingerprint(_suite(data, tmp_path, 1)) != study_fingerprint(one)
