"""Downstream protocol: synthetic:real weighting rule and the real-only / mixed runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from todsynth.data.loveda import list_samples
from todsynth.data.procedural import generate_dataset
from todsynth.seg.downstream import downstream_items, run_downstream
from todsynth.seg.io import load_segmentor


def _pairs(n: int, tag: str) -> list[tuple[str, str]]:
    return [(f"/{tag}/img{k}.png", f"/{tag}/mask{k}.png") for k in range(n)]


@pytest.mark.parametrize(("n_real", "n_syn", "ratio"), [(4, 12, 3.0), (10, 5, 3.0), (6, 6, 1.0), (3, 30, 0.5)])
def test_expected_synthetic_draws_are_ratio_times_real(n_real: int, n_syn: int, ratio: float) -> None:
    items, weights = downstream_items(_pairs(n_real, "r"), _pairs(n_syn, "s"), ratio)
    assert len(items) == len(weights) == n_real + n_syn
    assert [str(i.image_path) for i in items[:n_real]] == [p[0] for p in _pairs(n_real, "r")]
    real_mass, syn_mass = sum(weights[:n_real]), sum(weights[n_real:])
    assert syn_mass / real_mass == pytest.approx(ratio)
    assert len(set(weights[n_real:])) == 1 and set(weights[:n_real]) == {1.0}


def test_real_only_and_errors() -> None:
    items, weights = downstream_items(_pairs(3, "r"), [], 3.0)
    assert len(items) == 3 and weights == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="at least one real item"):
        downstream_items([], _pairs(2, "s"))
    with pytest.raises(ValueError, match="ratio .* must be > 0"):
        downstream_items(_pairs(2, "r"), _pairs(2, "s"), 0.0)


def test_run_downstream_real_only_and_mixed(tmp_path: Path) -> None:
    real = generate_dataset(tmp_path / "real", n_train=8, n_val=4, size=32, seed=0)
    syn = generate_dataset(tmp_path / "syn", n_train=8, n_val=0, size=32, seed=7)
    kw = dict(iters=3, batch_size=4, lr=0.01, seed=0)
    base = run_downstream("fcn-tiny", list_samples(real, "Train"), [], list_samples(real, "Val"), tmp_path / "base", **kw)
    mixed = run_downstream("fcn-tiny", list_samples(real, "Train"), list_samples(syn, "Train"), list_samples(real, "Val"),
                           tmp_path / "mixed", ratio=3.0, **kw)
    assert base["n_synthetic"] == 0 and base["ratio"] == 0.0 and base["n_real"] == 8
    assert mixed["n_synthetic"] == 8 and mixed["ratio"] == 3.0 and mixed["iters"] == 3
    for run, scores in (("base", base), ("mixed", mixed)):
        assert json.loads((tmp_path / run / "scores.json").read_text())["miou"] == pytest.approx(scores["miou"])
        assert 0.0 <= scores["miou"] <= 1.0 and scores["n_images"] == 4
    log = json.loads((tmp_path / "mixed" / "train_log.json").read_text())
    assert log["weighted"] is True and log["n_items"] == 16
    assert json.loads((tmp_path / "base" / "train_log.json").read_text())["weighted"] is False  # equal weights
    assert load_segmentor(tmp_path / "base" / "model") is not None
