"""Typed stage specs: their hashed form (what the cache keys cover) and their JSON round trip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench.graph import build_graph
from bench.specs import MixedDownstreamSpec, Runtime, SynthesizeSpec, spec_from_json, spec_to_json
from bench.suites import load_suite

REPO = Path(__file__).resolve().parent.parent


def _nodes(name: str) -> dict:
    return {n.key: n for n in build_graph(load_suite(REPO / "suites" / f"{name}.yaml"))}


def test_hashed_forms_of_the_tests_suite():
    """The hashed dicts are the pre-typed-spec dicts, key for key (so existing caches stay valid)."""
    nodes = _nodes("tests")
    assert nodes["data"].spec.hashed() == {
        "kind": "procedural", "domains": ["Urban", "Rural"], "procedural": {"n_train": 8, "n_val": 4, "size": 32, "seed": 0}}
    crfm = nodes["synthesize[crfm,seed=0]"].spec
    assert isinstance(crfm, SynthesizeSpec) and crfm.crfm is not None and crfm.crfm.rectified_step == 2
    assert crfm.hashed() == {
        "sampling": {"num_inference_steps": 3, "shift": None, "guidance_scale": 1.0, "mask_guidance": False, "batch_size": 4},
        "crfm": {"rectified_step": 2, "num_rectified": 1, "max_step_size": 0.1, "step_scheme": "LD", "l2_norm": False,
                 "shrink": False, "clamp": 1.0, "error_only": True, "skip_below_error": None, "judge_size": None},
        "seed": 0, "limit": 4, "ratio": 1.0, "copies": 1}
    assert nodes["synthesize[plain,seed=0]"].spec.hashed()["crfm"] is None
    base = {"model": "fcn-tiny", "iters": 2, "batch_size": 4, "lr": 0.01, "optimizer": "sgd", "crop_size": None,
            "seed": 0, "val_limit": None}
    assert nodes["downstream[real-only,seed=0]"].spec.hashed() == base
    mixed = nodes["downstream[plain,seed=0]"].spec
    assert isinstance(mixed, MixedDownstreamSpec)
    assert mixed.hashed() == {**base, "ratio": 1.0, "sampler": "repeat-factor-epochs",  # before: i.i.d. draws
                              "freemask": {"enabled": True, "margin": 1.25},
                              "freemask_reference": "real"}  # the thresholds' images (before: the synthetic set)
    assert nodes["evaluate[crfm,seed=0]"].spec.hashed() == {"extractor": "evaluator"}


@pytest.mark.parametrize("suite", ["tests", "fewshot", "loveda"])
def test_every_spec_survives_the_launch_json(suite, monkeypatch):
    """What a launched stage's processes read back is the spec the engine built, runtime included."""
    monkeypatch.setenv("TODSYNTH_LOVEDA_ROOT", "/data/LoveDA")
    rt = Runtime(device="cuda", launcher="torchrun", gpus=2, work_dir="/w", progress=True)
    for node in _nodes(suite).values():
        spec = node.spec.at(rt)
        back = spec_from_json(spec_to_json(spec))
        assert back == spec and type(back) is type(spec), node.key
        assert "runtime" not in spec.hashed() and spec.hashed() == node.spec.hashed()


def test_a_preset_change_rekeys_the_autoencoder_and_generator(monkeypatch):
    """The suite names the preset; editing the preset's contents (here the scheduler shift) changes the autoencoder
    and generator keys and everything downstream of the generator, and nothing that does not read the preset."""
    import copy

    from bench.engine import graph_hashes
    from bench.stages import STAGE_VERSIONS
    from todsynth.models import presets

    suite = load_suite(REPO / "suites" / "tests.yaml")
    before = graph_hashes(build_graph(suite), STAGE_VERSIONS)
    tiny = copy.deepcopy(presets.PRESETS["tiny"])
    tiny["scheduler"]["shift"] = tiny["scheduler"]["shift"] + 2.0
    monkeypatch.setitem(presets.PRESETS, "tiny", tiny)
    after = graph_hashes(build_graph(suite), STAGE_VERSIONS)
    changed = {k for k in before if before[k] != after[k]}
    assert {"autoencoder", "generator"} <= changed
    assert any(k.startswith("synthesize[") for k in changed) and any(k.startswith("downstream[plain") for k in changed)
    assert not changed & {"data", "judge", "evaluator", "downstream[real-only,seed=0]"}


def test_subset_is_hashed_only_when_drawn():
    nodes = _nodes("fewshot")
    gen = next(n for n in nodes.values() if n.stage == "generator")
    assert gen.spec.hashed()["subset"] == {"n": gen.subset, "seed": 0, "rule": gen.spec.subset.rule}
    assert "subset" not in nodes["evaluator"].spec.hashed()


def test_user_weights_key_their_stages_by_content(tmp_path):
    """A judge/evaluator checkpoint and the Inception file are keyed by their bytes, not only their path: a new file at
    the same path re-keys the stage and what reads it (stale scores from another evaluator were reused before)."""
    from bench.engine import graph_hashes
    from bench.stages import STAGE_VERSIONS

    ckpt, inception = tmp_path / "evaluator.pth", tmp_path / "inception.pt"
    sets = [f"evaluator.checkpoint={ckpt}", "fid.extractor=inception", f"fid.inception_weights={inception}"]

    def hashes(ckpt_bytes: bytes, inception_bytes: bytes) -> dict[str, str]:
        ckpt.write_bytes(ckpt_bytes)
        inception.write_bytes(inception_bytes)
        return graph_hashes(build_graph(load_suite(REPO / "suites" / "tests.yaml", sets)), STAGE_VERSIONS)

    first = hashes(b"evaluator one", b"inception one")
    nodes = {n.key: n for n in build_graph(load_suite(REPO / "suites" / "tests.yaml", sets))}
    assert nodes["evaluator"].spec.hashed()["digest"] == hashlib.sha256(b"evaluator one").hexdigest()
    assert nodes["real_features"].spec.hashed()["weights_digest"] == hashlib.sha256(b"inception one").hexdigest()
    assert hashes(b"evaluator one", b"inception one") == first  # the same bytes: the same keys
    new_ckpt = hashes(b"evaluator two", b"inception one")  # same size, just rewritten: read again, not remembered
    changed = {k for k in first if first[k] != new_ckpt[k]}
    assert {"evaluator", "evaluate[plain,seed=0]", "evaluate[crfm,seed=0]"} <= changed
    assert not changed & {"generator", "judge", "synthesize[plain,seed=0]", "downstream[plain,seed=0]"}
    new_inception = hashes(b"evaluator two", b"inception two")
    changed = {k for k in new_ckpt if new_ckpt[k] != new_inception[k]}
    assert {"real_features", "evaluate[plain,seed=0]"} <= changed and "evaluator" not in changed


def test_generator_key_carries_its_process_count():
    """resources.gpus > 1 trains the generator with train.batch_size per process: another model, so another key
    (before, a 1-GPU generator was reused for a 2-GPU suite and the other way round); synthesis seeds every image and
    the segmenters train on rank 0 alone, so only the generator re-keys directly."""
    from bench.engine import graph_hashes
    from bench.stages import STAGE_VERSIONS

    def graph(*sets: str) -> tuple[dict, dict[str, str]]:
        nodes = build_graph(load_suite(REPO / "suites" / "tests.yaml", list(sets)))
        return {n.key: n for n in nodes}, graph_hashes(nodes, STAGE_VERSIONS)

    one_nodes, one = graph()
    two_nodes, two = graph("resources.gpus=2", "resources.device=cuda")
    assert "processes" not in one_nodes["generator"].spec.hashed()
    assert two_nodes["generator"].spec.hashed()["processes"] == 2
    assert two_nodes["generator"].launcher == "accelerate"
    changed = {k for k in one if one[k] != two[k]}
    assert {"generator", "synthesize[plain,seed=0]", "downstream[crfm,seed=0]"} <= changed
    assert not changed & {"data", "prompts", "autoencoder", "judge", "evaluator", "downstream[real-only,seed=0]"}


def test_files_digest_reads_settled_files_once(tmp_path, monkeypatch):
    """files_digest remembers a file whose mtime is older than RACY_SECONDS under its stat (bench tune builds the
    graph every trial), and reads again once the file changes; a just-written file is never remembered."""
    import os

    from bench import graph

    reads: list[Path] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        reads.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"settled")
    os.utime(weights, (1_000_000_000, 1_000_000_000))
    reads.clear()  # write_bytes opens the file too
    assert graph.files_digest([weights]) == graph.files_digest([weights]) == hashlib.sha256(b"settled").hexdigest()
    assert reads == [weights]
    weights.write_bytes(b"rewritten, longer")  # a new size and mtime: another key
    reads.clear()
    assert graph.files_digest([weights]) == hashlib.sha256(b"rewritten, longer").hexdigest()
    assert graph.files_digest([weights]) == hashlib.sha256(b"rewritten, longer").hexdigest()
    assert reads == [weights] * 2  # modified just now: read each time
    assert graph.files_digest([weights, tmp_path / "missing"]) is None


def test_init_from_keys_the_generator_by_its_weights(tmp_path):
    """generator.init_from: the generator key carries a digest of the saved weights (retraining them at the same path
    re-keys it and what follows); without the key the hashed form is as before. A missing dir is named by preflight."""
    from bench.engine import graph_hashes
    from bench.schema import check_runnable
    from bench.stages import STAGE_VERSIONS

    suite = load_suite(REPO / "suites" / "tests.yaml")
    assert not {"init_from", "init_digest"} & set(_nodes("tests")["generator"].spec.hashed())
    before = graph_hashes(build_graph(suite), STAGE_VERSIONS)
    saved = tmp_path / "pretrained" / "generator"
    saved.mkdir(parents=True)
    (saved / "config.json").write_text("{}")
    (saved / "transformer.safetensors").write_bytes(b"weights one")
    warm = load_suite(REPO / "suites" / "tests.yaml", [f"generator.init_from={saved}"])
    one = graph_hashes(build_graph(warm), STAGE_VERSIONS)
    (saved / "transformer.safetensors").write_bytes(b"weights two")
    two = graph_hashes(build_graph(warm), STAGE_VERSIONS)
    for after in (one, two):
        changed = {k for k in before if before[k] != after[k]}
        assert "generator" in changed and "downstream[plain,seed=0]" in changed
        assert not changed & {"data", "autoencoder", "judge", "evaluator", "downstream[real-only,seed=0]"}
    assert one["generator"] != two["generator"]
    assert check_runnable(warm) == []
    gone = load_suite(REPO / "suites" / "tests.yaml", [f"generator.init_from={tmp_path / 'nowhere'}"])
    assert build_graph(gone)  # the graph still lists (bench validate); the run is refused
    (problem,) = check_runnable(gone)
    assert problem.startswith(f"generator.init_from: {tmp_path / 'nowhere'} holds no saved generator "
                              "(config.json and transformer.safetensors)")
    from bench.schema.sections import SAVED_GENERATOR_FILES
    from todsynth.models.generator import CONFIG_FILE, TRANSFORMER_FILE

    assert SAVED_GENERATOR_FILES == (CONFIG_FILE, TRANSFORMER_FILE)  # the suite checks what the loader reads
