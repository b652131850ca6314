"""MLflow's own UI over a real workspace, in headless Chromium: the variant runs of a suite line up for comparison."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.parse

import pytest
from test_report_html import browser  # noqa: F401  (the headless-Chromium fixture)
from test_ui_server import _free_port, _post, start_ui

from bench.engine import run_suite
from bench.suites import validate_data
from bench.tracking import VARIANT_FILTER


def _wait_for(driver, texts: list[str], timeout: float = 90) -> str:
    """The page's visible text once it contains every one of ``texts`` (the MLflow UI renders asynchronously)."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.execute_script("return document.body ? document.body.innerText : '';")
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    missing = [t for t in texts if t not in body]
    raise AssertionError(f"{driver.current_url}: never showed {missing}; it shows:\n{body[:3000]}")


def test_variant_runs_compare_in_the_mlflow_ui(tiny_suite_data, bench_workspace, fake_stages, browser, tmp_path):  # noqa: F811
    fns, _ = fake_stages
    suite = validate_data({**tiny_suite_data, "seeds": [0, 1], "workspace": str(bench_workspace)}, "test")
    out = run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    port = _free_port()
    log_path = tmp_path / "ui.log"
    proc, ready = start_ui(bench_workspace, port, log_path)
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        exp_id = re.search(r"#/experiments/(\d+)/runs", ready[1])[1]
        found = _post(f"{api}/runs/search", {"experiment_ids": [exp_id],
                                             "filter": "tags.`todsynth.kind` = 'variant'"})["runs"]
        names = sorted(r["info"]["run_name"] for r in found)
        assert names == ["crfm[seed=0]", "crfm[seed=1]", "plain[seed=0]", "plain[seed=1]"]
        params = {tuple(sorted(p["key"] for p in r["data"]["params"])) for r in found}
        metrics = {tuple(sorted(m["key"] for m in r["data"]["metrics"])) for r in found}
        assert len(params) == 1 and len(metrics) == 1  # identical keys: no empty cells when compared
        assert {"crfm.rectified_step", "sampling.num_inference_steps", "seed"} <= set(next(iter(params)))
        assert {"fid", "mask_miou", "downstream_miou", "downstream_gain"} <= set(next(iter(metrics)))
        ids = {r["info"]["run_name"]: r["info"]["run_id"] for r in found}
        assert ids["crfm[seed=1]"] == out.results["mlflow"]["variant_runs"]["crfm"]["1"]

        # the runs table filtered as the README says lists exactly the variant runs
        compare = re.search(r"^compare variants: (\S+)$", log_path.read_text(), re.M)  # printed by `todsynth ui`
        assert compare and compare[1] == f"{ready[1]}&searchFilter={urllib.parse.quote(VARIANT_FILTER)}"
        browser.get(compare[1])
        _wait_for(browser, [f"{suite.name}@"])  # the suite run, its variant runs nested (collapsed) below it
        expander = '[data-component-id$="runnamecellrenderer.tsx_46"]'
        browser.execute_script(f"document.querySelector('{expander}').click();")
        body = _wait_for(browser, names)
        assert "real-only[seed=0]" not in body and "synthesize[crfm,seed=0]" not in body
        # MLflow's compare page of the variant runs: every run, the CRFM param and the metrics side by side
        query = urllib.parse.urlencode({"runs": json.dumps(sorted(ids.values())), "experiments": json.dumps([exp_id])})
        browser.get(f"http://127.0.0.1:{port}/#/compare-runs?{query}")
        body = _wait_for(browser, [*names, "crfm.rectified_step", "downstream_gain", "mask_miou"])
        assert "Comparing 4" in body or all(n in body for n in names)
        shot = tmp_path / "compare.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    if proc.returncode not in (0, None):
        pytest.fail(log_path.read_text())
