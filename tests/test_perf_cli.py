"""`todsynth bench perf` end to end at tiny sizes: every JSON section present with positive finite numbers
(no timing thresholds), the table printed, MLflow logging, and option errors (exit 2, one line)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
TINY = ["bench", "perf", "--res", "32", "--repeats", "2", "--steps", "4", "--rectified", "2", "--batch", "1",
        "--train-batch", "2"]


def _numbers(node, path=""):
    """Every (path, number) leaf of a JSON tree (bools excluded)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, node


def test_perf_tiny_writes_json_and_logs_to_mlflow(tmp_path, bench_workspace) -> None:
    out = tmp_path / "perf.json"
    uri = f"sqlite:///{bench_workspace / 'mlflow.db'}"
    result = runner.invoke(app, [*TINY, "--json", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    for row in ("transformer forward", "plain sampling", "CRFM sampling", "judge fwd+bwd", "CRFM overhead vs parts",
                "training step", "FID features"):
        assert row in result.output
    report = json.loads(out.read_text())
    for key in ("crfm_over_plain", "crfm_overhead_vs_parts", "plain", "crfm", "vae", "judge", "train", "fid",
                "transformer", "device"):
        assert key in report, key
    assert report["config"] == {**report["config"], "res": 32, "steps": 4, "rectified": 2, "batch": 1, "repeats": 2}
    assert report["device"]["type"] == "cpu" and report["device"]["cpu"]
    assert report["judge"]["model"] == "fcn-tiny" and report["fid"]["extractor"].startswith("segmenter")
    signed = {"crfm.extra_seconds_per_image", "crfm_overhead_vs_parts", "crfm_overhead_vs_parts_min", "config.seed",
              "crfm.breakdown_seconds_per_image.other.median", "crfm.breakdown_seconds_per_image.other.min",
              "crfm.breakdown_seconds_per_image.other.max"}  # differences of timings: finite, sign not guaranteed
    signed_prefixes = ("crfm.extra_breakdown_seconds_per_image.", "crfm.beyond_parts_fraction.",
                       "plain.breakdown_seconds_per_image.other.")
    numbers = dict(_numbers(report))
    assert len(numbers) > 60
    for path, value in numbers.items():
        assert math.isfinite(value), path
        if path in ("vae.params", "transformer.tokens.mask"):  # the tiny preset: a pixel shuffle, no mask tokens
            assert value == 0
        elif path not in signed and not path.startswith(signed_prefixes):
            assert value > 0, (path, value)
    # The headline ratios are what they claim to be: medians of per-round ratios, and from the minima.
    rounds = report["crfm"]["rounds"]
    assert len(rounds["plain"]) == len(rounds["crfm"]) == len(rounds["necessary"]) == 2
    ratios = sorted((c - p) / n for p, c, n in zip(rounds["plain"], rounds["crfm"], rounds["necessary"], strict=True))
    assert report["crfm_overhead_vs_parts"] == pytest.approx(sum(ratios) / 2)  # median of two rounds
    # what exceeds the passes, split by section, adds up (with two rounds the median is the mean: linear)
    beyond = report["crfm"]["beyond_parts_fraction"]
    assert set(beyond) == {"transformer", "passes_in_loop_vs_standalone", "rest"}
    assert sum(beyond.values()) == pytest.approx(report["crfm_overhead_vs_parts"] - 1)
    assert "beyond the passes" in result.output
    assert report["crfm_over_plain"] == pytest.approx(sum(c / p for p, c in zip(rounds["plain"], rounds["crfm"], strict=True)) / 2)
    plain, crfm = report["plain"]["seconds_per_image"]["min"], report["crfm"]["seconds_per_image"]["min"]
    parts = report["crfm"]["necessary_seconds_per_image"]["min"]
    assert (plain, crfm, parts) == (min(rounds["plain"]), min(rounds["crfm"]), min(rounds["necessary"]))
    assert report["crfm_over_plain_min"] == pytest.approx(crfm / plain)
    assert report["crfm_overhead_vs_parts_min"] == pytest.approx((crfm - plain) / parts)
    # each round's necessary time is 2 corrections x (decode + judge), so its minimum bounds the parts' minima
    assert parts >= 2 * (report["vae"]["decode_fwd_bwd_seconds_per_image"]["min"]
                         + report["judge"]["fwd_bwd_seconds_per_image"]["min"]) * (1 - 1e-9)
    tr = report["transformer"]
    assert tr["achieved_tflops"] == pytest.approx(tr["flops_per_forward"] / tr["forward_seconds"]["median"] / 1e12)
    assert tr["tokens"] == {"image": 64, "mask": 0, "text": 16}  # 32 px / (4 px a latent, patch 1); no mask tokens

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("todsynth/perf")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["steps"] == "4"
    assert run.data.metrics["crfm_overhead_vs_parts"] == pytest.approx(report["crfm_overhead_vs_parts"])
    assert "perf.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


BAD = [
    (["--steps", "3", "--rectified", "4"], "--rectified 4 > --steps 3"),
    (["--preset", "huge"], "--preset 'huge'"),
    (["--repeats", "0"], "--repeats 0"),
    (["--clock", "sundial"], "--clock 'sundial'"),
    (["--res", "34"], "--res 34: image_size=34 must be divisible"),
    (["--batch", "0"], "--batch 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda")]))
def test_perf_bad_options_exit_2_naming_the_option(args, message, capsys, monkeypatch) -> None:
    from cli import main

    monkeypatch.setattr(sys, "argv", ["todsynth", "bench", "perf", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_perf_names_a_store_it_cannot_open_before_measuring(tmp_path, capsys, monkeypatch) -> None:
    """`--tracking-uri` of a server that does not answer failed only after the measurement (and ~4 min of retries)."""
    import socket

    from cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    measured = []
    monkeypatch.setattr("bench.perf.run_perf", lambda *a, **k: measured.append(1))
    out = tmp_path / "perf.json"
    monkeypatch.setattr(sys, "argv", ["todsynth", *TINY, "--json", str(out), "--tracking-uri",
                                      f"http://127.0.0.1:{port}"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and not measured and not out.exists()
    assert f"http://127.0.0.1:{port} does not answer" in capsys.readouterr().err


def test_perf_batch_defaults_per_preset() -> None:
    """tiny samples 8 at a time (the smoke suite's and the release's batch), SD3.5-medium 2; explicit wins."""
    from bench.perf import PerfConfig

    assert PerfConfig().resolved().batch == 8
    assert PerfConfig(preset="sd3.5-medium").resolved().batch == 2
    assert PerfConfig(batch=3).resolved().batch == 3
