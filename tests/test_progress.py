"""todsynth.progress: the one progress bar of the library's loops, drawn or reported to a sink."""

from __future__ import annotations

import pytest

from todsynth.progress import fields_text, progress_bar, set_sink


@pytest.fixture
def reports():
    got: list[tuple] = []
    previous = set_sink(lambda label, completed, total, fields: got.append((label, completed, total, dict(fields))))
    yield got
    set_sink(previous)


def test_a_sink_receives_every_update_with_its_fields(reports):
    with progress_bar("gen train", 10, completed=4) as update:
        update(advance=1)
        update(7, loss=0.5)
        update(advance=3, **{"it/s": 12.0})
    assert reports == [("gen train", 4, 10, {}), ("gen train", 5, 10, {}), ("gen train", 7, 10, {"loss": 0.5}),
                       ("gen train", 10, 10, {"loss": 0.5, "it/s": 12.0})]


def test_a_disabled_bar_reports_nothing(reports):
    with progress_bar("x", 3, enabled=False) as update:
        update(advance=3, loss=1.0)
    assert reports == []


def test_set_sink_returns_the_previous_one(reports):
    mine = set_sink(None)
    assert mine is not None and set_sink(mine) is None


def test_fields_text():
    assert fields_text({"loss": 0.123456, "it/s": 12.0}) == "loss 0.1235  it/s 12"


def test_segmentor_training_reports_each_iteration(reports, tmp_path):
    from todsynth.data.loveda import list_samples
    from todsynth.data.procedural import generate_dataset
    from todsynth.seg.train import train_segmentor

    root = generate_dataset(tmp_path / "root", n_train=4, n_val=2, size=32, seed=0)
    train_segmentor("fcn-tiny", list_samples(root, "Train"), tmp_path / "work", max_iters=3, batch_size=2, lr=0.01,
                    seed=0, progress=True)
    seg = [r for r in reports if r[0] == "seg train"]
    assert [r[1] for r in seg] == [0, 1, 2, 3] and {r[2] for r in seg} == {3}
    assert all("loss" in r[3] for r in seg[1:])


def test_procedural_scenes_report_each_scene(reports, tmp_path):
    from todsynth.data.procedural import generate_dataset

    generate_dataset(tmp_path / "d", 3, 2, size=16, progress=True)
    assert reports[0] == ("procedural scenes", 0, 5, {}) and [r[1] for r in reports] == [0, 1, 2, 3, 4, 5]
    reports.clear()
    generate_dataset(tmp_path / "e", 3, 2, size=16)  # off by default (library calls)
    assert reports == []
