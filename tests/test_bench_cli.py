"""`todsynth bench validate|run|ls` through the console script: exit codes, one-line errors, no side effects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TODSYNTH = [str(Path(sys.executable).parent / "todsynth")] if (Path(sys.executable).parent / "todsynth").exists() else [
    sys.executable, "-c", "import cli; cli.main()"]


def _cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TODSYNTH_LOVEDA_ROOT", None) if "TODSYNTH_LOVEDA_ROOT" not in (env or {}) else None
    full_env.pop("TODSYNTH_SD3_DIR", None) if "TODSYNTH_SD3_DIR" not in (env or {}) else None
    return subprocess.run([*TODSYNTH, *args], capture_output=True, text=True, cwd=cwd or REPO, env=full_env, timeout=120)


BAD_SUITES = {
    "unknown_key": ("name: x\nvariants: [{name: a}]\nsamplng: {num_inference_steps: 4}\n", ["samplng: unknown key"]),
    "wrong_type": ("name: x\nvariants: [{name: a}]\nseeds: zero\n", ["seeds: Input should be a valid list"]),
    "negative_steps": ("name: x\nvariants: [{name: a}]\nsampling: {num_inference_steps: -5}\n",
                       ["sampling.num_inference_steps: must be an int >= 1, got -5"]),
    "rectified_gt_steps": ("name: x\nsampling: {num_inference_steps: 23}\nvariants:\n - {name: a}\n - {name: b}\n"
                           " - {name: c, crfm: {rectified_step: 30}}\n",
                           ["variants[2].crfm.rectified_step: 30 > sampling.num_inference_steps 23"]),
    "yaml_syntax": ("name: x\nvariants: [{name: a}\n", ["YAML syntax error"]),
    "two_problems": ("name: x\nvariants: [{name: a}]\nbogus: 1\njudge: {iters: 0}\n",
                     ["bogus: unknown key", "judge.iters: Input should be greater than 0"]),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", sorted(BAD_SUITES))
def test_bad_suite_exits_2_one_line_each_nothing_created(tmp_path, command, case):
    content, expected = BAD_SUITES[case]
    suite = tmp_path / "bad.yaml"
    suite.write_text(content)
    ws = tmp_path / "ws"
    proc = _cli("bench", command, str(suite), "--workspace", str(ws), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line in lines:
        assert line.startswith("error: ") and str(suite) in line
    for want in expected:
        assert sum(want in line for line in lines) == 1, (want, lines)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not ws.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_missing_suite_file(tmp_path):
    proc = _cli("bench", "run", str(tmp_path / "nope.yaml"), "--workspace", str(tmp_path / "ws"), cwd=tmp_path)
    assert proc.returncode == 2 and "file not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_bad_set_override(tmp_path):
    proc = _cli("bench", "validate", str(REPO / "suites" / "smoke.yaml"), "--set", "sampling.num_inference_steps=-1")
    assert proc.returncode == 2 and "sampling.num_inference_steps: must be an int >= 1, got -1" in proc.stderr
    proc = _cli("bench", "validate", str(REPO / "suites" / "smoke.yaml"), "--set", "crfm.rectified_step=40")
    assert proc.returncode == 2
    assert "variants[2].crfm.rectified_step: 40 > sampling.num_inference_steps 12" in proc.stderr


def test_validate_ok_creates_nothing(tmp_path):
    ws = tmp_path / "ws"
    for name in ("smoke", "loveda", "tests"):
        proc = _cli("bench", "validate", str(REPO / "suites" / f"{name}.yaml"), "--workspace", str(ws), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"ok {name} v1:")
        # valid anywhere; what would stop a run on this machine is listed, not an error
        assert ("not runnable on this machine yet" in proc.stdout) == (name == "loveda"), proc.stdout
        if name == "loveda":  # no LoveDA, no SD3.5 here (_cli unsets their variables)
            assert "dataset.root: not set" in proc.stdout and "generator.sd3_dir: not set" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_loveda_run_without_data_names_each_missing_path(tmp_path):
    ws = tmp_path / "ws"
    proc = _cli("bench", "run", str(REPO / "suites" / "loveda.yaml"), "--workspace", str(ws), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    from bench.schema.checks import gpu_problem

    assert len(lines) == 2 + (gpu_problem("cuda", 4) is not None)  # the suite asks for 4 GPUs: named where absent
    assert "dataset.root: not set" in lines[0] and "TODSYNTH_LOVEDA_ROOT" in lines[0]
    assert "generator.sd3_dir: not set" in lines[1] and "TODSYNTH_SD3_DIR" in lines[1]
    assert not ws.exists()
    env = {"TODSYNTH_LOVEDA_ROOT": str(tmp_path / "L"), "TODSYNTH_SD3_DIR": str(tmp_path / "S")}
    proc = _cli("bench", "run", str(REPO / "suites" / "loveda.yaml"), "--workspace", str(ws), cwd=tmp_path, env=env)
    assert proc.returncode == 2 and str(tmp_path / "L") in proc.stderr and str(tmp_path / "S") in proc.stderr
    assert not ws.exists()


def test_run_unknown_force_stage(tmp_path):
    ws = tmp_path / "ws"
    proc = _cli("bench", "run", str(REPO / "suites" / "tests.yaml"), "-w", str(ws), "--force", "genrator", cwd=tmp_path)
    assert proc.returncode == 2 and "--force genrator: no such stage" in proc.stderr
    assert not ws.exists()


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"], ["tune", "--trials", "1"]])
def test_a_workspace_that_cannot_be_one_exits_2_naming_it(tmp_path, command):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    suite = str(REPO / "suites" / "smoke.yaml")
    for ws in (taken, taken / "sub" / "ws"):  # the file itself, or a file on the path
        proc = _cli("bench", command[0], suite, "--workspace", str(ws), *command[1:], cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"{suite}: workspace: {taken} is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr
    assert taken.read_text() == "not a folder"


def test_ls_empty_and_with_runs(tmp_path):
    proc = _cli("bench", "ls", "--workspace", str(tmp_path / "none"))
    assert proc.returncode == 0 and "no suite runs" in proc.stdout
    suite_dir = tmp_path / "ws" / "demo"
    suite_dir.mkdir(parents=True)
    shutil.copy(REPO / "suites" / "smoke.yaml", tmp_path / "ws" / "demo.yaml")  # a stray file is ignored
    (suite_dir / "runs.jsonl").write_text(
        '{"suite": "demo", "config_hash": "abcdef123456789", "pid": 1, "started": "2026-01-01T00:00:00+00:00", '
        '"event": "start"}\n'
        '{"suite": "demo", "config_hash": "abcdef123456789", "pid": 1, "started": "2026-01-01T00:00:00+00:00", '
        '"event": "end", "status": "FINISHED"}\n'
    )
    proc = _cli("bench", "ls", "--workspace", str(tmp_path / "ws"), env={"COLUMNS": "200"})
    assert proc.returncode == 0
    row = next(line for line in proc.stdout.splitlines() if "demo" in line)
    assert "FINISHED" in row and "abcdef123456" in row


@pytest.mark.parametrize("args", [
    ["data", "procedural", "{F}/x"],
    ["gen", "train", "--data", "{D}", "--out", "{F}"],
    ["gen", "sample", "--generator", "{D}", "--data", "{D}", "--out", "{F}/out"],
    ["seg", "train", "--out", "{F}"],
    ["bench", "check-conditioning", "{F}"],
    ["bench", "report", str(REPO / "suites" / "smoke.yaml"), "--out", "{F}/report"],
    ["prompts", "vectorize", "{D}/index.jsonl", "--encoder", "tiny", "--cache", "{F}"],
    ["bench", "perf", "--json", "{F}/perf.json"],  # output files: their folder
    ["data", "index", "{D}", "--out", "{F}/index.jsonl"],
    ["gen", "train", "--data", "{D}", "--out", "{D}/g", "--prompt-cache", "{F}"],  # crashed after the VAE trained
    ["gen", "sample", "--generator", "{D}", "--data", "{D}", "--out", "{D}/s", "--prompt-cache", "{F}"],
])
def test_an_output_folder_that_cannot_be_one_is_a_usage_error(tmp_path, args):
    from typer.testing import CliRunner

    from cli import app

    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    argv = [a.format(F=taken, D=tmp_path) for a in args]
    res = CliRunner().invoke(app, argv, env={"COLUMNS": "250"})
    assert res.exit_code == 2, res.output
    assert f"{taken} is a file, not a folder" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # a usage error, not a crash
    assert taken.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("command", [["bench", "run", "{S}"], ["bench", "run", "{S}", "--dry-run"],
                                     ["bench", "tune", "{S}", "--trials", "1"], ["bench", "report", "{S}"],
                                     ["ui", "--port", "1"]])
def test_a_damaged_store_exits_2_naming_it(tmp_path, command):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "mlflow.db").write_bytes(b"not a database, e.g. a half-copied file")
    argv = [a.format(S=REPO / "suites" / "smoke.yaml") for a in command]
    proc = _cli(*argv, "--workspace", str(ws), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"MLflow store {ws / 'mlflow.db'} is not an SQLite database" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in ws.iterdir()) == ["mlflow.db"]  # nothing started, the file left as it was
    assert (ws / "mlflow.db").read_bytes().startswith(b"not a database")


def test_damaged_store_passes_a_new_empty_or_sqlite_file_and_servers(tmp_path):
    import sqlite3

    from bench.tracking import damaged_store

    db = tmp_path / "mlflow.db"
    assert damaged_store(f"sqlite:///{db}") is None  # missing: a run creates it
    db.write_bytes(b"")
    assert damaged_store(f"sqlite:///{db}") is None  # empty: SQLite opens it as a new database
    db.unlink()
    sqlite3.connect(db).execute("create table t (x)").connection.close()
    assert damaged_store(f"sqlite:///{db}") is None
    assert damaged_store("http://127.0.0.1:5000") is None
    (tmp_path / "dir.db").mkdir()
    assert damaged_store(f"sqlite:///{tmp_path / 'dir.db'}") == f"MLflow store {tmp_path / 'dir.db'} is not a file"


@pytest.mark.parametrize(("args", "option"), [
    (["bench", "check-conditioning", "{T}/cc", "--n-train", "0"], "--n-train"),
    (["bench", "check-conditioning", "{T}/cc", "--steps", "0"], "--steps"),
    (["bench", "check-conditioning", "{T}/cc", "--evaluator-iters", "0"], "--evaluator-iters"),
    (["bench", "check-conditioning", "{T}/cc", "--evaluator-lr", "0"], "--evaluator-lr"),
    (["bench", "check-conditioning", "{T}/cc", "--threads", "0"], "--threads"),
    (["seg", "train", "--data", "{T}", "--out", "{T}/seg", "--lr", "-1"], "--lr"),
    # nan and inf, negative seeds: before, an infinite rate trained NaN weights and exited 0, the rest crashed
    (["seg", "train", "--data", "{T}", "--out", "{T}/seg", "--lr", "inf"], "--lr"),
    (["seg", "train", "--data", "{T}", "--out", "{T}/seg", "--seed", "-1"], "--seed"),
    (["gen", "train", "--data", "{T}", "--out", "{T}/gen", "--lr", "inf"], "--lr"),
    (["gen", "sample", "--generator", "{T}", "--data", "{T}", "--out", "{T}/s", "--guidance", "nan"], "--guidance"),
    (["gen", "sample", "--generator", "{T}", "--data", "{T}", "--out", "{T}/s", "--max-step-size", "inf"],
     "--max-step-size"),
    (["data", "procedural", "{T}/p", "--seed", "-1"], "--seed"),
])
def test_numbers_out_of_range_are_usage_errors_before_any_work(tmp_path, args, option):
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, [a.format(T=tmp_path) for a in args], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and f"Invalid value for '{option}'" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []  # nothing was written: these had crashed after the data was made


@pytest.mark.parametrize("args", [["bench", "perf", "--json", "{T}"], ["data", "index", "{T}", "--out", "{T}"]])
def test_a_folder_given_as_an_output_file_is_a_usage_error(tmp_path, args):
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, [a.format(T=tmp_path) for a in args], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and f"{tmp_path} is a folder; give a file path" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_sampling_into_the_data_root_is_refused(tmp_path):
    """gen sample --out ROOT --data ROOT wrote the synthetic images over the real ones and exited 0."""
    from typer.testing import CliRunner

    from cli import app
    from todsynth.data.procedural import generate_dataset

    root = generate_dataset(tmp_path / "d", n_train=2, n_val=0, size=32, seed=0)
    before = {p: p.read_bytes() for p in root.rglob("*.png")}
    res = CliRunner().invoke(app, ["gen", "sample", "--generator", str(tmp_path), "--data", str(root), "--out",
                                   str(tmp_path / "d" / ".." / "d")], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and "is the --data root" in res.output, res.output
    assert {p: p.read_bytes() for p in root.rglob("*.png")} == before


def test_errors_keep_their_brackets(tmp_path):
    """Rich read ``[...]`` in a message as markup and dropped it: a stage key or a path lost its brackets."""
    from typer.testing import CliRunner

    from cli import app

    odd = tmp_path / "x[abc]"
    args = ["data", "procedural", str(odd), "--n-train", "1", "--n-val", "0", "--size", "16"]
    assert CliRunner().invoke(app, args).exit_code == 0
    res = CliRunner().invoke(app, args, env={"COLUMNS": "250"})  # fail(): Train exists
    assert res.exit_code == 2 and f"{odd / 'Train'} exists" in res.output, res.output
    proc = _cli("data", "validate", str(tmp_path / "y[abc]"))  # main(): a TodsynthError
    assert proc.returncode == 2 and f"{tmp_path / 'y[abc]'}" in proc.stderr, proc.stderr


def test_default_output_paths_are_checked_as_given_ones(tmp_path):
    """`data index ROOT` (ROOT/index.jsonl) and `bench report SUITE` (reports/<suite>) crashed with a traceback when
    their default output could not be written; a given --out was checked."""
    from typer.testing import CliRunner

    from cli import app
    from todsynth.data.procedural import generate_dataset

    root = generate_dataset(tmp_path / "d", n_train=2, n_val=0, size=16, seed=0)
    (root / "index.jsonl").mkdir()
    res = CliRunner().invoke(app, ["data", "index", str(root)], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and f"{root / 'index.jsonl'} is a folder" in res.output, res.output
    (tmp_path / "reports").write_text("a file")  # write_report checks where it writes (a ReportError: exit 2)
    proc = _cli("bench", "report", str(REPO / "suites" / "smoke.yaml"), "-w", str(tmp_path / "ws"), cwd=tmp_path)
    assert proc.returncode == 2 and "reports is a file, not a folder" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("results", "log_line"), [
    (b"\xff\xfe{", '{"event": "start", "pid": "abc", "started": "x"}'),
    (b"[1, 2]", '{"event": "start", "pid": 1e30, "started": "x"}'),
    (b'{"variants": 5}', '{"event": "start", "pid": 100000000000000000000000, "started": "x"}'),
])
def test_ls_reads_damaged_workspace_files(tmp_path, results, log_line):
    """`bench ls` crashed on a results.json that is not UTF-8, not an object or has no variant list, and on a pid that
    is not a pid; it now lists the suite with its results marked unreadable and the run killed."""
    from bench.workspace import list_suites

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "results.json").write_bytes(results)
    (tmp_path / "demo" / "runs.jsonl").write_text(log_line + "\n")
    (row,) = list_suites(tmp_path)
    assert row["results"].endswith("results.json (unreadable)") and row["last_status"] == "KILLED" and row["runs"] == 1


@pytest.mark.parametrize("command", [["bench", "run", "{S}"], ["bench", "tune", "{S}", "--trials", "1"],
                                     ["bench", "report", "{S}"]])
def test_a_tracking_server_that_does_not_answer_exits_2_naming_it(tmp_path, command):
    """Each command waited minutes on MLflow's HTTP retries (bench report and tune included) before failing."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    ws = tmp_path / "ws"
    argv = [a.format(S=REPO / "suites" / "smoke.yaml") for a in command]
    t0 = time.monotonic()
    proc = _cli(*argv, "--workspace", str(ws), "--set", f"tracking.uri={uri}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"the MLflow tracking server {uri} does not answer" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60  # the CLI's start-up included; MLflow's retries take minutes
    assert not (ws / "cache").exists()  # no stage ran
