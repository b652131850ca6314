"""bench tune, in-process with fake stages: schema checks, study set-up, cap, continuation, constraints, reaping."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bench.suites import SuiteError, validate_data
from bench.tune import (
    Session,
    StudyLock,
    TuneOptions,
    constraint_values,
    default_params,
    redact,
    summary_tables,
    trial_variant,
    tune_suite,
)
from bench.tune.storage import ATTR_HOST, ATTR_PID, reap, storage_file_problem
from todsynth.errors import ConfigError

SPACE = {
    "crfm.rectified_step": {"type": "int", "low": 0, "high": 4},
    "crfm.max_step_size": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "crfm.step_scheme": {"type": "categorical", "choices": ["C", "LI", "LD"]},
}


@pytest.fixture
def tune_data(tiny_suite_data, bench_workspace):
    """The harness's tiny fake-stage suite with a tune section (crfm default: rectified_step 2 of 4, LD, 0.1)."""
    data = json.loads(json.dumps(tiny_suite_data))
    data["workspace"] = str(bench_workspace)
    data["tune"] = {"search_space": json.loads(json.dumps(SPACE)), "objectives": ["mask_miou"], "sampler": "random"}
    return data


def _tune(data, fns, trials, **kw):
    suite = validate_data(data, "test")
    return tune_suite(suite, TuneOptions(trials=trials, progress=False, **kw), stage_fns=fns, stage_versions={})


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"crfm.rectified_step": {"type": "int", "low": 0, "high": 9}},
         "tune.search_space.crfm.rectified_step.high: 9 > sampling.num_inference_steps 4"),
        ({"crfm.rectified_step": {"type": "float", "low": 0, "high": 3}}, "tune.search_space.crfm.rectified_step: value 1.5"),
        ({"crfm.step_scheme": {"type": "categorical", "choices": ["LD", "XX"]}}, "tune.search_space.crfm.step_scheme: value 'XX'"),
        ({"crfm.max_step_size": {"type": "float", "low": 0.0, "high": 0.3, "log": True}}, "log needs low > 0"),
        ({"crfm.bogus": {"type": "int", "low": 0, "high": 1}}, "'crfm.bogus' is not crfm.<field>"),
        ({"crfm.rectified_step": {"type": "int", "low": 3, "high": 1}}, "low 3 > high 1"),
    ],
)
def test_bad_search_space_names_the_key(tune_data, change, expected):
    tune_data["tune"]["search_space"].update(change)
    with pytest.raises(SuiteError) as err:
        validate_data(tune_data, "s.yaml")
    assert any(expected in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    "tune_change, expected",
    [
        ({"objectives": [{"metric": "fid", "direction": "max"}]}, "fid is lower-is-better"),
        ({"objectives": ["mask_miou", "mask_miou"]}, "duplicate objective metric"),
        ({"objectives": ["nope"]}, "unknown metric 'nope'"),
        ({"constraints": [{"metric": "fid", "relative_to": "ghost", "max": 1}]}, "tune.constraints[0].relative_to: 'ghost'"),
        ({"constraints": [{"metric": "fid", "relative_to": "real-only", "max": 1}]}, "baseline 'real-only' has no fid"),
        ({"base_variant": "real-only"}, "tune.base_variant: 'real-only' is a baseline"),
        ({"sampler": "grid"}, "tune.search_space.crfm.max_step_size: the grid sampler needs a step"),
        ({"heartbeat_s": 10, "grace_s": 5}, "grace_s 5 must exceed heartbeat_s 10"),
    ],
)
def test_bad_tune_settings(tune_data, tune_change, expected):
    tune_data["tune"].update(tune_change)
    with pytest.raises(SuiteError) as err:
        validate_data(tune_data, "s.yaml")
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_crfm_dims_without_crfm_are_refused(tune_data):
    """crfm.* dimensions over a base variant whose rectified_step is 0, with rectified_step not searched, would give
    every trial the same plain synthesis (the same stage hashes): refused, naming each such key."""
    del tune_data["tune"]["search_space"]["crfm.rectified_step"]
    tune_data["crfm"] = {**tune_data.get("crfm", {}), "rectified_step": 0}
    with pytest.raises(SuiteError) as err:
        validate_data(tune_data, "s.yaml")
    assert sorted(p.split(":")[0] for p in err.value.problems) == [
        "tune.search_space.crfm.max_step_size", "tune.search_space.crfm.step_scheme"]
    assert "the base variant's crfm.rectified_step is 0 (CRFM off)" in err.value.problems[0]
    tune_data["crfm"]["rectified_step"] = 2  # CRFM on in the base: the same space is fine
    assert validate_data(tune_data, "s.yaml")


def test_cli_bad_space_exits_2_with_key_path(tmp_path, tune_data):
    import yaml
    from typer.testing import CliRunner

    from cli import app

    tune_data["tune"]["search_space"]["crfm.rectified_step"]["high"] = 30
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tune_data))
    res = CliRunner().invoke(app, ["bench", "tune", str(path), "--trials", "2"])
    assert res.exit_code == 2
    assert "tune.search_space.crfm.rectified_step.high: 30 > sampling.num_inference_steps 4" in res.output
    assert not (tmp_path / "ws" / "t").exists()  # nothing created


def test_objective_direction_defaults_from_metric(tune_data):
    tune_data["tune"]["objectives"] = ["mask_miou", {"metric": "fid"}, {"metric": "kid", "direction": "min"}]
    suite = validate_data(tune_data, "s")
    assert [o.optuna_direction for o in suite.tune.objectives] == ["maximize", "minimize", "minimize"]


def test_default_trial_and_variant(tune_data):
    suite = validate_data(tune_data, "s")
    assert default_params(suite) == {"crfm.rectified_step": 2, "crfm.max_step_size": 0.1, "crfm.step_scheme": "LD"}
    v = trial_variant(suite, {"crfm.rectified_step": 3, "crfm.step_scheme": "C"}, "trial-7")
    assert (v.crfm.rectified_step, v.crfm.step_scheme, v.crfm.max_step_size) == (3, "C", 0.1)
    assert v.sampling.num_inference_steps == 4 and v.kind == "synthetic"
    tune_data["tune"]["search_space"]["crfm.rectified_step"] = {"type": "int", "low": 3, "high": 4}
    assert "crfm.rectified_step" not in default_params(validate_data(tune_data, "s"))  # outside: sampler's choice
    # a trial's values are checked like a variant's override: null is a value, a bad value names its key
    assert trial_variant(suite, {"crfm.clamp": None}, "t").crfm.clamp is None
    with pytest.raises(ConfigError, match=r"t: crfm.max_step_size: must be a finite number >= 0, got -1"):
        trial_variant(suite, {"crfm.max_step_size": -1}, "t")


def test_study_runs_exact_trials_and_continues(tune_data, fake_stages):
    from mlflow.tracking import MlflowClient

    fns, calls = fake_stages
    out = _tune(tune_data, fns, 3)
    s = out.summary
    assert s["n_complete"] == 3 and [t["number"] for t in s["trials"]] == [0, 1, 2]
    first = s["trials"][0]
    assert first["default"] and first["params"] == {"crfm.rectified_step": 2, "crfm.max_step_size": 0.1,
                                                    "crfm.step_scheme": "LD"}
    # fake evaluate: mask_miou = 0.4 + 0.02 * rectified_step (computed by the evaluate stage of the trial's variant)
    for t in s["trials"]:
        assert t["values"]["mask_miou"] == pytest.approx(0.4 + 0.02 * t["params"]["crfm.rectified_step"])
    assert s["best"][0]["values"]["mask_miou"] == max(t["values"]["mask_miou"] for t in s["trials"])
    assert json.loads(out.path.read_text()) == s and out.path.name == "tune.json"
    assert set(s) >= {"study", "storage", "directions", "objectives", "trials", "best", "pareto", "importances"}
    assert s["storage"].startswith("journal:") and s["storage"].endswith("t/optuna.journal")
    assert s["directions"] == ["maximize"]
    n_calls = len(calls)
    again = _tune(tune_data, fns, 5)  # --trials is the total: adds exactly 2
    assert again.summary["n_complete"] == 5 and again.trials_run_here == 2
    assert [t["number"] for t in again.summary["trials"]] == [0, 1, 2, 3, 4]
    assert "data" not in calls[n_calls:]  # shared stages reused from the cache
    same = _tune(tune_data, fns, 5)
    assert same.trials_run_here == 0 and same.summary["n_complete"] == 5
    # MLflow: one study run, a child per trial carrying the Optuna trial number, params, values and the grid
    client = MlflowClient(tracking_uri=f"sqlite:///{tune_data['workspace']}/mlflow.db")
    parent = s["mlflow"]["parent_run_id"]
    assert again.summary["mlflow"]["parent_run_id"] == parent  # continued study, same parent run
    prun = client.get_run(parent)
    assert prun.data.tags["todsynth.kind"] == "study" and prun.data.tags["optuna.study"] == "t"
    assert prun.info.status == "FINISHED"
    kids = client.search_runs([prun.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and "
                              "tags.`todsynth.kind` = 'trial'")
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in kids}
    assert sorted(by_number) == [0, 1, 2, 3, 4]
    for t in again.summary["trials"]:
        run = by_number[t["number"]]
        assert run.info.run_id == t["mlflow_run_id"] and run.info.status == "FINISHED"
        assert run.data.metrics["mask_miou"] == pytest.approx(t["values"]["mask_miou"])
        assert run.data.params["crfm.rectified_step"] == str(t["params"]["crfm.rectified_step"])
        arts = [a.path for a in client.list_artifacts(run.info.run_id, "synthesize/seed0")]
        assert arts == ["synthesize/seed0/grid.png"]
        assert "downstream_gain" not in run.data.metrics  # these trials stop before downstream


def test_changed_search_space_refuses_the_old_study(tune_data, fake_stages):
    fns, _ = fake_stages
    _tune(tune_data, fns, 1, track=False)
    tune_data["tune"]["search_space"]["crfm.rectified_step"]["high"] = 3
    with pytest.raises(ConfigError, match="created for another configuration.*--study NEW"):
        _tune(tune_data, fns, 2, track=False)
    assert _tune(tune_data, fns, 1, track=False, study="t2").summary["study"] == "t2"


def test_study_whose_stages_changed_is_refused(tune_data, fake_stages):
    """The suite's text unchanged, but what the trials build on re-keyed (new weights at the same path, an edited
    preset, another todsynth: here stage code versions): the study refuses and names what changed, since its old
    trials' values would not compare with new ones (before, it went on and mixed them)."""
    fns, _ = fake_stages
    suite = validate_data(tune_data, "s")

    def tune(trials: int, versions: dict[str, int]):  # noqa: ANN202
        return tune_suite(suite, TuneOptions(trials=trials, progress=False, track=False), stage_fns=fns,
                          stage_versions=versions)

    tune(1, {})
    with pytest.raises(ConfigError, match=r"ran its trials on other inputs: code:evaluate changed since .*--study NEW"):
        tune(2, {"evaluate": 2})
    with pytest.raises(ConfigError, match=r"other inputs: autoencoder, data, evaluator, generator, judge, prompts, "
                                          r"real_features changed since"):
        tune(2, {"data": 2})
    assert tune(2, {}).summary["n_complete"] == 2  # the same inputs: the study goes on


def test_multi_objective_pareto_and_relative_constraint(tune_data, fake_stages):
    fns, _ = fake_stages
    tune_data["tune"]["objectives"] = ["mask_miou", "fid"]
    # fake fid = 100 - 3 * rectified_step; plain (rs 0) has 100, so this asks for rectified_step >= 1
    tune_data["tune"]["constraints"] = [{"metric": "fid", "relative_to": "plain", "max": -3}]
    out = _tune(tune_data, fns, 6, track=False)
    s = out.summary
    assert s["directions"] == ["maximize", "minimize"] and s["reference"] == {"plain": {"fid": 100.0}}
    for t in s["trials"]:
        rs = t["params"]["crfm.rectified_step"]
        assert t["constraints"] == {"fid<=plain-3": pytest.approx(-3 * rs + 3)}
        assert t["feasible"] == (rs >= 1)
    assert s["pareto"] and all(t["feasible"] for t in s["pareto"])
    top = max(t["params"]["crfm.rectified_step"] for t in s["trials"] if t["feasible"])
    assert {t["params"]["crfm.rectified_step"] for t in s["pareto"]} == {top}  # both objectives improve with rs here
    assert s["best"] == s["pareto"]
    assert set(s["importances"]) == {"mask_miou", "fid"} or s["importances_note"]
    tables = summary_tables(s)
    assert "Pareto front" in tables[0].title
    console = Console(width=80, record=True, file=io.StringIO())
    for t in tables:
        console.print(t)
    text = console.export_text()  # an 80-column terminal: the parameter names break after their dot, never cut
    assert "…" not in text and "rectified_step" in text and "crfm.rectified_step" in text


def test_constraint_values_signs():
    from bench.schema import Tune

    tune = Tune.model_validate({"search_space": SPACE, "objectives": ["mask_miou"],
                                "constraints": [{"metric": "fid", "relative_to": "plain", "max": 5},
                                                {"metric": "seconds_per_image", "min": 0.1, "max": 2}]})
    vals = constraint_values(tune, {"fid": 30.0, "seconds_per_image": 3.0}, {"plain": {"fid": 20.0}})
    assert vals == {"fid<=plain+5": 5.0, "seconds_per_image>=0.1": pytest.approx(-2.9), "seconds_per_image<=2": 1.0}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_workers_trial_is_failed_and_retried_once(tune_data, fake_stages):
    """A RUNNING trial whose process is gone becomes FAIL, its parameters run again, the total stays exact."""
    fns, _ = fake_stages
    suite = validate_data(tune_data, "s")
    opts = TuneOptions(trials=3, progress=False, track=False)
    session = Session(suite, opts, stage_fns=fns, stage_versions={}, create=True)
    trial, done = session.next_trial()  # the enqueued default, now RUNNING "in a worker that dies"
    assert not done and trial.number == 0
    storage = session.study._storage
    storage.set_trial_system_attr(trial._trial_id, ATTR_PID, _dead_pid())
    trial.suggest_int("crfm.rectified_step", 0, 4)  # params are set when suggested
    assert session.counts() == (0, 1)
    assert reap(session.study, session.tune) == [0]
    assert reap(session.study, session.tune) == []  # idempotent
    waiting = [t for t in session.study.get_trials() if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == 0
    assert ATTR_PID not in waiting[0].system_attrs and ATTR_HOST not in waiting[0].system_attrs
    assert session.work() == 3
    trials = session.study.get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params["crfm.rectified_step"] == 2


def test_live_foreign_trial_is_not_reaped(tune_data, fake_stages):
    fns, _ = fake_stages
    suite = validate_data(tune_data, "s")
    session = Session(suite, TuneOptions(trials=2, progress=False, track=False), stage_fns=fns, stage_versions={},
                      create=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        trial, _ = session.next_trial()
        session.study._storage.set_trial_system_attr(trial._trial_id, ATTR_PID, proc.pid)
        assert reap(session.study, session.tune) == []
        assert session.counts() == (0, 1)  # still RUNNING: its process lives
        second, _ = session.next_trial()
        assert second is not None and session.next_trial() == (None, False)
    finally:
        proc.kill()
        proc.wait()


def test_cap_counts_running_trials(tune_data, fake_stages):
    fns, _ = fake_stages
    suite = validate_data(tune_data, "s")
    session = Session(suite, TuneOptions(trials=2, progress=False, track=False), stage_fns=fns, stage_versions={},
                      create=True)
    first, _ = session.next_trial()
    second, _ = session.next_trial()
    assert first is not None and second is not None
    assert session.next_trial() == (None, False)  # 2 running: a third worker waits instead of asking
    assert session.counts() == (0, 2)


def test_sqlite_storage_with_heartbeat(tune_data, fake_stages, tmp_path):
    fns, _ = fake_stages
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    out = _tune(tune_data, fns, 2, track=False, storage=url)
    assert out.summary["n_complete"] == 2 and out.summary["storage"] == url
    lock = StudyLock(url, "t")
    assert lock.kind == "file"
    with lock.hold():
        pass
    assert (tmp_path / "optuna.db.tune.lock").exists()


def test_storage_errors_and_redaction(tune_data, fake_stages):
    fns, _ = fake_stages
    with pytest.raises(ConfigError, match="give an SQLAlchemy URL"):
        _tune(tune_data, fns, 1, track=False, storage="not-a-url")
    assert redact("postgresql+psycopg2://bob:s3cret@db.example:5432/optuna") == \
        "postgresql+psycopg2://bob:***@db.example:5432/optuna"
    assert redact("journal:/x/optuna.journal") == "journal:/x/optuna.journal"


def test_a_missing_database_driver_is_named(tune_data, fake_stages, tmp_path):
    """A MySQL URL without its driver: one ConfigError naming the package, the password redacted (was a traceback)."""
    import importlib.util

    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here: the driver is not missing")
    fns, _ = fake_stages
    with pytest.raises(ConfigError, match=r"mysql://bob:\*\*\*@db\.example/optuna: database driver missing .*mysqlclient"):
        _tune(tune_data, fns, 1, track=False, storage="mysql://bob:s3cret@db.example/optuna")


def test_no_tune_section_is_a_config_error(tiny_suite_data, bench_workspace, fake_stages):
    fns, _ = fake_stages
    data = dict(tiny_suite_data, workspace=str(bench_workspace))
    with pytest.raises(ConfigError, match="no `tune:` section"):
        tune_suite(validate_data(data, "s"), TuneOptions(trials=1), stage_fns=fns, stage_versions={})


def test_failing_stage_fails_the_trial_and_stops(tune_data, fake_stages):
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from todsynth.errors import StageError

    fns, _ = fake_stages
    fns = dict(fns)

    def broken(spec, inputs, out_dir):
        raise RuntimeError("evaluator exploded")

    fns["evaluate"] = broken
    suite = validate_data(tune_data, "s")
    with pytest.raises(StageError, match="evaluator exploded"):
        tune_suite(suite, TuneOptions(trials=3, progress=False), stage_fns=fns, stage_versions={})
    session = Session(suite, TuneOptions(trials=3, progress=False, track=False), stage_fns=fns, stage_versions={})
    trials = session.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL]  # not left RUNNING, not retried as if killed
    client = MlflowClient(tracking_uri=suite.tracking_uri)
    assert client.get_run(trials[0].user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert client.get_run(session.study.user_attrs["mlflow_parent_run_id"]).info.status == "FAILED"


def test_unpicklable_stage_functions_cannot_reach_spawned_workers(tune_data, fake_stages):
    fns, _ = fake_stages
    fns = {**fns, "synthesize": lambda spec, inputs, out_dir: {}}  # no importable name: spawned workers lack it
    with pytest.raises(ConfigError, match="importable module-level callables"):
        _tune(tune_data, fns, 2, workers=2)
    assert not (validate_data(tune_data, "s").workspace / "t").exists()  # refused before anything was created


def test_on_trial_start_sees_each_trial_before_its_stages(tune_data, fake_stages):
    fns, calls = fake_stages
    seen = []

    def started(trial):
        seen.append((trial.number, dict(trial.params), calls.count("synthesize")))

    suite = validate_data(tune_data, "s")
    tune_suite(suite, TuneOptions(trials=2, progress=False, track=False), stage_fns=fns, stage_versions={},
               on_trial_start=started)
    default = {"crfm.rectified_step": 2, "crfm.max_step_size": 0.1, "crfm.step_scheme": "LD"}
    assert seen[0] == (0, default, 0)  # parameters suggested, its synthesize not yet run
    assert seen[1][0] == 1 and len(seen[1][1]) == 3 and seen[1][2] == 1 and len(seen) == 2


def test_a_storage_file_that_cannot_be_made_is_named(tmp_path, tune_data, fake_stages):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert storage_file_problem(f"journal:{taken}/s.journal") == f"{taken} is a file, not a folder"
    assert storage_file_problem(f"sqlite:///{taken}/s.db") == f"{taken} is a file, not a folder"
    assert storage_file_problem(f"journal:{tmp_path}") == f"{tmp_path} is a folder; give a file path"
    assert storage_file_problem(f"journal:{tmp_path}/new/s.journal") is None  # made on open
    assert storage_file_problem("sqlite:///:memory:") is None
    assert storage_file_problem("postgresql+psycopg2://u@h/db") is None  # no file of ours
    fns, _ = fake_stages
    with pytest.raises(ConfigError, match=rf"--storage journal:{taken}/s.journal: {taken} is a file"):
        _tune(tune_data, fns, 1, track=False, storage=f"journal:{taken}/s.journal")
    assert taken.read_text() == "not a folder"
    assert not (Path(tune_data["workspace"]) / "t").exists()  # nothing made before the refusal (was an empty folder)


def test_a_database_that_refuses_the_study_is_named(tmp_path) -> None:
    """A PostgreSQL storage with no server behind it was a psycopg2 traceback from the study lock."""
    import socket

    from bench.tune.storage import StudyLock

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg2://someone:secret@127.0.0.1:{port}/db"
    with pytest.raises(ConfigError) as info, StudyLock(url, "s").hold():
        pass
    message = str(info.value)
    assert message.startswith(f"--storage postgresql+psycopg2://someone:***@127.0.0.1:{port}/db: cannot connect "
                              "(OperationalError: "), message
    assert "secret" not in message


def test_a_journal_record_cut_by_a_kill_is_removed_before_the_next_append(tune_data, fake_stages) -> None:
    """A kill inside Optuna's append left a last line without its newline. Optuna skips it when reading, but the next
    append joined it, and from then on every read of the study raised JSONDecodeError."""
    fns, _ = fake_stages
    assert _tune(tune_data, fns, 2, track=False).summary["n_complete"] == 2
    journal = Path(tune_data["workspace"]) / "t" / "optuna.journal"
    whole = journal.read_bytes()
    cut = b'{"op_code":6,"worker_id":"x","trial_id":1,"st'
    journal.write_bytes(whole + cut)  # the kill
    outcome = _tune(tune_data, fns, 3, track=False)
    assert outcome.summary["n_complete"] == 3
    assert journal.read_bytes().startswith(whole) and cut not in journal.read_bytes()
    assert (journal.parent / "optuna.journal.cut").read_bytes() == cut  # kept beside, not lost
    assert _tune(tune_data, fns, 3, track=False).summary["n_complete"] == 3  # reads whole again
    assert (journal.parent / "optuna.journal.cut").read_bytes() == cut  # a whole journal is left as it is


def test_repair_journal_keeps_every_whole_line(tmp_path) -> None:
    from bench.tune.storage import repair_journal

    journal = tmp_path / "j"
    assert repair_journal(journal) == 0  # none yet
    journal.write_bytes(b'{"a"')  # the first record cut: nothing whole to keep
    assert repair_journal(journal) == 4 and journal.read_bytes() == b""
    lines = b"".join(b'{"n":%d}\n' % i for i in range(20000))
    long_cut = b'{"s":"' + b"x" * 100_000  # longer than the 64 KiB block the search steps back by
    journal.write_bytes(lines + long_cut)
    assert repair_journal(journal) == len(long_cut) and journal.read_bytes() == lines
    assert repair_journal(journal) == 0 and (tmp_path / "j.cut").read_bytes() == b'{"a"' + long_cut
    assert not (tmp_path / "j.lock").exists()  # Optuna's lock released


def test_trials_that_reach_downstream_log_their_gain_over_the_baseline(tune_data, fake_stages) -> None:
    """A trial's MLflow run carries real_only_miou and downstream_gain as a `bench run` variant run does (before, only
    when a constraint happened to name the baseline), and tune.json's correlation reads the same baseline."""
    from mlflow.tracking import MlflowClient

    fns, calls = fake_stages
    tune_data["tune"]["objectives"] = ["downstream_miou"]
    out = _tune(tune_data, fns, 2)
    assert out.summary["n_complete"] == 2
    # fake downstream: 0.5 + 0.01 * seed, plus 0.05 + 0.01 * rectified_step with synthetic images; seed 0 only
    client = MlflowClient(tracking_uri=f"sqlite:///{tune_data['workspace']}/mlflow.db")
    for t in out.summary["trials"]:
        run = client.get_run(t["mlflow_run_id"])
        assert run.data.metrics["real_only_miou"] == pytest.approx(0.5)
        assert run.data.metrics["downstream_gain"] == pytest.approx(0.05 + 0.01 * t["params"]["crfm.rectified_step"])
    assert out.summary["downstream_correlation"]["real_only_miou"] == pytest.approx(0.5)
    n = calls.count("downstream")
    assert n == 3  # the baseline's once (a study reference), then one per trial
    _tune(tune_data, fns, 2)
    assert calls.count("downstream") == n  # the reference is kept in the study


def test_a_database_connect_timeout_is_set_unless_the_url_sets_one() -> None:
    from bench.tune.storage import CONNECT_TIMEOUT_S, connect_args

    assert connect_args("postgresql+psycopg2://u@h/db") == {"connect_timeout": CONNECT_TIMEOUT_S}
    assert connect_args("postgresql+psycopg2://u@h/db?connect_timeout=5") == {}  # the user's own wins
