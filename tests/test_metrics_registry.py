"""The metric registry (bench.metrics) is the one definition: validation, results keys, report columns, correlation."""

from __future__ import annotations

import pytest

from bench.correlation import ORDER, image_metrics
from bench.metrics import FEATURE_METRICS, REGISTRY, needs_downstream, scored
from bench.report.tables import COLUMNS, LABELS, UNRANKED
from bench.results import DOWNSTREAM_KEYS, RUN_METRICS, SYNTHETIC_KEYS, run_metrics
from bench.schema import KNOWN_METRICS
from bench.suites import SuiteError, validate_data


def test_every_consumer_reads_the_registry():
    assert KNOWN_METRICS == scored() and KNOWN_METRICS["fid"] is False and KNOWN_METRICS["mask_miou"] is True
    assert "fid_n_real" not in KNOWN_METRICS and "downstream_gain" not in KNOWN_METRICS  # counts, derived: not declarable
    assert set(DOWNSTREAM_KEYS) - {"per_class_iou"} == {m for m, d in REGISTRY.items() if d.stage == "downstream"}
    assert {k for k in SYNTHETIC_KEYS if k in REGISTRY} == {m for m, d in REGISTRY.items() if d.stage == "evaluate"}
    assert set(RUN_METRICS) <= set(REGISTRY) and all(c in REGISTRY for c in COLUMNS)
    assert LABELS["mask_oa"] == "mask OA" and UNRANKED == {"evaluator_real_miou", "real_only_miou"}
    assert FEATURE_METRICS == ("fid", "kid", "precision", "recall") and ORDER[:4] == FEATURE_METRICS
    assert needs_downstream("downstream_oa") and not needs_downstream("fid") and not needs_downstream("nope")
    # every metric a variant run logs is registered (per-class IoU aside)
    logged = run_metrics({"downstream_miou": 0.5, "fid": 3.0, "mask_miou": 0.2, "evaluator_real_miou": 0.4,
                          "fid_n_real": 8, "per_class_iou": {"road": 0.1}}, real_only_miou=0.45)
    assert {k for k in logged if "/" not in k} <= set(REGISTRY)


def test_image_metrics_are_the_registry_image_kind_plus_unregistered():
    settings = [{"metrics": {"fid": 1.0, "mask_miou": 0.2, "evaluator_real_miou": 0.6, "seconds_per_image": 0.1,
                             "fid_n_synthetic": 4, "my_score": 0.3, "feasible": 1.0, "constraint/x": 0.0}}]
    assert image_metrics(settings) == ["fid", "mask_miou", "my_score"]


def test_suite_metrics_validated_against_the_registry(tiny_suite_data):
    with pytest.raises(SuiteError, match="unknown metric 'psnr'"):
        validate_data({**tiny_suite_data, "metrics": [{"name": "psnr"}]}, "test")
    with pytest.raises(SuiteError, match="fid has higher_is_better=False"):
        validate_data({**tiny_suite_data, "metrics": [{"name": "fid", "higher_is_better": True}]}, "test")
