"""Engine: stage graph, cache reuse, --force, hashing, kill-resume, results.json (fake stages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.cache import CacheCorruptError, StageCache
from bench.engine import graph_hashes, run_suite
from bench.graph import build_graph
from bench.suites import config_hash, validate_data
from todsynth.errors import StageError

VERSIONS: dict[str, int] = {}


def _suite(data, ws, **changes):
    data = json.loads(json.dumps(data))
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    data["workspace"] = str(ws)
    return validate_data(data, "test")


def _run(suite, fns, **kw):
    return run_suite(suite, stage_fns=fns, stage_versions=VERSIONS, track=False, progress=False, **kw)


def test_graph_nodes_and_deps(tiny_suite_data, tmp_path):
    nodes = build_graph(_suite(tiny_suite_data, tmp_path / "ws"))
    keys = [n.key for n in nodes]
    assert keys[:7] == ["data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features"]
    assert "synthesize[real-only,seed=0]" not in keys  # baseline: downstream only
    by_key = {n.key: n for n in nodes}
    assert "judge" in by_key["synthesize[crfm,seed=0]"].deps.values()
    assert "judge" not in by_key["synthesize[plain,seed=0]"].deps.values()  # rectified_step 0 needs no judge
    assert by_key["synthesize[plain,seed=0]"].spec.crfm is None
    assert set(by_key["downstream[real-only,seed=0]"].deps) == {"data"}
    # mask fidelity is scored by the evaluator, never the judge that guided CRFM (data: the evaluator's ceiling,
    # its mIoU on the real images of the synthesized masks)
    assert set(by_key["evaluate[crfm,seed=0]"].deps) == {"synthesize", "evaluator", "real_features", "data"}
    assert by_key["downstream[crfm,seed=0]"].deps["synthesize"] == "synthesize[crfm,seed=0]"
    for i, n in enumerate(nodes):  # topological order
        assert all(keys.index(d) < i for d in n.deps.values())


def test_a_new_setting_left_at_none_keeps_every_hash():
    from bench.cache import canonical, stage_hash

    old = {"train": {"steps": 2000, "hflip": True}, "crfm": {"clamp": 1.0}}
    new = {"train": {"steps": 2000, "hflip": True, "rot90": None}, "crfm": {"clamp": 1.0}, "added": None}
    assert stage_hash("generator", new, {"data": "h"}, "v") == stage_hash("generator", old, {"data": "h"}, "v")
    unclamped = {**old, "crfm": {"clamp": None}}  # None as a value still differs from any other value
    assert stage_hash("generator", unclamped, {}, "v") != stage_hash("generator", old, {}, "v")
    assert canonical({"a": [None, {"b": None}]}) == '{"a":[null,{}]}'  # list items stay


def test_second_run_recomputes_nothing(tiny_suite_data, tmp_path, fake_stages):
    fns, calls = fake_stages
    suite = _suite(tiny_suite_data, tmp_path / "ws")
    first = _run(suite, fns)
    n = len(build_graph(suite))
    assert len(calls) == n == len(first.computed) and not first.cached
    second = _run(suite, fns)
    assert len(calls) == n  # nothing executed again
    assert second.computed == [] and len(second.cached) == n
    assert second.results["variants"] == first.results["variants"]


def test_results_json_schema(tiny_suite_data, tmp_path, fake_stages):
    fns, _ = fake_stages
    suite = _suite(tiny_suite_data, tmp_path / "ws")
    out = _run(suite, fns)
    path = tmp_path / "ws" / "t" / "results.json"
    assert out.results_file == path
    res = json.loads(path.read_text())
    assert res["suite"] == "t" and res["config_hash"] == config_hash(suite)
    assert set(res["mlflow"]) == {"tracking_uri", "experiment", "parent_run_id"}
    assert res["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    assert {"git_commit", "date", "packages"} <= set(res["provenance"])
    by_name = {v["name"]: v for v in res["variants"]}
    assert [v["name"] for v in res["variants"]] == ["real-only", "plain", "crfm"]
    assert by_name["real-only"]["kind"] == "baseline"
    for v in res["variants"]:
        assert {"downstream_miou", "downstream_oa", "downstream_macc", "per_class_iou"} <= set(v["metrics"])
        assert isinstance(v["metrics"]["per_class_iou"], dict)
    for name in ("plain", "crfm"):
        m = by_name[name]["metrics"]
        assert {"fid", "kid", "fid_extractor", "fid_comparable", "mask_miou", "seconds_per_image"} <= set(m)
        assert by_name[name]["params"]["crfm"]["rectified_step"] == (0 if name == "plain" else 2)
    assert "fid" not in by_name["real-only"]["metrics"]
    # fake metrics follow the variant's own settings: crfm (rs=2) differs from plain
    assert by_name["crfm"]["metrics"]["fid"] == pytest.approx(94.0)
    assert by_name["plain"]["metrics"]["fid"] == pytest.approx(100.0)
    assert by_name["real-only"]["metrics"]["downstream_miou"] == pytest.approx(0.5)


def test_several_seeds_mean_and_std(tiny_suite_data, tmp_path, fake_stages):
    fns, _ = fake_stages
    data = dict(tiny_suite_data, seeds=[0, 2])
    res = _run(_suite(data, tmp_path / "ws"), fns).results
    base = res["variants"][0]
    assert [p["seed"] for p in base["per_seed"]] == [0, 2]
    assert base["metrics"]["downstream_miou"] == pytest.approx(0.51)  # mean of 0.50 and 0.52
    assert base["metrics_std"]["downstream_miou"] == pytest.approx(0.01)
    assert base["metrics"]["per_class_iou"]["building"] == pytest.approx(0.61)
    assert res["variants"][2]["metrics"]["fid_comparable"] is False


def test_force_recomputes_stage_and_dependents(tiny_suite_data, tmp_path, fake_stages):
    fns, calls = fake_stages
    suite = _suite(tiny_suite_data, tmp_path / "ws")
    _run(suite, fns)
    calls.clear()
    out = _run(suite, fns, force=["judge"])
    # judge -> synthesize[crfm] (uses the judge) -> evaluate[crfm], downstream[crfm]; plain/real-only untouched
    assert sorted(out.computed) == sorted(["judge", "synthesize[crfm,seed=0]", "evaluate[crfm,seed=0]",
                                           "downstream[crfm,seed=0]"])
    assert sorted(calls) == ["downstream", "evaluate", "judge", "synthesize"]
    # the forced output replaced the old dir: no trash or tmp left
    judge_dir = tmp_path / "ws" / "cache" / "judge"
    assert [p.name for p in judge_dir.iterdir() if not p.name.endswith(".lock")] == [
        graph_hashes(build_graph(suite), VERSIONS)["judge"]]


def test_force_clears_checkpoints_only_under_the_stage_lock(tiny_suite_data, tmp_path, fake_stages, monkeypatch):
    """--force drops a killed run's checkpoints (``.work-<hash>``) inside the locked computation: before, it deleted
    them before waiting for the lock, under a run on another process that was still writing them."""
    fns, _ = fake_stages
    suite = _suite(tiny_suite_data, tmp_path / "ws")
    _run(suite, fns)
    work = tmp_path / "ws" / "cache" / "judge" / f".work-{graph_hashes(build_graph(suite), VERSIONS)['judge']}"
    (work / "checkpoint-10").mkdir(parents=True)
    seen = []
    compute = StageCache.compute

    def spy(self, stage, h, fn, meta, **kw):
        if stage == "judge":
            seen.append(work.exists())  # what a lock holder elsewhere would still see
        return compute(self, stage, h, fn, meta, **kw)

    monkeypatch.setattr(StageCache, "compute", spy)
    _run(suite, fns, force=["judge"])
    assert seen == [True] and not work.exists()


def test_force_unknown_stage_is_config_error(tiny_suite_data, tmp_path, fake_stages):
    from bench.suites import SuiteError

    fns, calls = fake_stages
    with pytest.raises(SuiteError, match="--force nope: no such stage"):
        _run(_suite(tiny_suite_data, tmp_path / "ws"), fns, force=["nope"])
    assert calls == [] and not (tmp_path / "ws").exists()


def test_hash_changes_only_with_relevant_values(tiny_suite_data, tmp_path):
    def hashes(**changes):
        return graph_hashes(build_graph(_suite(tiny_suite_data, tmp_path / "ws", **changes)), VERSIONS)

    base = hashes()
    # workspace / tracking do not change any stage hash, nor the config hash
    assert hashes(tracking__experiment="other") == base
    assert graph_hashes(build_graph(_suite(tiny_suite_data, tmp_path / "elsewhere")), VERSIONS) == base
    assert config_hash(_suite(tiny_suite_data, tmp_path / "a")) == config_hash(_suite(tiny_suite_data, tmp_path / "b"))
    # CRFM step size: only the CRFM variant's synthesis and what follows it
    h = hashes(crfm__max_step_size=0.2)
    changed = {k for k in base if base[k] != h[k]}
    assert changed == {"synthesize[crfm,seed=0]", "evaluate[crfm,seed=0]", "downstream[crfm,seed=0]"}
    # generator training steps: generator and every synthesis-dependent stage, not judge/evaluator/baseline
    h = hashes(generator__train={"steps": 7})
    changed = {k for k in base if base[k] != h[k]}
    assert "generator" in changed and "judge" not in changed and "downstream[real-only,seed=0]" not in changed
    assert {"synthesize[plain,seed=0]", "downstream[plain,seed=0]"} <= changed
    # the data seed changes everything
    h = hashes(dataset__procedural={"n_train": 8, "n_val": 4, "size": 32, "seed": 5})
    assert all(base[k] != h[k] for k in base)
    # suite version goes into the config hash
    assert config_hash(_suite(tiny_suite_data, tmp_path / "ws", version=2)) != config_hash(
        _suite(tiny_suite_data, tmp_path / "ws"))
    # a stage's code version invalidates that stage and its dependents only
    h = graph_hashes(build_graph(_suite(tiny_suite_data, tmp_path / "ws")), {"evaluate": 2})
    assert {k for k in base if base[k] != h[k]} == {"evaluate[plain,seed=0]", "evaluate[crfm,seed=0]"}


def test_crash_then_resume_gives_equal_results(tiny_suite_data, tmp_path, fake_stages):
    fns, calls = fake_stages
    clean = _run(_suite(tiny_suite_data, tmp_path / "clean"), fns).results
    calls.clear()

    good = fns["synthesize"]
    state = {"crashed": False}

    def crashing(spec, inputs, out_dir):
        if spec.crfm is not None and not state["crashed"]:
            state["crashed"] = True
            (out_dir / "half.png").write_bytes(b"partial")
            raise RuntimeError("simulated crash")
        return good(spec, inputs, out_dir)

    suite = _suite(tiny_suite_data, tmp_path / "ws")
    with pytest.raises(StageError, match=r"stage synthesize\[crfm,seed=0\] failed: RuntimeError: simulated crash"):
        _run(suite, {**fns, "synthesize": crashing})
    cache = tmp_path / "ws" / "cache"
    assert not list(cache.glob("*/.tmp-*")), "a failed stage must leave no temp dir"
    assert (tmp_path / "ws" / "t" / "logs" / "synthesize[crfm,seed=0].traceback.txt").is_file()
    assert not (tmp_path / "ws" / "t" / "results.json").exists()
    done_before = len(calls)
    calls.clear()
    out = _run(suite, {**fns, "synthesize": crashing})
    assert "data" in out.cached and "generator" in out.cached  # finished stages were kept
    assert "synthesize[crfm,seed=0]" in out.computed
    # every stage completed exactly once over the two runs (the crash never reached the counting fake)
    assert len(calls) + done_before == len(build_graph(suite))
    assert out.results["variants"] == clean["variants"]


def test_stale_tmp_dirs_removed_and_live_ones_kept(tiny_suite_data, tmp_path, fake_stages):
    fns, _ = fake_stages
    suite = _suite(tiny_suite_data, tmp_path / "ws")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    from bench.cache import _host

    gen = tmp_path / "ws" / "cache" / "generator"
    stale = gen / f".tmp-abc123-{_host()}-{dead_pid}"
    stale.mkdir(parents=True)
    (stale / "half.safetensors").write_bytes(b"x")
    old_form = gen / f".tmp-abc124-{dead_pid}"  # written before temp dirs named their host
    old_form.mkdir()
    live = gen / f".tmp-def456-{_host()}-{os.getppid()}"
    live.mkdir()
    # another machine sharing the workspace: its pid says nothing here, so its dir may be a live computation
    elsewhere = gen / f".tmp-abc125-{_host()}x-{dead_pid}"
    elsewhere.mkdir()
    _run(suite, fns)
    assert not stale.exists() and not old_form.exists()
    assert live.exists() and elsewhere.exists()


def test_corrupt_cache_fails_loudly(tiny_suite_data, tmp_path, fake_stages):
    fns, _ = fake_stages
    suite = _suite(tiny_suite_data, tmp_path / "ws")
    _run(suite, fns)
    h = graph_hashes(build_graph(suite), VERSIONS)["generator"]
    gen_dir = tmp_path / "ws" / "cache" / "generator" / h
    (gen_dir / "generator.json").unlink()
    with pytest.raises(CacheCorruptError, match=str(gen_dir)):
        _run(suite, fns)
    _run(suite, fns, force=["generator"])  # the documented fix works
    assert (gen_dir / "generator.json").is_file()
    (gen_dir / "done.json").write_text("[1]")  # JSON, but not a marker: was an AttributeError naming nothing
    with pytest.raises(CacheCorruptError, match=f"cache marker {gen_dir / 'done.json'} is not a stage marker"):
        _run(suite, fns)


def test_dry_run_plan_names_a_damaged_entry(tiny_suite_data, tmp_path, fake_stages):
    from bench.engine import plan
    from bench.stages import STAGE_VERSIONS

    fns, _ = fake_stages
    suite = _suite(tiny_suite_data, tmp_path / "ws")
    run_suite(suite, stage_fns=fns, stage_versions=STAGE_VERSIONS, track=False, progress=False)
    assert {r["status"] for r in plan(suite)} == {"cached"}
    gen = next(r for r in plan(suite) if r["key"] == "generator")
    (tmp_path / "ws" / "cache" / "generator" / gen["hash"] / "generator.json").unlink()  # a declared file gone
    status = {r["key"]: r["status"] for r in plan(suite)}
    assert status["generator"] == "damaged"  # not "cached": run_suite would stop there
    assert {s for k, s in status.items() if k != "generator"} == {"cached"}
    assert {r["key"]: r["status"] for r in plan(suite, force=["generator"])}["generator"] == "forced"

    # the dry run's words: the entry's status and the narrowest mend (its node key, quoted for the shell)
    import yaml
    from typer.testing import CliRunner

    from cli import app

    key = "downstream[plain,seed=0]"
    down = next(r for r in plan(suite) if r["key"] == key)
    (tmp_path / "ws" / "cache" / "downstream" / down["hash"] / "done.json").unlink()  # files without a marker
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(tiny_suite_data))
    res = CliRunner().invoke(app, ["bench", "run", str(tmp_path / "suite.yaml"), "--dry-run", "-w",
                                   str(tmp_path / "ws")], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert len([ln for ln in res.output.splitlines() if " damaged " in ln]) == 2
    assert f"or rerun with --force generator --force '{key}'" in res.output


def test_cache_compute_is_atomic(tmp_path):
    cache = StageCache(tmp_path)
    seen = {}

    def fn(out):
        seen["tmp"] = out
        assert not cache.dir_for("s", "ab12").exists()  # nothing visible before the rename
        (out / "x.txt").write_text("1")
        return {"x": out / "x.txt", "metrics": {"a": 1.0}}

    got, computed = cache.compute("s", "ab12", fn, {"key": "s"})
    assert computed and got.dir == tmp_path / "cache" / "s" / "ab12"
    assert not seen["tmp"].exists() and seen["tmp"].name.startswith(".tmp-ab12-")
    assert got.artifacts["x"] == "x.txt" and got.path("x").read_text() == "1"
    assert got.marker["files"] == ["x.txt"]
    again, computed = cache.compute("s", "ab12", lambda out: pytest.fail("recomputed"), {})
    assert not computed and again.marker == got.marker


def test_concurrent_processes_compute_shared_stage_once(tmp_path):
    script = f"""
import sys, time
sys.path.insert(0, {str(os.getcwd())!r})
from pathlib import Path
from bench.cache import StageCache
def fn(out):
    with open({str(tmp_path / 'calls.txt')!r}, 'a') as f:
        f.write('x\\n')
    time.sleep(1.5)
    (out / 'w.bin').write_bytes(b'1')
    return {{}}
c, computed = StageCache(Path({str(tmp_path / 'ws')!r})).compute('gen', 'ff00', fn, {{}})
print('computed' if computed else 'reused')
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["computed", "reused"]
    assert (tmp_path / "calls.txt").read_text().count("x") == 1


def test_launch_commands_for_multi_gpu():
    from pathlib import Path

    from bench.launch import launch_command

    acc = launch_command("accelerate", 4, "generator", Path("/j"), Path("/o"))
    assert acc[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert acc[acc.index("--num_processes") + 1] == "4" and "--multi_gpu" in acc
    assert acc[-8:] == ["-m", "bench.worker", "--stage", "generator", "--job", "/j", "--out", "/o"]
    tr = launch_command("torchrun", 2, "downstream", Path("/j"), Path("/o"))
    assert tr[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert tr[tr.index("--nproc_per_node") + 1] == "2"
    with pytest.raises(ValueError, match="launcher"):
        launch_command("mpirun", 2, "judge", Path("/j"), Path("/o"))


def test_graph_launchers_follow_gpus(tiny_suite_data, tmp_path):
    data = dict(tiny_suite_data, resources={"device": "cuda", "gpus": 4})
    nodes = {n.key: n for n in build_graph(_suite(data, tmp_path / "ws"))}
    assert nodes["generator"].launcher == "accelerate"
    assert nodes["synthesize[crfm,seed=0]"].launcher == "accelerate"
    assert nodes["judge"].launcher == nodes["downstream[plain,seed=0]"].launcher == "torchrun"
    assert nodes["data"].launcher == "inprocess"
    one = {n.key: n for n in build_graph(_suite(tiny_suite_data, tmp_path / "ws"))}
    assert {n.launcher for n in one.values()} == {"inprocess"}


def test_launched_stage_round_trip(tiny_suite_data, tmp_path, monkeypatch):
    """The worker path: job JSON in, the stage runs, artifacts JSON out (run in-process, one rank)."""
    from bench import stages as stages_mod
    from bench.cache import CachedStage
    from bench.launch import read_job, write_job
    from bench.schema import CRFM
    from bench.specs import Runtime, Subset, SynthesizeSpec
    from bench.worker import main
    from todsynth.sample.config import CRFMConfig, SamplerConfig

    def fake(spec, inputs, out_dir):
        (out_dir / "w.txt").write_text(spec.crfm.step_scheme + inputs["data"].marker["stage"])
        return {"w": out_dir / "w.txt", "metrics": {"m": 1.5}}

    monkeypatch.setitem(stages_mod.STAGES, "generator", fake)
    job, out = tmp_path / "job", tmp_path / "out"
    out.mkdir()
    sent = SynthesizeSpec(sampling=SamplerConfig(num_inference_steps=5), crfm=CRFMConfig(rectified_step=2, step_scheme="C",
                          clamp=None), seed=1, limit=None, ratio=1.5, copies=2, subset=Subset(n=4, seed=0, rule="r"),
                          runtime=Runtime(device="cuda", launcher="accelerate", gpus=2, work_dir="/w", progress=True))
    write_job(job, sent, {"data": CachedStage(tmp_path, {"stage": "data"})})
    spec, inputs = read_job(job)
    assert spec == sent and inputs["data"].marker == {"stage": "data"}  # typed specs survive the JSON round trip
    assert spec.hashed()["crfm"] == CRFM.values_of(sent.crfm) and spec.hashed()["subset"] == {"n": 4, "seed": 0, "rule": "r"}
    assert main(["--stage", "generator", "--job", str(job), "--out", str(out)]) == 0
    assert json.loads((job / "artifacts.json").read_text()) == {"w": "w.txt", "metrics": {"m": 1.5}}
    assert (out / "w.txt").read_text() == "Cdata"


def test_launched_rank_gets_its_own_gpu(tiny_suite_data, tmp_path, monkeypatch):
    """Under a launcher, a stage whose runtime says cuda runs on cuda:<LOCAL_RANK> (the worker selects it), so each
    rank of a launched synthesis loads its models onto its own GPU; before, every rank used GPU 0."""
    import torch

    from bench import stages as stages_mod
    from bench.cache import CachedStage
    from bench.launch import write_job
    from bench.specs import DataSpec, Runtime
    from bench.worker import main, rank_device

    assert rank_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert rank_device("cuda", {}) == "cuda" and rank_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"
    seen: list[str] = []
    monkeypatch.setitem(stages_mod.STAGES, "data", lambda spec, inputs, out_dir: seen.append(spec.runtime.device) or {})
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.append(f"set {device}"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    job = tmp_path / "job"
    spec = DataSpec(kind="procedural", domains=["Urban"], runtime=Runtime(device="cuda", launcher="accelerate", gpus=2,
                                                                         work_dir="/w", progress=False))
    write_job(job, spec, {"x": CachedStage(tmp_path, {"stage": "x"})})
    assert main(["--stage", "data", "--job", str(job), "--out", str(tmp_path)]) == 0
    assert seen == ["set cuda:1", "cuda:1"]
    assert not (job / "artifacts.json").exists()  # rank 1 writes nothing


def test_results_file_is_strict_json(tmp_path):
    from bench.results import aggregate, write_results

    mean, std = aggregate([{"fid": float("nan"), "x": 1.0, "c": {"a": 1.0}}, {"fid": float("nan"), "x": 3.0, "c": {"a": 2.0}}])
    assert mean["x"] == 2.0 and std["x"] == 1.0 and mean["c"] == {"a": 1.5} and std["c"] == {"a": 0.5}
    # equal values: their value and a std of exactly 0 (was 1.1e-16 in results.csv); one seed's value: no std (was 0.0)
    same, spread = aggregate([{"e": 0.7192, "only": 0.5}, {"e": 0.7192}, {"e": 0.7192}])
    assert same["e"] == 0.7192 and spread["e"] == 0.0 and same["only"] == 0.5 and "only" not in spread
    path = tmp_path / "r" / "results.json"
    write_results(path, {"variants": [{"metrics": mean}], "inf": float("inf")})

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["variants"][0]["metrics"]["fid"] is None and data["inf"] is None
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
