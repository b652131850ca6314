"""The rerender ceiling: the training masks' procedural scenes painted anew (a perfect generator's images).

The oracle (held-out real scenes, with ``dataset.subsets``) is tested with the fewshot suite.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import stages
from bench.cache import CachedStage, jsonable
from bench.graph import build_graph, rerender_first_draw, select_forced
from bench.specs import RerenderDownstreamSpec
from bench.stages.common import artifact_path
from bench.suites import SuiteError, validate_data
from todsynth.data.loveda import read_image_array, read_raw_mask
from todsynth.data.procedural import rerender_samples

PERFECT = {"name": "perfect", "kind": "rerender"}


def _data(tiny_suite_data, ws, **extra):
    data = json.loads(json.dumps({**tiny_suite_data, "variants": tiny_suite_data["variants"] + [PERFECT], **extra}))
    data["workspace"] = str(ws)
    return data


@pytest.mark.parametrize(("change", "message"), [
    ({"dataset": {"kind": "loveda", "root": "/nowhere"}}, "variants[3]: a rerender variant needs dataset.kind procedural"),
    ({"variants": [PERFECT, {"name": "p2", "kind": "rerender"}]}, "variants[1]: a second rerender variant"),
    ({"variants": [{**PERFECT, "sampling": {"guidance_scale": 2.0}}]}, "variants[0]: a rerender variant takes no"),
])
def test_bad_rerender(tiny_suite_data, tmp_path, change, message):
    data = {**_data(tiny_suite_data, tmp_path / "ws"), **change}
    with pytest.raises(SuiteError) as exc:
        validate_data(data, "test")
    assert any(message in p for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(("ratio", "limit", "expected"), [(1.5, None, 12), (1.0, 3, 3), (0.5, None, 4)])
def test_rerender_stage_paints_the_training_masks(tiny_suite_data, tmp_path, ratio, limit, expected):
    """As many images as synthesis would make (round(ratio * masks)), each mask kept exactly, every image new."""
    dataset = {**tiny_suite_data["dataset"], **({"limit": limit} if limit else {})}
    suite = validate_data(_data(tiny_suite_data, tmp_path / "ws", dataset=dataset,
                                downstream={"model": "fcn-tiny", "iters": 2, "batch_size": 2, "ratio": ratio}), "t")
    by_key = {n.key: n for n in build_graph(suite)}
    down = by_key["downstream[perfect,seed=0]"]
    assert isinstance(down.spec, RerenderDownstreamSpec) and down.deps == {"data": "data"}
    assert down.spec.sampler == "repeat-factor-epochs" and by_key["downstream[real-only,seed=0]"].spec.hashed().keys() \
        .isdisjoint({"sampler", "ratio"})  # real-only keeps its key: equal weights sample as they always did
    assert "synthesize[perfect,seed=0]" not in by_key and down.spec.limit == limit

    data_dir = tmp_path / "data"
    arts = stages.stage_data(by_key["data"].spec, {}, data_dir)
    data = CachedStage(data_dir, {"artifacts": arts, "spec": by_key["data"].spec.hashed()})
    out = stages.stage_downstream(down.spec, {"data": data}, tmp_path / "down")
    assert out["metrics"]["n_rerendered"] == expected and out["metrics"]["n_train_items"] == 8 + expected
    painted = sorted((tmp_path / "down" / "rerender").glob("copy-*/images_png/*.png"))
    assert len(painted) == expected
    real = {p.stem: p for p in artifact_path(data, "root").glob("Train/*/images_png/*.png")}
    assert len(real) == 8
    for image in painted:
        mask = image.parent.parent / "masks_png" / image.name
        original = real[image.stem]
        assert np.array_equal(read_raw_mask(mask), read_raw_mask(original.parent.parent / "masks_png" / image.name))
        assert np.abs(read_image_array(image).astype(int) - read_image_array(original)).mean() > 3


def test_rerender_refuses_data_of_another_seed(tmp_path):
    from todsynth.data.loveda import list_samples
    from todsynth.data.procedural import generate_dataset

    generate_dataset(tmp_path / "d", 4, 0, 32, seed=1)
    pool = list_samples(tmp_path / "d", "Train")
    assert len(rerender_samples(pool, pool, 1, 32, 1, tmp_path / "ok")) == 4
    with pytest.raises(ValueError, match="not the mask procedural seed 0"):
        rerender_samples(pool, pool, 0, 32, 1, tmp_path / "bad")


@pytest.mark.parametrize(("ratio", "sizes"), [(1.0, [4]), (2.5, [4, 4, 2]), (0.5, [2]), (0.01, [1]), (3.0, [4, 4, 4])])
def test_copy_chunks_fill_like_synthesis(ratio, sizes):
    from bench.graph import copy_chunks, n_synthetic

    chunks = copy_chunks(list("abcd"), ratio)
    assert [len(c) for c in chunks] == sizes and sum(sizes) == n_synthetic(ratio, 4)
    assert all(c == list("abcd")[: len(c)] for c in chunks)  # each copy starts from the first mask


def test_rerender_ceiling_is_evaluated_like_a_synthetic_variant(tiny_suite_data, tmp_path):
    """evaluate[perfect] scores the painted images with the synthetic variants' measurements: the image metrics' ceiling."""
    suite = validate_data(_data(tiny_suite_data, tmp_path / "ws",
                                evaluator={"model": "fcn-tiny", "iters": 2, "batch_size": 2},
                                downstream={"model": "fcn-tiny", "iters": 2, "batch_size": 2, "ratio": 1.0}), "t")
    by_key = {n.key: n for n in build_graph(suite)}
    ev = by_key["evaluate[perfect,seed=0]"]
    assert ev.deps == {"downstream": "downstream[perfect,seed=0]", "evaluator": "evaluator",
                       "real_features": "real_features", "data": "data"}
    assert ev.spec == by_key["evaluate[plain,seed=0]"].spec  # measured alike
    keys = list(by_key)
    assert keys.index("downstream[perfect,seed=0]") < keys.index("evaluate[perfect,seed=0]")

    done: dict[str, CachedStage] = {}
    for key in ("data", "evaluator", "real_features", "downstream[perfect,seed=0]", "evaluate[perfect,seed=0]"):
        node = by_key[key]
        out = tmp_path / key
        out.mkdir()
        arts = stages.STAGES[node.stage](node.spec, {role: done[dep] for role, dep in node.deps.items()}, out)
        done[key] = CachedStage(out, {"artifacts": jsonable(arts, out), "spec": node.spec.hashed()})
    m = done["evaluate[perfect,seed=0]"].artifacts["metrics"]
    assert m["fid_n_synthetic"] == 8 and m["n_real_masks"] == 8 and "seconds_per_image" not in m
    assert 0.0 <= m["mask_miou"] <= 1.0 and 0.0 <= m["recall"] <= 1.0 and m["fid"] >= 0.0
    pairs = stages.painted_pairs(done["downstream[perfect,seed=0]"])
    assert [p[0].stem for p in pairs] == sorted((p[0].stem for p in pairs), key=int) and len(pairs) == 8


def test_each_seed_paints_its_own_images(tiny_suite_data, tmp_path):
    """As each seed synthesises its own images, each seed's ceiling paints its own draws; seed 0 keeps draws 1, 2, ..."""
    assert [rerender_first_draw(s, 2) for s in (0, -1, 1, -2, 2)] == [1, 3, 5, 7, 9]  # no two seeds share a draw
    suite = validate_data(_data(tiny_suite_data, tmp_path / "ws", seeds=[0, 1],
                                downstream={"model": "fcn-tiny", "iters": 2, "batch_size": 2, "ratio": 1.5}), "t")
    by_key = {n.key: n for n in build_graph(suite)}
    assert by_key["downstream[perfect,seed=0]"].spec.first_draw == 1
    assert by_key["downstream[perfect,seed=1]"].spec.first_draw == 5  # two copies a seed: seed -1 would take 3, 4

    data_dir = tmp_path / "data"
    arts = stages.stage_data(by_key["data"].spec, {}, data_dir)
    data = CachedStage(data_dir, {"artifacts": arts, "spec": by_key["data"].spec.hashed()})
    painted = {}
    for seed in (0, 1):
        out = tmp_path / f"down{seed}"
        stages.stage_downstream(by_key[f"downstream[perfect,seed={seed}]"].spec, {"data": data}, out)
        painted[seed] = {p.name: read_image_array(p) for p in (out / "rerender" / "copy-0" / "images_png").glob("*.png")}
    assert painted[0].keys() == painted[1].keys()
    assert all(np.abs(painted[0][k].astype(int) - painted[1][k]).mean() > 3 for k in painted[0])


def test_a_suite_of_baselines_and_ceilings_trains_no_generator(tiny_suite_data, tmp_path):
    """Shared stages that no variant reads are left out of the graph (they had cost a generator's training)."""
    full = build_graph(validate_data(_data(tiny_suite_data, tmp_path / "ws"), "t"))
    assert {"prompts", "generator", "judge"} <= {n.stage for n in full}
    suite = validate_data(_data(tiny_suite_data, tmp_path / "ws", variants=[{"name": "real-only", "kind": "baseline"},
                                                                             PERFECT]), "t")
    nodes = build_graph(suite)
    assert [n.key for n in nodes] == ["data", "evaluator", "real_features", "downstream[real-only,seed=0]",
                                      "downstream[perfect,seed=0]", "evaluate[perfect,seed=0]"]
    assert all(dep in {m.key for m in nodes} for n in nodes for dep in n.deps.values())
    with pytest.raises(ValueError, match="--force generator: no such stage in this suite"):
        select_forced(nodes, ["generator"])
    only_real = validate_data(_data(tiny_suite_data, tmp_path / "ws", variants=[{"name": "real-only", "kind": "baseline"}]),
                              "t")
    assert [n.key for n in build_graph(only_real)] == ["data", "downstream[real-only,seed=0]"]
