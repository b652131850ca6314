"""Property test: any malformed suite makes `bench validate` and `bench run` exit 2 with one-line reasons.

A valid suite (suites/tests.yaml) is mutated by hypothesis: wrong types, unknown keys, out-of-range numbers,
missing local paths, YAML syntax errors, empty and binary files. Each case runs both commands in-process
through ``cli.main()`` (the console-script entry point, so domain errors become exit 2 exactly as in a
shell). Every stderr line must be an ``error:`` line naming the suite file, with no traceback, and nothing
may appear in the workspace or the working directory. Missing local paths are only checked by ``bench run``
(``bench validate`` checks the schema, by design), so for those ``validate`` must pass and ``run`` fail.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = yaml.safe_load((REPO / "suites" / "tests.yaml").read_text())
CASES_RUN: dict[str, int] = {}


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    """Key paths of every scalar leaf of the base suite (list items by index)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


def _dicts(node: Any, path: tuple = ()) -> list[tuple]:
    """Key paths of every mapping of the base suite (the root included)."""
    out = [path] if isinstance(node, dict) else []
    if isinstance(node, dict):
        out += [p for k, v in node.items() for p in _dicts(v, (*path, k))]
    elif isinstance(node, list):
        out += [p for i, v in enumerate(node) for p in _dicts(v, (*path, i))]
    return out


def _set(data: dict, path: tuple, value: Any) -> dict:
    data = copy.deepcopy(data)
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return data


def _get(data: Any, path: tuple) -> Any:
    for k in path:
        data = data[k]
    return data


LEAVES = [p for p in _leaves(BASE) if "overrides" not in p]  # preset overrides are free-form (checked by preset)
DICTS = _dicts(BASE)
# (key path, value) pairs outside each field's declared range
OUT_OF_RANGE = [
    (("sampling", "num_inference_steps"), 0), (("sampling", "num_inference_steps"), -3),
    (("sampling", "batch_size"), 0), (("generator", "train", "steps"), -1), (("generator", "train", "batch_size"), 0),
    (("generator", "train", "lr"), -1.0e-3), (("generator", "vae_train", "steps"), 0), (("judge", "iters"), 0),
    (("judge", "batch_size"), -4), (("evaluator", "lr"), -0.01), (("downstream", "iters"), 0),
    (("downstream", "ratio"), -0.5), (("dataset", "procedural", "size"), 8), (("dataset", "procedural", "size"), 10**6),
    (("dataset", "procedural", "n_train"), 0), (("dataset", "limit"), 0), (("crfm", "rectified_step"), 99),
    (("crfm", "rectified_step"), -1), (("crfm", "max_step_size"), -0.1), (("resources", "gpus"), 0),
    (("seeds",), []), (("variants",), []), (("name",), "bad name/with slash"),
]
# Mutations that name local files which do not exist: only `bench run` checks these.
MISSING_PATHS = [
    {"dataset": {"kind": "loveda", "root": "/nonexistent/loveda"}},
    {"judge": {"model": "fcn-tiny", "checkpoint": "/nonexistent/judge.pth"}},
    {"evaluator": {"model": "fcn-tiny", "checkpoint": "/nonexistent/evaluator.pth"}},
    {"fid": {"extractor": "inception", "inception_weights": "/nonexistent/inception.pt"}},
    {"generator": {"preset": "sd3.5-medium", "sd3_dir": "/nonexistent/sd3"}},
]
# (None means "the preset default" for optional fields, and bools are ints to pydantic: neither is a wrong type)
WRONG_TYPES = [{"bogus": [1]}, [1, 2], "not-a-number", 3.5]
SYNTAX_BREAKS = ["key: [unclosed", "{a: 1", "a: b: c", "\t- tab", "- list item", "@reserved", "'unterminated",
                 "]: x", "? [a\n"]

identifiers = st.from_regex(r"\A[a-z][a-z_]{2,12}\Z")


@st.composite
def malformed(draw) -> tuple[str, bytes, bool]:
    """(kind, file content, rejected by validate too)."""
    kind = draw(st.sampled_from(["type", "unknown_key", "range", "missing_path", "syntax", "empty", "binary"]))
    if kind == "type":
        path = draw(st.sampled_from(LEAVES))
        old = _get(BASE, path)
        value = draw(st.sampled_from([v for v in WRONG_TYPES if type(v) is not type(old)]))
        assume(not (isinstance(old, str) and isinstance(value, float)))
        assume(not (path == ("version",) and isinstance(value, str)))  # a version may be a string ("2024-06")
        data = _set(BASE, path, value)
    elif kind == "unknown_key":
        path = draw(st.sampled_from(DICTS))
        key = draw(identifiers)
        assume(key not in _get(BASE, path))
        data = _set(BASE, (*path, key), draw(st.integers(0, 5) | identifiers)) if path else {**BASE, key: 1}
    elif kind == "range":
        path, value = draw(st.sampled_from(OUT_OF_RANGE))
        data = _set(BASE, path, value)
    elif kind == "missing_path":
        patch = draw(st.sampled_from(MISSING_PATHS))
        data = copy.deepcopy(BASE)
        for k, v in patch.items():
            data[k] = {**{kk: vv for kk, vv in data.get(k, {}).items() if k != "generator" or kk == "train"}, **v}
        return kind, yaml.safe_dump(data).encode(), False
    elif kind == "syntax":
        lines = yaml.safe_dump(BASE, sort_keys=False).splitlines()
        at = draw(st.integers(0, len(lines)))
        text = "\n".join([*lines[:at], draw(st.sampled_from(SYNTAX_BREAKS)), *lines[at:]]) + "\n"
        try:
            yaml.safe_load(text)
            parsed = True
        except yaml.YAMLError:
            parsed = False
        assume(not parsed)
        return kind, text.encode(), True
    elif kind == "empty":
        return kind, draw(st.sampled_from([b"", b"\n", b"   \n\n", b"# only a comment\n", b"---\n", b"null\n"])), True
    else:  # binary: random bytes with a NUL or invalid UTF-8, or a PNG header
        raw = draw(st.binary(min_size=1, max_size=200))
        content = draw(st.sampled_from([b"\x00" + raw, b"\xff\xfe\x00" + raw, b"\x89PNG\r\n\x1a\n" + raw, raw + b"\x80"]))
        return kind, content, True
    return kind, yaml.safe_dump(data, sort_keys=False).encode(), True


def _main(args: list[str]) -> tuple[int, str, str]:
    """Run the console-script entry point in-process; returns (exit code, stdout, stderr)."""
    import cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["todsynth", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def no_real_runs(monkeypatch):
    """A mutation that slipped through validation must not start a real pipeline: fail instead."""
    import bench.engine

    def refuse(*_a, **_k):
        raise AssertionError("malformed suite reached run_suite")

    monkeypatch.setattr(bench.engine, "run_suite", refuse)
    monkeypatch.setenv("COLUMNS", "400")
    for env in ("TODSYNTH_LOVEDA_ROOT", "TODSYNTH_SD3_DIR", "TODSYNTH_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)


# `make test` draws the same 150 cases every run (CI must not depend on the draw); to explore further, set
# TODSYNTH_FUZZ_EXAMPLES=N for N random cases (a failure prints the case and hypothesis reproduces it).
FUZZ_EXAMPLES = os.environ.get("TODSYNTH_FUZZ_EXAMPLES")


@settings(max_examples=int(FUZZ_EXAMPLES or 150), derandomize=FUZZ_EXAMPLES is None, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(case=malformed())
def test_malformed_suite_exits_2_one_line_nothing_created(no_real_runs, case):
    kind, content, validate_rejects = case
    CASES_RUN[kind] = CASES_RUN.get(kind, 0) + 1
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        suite = tmp_path / "bad.yaml"
        suite.write_bytes(content)
        ws = tmp_path / "ws"
        os.chdir(tmp_path)
        try:
            for command in ("validate", "run"):
                code, out, err = _main(["bench", command, str(suite), "--workspace", str(ws)])
                if command == "validate" and not validate_rejects:
                    assert code == 0, (kind, content[:300], out, err)
                    continue
                assert code == 2, (command, kind, content[:300], code, out, err)
                lines = err.strip().splitlines()
                assert lines, (command, kind, "no reason printed")
                for line in lines:
                    assert line.startswith("error: ") and str(suite) in line, (command, kind, lines)
                assert "Traceback" not in out + err
                assert not ws.exists(), (command, kind, "workspace created")
                assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"], (command, kind)
        finally:
            os.chdir(cwd)


def test_zz_report_malformed_case_count(capsys):
    """Print how many malformed suites the property test ran, per kind (run after it, same module), on the
    terminal even under pytest's output capture, so `make test` shows the count."""
    total = sum(CASES_RUN.values())
    with capsys.disabled():
        print(f"\nmalformed suites tried: {total} {dict(sorted(CASES_RUN.items()))}")
    if CASES_RUN:  # only meaningful when the property test ran in this session
        assert total >= 100 and len(CASES_RUN) == 7, CASES_RUN
