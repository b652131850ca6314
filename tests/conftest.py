"""Shared fixtures: no hub access, headless matplotlib, seeded procedural data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "agg")


@pytest.fixture(scope="session")
def procedural_root(tmp_path_factory: pytest.TempPathFactory):
    """Seeded 32 px procedural LoveDA tree (Train 8 = 4 Urban + 4 Rural, Val 4), written once. Read-only:
    copy it (``shutil.copytree``) before modifying."""
    from todsynth.data.procedural import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("procedural") / "loveda", n_train=8, n_val=4, size=32, seed=0)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory):
    """A migrated, empty MLflow sqlite DB, created once per session (alembic takes ~9 s on 2 cores)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def bench_workspace(tmp_path, mlflow_db_template):
    """A fresh bench workspace holding a copy of the migrated MLflow DB (fast store per test)."""
    import shutil

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(mlflow_db_template, ws / "mlflow.db")
    return ws


@pytest.fixture
def fake_stages():
    """Stand-in stage functions for harness tests: write small files, return deterministic metrics.

    Returns ``(stage_fns, calls)``; ``calls`` lists the stage name of every execution, in order.
    Metrics depend on the spec and inputs, so a wrong cache reuse shows up as a wrong number.
    """
    import json as _json

    import numpy as np
    from PIL import Image

    calls: list[str] = []

    def make(stage):
        def fn(spec, inputs, out_dir):
            calls.append(stage)
            if not out_dir.name.startswith(".tmp-"):
                raise AssertionError(f"stage wrote outside a temp dir: {out_dir}")
            (out_dir / f"{stage}.json").write_text(_json.dumps({"spec": spec.hashed(), "inputs": sorted(inputs)}, default=str))
            arts = {"file": out_dir / f"{stage}.json"}
            crfm = None
            if "synthesize" in inputs:
                crfm = inputs["synthesize"].marker["spec"]["crfm"]
            rs = crfm["rectified_step"] if crfm else 0
            if stage == "synthesize":
                Image.fromarray(np.full((8, 8, 3), 40 * (spec.crfm.rectified_step if spec.crfm else 0), np.uint8)).save(
                    out_dir / "grid.png")
                arts |= {"metrics": {"seconds_per_image": 0.5 + 0.1 * rs}, "mlflow_artifacts": ["grid.png"]}
            elif stage == "evaluate":
                arts["metrics"] = {"fid": 100.0 - 3 * rs, "kid": 0.1, "fid_extractor": "evaluator",
                                   "fid_comparable": False, "fid_n_real": 8, "fid_n_synthetic": 4,
                                   "fid_resize": "none: native resolution", "mask_miou": 0.4 + 0.02 * rs, "evaluator_real_miou": 0.6}
                if "synthesize" in inputs:
                    arts["metrics"]["seconds_per_image"] = inputs["synthesize"].artifacts["metrics"]["seconds_per_image"]
                else:  # a rerender ceiling's painted images: the image metrics' ceiling
                    arts["metrics"] |= {"fid": 1.0, "mask_miou": 0.58}
            elif stage == "downstream":
                miou = 0.5 + 0.01 * spec.seed + (0.05 + 0.01 * rs if "synthesize" in inputs else 0.0)
                (out_dir / "per_class_iou.json").write_text(_json.dumps({"building": miou}))
                arts |= {"metrics": {"downstream_miou": miou, "downstream_oa": miou + 0.2, "downstream_macc": miou + 0.1,
                                     "per_class_iou": {"background": miou - 0.1, "building": miou + 0.1}},
                         "mlflow_artifacts": ["per_class_iou.json"]}
            return arts

        return fn

    stages = ["data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features", "synthesize",
              "evaluate", "downstream"]
    return {s: make(s) for s in stages}, calls


@pytest.fixture
def tiny_suite_data():
    """A small valid suite mapping (3 variants) for harness tests with fake stages."""
    return {
        "name": "t",
        "dataset": {"kind": "procedural", "procedural": {"n_train": 8, "n_val": 4, "size": 32}},
        "sampling": {"num_inference_steps": 4},
        "crfm": {"rectified_step": 2},
        "variants": [
            {"name": "real-only", "kind": "baseline"},
            {"name": "plain", "crfm": {"rectified_step": 0}},
            {"name": "crfm"},
        ],
        "fid": {"extractor": "evaluator"},
        "resources": {"device": "cpu"},
    }
