"""Crash, resume, out-of-disk and concurrency: SIGKILL inside a stage, then a rerun equals a clean run; two
`bench run` on one workspace compute each stage once.

A killed stage is one wrapped by ``crash_driver.sigkill_after``: it writes its output into the cache's temp dir,
then SIGKILLs its own process before the cache publishes it. Fast tests use deterministic fake stages in a
subprocess; the slow ones kill the real tests suite (`todsynth bench run suites/tests.yaml`, through
``tests/crash_driver.py``) inside each long stage and `bench tune` inside its trials' stages, then compare the rerun's results with an uninterrupted run (tolerance 0 on CPU), and start two real
`bench run` processes on one workspace at once.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.engine import run_suite
from bench.suites import validate_data
from todsynth.errors import StageError

REPO = Path(__file__).resolve().parent.parent
STAGES = ["data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features", "synthesize",
          "evaluate", "downstream"]


def _fake_script(suite_json: Path, kill_at: str) -> str:
    return f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
sys.path.insert(0, {str(REPO / 'tests')!r})
from bench.engine import run_suite
from bench.suites import validate_data
from crash_driver import sigkill_after
from test_reliability_crash import deterministic_stages
suite = validate_data(json.loads(open({str(suite_json)!r}).read()), 'x')
stage_fns = deterministic_stages()
stage_fns[{kill_at!r}] = sigkill_after(stage_fns[{kill_at!r}])
run_suite(suite, stage_fns=stage_fns, stage_versions={{}}, progress=False)
"""


def deterministic_stages():
    """Fake stages whose metrics depend only on spec and inputs (module level: importable by the subprocess)."""

    def make(stage):
        def fn(spec, inputs, out):
            (out / f"{stage}.txt").write_text(json.dumps(sorted(inputs)))
            crfm = (spec.crfm.rectified_step if spec.crfm else 0) if stage == "synthesize" else 0
            m = {"downstream_miou": 0.5 + 0.01 * getattr(spec, "seed", 0) + 0.03 * ("synthesize" in inputs),
                 "downstream_oa": 0.7, "downstream_macc": 0.6, "per_class_iou": {"building": 0.4},
                 "fid": 90.0 - crfm, "kid": 0.1, "mask_miou": 0.3, "seconds_per_image": 1.0,
                 "fid_extractor": "evaluator", "fid_comparable": False}
            return {"metrics": m}
        return fn

    return {s: make(s) for s in STAGES}


@pytest.mark.parametrize("kill_at", ["generator", "synthesize"])
def test_sigkill_inside_stage_then_resume_equals_clean_run(kill_at, tiny_suite_data, bench_workspace, tmp_path,
                                                           mlflow_db_template):
    import shutil

    clean_ws = tmp_path / "clean"
    clean_ws.mkdir()
    shutil.copy(mlflow_db_template, clean_ws / "mlflow.db")
    clean = run_suite(validate_data({**tiny_suite_data, "workspace": str(clean_ws)}, "t"),
                      stage_fns=deterministic_stages(), stage_versions={}, progress=False).results

    suite_json = tmp_path / "suite.json"
    suite_json.write_text(json.dumps({**tiny_suite_data, "workspace": str(bench_workspace)}))
    proc = subprocess.run([sys.executable, "-c", _fake_script(suite_json, kill_at)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    cache = bench_workspace / "cache"
    assert list((cache / kill_at).glob(".tmp-*")), "killed after partial output: its temp dir is left"
    assert not list((cache / kill_at).glob("[0-9a-f]*")), "nothing of the killed stage was published"
    assert not (bench_workspace / "t" / "results.json").exists()

    suite = validate_data({**tiny_suite_data, "workspace": str(bench_workspace)}, "t")
    out = run_suite(suite, stage_fns=deterministic_stages(), stage_versions={}, progress=False)
    assert "data" in out.cached and any(k.startswith(kill_at) for k in out.computed)
    assert out.results["variants"] == clean["variants"]  # tolerance 0
    assert not list(cache.glob("*/.tmp-*")) and not list(cache.glob("*/.trash-*"))
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    exp = client.get_experiment_by_name("todsynth/t")
    parents = client.search_runs([exp.experiment_id], "tags.`todsynth.kind` = 'suite'", order_by=["start_time ASC"])
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def test_out_of_disk_keeps_previous_results_and_names_stage(tiny_suite_data, tmp_path, monkeypatch):
    """ENOSPC in a stage, then in the results write: the previous results.json and cache stay intact."""
    suite = validate_data({**tiny_suite_data, "workspace": str(tmp_path / "ws")}, "t")
    fns = deterministic_stages()
    first = run_suite(suite, stage_fns=fns, stage_versions={}, track=False, progress=False)
    before = first.results_file.read_bytes()
    cached = sorted(p.name for p in (tmp_path / "ws" / "cache").glob("*/[0-9a-f]*"))

    def full_disk(spec, inputs, out):
        (out / "partial.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StageError) as exc:
        run_suite(suite, stage_fns={**fns, "synthesize": full_disk}, stage_versions={}, track=False, progress=False,
                  force=["synthesize"])
    msg = str(exc.value)
    assert "\n" not in msg and "stage synthesize[" in msg and "No space left on device" in msg
    assert first.results_file.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "ws" / "cache").glob("*/[0-9a-f]*")) == cached
    assert not list((tmp_path / "ws" / "cache").glob("*/.tmp-*"))

    import bench.engine
    from bench.results import write_results

    class FillsUp:  # a file on a disk that fills up after 10 bytes
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    def no_space(path, results):  # the real writer, on a disk that fills up mid-write
        real_fdopen = os.fdopen
        os.fdopen = lambda fd, mode: FillsUp(real_fdopen(fd, mode))  # what todsynth.files.atomic_write_bytes opens
        try:
            write_results(path, results)
        finally:
            os.fdopen = real_fdopen

    monkeypatch.setattr(bench.engine, "write_results", no_space)
    with pytest.raises(OSError, match="No space left"):
        run_suite(suite, stage_fns=fns, stage_versions={}, track=False, progress=False)
    assert first.results_file.read_bytes() == before
    assert not list(first.results_file.parent.glob(".results.json*"))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted under tmp_path (needs root; skipped with the reason otherwise)."""
    import shutil

    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_in_a_stage_keeps_previous_results(tiny_suite_data, tiny_tmpfs):
    """A workspace on a 1 MiB tmpfs: a stage that writes 2 MiB gets the kernel's ENOSPC; the run fails naming the
    stage, the previous results.json and cache stay as they were, and the space of the temp dir is given back."""
    suite = validate_data({**tiny_suite_data, "workspace": str(tiny_tmpfs / "ws")}, "t")
    fns = deterministic_stages()
    first = run_suite(suite, stage_fns=fns, stage_versions={}, track=False, progress=False)
    before = first.results_file.read_bytes()
    cache = tiny_tmpfs / "ws" / "cache"
    published = {p: (p / "done.json").read_bytes() for p in cache.glob("*/[0-9a-f]*")}
    free_before = os.statvfs(tiny_tmpfs).f_bavail

    def big_output(spec, inputs, out):
        with (out / "samples.bin").open("wb") as f:
            for _ in range(32):
                f.write(b"\x01" * 65536)
                f.flush()
        return {}

    with pytest.raises(StageError) as exc:
        run_suite(suite, stage_fns={**fns, "synthesize": big_output}, stage_versions={}, track=False,
                  progress=False, force=["synthesize"])
    msg = str(exc.value)
    assert "\n" not in msg and "stage synthesize[" in msg and f"[Errno {errno.ENOSPC}]" in msg, msg
    assert first.results_file.read_bytes() == before
    assert {p: (p / "done.json").read_bytes() for p in cache.glob("*/[0-9a-f]*")} == published
    assert not list(cache.glob("*/.tmp-*")) and not list(cache.glob("*/.trash-*"))
    assert os.statvfs(tiny_tmpfs).f_bavail >= free_before - 8  # the partial output was removed (a log remains)
    again = run_suite(suite, stage_fns=fns, stage_versions={}, track=False, progress=False)
    assert again.computed == [] and again.results["variants"] == first.results["variants"]


# ---------------------------------------------------------------------- real stages, real CLI (slow)
TESTS_SUITE = REPO / "suites" / "tests.yaml"
# The results.json keys that must not depend on the workspace, the MLflow run or the host.
COMPARED = ("suite", "suite_version", "seeds", "metric_specs", "skipped_samples", "variants")


def _cli(*args: str, kill_at: str | None = None) -> list[str]:
    """The console-script entry point (`todsynth bench ...`) in a fresh interpreter; with ``kill_at``, through
    ``crash_driver.py``, which SIGKILLs the process once that stage has written its output."""
    if kill_at is not None:
        return [sys.executable, str(REPO / "tests" / "crash_driver.py"), kill_at, "bench", *args]
    return [sys.executable, "-c", "import cli; cli.main()", "bench", *args]


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", **(extra or {})}


def _cli_run(env: dict, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args, kill_at=kill_at), capture_output=True, text=True, cwd=REPO, timeout=1800,
                          env=_env(env))


def _new_ws(root: Path, mlflow_db_template: Path) -> Path:
    import shutil

    root.mkdir(parents=True)
    shutil.copy(mlflow_db_template, root / "mlflow.db")
    return root


TIMING = "seconds_per_image"  # wall-clock speed: measured, not computed, so never equal between two runs


def _without_timing(obj):
    """``obj`` with every ``seconds_per_image`` entry removed (asserted positive first)."""
    if isinstance(obj, dict):
        if TIMING in obj and obj[TIMING] is not None:
            assert obj[TIMING] >= 0, obj[TIMING]
        return {k: _without_timing(v) for k, v in obj.items() if k != TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _compared(results: dict) -> str:
    """The computed content of results.json (tolerance 0 on CPU), without provenance, run ids and timings."""
    return json.dumps(_without_timing({k: results[k] for k in COMPARED}), sort_keys=True)


def _no_leftovers(ws: Path) -> None:
    """No temp, trash or resumable-work dirs left in the cache, no temp results file."""
    cache = ws / "cache"
    left = [p for pat in ("*/.tmp-*", "*/.trash-*", "*/.work-*") for p in cache.glob(pat)]
    assert not left, left
    assert not list(ws.glob("*/.results.json*")) and not list(ws.glob("*/.tune.json*"))


def _stage_runs(tracking_uri: str, experiment: str) -> tuple[object, str, list]:
    """(client, experiment id, every run of the experiment); asserts none is left RUNNING."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([exp_id], max_results=5000)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    return client, exp_id, runs


def _finished_stage_runs_once(runs: list) -> dict[str, int]:
    """FINISHED stage child runs per stage hash: each exactly once (no duplicated MLflow child run)."""
    per_hash: dict[str, int] = {}
    for r in runs:
        if r.data.tags.get("todsynth.kind") == "stage" and r.info.status == "FINISHED":
            h = r.data.tags["todsynth.stage_hash"]
            per_hash[h] = per_hash.get(h, 0) + 1
    assert per_hash and set(per_hash.values()) == {1}, {h: n for h, n in per_hash.items() if n != 1}
    return per_hash


@pytest.fixture(scope="module")
def clean_tests_run(tmp_path_factory, mlflow_db_template):
    """One uninterrupted `bench run suites/tests.yaml` (the reference of the slow tests): (workspace, results)."""
    ws = _new_ws(tmp_path_factory.mktemp("clean") / "ws", mlflow_db_template)
    proc = _cli_run({}, "run", str(TESTS_SUITE), "-w", str(ws), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ws, json.loads((ws / "tests" / "results.json").read_text())


def _tests_graph(ws: Path):
    from bench.graph import build_graph
    from bench.suites import load_suite

    suite = load_suite(TESTS_SUITE, workspace=ws)
    return suite, build_graph(suite)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_real_suite_killed_in_each_long_stage_resumes_to_clean_results(clean_tests_run, tmp_path, mlflow_db_template):
    _, clean = clean_tests_run
    work = _new_ws(tmp_path / "killed", mlflow_db_template)
    suite, nodes = _tests_graph(work)
    kill_points = ["autoencoder", "generator", "judge", "evaluator", "real_features", "synthesize", "evaluate",
                   "downstream"]
    for stage in kill_points:  # each run resumes the previous one's finished stages, then dies inside `stage`
        proc = _cli_run({}, "run", str(TESTS_SUITE), "-w", str(work), "--no-progress", kill_at=stage)
        assert proc.returncode == -9, (stage, proc.stderr[-3000:])
        assert list((work / "cache" / stage).glob(".tmp-*")), (stage, "killed with its output in the temp dir")
        assert not (work / "tests" / "results.json").exists()
    proc = _cli_run({}, "run", str(TESTS_SUITE), "-w", str(work), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "marked MLflow run" in proc.stderr and "KILLED" in proc.stderr
    resumed = json.loads((work / "tests" / "results.json").read_text())
    assert _compared(resumed) == _compared(clean)  # tolerance 0 on CPU
    _no_leftovers(work)
    assert len(list((work / "cache").glob("*/[0-9a-f]*"))) == len(nodes)
    _, _, runs = _stage_runs(suite.tracking_uri, suite.experiment)
    parents = sorted((r for r in runs if r.data.tags.get("todsynth.kind") == "suite"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in parents] == ["KILLED"] * len(kill_points) + ["FINISHED"]
    assert len(_finished_stage_runs_once(runs)) == len(nodes)  # every node computed (and logged) exactly once
    killed = [r.data.tags["todsynth.stage"] for r in runs
              if r.data.tags.get("todsynth.kind") == "stage" and r.info.status == "KILLED"]
    assert sorted(killed) == sorted(kill_points)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_two_real_bench_runs_on_one_workspace_compute_each_stage_once(clean_tests_run, tmp_path, mlflow_db_template):
    """Two `todsynth bench run suites/tests.yaml -w SAME` at once: both finish, every stage computed once."""
    import re

    _, clean = clean_tests_run
    ws = _new_ws(tmp_path / "shared", mlflow_db_template)
    suite, nodes = _tests_graph(ws)
    procs = [subprocess.Popen(_cli("run", str(TESTS_SUITE), "-w", str(ws), "--no-progress"), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "database is locked" not in (out + err).lower() and "Traceback" not in out + err
    counts = [tuple(map(int, re.search(r"(\d+) stages computed, (\d+) reused", out).groups())) for out, _ in outs]
    assert all(c + r == len(nodes) for c, r in counts) and sum(c for c, _ in counts) == len(nodes), counts
    assert any("another run is computing it; waiting" in err for _, err in outs)  # they really overlapped
    # the cache: one published dir per node (per stage as many as the graph has), nothing half-written
    per_stage: dict[str, int] = {}
    for node in nodes:
        per_stage[node.stage] = per_stage.get(node.stage, 0) + 1
    for stage, n in per_stage.items():
        dirs = list((ws / "cache" / stage).glob("[0-9a-f]*"))
        assert len(dirs) == n and all((d / "done.json").is_file() for d in dirs), stage
    _no_leftovers(ws)
    res = json.loads((ws / "tests" / "results.json").read_text())
    assert _compared(res) == _compared(clean)
    events = [json.loads(line) for line in (ws / "tests" / "runs.jsonl").read_text().splitlines()]
    assert sorted(e["event"] for e in events) == ["end", "end", "start", "start"]
    assert {e["status"] for e in events if e["event"] == "end"} == {"FINISHED"}
    # MLflow: two FINISHED parent runs, one FINISHED stage child run per node, nothing left RUNNING
    _, _, runs = _stage_runs(suite.tracking_uri, suite.experiment)
    parents = [r for r in runs if r.data.tags.get("todsynth.kind") == "suite"]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    stage_runs = [r for r in runs if r.data.tags.get("todsynth.kind") == "stage"]
    assert len(stage_runs) == len(nodes) and {r.info.status for r in stage_runs} == {"FINISHED"}
    assert sorted(r.data.tags["todsynth.key"] for r in stage_runs) == sorted(n.key for n in nodes)
    assert len(_finished_stage_runs_once(runs)) == len(nodes)
    assert {r.data.tags["mlflow.parentRunId"] for r in stage_runs} <= {r.info.run_id for r in parents}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_real_tune_killed_in_trial_stages_resumes_to_requested_trials(tmp_path, mlflow_db_template, monkeypatch):
    """`bench tune` SIGKILLed inside a trial's synthesize, then (next run) inside the retried trial's evaluate;
    the third run completes exactly the requested trials, the retried default trial equals a clean study's."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from test_tune_workers import _check_study, _real_suite_file

    suite_file = str(_real_suite_file(tmp_path))
    clean_ws = _new_ws(tmp_path / "tune-clean", mlflow_db_template)
    proc = _cli_run({}, "tune", suite_file, "-w", str(clean_ws), "--trials", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    clean = json.loads((clean_ws / "tests" / "tune.json").read_text())
    (clean_default,) = [t for t in clean["trials"] if t["default"]]

    work = _new_ws(tmp_path / "tune-killed", mlflow_db_template)
    kill_points = ["synthesize", "evaluate"]
    for stage in kill_points:
        proc = _cli_run({}, "tune", suite_file, "-w", str(work), "--trials", "2", "--no-progress", kill_at=stage)
        assert proc.returncode == -9, (stage, proc.stderr[-3000:])
        assert list((work / "cache" / stage).glob(".tmp-*")), stage
        assert not (work / "tests" / "tune.json").exists()
    proc = _cli_run({}, "tune", suite_file, "-w", str(work), "--trials", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("its worker is gone; marked FAIL") == 1  # the second killed trial (the first was
    # reaped by the second run)
    summary = json.loads((work / "tests" / "tune.json").read_text())
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    _check_study(summary, tracking, 2)
    assert len(summary["trials"]) == 4
    assert [t["number"] for t in summary["trials"] if t["state"] == "FAIL"] == [0, 1] and summary["n_fail"] == 2
    (default,) = [t for t in summary["trials"] if t["default"] and t["state"] == "COMPLETE"]
    assert default["retry_of"] == 0 and default["params"] == clean_default["params"]
    assert default["values"] == clean_default["values"]  # tolerance 0 on CPU
    assert _without_timing(default["metrics"]) == _without_timing(clean_default["metrics"])
    _no_leftovers(work)
    client, exp_id, runs = _stage_runs(tracking, "todsynth/tests")
    studies = [r for r in runs if r.data.tags.get("todsynth.kind") == "study"]
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"  # reopened by each rerun, not duplicated
    trial_runs = [r for r in runs if r.data.tags.get("todsynth.kind") == "trial"]
    assert sorted(r.info.status for r in trial_runs) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]
    assert sorted(r.data.tags["optuna.trial_number"] for r in trial_runs if r.info.status == "KILLED") == ["0", "1"]
    _finished_stage_runs_once(runs)
    killed = sorted(r.data.tags["todsynth.stage"] for r in runs
                    if r.data.tags.get("todsynth.kind") == "stage" and r.info.status == "KILLED")
    assert killed == sorted(kill_points)
