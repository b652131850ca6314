"""End to end with the real stages: suites/tests.yaml (32 px, a few steps) through the library, then a cached rerun.

The real embedded smoke suite takes minutes: it is marked slow (`make test-slow`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.engine import run_suite
from bench.graph import build_graph
from bench.suites import load_suite

REPO = Path(__file__).resolve().parent.parent


def _check_results(res: dict, variants: list[str]) -> None:
    assert [v["name"] for v in res["variants"]] == variants
    for v in res["variants"]:
        m = v["metrics"]
        for key in ("downstream_miou", "downstream_oa", "downstream_macc"):
            assert 0.0 <= m[key] <= 1.0, (v["name"], key, m[key])
        assert len(m["per_class_iou"]) == 7
        if v["kind"] == "synthetic":
            assert 0.0 <= m["mask_miou"] <= 1.0 and m["seconds_per_image"] > 0
            assert m["fid_extractor"] and m["fid_comparable"] is False
            assert math.isnan(m["fid"]) or m["fid"] >= 0


def test_tests_suite_end_to_end_then_cached(bench_workspace):
    from typer.testing import CliRunner

    from cli import app

    suite = load_suite(REPO / "suites" / "tests.yaml", workspace=bench_workspace)
    n = len(build_graph(suite))
    cli = CliRunner().invoke(app, ["bench", "run", str(REPO / "suites" / "tests.yaml"), "-w", str(bench_workspace),
                                   "--no-progress"], env={"COLUMNS": "200"})
    assert cli.exit_code == 0, cli.output
    assert f"{n} stages computed, 0 reused" in cli.output and "real-only" in cli.output
    # --no-progress leaves out the bars, not the line per stage (a log that stays silent for minutes)
    assert f"[1/{n}] data ..." in cli.output and f"[{n}/{n}] " in cli.output and ": done in " in cli.output
    assert "data: done in " in cli.output and f"({n}/{n} finished)" in cli.output  # ends are counted apart
    # what to run next, with the same suite and workspace
    assert f"next: todsynth bench report {REPO / 'suites' / 'tests.yaml'} -w {bench_workspace}" in cli.output
    assert f"todsynth ui -w {bench_workspace}" in cli.output
    res = json.loads((bench_workspace / "tests" / "results.json").read_text())
    assert not list((bench_workspace / "tests").glob(".results.json.*"))  # atomic write left no temp file
    _check_results(res, ["real-only", "plain", "crfm"])
    # synthetic images really exist, one per (limited) training mask at ratio 1
    syn_dirs = list((bench_workspace / "cache" / "synthesize").glob("[0-9a-f]*"))
    assert len(syn_dirs) == 2
    for d in syn_dirs:
        pngs = list(d.glob("copy-0/Train/*/images_png/*.png"))
        assert len(pngs) == suite.dataset.limit
        assert (d / "grid.png").is_file()
    # MLflow: the autoencoder run's metrics are outcomes (its settings are params); real variant runs line up
    from bench.tracking import find_children, get_run_record

    parent = get_run_record(suite.tracking_uri, res["mlflow"]["parent_run_id"])
    assert suite.tracking_uri.startswith("sqlite:////") and res["mlflow"]["tracking_uri"] == suite.tracking_uri
    runs = {r["run_name"]: r for r in find_children(suite.tracking_uri, parent)}
    ae = runs["autoencoder"]
    assert "recon_l1" in ae["metrics"] and not {"lr", "seed", "batch_size", "steps"} & set(ae["metrics"])
    assert ae["params"]["train.lr"] == "0.001"
    variants = [runs[f"{v}[seed=0]"] for v in ("plain", "crfm")]
    assert variants[0]["params"].keys() == variants[1]["params"].keys()
    assert variants[0]["metrics"].keys() == variants[1]["metrics"].keys() >= {"fid", "mask_miou", "downstream_gain"}
    assert variants[0]["metrics"]["fid_n_synthetic"] == suite.dataset.limit
    second = run_suite(suite, progress=False)
    assert second.computed == [] and len(second.cached) == n
    assert json.dumps(second.results["variants"], sort_keys=True) == json.dumps(res["variants"], sort_keys=True)
    # generator.init_from: training starts from a saved generator's weights; the generator key and what follows it
    # change, the real-only baseline is reused
    (first_gen,) = (bench_workspace / "cache" / "generator").glob("[0-9a-f]*")
    warm = load_suite(REPO / "suites" / "tests.yaml", [
        f"generator.init_from={first_gen / 'generator'}",
        "variants=[{name: real-only, kind: baseline}, {name: plain, crfm: {rectified_step: 0}}]"], workspace=bench_workspace)
    third = run_suite(warm, progress=False)
    assert {"generator", "synthesize[plain,seed=0]", "downstream[plain,seed=0]"} <= set(third.computed)
    assert {"data", "autoencoder", "judge", "downstream[real-only,seed=0]"} <= set(third.cached)
    summaries = [json.loads(f.read_text()) for f in (bench_workspace / "cache" / "generator").glob("*/train_summary.json")]
    assert {s["config"]["init_from"] for s in summaries} == {None, str(first_gen / "generator")}


@pytest.mark.slow
def test_smoke_suite_end_to_end(bench_workspace):
    suite = load_suite(REPO / "suites" / "smoke.yaml", workspace=bench_workspace)
    out = run_suite(suite, progress=False)
    _check_results(out.results, ["real-only", "plain", "crfm", "crfm-paper", "perfect"])
    # the fidelity point on the embedded suite: its CRFM setting makes the independent evaluator recover
    # the masks better than plain sampling from the same seeds (seed 0: 0.621 -> 0.654; README "Two commands")
    metrics = {v["name"]: v["metrics"] for v in out.results["variants"]}
    assert metrics["crfm"]["mask_miou"] > metrics["plain"]["mask_miou"] + 0.005
