"""Crash, resume and out-of-disk: SIGKILL inside a stage (TODSYNTH_TEST_KILL_AT), then a rerun equals a clean run.

Fast tests use deterministic fake stages in a subprocess; the slow ones kill the real tests suite
(`todsynth bench run suites/tests.yaml`) inside each long stage and `bench tune`, then compare the rerun's
results.json with an uninterrupted run (tolerance 0 on CPU).
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

from bench.engine import KILL_AT_ENV, run_suite
from bench.suites import validate_data
from todsynth.errors import StageError

REPO = Path(__file__).resolve().parent.parent
STAGES = ["data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features", "synthesize",
          "evaluate", "downstream"]


def _fake_script(suite_json: Path) -> str:
    return f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
sys.path.insert(0, {str(REPO / 'tests')!r})
from bench.engine import run_suite
from bench.suites import validate_data
from test_reliability_crash import deterministic_stages
suite = validate_data(json.loads(open({str(suite_json)!r}).read()), 'x')
run_suite(suite, stage_fns=deterministic_stages(), stage_versions={{}}, progress=False)
"""


def deterministic_stages():
    """Fake stages whose metrics depend only on spec and inputs (module level: importable by the subprocess)."""

    def make(stage):
        def fn(spec, inputs, out):
            (out / f"{stage}.txt").write_text(json.dumps(sorted(inputs)))
            crfm = (spec.get("crfm") or {}).get("rectified_step", 0) if stage == "synthesize" else 0
            m = {"downstream_miou": 0.5 + 0.01 * spec.get("seed", 0) + 0.03 * ("synthesize" in inputs),
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
    proc = subprocess.run([sys.executable, "-c", _fake_script(suite_json)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, KILL_AT_ENV: kill_at})
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

    def no_space(path, results):  # the real writer, on a disk that fills up mid-write
        real_write_text = Path.write_text

        def short_write(self, data, *a, **k):
            real_write_text(self, data[:10], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Path, "write_text", short_write)
        try:
            write_results(path, results)
        finally:
            monkeypatch.setattr(Path, "write_text", real_write_text)

    monkeypatch.setattr(bench.engine, "write_results", no_space)
    with pytest.raises(OSError, match="No space left"):
        run_suite(suite, stage_fns=fns, stage_versions={}, track=False, progress=False)
    assert first.results_file.read_bytes() == before
    assert not list(first.results_file.parent.glob(".results.json*"))


def _cli_run(ws: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import cli; cli.main()", "bench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ, "COLUMNS": "200", **env})


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_real_suite_killed_in_each_long_stage_resumes_to_clean_results(tmp_path, mlflow_db_template):
    import shutil

    def ws(name):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(mlflow_db_template, d / "mlflow.db")
        return d

    suite = str(REPO / "suites" / "tests.yaml")
    clean_ws = ws("clean")
    proc = _cli_run(clean_ws, {}, "run", suite, "-w", str(clean_ws), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    clean = json.loads((clean_ws / "tests" / "results.json").read_text())["variants"]
    work = ws("killed")
    for stage in ["autoencoder", "generator", "judge", "synthesize", "downstream"]:
        proc = _cli_run(work, {KILL_AT_ENV: stage}, "run", suite, "-w", str(work), "--no-progress")
        assert proc.returncode == -9, (stage, proc.stderr[-3000:])
    proc = _cli_run(work, {}, "run", suite, "-w", str(work), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "marked MLflow run" in proc.stderr and "KILLED" in proc.stderr
    resumed = json.loads((work / "tests" / "results.json").read_text())["variants"]
    assert json.dumps(resumed, sort_keys=True) == json.dumps(clean, sort_keys=True)  # tolerance 0 on CPU
    assert not list((work / "cache").glob("*/.tmp-*")) and not list((work / "cache").glob("*/.trash-*"))
