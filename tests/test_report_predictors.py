"""Which image metric predicts downstream gain: Spearman on hand-computed inputs, the suites' pairing with real-only,
the report section (values, one-line reason below 4 settings, no NaN), and the same numbers in tune.json/MLflow."""

from __future__ import annotations

import json
import math

import pytest

from bench.correlation import gain_correlations, mlflow_metrics, spearman, study_settings
from bench.report import write_report
from bench.report.predictors import gain_settings, predictor_rows
from bench.report.tables import metric_directions


def test_spearman_average_ranks_for_ties_and_undefined_for_constant_input():
    # x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4): Pearson of the ranks = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1.0, 2.0, 3.0, 4.0], [8.0, 6.0, 4.0, 2.0]) == pytest.approx(-1.0)
    assert spearman([0.1, 0.1, 0.1, 0.1], [1.0, 2.0, 3.0, 4.0]) is None  # constant: undefined, never NaN
    assert spearman([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]) is None
    with pytest.raises(ValueError, match="same length"):
        spearman([1.0, 2.0], [1.0])


def _variant(name, kind, seeds_miou, n=None, rs=None, **metrics):
    """A results.json row with per-seed downstream mIoU (mean in ``metrics``) and the given image metrics."""
    mean = sum(seeds_miou) / len(seeds_miou)
    row = {"name": name, "kind": kind, "metrics": {"downstream_miou": mean, **metrics}, "metrics_std": {},
           "per_seed": [{"seed": s, "metrics": {"downstream_miou": x}} for s, x in enumerate(seeds_miou)]}
    if rs is not None:
        row["params"] = {"sampling": {"num_inference_steps": 8},
                         "crfm": {"rectified_step": rs, "step_scheme": "LD", "max_step_size": 0.1}}
    if n is not None:
        row |= {"n": n, "declared": name.split("@")[0]}
    return row


def rectified_fake(n_synthetic=4):
    """A rectified-steps matrix (rs 0, 2, 4, 6) over one real-only at 0.40 mIoU (one seed).

    gains .02 .05 .04 .01 (ranks 2 4 3 1); FID 30 25 27 26 (ranks 4 1 3 2): d = -2 3 0 -1, sum d^2 = 14,
    rho = 1 - 6 * 14 / (4 * 15) = -0.4. mask mIoU .30 .36 .34 .31 (ranks 1 4 3 2): sum d^2 = 2, rho = 0.8.
    KID is the same everywhere: undefined. evaluator_real_miou and seconds_per_image are not image metrics.
    """
    rows = [("plain", 0, 0.42, 30.0, 0.30), ("rs2", 2, 0.45, 25.0, 0.36), ("rs4", 4, 0.44, 27.0, 0.34),
            ("rs6", 6, 0.41, 26.0, 0.31)][:n_synthetic]
    return {"suite": "m", "config_hash": "abc", "seeds": [0], "metric_specs": [],
            "variants": [_variant("real-only", "baseline", [0.40])] + [
                _variant(name, "synthetic", [miou], rs=rs, fid=fid, kid=0.01, mask_miou=mask, evaluator_real_miou=0.7,
                         seconds_per_image=0.1 * rs) for name, rs, miou, fid, mask in rows]}


def test_rectified_matrix_hand_computed_correlations():
    results = rectified_fake()
    settings, rule = gain_settings(results)
    assert [s["name"] for s in settings] == ["plain", "rs2", "rs4", "rs6"]
    assert [s["gain"] for s in settings] == pytest.approx([0.02, 0.05, 0.04, 0.01])
    assert "`real-only`" in rule
    corr = gain_correlations(settings, metric_directions(results))
    assert corr["reason"] is None and corr["n_settings"] == 4
    by = {m["metric"]: m for m in corr["metrics"]}
    assert list(by) == ["fid", "kid", "mask_miou"]  # not evaluator_real_miou, seconds_per_image, downstream_*
    assert by["fid"]["rho"] == pytest.approx(-0.4) and by["fid"]["n"] == 4 and by["fid"]["agrees"] is True
    assert by["mask_miou"]["rho"] == pytest.approx(0.8) and by["mask_miou"]["agrees"] is True
    assert by["kid"]["rho"] is None and "the metric is the same in every setting" in by["kid"]["note"]
    rows = {r["metric"]: r for r in predictor_rows(corr)}
    assert rows["fid"]["rho"] == "-0.40" and rows["fid"]["reading"] == "lower FID, more gain (its better direction)"
    assert rows["mask_miou"]["rho"] == "+0.80" and rows["kid"]["rho"] == "undefined"
    assert mlflow_metrics(corr) == pytest.approx({"gain_spearman/n_settings": 4.0, "gain_spearman_n/fid": 4.0,
                                                  "gain_spearman/fid": -0.4, "gain_spearman_n/kid": 4.0,
                                                  "gain_spearman_n/mask_miou": 4.0, "gain_spearman/mask_miou": 0.8})


def test_three_settings_say_so_instead_of_a_correlation():
    corr = gain_correlations(gain_settings(rectified_fake(3))[0], {})
    assert corr["metrics"] == [] and corr["n_settings"] == 3
    assert corr["reason"] == ("3 synthetic settings with a downstream gain; a rank correlation needs at least 4, "
                              "so none is computed")


def test_fewshot_pairs_each_setting_with_the_real_only_of_its_n():
    results = {"subsets": [16, 48], "seeds": [0, 1], "variants": [
        _variant("real-only@n16", "baseline", [0.50, 0.52], n=16),
        _variant("plain@n16", "synthetic", [0.55, 0.55], n=16, fid=40.0),
        _variant("real-only@n48", "baseline", [0.60, 0.60], n=48),
        _variant("plain@n48", "synthetic", [0.62, 0.66], n=48, fid=35.0)]}
    results["variants"][3]["per_seed"].append({"seed": 2, "metrics": {"downstream_miou": 0.9}})  # no real-only seed 2
    gains = {s["name"]: s["gain"] for s in gain_settings(results)[0]}
    assert gains == pytest.approx({"plain@n16": 0.04, "plain@n48": 0.04})  # per seed, same n: (.05+.03)/2, (.02+.06)/2


def test_counts_and_baselines_are_not_image_metrics():
    from bench.correlation import image_metrics

    settings = [{"name": "a", "gain": 0.1, "metrics": {"fid": 3.0, "mask_oa": 0.5, "fid_n_real": 400, "fid_n_synthetic": 48,
                                                       "real_only_miou": 0.3, "evaluator_real_miou": 0.7,
                                                       "downstream_gain": 0.1, "per_class_iou/road": 0.2}}]
    assert image_metrics(settings) == ["fid", "mask_oa"]


def test_study_settings_use_the_real_only_when_known():
    trials = [{"name": f"t{i}", "metrics": {"downstream_miou": 0.5 + i / 100, "fid": 50.0 - i}} for i in range(4)]
    trials.append({"name": "no-downstream", "metrics": {"fid": 1.0}})
    settings, target = study_settings(trials, 0.45)
    assert [s["gain"] for s in settings] == pytest.approx([0.05, 0.06, 0.07, 0.08]) and "gain" in target
    same, target = study_settings(trials)
    assert [s["gain"] for s in same] == pytest.approx([0.5, 0.51, 0.52, 0.53]) and "same ranks" in target
    a, b = gain_correlations(settings, {"fid": False}), gain_correlations(same, {"fid": False})
    assert a["metrics"][0]["rho"] == b["metrics"][0]["rho"] == pytest.approx(-1.0)


# ---------------------------------------------------------------------- through the report (MLflow, fake stages)
def _run(tiny_suite_data, bench_workspace, fake_stages, extra_variants):
    from test_report_files import report_stages

    from bench.engine import run_suite
    from bench.suites import validate_data

    data = {**tiny_suite_data, "workspace": str(bench_workspace)}
    data["variants"] = [*data["variants"], *extra_variants]
    suite = validate_data(data, "test")
    run_suite(suite, stage_fns=report_stages(fake_stages), stage_versions={}, progress=False)
    return suite


def _section(md: str) -> str:
    return md[md.index("## Which image metric predicts downstream gain"):md.index("## Samples")]


def test_report_section_with_four_settings(tiny_suite_data, bench_workspace, fake_stages, tmp_path):
    """Fake stages: fid = 100 - 3 rs, mask mIoU = .4 + .02 rs, gain = .05 + .01 rs, KID .1 everywhere."""
    suite = _run(tiny_suite_data, bench_workspace, fake_stages,
                 [{"name": "crfm-rs1", "crfm": {"rectified_step": 1}}, {"name": "crfm-rs3", "crfm": {"rectified_step": 3}}])
    out = write_report(suite, tmp_path / "r")
    section = _section((out / "report.md").read_text())
    assert "Suite variants (gain = downstream mIoU of real + synthetic minus `real-only`'s" in section
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:5]] for ln in section.splitlines()
            if ln.startswith("| ") and "Spearman" not in ln}
    assert rows["FID ↓"] == ["-1.00", "4", "lower FID, more gain (its better direction)"]
    assert rows["mask mIoU ↑"] == ["+1.00", "4", "higher mask mIoU, more gain (its better direction)"]
    assert rows["KID ↓"][:2] == ["undefined", "4"]
    assert not any(k.startswith(("evaluator", "s/image", "mIoU")) for k in rows)
    assert (out / "gain_correlation.png").stat().st_size > 1000
    html = (out / "index.html").read_text()
    block = html[html.index('id="predictors"'):html.index('id="samples"')]
    block = block[:block.index("<figure>")]  # the text, not the embedded PNG
    assert 'data-source="suite"' in block and "nan" not in block.lower() and "<code>real-only</code>" in block


def test_report_section_with_three_settings_is_one_line(tiny_suite_data, bench_workspace, fake_stages, tmp_path):
    suite = _run(tiny_suite_data, bench_workspace, fake_stages, [{"name": "crfm-rs1", "crfm": {"rectified_step": 1}}])
    out = write_report(suite, tmp_path / "r")
    section = _section((out / "report.md").read_text())
    (line,) = [ln for ln in section.splitlines() if ln.startswith("Suite variants (")]  # one line, no table
    assert line.endswith("3 synthetic settings with a downstream gain; a rank correlation needs at least 4, so none "
                         "is computed.")
    assert "| Spearman ρ |" not in section and not (out / "gain_correlation.png").exists()
    html = (out / "index.html").read_text()
    assert 'class="predictor-none" data-source="suite"' in html and 'class="predictors"' not in html


def test_tune_json_mlflow_and_report_carry_the_same_numbers(tiny_suite_data, bench_workspace, fake_stages, tmp_path):
    """A study with a downstream objective: tune.json, the study's MLflow run and the report's study block agree."""
    from mlflow.tracking import MlflowClient

    from bench.suites import validate_data
    from bench.tune import TuneOptions, tune_suite

    fns, _ = fake_stages
    data = {**tiny_suite_data, "workspace": str(bench_workspace)}
    data["tune"] = {"search_space": {"crfm.rectified_step": {"type": "int", "low": 0, "high": 4}},
                    "objectives": ["downstream_miou"], "sampler": "grid"}
    suite = validate_data(data, "test")
    summary = tune_suite(suite, TuneOptions(trials=5, progress=False), stage_fns=fns, stage_versions={}).summary
    corr = summary["downstream_correlation"]
    assert corr["n_settings"] == 5 and corr["reason"] is None
    # the trials' gain is over the suite's real-only baseline, a study reference (fake downstream: 0.5 at seed 0)
    assert corr["target"] == "downstream mIoU gain over real-only" and corr["real_only_miou"] == pytest.approx(0.5)
    by = {m["metric"]: m for m in corr["metrics"]}
    assert by["fid"]["rho"] == pytest.approx(-1.0) and by["mask_miou"]["rho"] == pytest.approx(1.0)
    assert by["kid"]["rho"] is None and by["fid"]["n"] == 5
    assert json.loads((bench_workspace / "t" / "tune.json").read_text())["downstream_correlation"] == corr
    run = MlflowClient(tracking_uri=suite.tracking_uri).get_run(summary["mlflow"]["parent_run_id"])
    assert run.data.metrics["gain_spearman/fid"] == pytest.approx(-1.0)
    assert run.data.metrics["gain_spearman/mask_miou"] == pytest.approx(1.0)
    assert run.data.metrics["gain_spearman_n/kid"] == 5.0 and "gain_spearman/kid" not in run.data.metrics
    assert run.data.tags["todsynth.gain_spearman"] == "computed"

    from bench.engine import run_suite

    run_suite(suite, stage_fns=fns, stage_versions={}, progress=False)
    out = write_report(suite, tmp_path / "r")
    section = _section((out / "report.md").read_text())
    study = section[section.index("### Tuning study t"):]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:4]] for ln in study.splitlines()
            if ln.startswith("| ") and "Spearman" not in ln}
    assert rows["FID ↓"] == ["-1.00", "5"] and rows["mask mIoU ↑"] == ["+1.00", "5"]
    assert (out / "gain_correlation_study.png").is_file()
