"""Suite files: schema errors with key paths, --set overrides, matrix expansion, built-in default, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.schema import KNOWN_METRICS, check_runnable, resolve_variants
from bench.suites import (
    SuiteError,
    apply_overrides,
    builtin_suite_path,
    config_hash,
    load_suite,
    resolve_suite_path,
    validate_data,
)

REPO = Path(__file__).resolve().parent.parent


def _problems(data) -> list[str]:
    with pytest.raises(SuiteError) as info:
        validate_data(data, "s.yaml")
    return info.value.problems


def test_shipped_suites_validate(monkeypatch):
    monkeypatch.delenv("TODSYNTH_LOVEDA_ROOT", raising=False)
    monkeypatch.delenv("TODSYNTH_SD3_DIR", raising=False)
    for name in ("smoke", "loveda", "tests"):
        suite = load_suite(REPO / "suites" / f"{name}.yaml")
        assert suite.name == name
    smoke = load_suite(REPO / "suites" / "smoke.yaml")
    variants = {v.name: v for v in resolve_variants(smoke)}
    assert list(variants) == ["real-only", "plain", "crfm", "crfm-paper", "perfect"]
    assert variants["perfect"].kind == "rerender"  # the ceiling: a perfect generator's images for the same masks
    # crfm: the unclamped setting measured for the tiny preset; crfm-paper: the release's, clamp re-enabled
    assert (variants["crfm"].crfm.rectified_step, variants["crfm"].crfm.clamp) == (12, None)
    paper = variants["crfm-paper"].crfm
    assert (paper.rectified_step, paper.max_step_size, paper.step_scheme, paper.clamp) == (4, 0.1, "LD", 1.0)
    assert variants["plain"].crfm.rectified_step == 0
    assert smoke.judge.model != smoke.evaluator.model or smoke.judge.seed != smoke.evaluator.seed


def test_builtin_smoke_is_the_repo_copy():
    assert builtin_suite_path().read_bytes() == (REPO / "suites" / "smoke.yaml").read_bytes()
    assert resolve_suite_path(None) == builtin_suite_path()
    assert resolve_suite_path("no/such/dir/smoke.yaml") == builtin_suite_path()
    with pytest.raises(SuiteError, match="file not found"):
        resolve_suite_path("no/such/other.yaml")


def test_loveda_protocol(monkeypatch, tmp_path):
    monkeypatch.delenv("TODSYNTH_LOVEDA_ROOT", raising=False)
    monkeypatch.delenv("TODSYNTH_SD3_DIR", raising=False)
    suite = load_suite(REPO / "suites" / "loveda.yaml")
    names = [v.name for v in resolve_variants(suite)]
    assert names == ["real-only", "plain", "crfm-rs0", "crfm-rs2", "crfm-rs4", "crfm-rs6"]
    rs = {v.name: v.crfm.rectified_step for v in resolve_variants(suite)}
    assert rs["crfm-rs6"] == 6 and rs["crfm-rs0"] == 0
    assert suite.sampling.num_inference_steps == 23 and suite.crfm.step_scheme == "LD"
    assert suite.downstream.ratio == 3.0 and suite.downstream.freemask.enabled
    assert suite.downstream.model == "deeplabv3plus-r50" and suite.resources.gpus > 1
    assert {o.metric for o in suite.tune.objectives} == {"mask_miou", "fid"}
    assert set(suite.tune.search_space) == {"crfm.rectified_step", "crfm.max_step_size", "crfm.step_scheme"}
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on the suite's 4-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    problems = check_runnable(suite)
    assert len(problems) == 2
    assert problems[0].startswith("dataset.root: not set") and "TODSYNTH_LOVEDA_ROOT" in problems[0]
    assert problems[1].startswith("generator.sd3_dir: not set") and "TODSYNTH_SD3_DIR" in problems[1]
    # env vars fill the paths; a dir without the expected content is still named
    monkeypatch.setenv("TODSYNTH_LOVEDA_ROOT", str(tmp_path / "loveda"))
    monkeypatch.setenv("TODSYNTH_SD3_DIR", str(tmp_path / "sd3"))
    suite = load_suite(REPO / "suites" / "loveda.yaml")
    assert suite.dataset.root == tmp_path / "loveda"
    problems = check_runnable(suite)
    assert str(tmp_path / "loveda") in problems[0] and str(tmp_path / "sd3") in problems[1]


def test_a_run_without_synthesis_needs_no_generator_weights(monkeypatch):
    """Only what a run reads is required: real-only needs the data, not SD3.5, a judge checkpoint or Inception."""
    monkeypatch.delenv("TODSYNTH_SD3_DIR", raising=False)
    monkeypatch.delenv("TODSYNTH_LOVEDA_ROOT", raising=False)
    suite = load_suite(REPO / "suites" / "loveda.yaml", [
        "variants=[{name: real-only, kind: baseline}]", "tune=null", "matrix=null", "resources.gpus=1", "resources.device=auto",
        "judge.checkpoint=/nowhere/judge.pth", "fid.extractor=inception"])
    assert [p.split(":")[0] for p in check_runnable(suite, _stages(suite))] == ["dataset.root"]
    with_synthesis = load_suite(REPO / "suites" / "loveda.yaml", [
        "variants=[{name: real-only, kind: baseline}, {name: plain}]", "tune=null", "matrix=null", "resources.gpus=1", "resources.device=auto",
        "judge.checkpoint=/nowhere/judge.pth", "fid.extractor=inception"])
    assert [p.split(":")[0] for p in check_runnable(with_synthesis, _stages(with_synthesis))] == [
        "dataset.root", "generator.sd3_dir", "judge.checkpoint", "fid.inception_weights"]
    assert check_runnable(suite) == check_runnable(with_synthesis)  # no stages given: every stage's weights (bench tune)


def test_a_missing_inception_file_is_named_under_auto(monkeypatch, tmp_path):
    """fid.extractor auto falls back to the evaluator's features only when no weights are named, not for a bad path."""
    monkeypatch.delenv("TODSYNTH_INCEPTION_WEIGHTS", raising=False)
    assert not check_runnable(load_suite(REPO / "suites" / "smoke.yaml"))
    gone = load_suite(REPO / "suites" / "smoke.yaml", [f"fid.inception_weights={tmp_path / 'inception.pt'}"])
    assert [p.split(":")[0] for p in check_runnable(gone)] == ["fid.inception_weights"]
    monkeypatch.setenv("TODSYNTH_INCEPTION_WEIGHTS", str(tmp_path / "env.pt"))  # the environment's path, the same
    assert [p.split(":")[0] for p in check_runnable(load_suite(REPO / "suites" / "smoke.yaml"))] == [
        "fid.inception_weights"]


def _stages(suite):
    from bench.graph import build_graph

    return {n.stage for n in build_graph(suite)}


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"name": "x", "bogus": 1}, "bogus: unknown key"),
        ({"name": "x", "sampling": {"num_inference_steps": "many"}}, "sampling.num_inference_steps: Input should be a valid integer"),
        ({"name": "x", "sampling": {"num_inference_steps": -2}}, "sampling.num_inference_steps: must be an int >= 1, got -2"),
        ({"name": "x", "sampling": {"num_inference_steps": 0}}, "sampling.num_inference_steps: must be an int >= 1, got 0"),
        ({"name": "x", "variants": [{"name": "a", "crfm": {"rectified_step": -1}}]}, "variants[0].crfm.rectified_step: must be an int >= 0, got -1"),
        ({"name": "x", "generator": {"preset": "huge"}}, "generator.preset: Input should be 'tiny' or 'sd3.5-medium'"),
        ({"name": "x", "judge": {"model": "unet"}}, "judge.model: Input should be"),
        ({"name": "x", "crfm": {"step_scheme": "XX"}}, "crfm.step_scheme: Input should be"),
        ({"name": "x", "metrics": [{"name": "psnr"}]}, "metrics[0]: unknown metric 'psnr'"),
        ({"name": "x", "metrics": [{"name": "fid", "higher_is_better": True}]}, "fid has higher_is_better=False"),
        ({"name": "x", "seeds": []}, "seeds: needs at least one seed"),
        ({"name": "bad name"}, "name: String should match pattern"),
        ({"variants": [{"name": "a"}]}, "name: Field required"),
        ({"name": "x", "matrix": {"base": {"name": "m"}, "axes": {"crfm.nope": [1]}}}, "axis 'crfm.nope'"),
        ({"name": "x", "dataset": {"kind": "procedural", "root": "/data"}}, "only used with kind: loveda"),
    ],
)
def test_schema_errors_carry_key_paths(data, expected):
    problems = _problems(data)
    assert any(expected in p for p in problems), problems


def test_cross_field_errors():
    data = {
        "name": "x",
        "sampling": {"num_inference_steps": 23},
        "variants": [
            {"name": "real", "kind": "baseline"},
            {"name": "a"},
            {"name": "b", "crfm": {"rectified_step": 30}},
            {"name": "a"},
            {"name": "real2", "kind": "baseline"},
        ],
        "judge": {"model": "fcn-r18", "seed": 3},
        "evaluator": {"model": "fcn-r18", "seed": 3},
    }
    problems = _problems(data)
    assert "variants[2].crfm.rectified_step: 30 > sampling.num_inference_steps 23" in problems
    assert "variants[3].name: duplicate variant name 'a' (first at variants[1])" in problems
    assert any(p.startswith("variants[4]: a second baseline") for p in problems)
    assert any(p.startswith("evaluator: identical to judge") for p in problems)
    # per-variant steps override lifts the limit for that variant only
    ok = {"name": "x", "sampling": {"num_inference_steps": 4},
          "variants": [{"name": "a", "sampling": {"num_inference_steps": 8}, "crfm": {"rectified_step": 6}}]}
    assert validate_data(ok, "s").name == "x"
    # matrix rows are checked too, with their derived names
    mat = {"name": "x", "sampling": {"num_inference_steps": 4},
           "matrix": {"base": {"name": "crfm"}, "axes": {"crfm.rectified_step": [2, 5]}}}
    assert _problems(mat) == ["matrix[crfm-rs5].crfm.rectified_step: 5 > sampling.num_inference_steps 4"]


def test_matrix_axis_over_crfm_without_crfm_is_refused():
    """A crfm.* axis whose rows all keep rectified_step 0 names one plain variant several times: refused; with a
    rectified_step axis or a CRFM base it is fine."""
    data = {"name": "x", "variants": [{"name": "r", "kind": "baseline"}],
            "matrix": {"base": {"name": "p", "crfm": {"rectified_step": 0}}, "axes": {"crfm.max_step_size": [0.05, 0.5]}}}
    assert _problems(data) == ["matrix.axes.crfm.max_step_size: has no effect: every row's crfm.rectified_step is 0 "
                               "(CRFM off), so the rows would be one plain variant; add a crfm.rectified_step axis or "
                               "set it in matrix.base"]
    data["matrix"]["axes"]["crfm.rectified_step"] = [0, 2]
    assert validate_data(data, "s")
    data["matrix"] = {"base": {"name": "p", "crfm": {"rectified_step": 2}}, "axes": {"crfm.max_step_size": [0.05, 0.5]}}
    assert validate_data(data, "s")


def test_matrix_expansion_names():
    data = {"name": "x", "sampling": {"num_inference_steps": 23},
            "matrix": {"base": {"name": "crfm", "crfm": {"max_step_size": 0.2}},
                       "axes": {"crfm.rectified_step": [2, 4], "crfm.step_scheme": ["C", "LD"]}}}
    variants = resolve_variants(validate_data(data, "s"))
    assert [v.name for v in variants] == ["crfm-rs2-ssC", "crfm-rs2-ssLD", "crfm-rs4-ssC", "crfm-rs4-ssLD"]
    assert all(v.crfm.max_step_size == 0.2 for v in variants)
    named = {**data, "matrix": {**data["matrix"], "names": ["a", "b", "c", "d"]}}
    assert [v.name for v in resolve_variants(validate_data(named, "s"))] == ["a", "b", "c", "d"]
    bad = {**data, "matrix": {**data["matrix"], "names": ["a"]}}
    assert any("1 names for 4 combinations" in p for p in _problems(bad))


def test_overrides_applied_before_validation(tmp_path):
    base = {"name": "x", "variants": [{"name": "a"}, {"name": "b"}]}
    out = apply_overrides(base, ["sampling.num_inference_steps=8", "variants.1.crfm.rectified_step=3",
                                 "seeds=[1, 2]", "description=hello world"])
    assert out["sampling"] == {"num_inference_steps": 8}
    assert out["variants"][1]["crfm"] == {"rectified_step": 3}
    assert out["seeds"] == [1, 2] and out["description"] == "hello world"
    assert base == {"name": "x", "variants": [{"name": "a"}, {"name": "b"}]}  # input untouched
    with pytest.raises(SuiteError, match="not key.path=value"):
        apply_overrides(base, ["novalue"])
    with pytest.raises(SuiteError, match="not an index"):
        apply_overrides(base, ["variants.5.name=z"])
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text("name: x\nvariants: [{name: a}]\nsampling: {num_inference_steps: 4}\n")
    suite = load_suite(suite_file, ["sampling.num_inference_steps=9"], workspace=tmp_path / "w")
    assert suite.sampling.num_inference_steps == 9 and suite.workspace == tmp_path / "w"
    with pytest.raises(SuiteError, match=r"variants\[0\]\.crfm\.rectified_step: 9 > sampling.num_inference_steps 4"):
        load_suite(suite_file, ["variants.0.crfm.rectified_step=9"])
    with pytest.raises(SuiteError, match="unknown key"):
        load_suite(suite_file, ["sampling.steps=9"])


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"name: [x\n", "YAML syntax error at line 2"),
        (b"- a\n- b\n", "top level is a list"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a UTF-8 text file"),
        (b"name: x\x00\n", "NUL bytes"),
        (b"name: x\nz: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),  # was a RecursionError
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, content, expected):
    f = tmp_path / "s.yaml"
    f.write_bytes(content)
    with pytest.raises(SuiteError) as info:
        load_suite(f)
    assert len(info.value.problems) == 1 and expected in info.value.problems[0]
    assert str(f) in str(info.value) and "\n" not in str(info.value)


def test_defaults_and_tracking_paths(tmp_path):
    suite = validate_data({"name": "x", "variants": [{"name": "a"}], "workspace": str(tmp_path)}, "s")
    assert suite.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert suite.artifact_location == str(tmp_path / "mlartifacts")
    assert suite.experiment == "todsynth/x"
    assert suite.evaluator.model != suite.judge.model and suite.evaluator.seed != suite.judge.seed
    assert [m.name for m in suite.metrics] == list(KNOWN_METRICS)
    assert suite.generator.text_encoder == "tiny"


def test_config_hash_is_stable_and_sensitive():
    a = validate_data({"name": "x", "variants": [{"name": "a"}]}, "s")
    b = validate_data({"variants": [{"name": "a"}], "name": "x", "seeds": [0]}, "s")  # same after defaults
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 64
    c = validate_data({"name": "x", "variants": [{"name": "a"}], "crfm": {"max_step_size": 0.2}}, "s")
    assert config_hash(c) != config_hash(a)


def test_vocabularies_match_the_library():
    """Schema literals name presets / models / schemes the library actually has."""
    from typing import get_args

    from bench.schema import PresetName, SegModelName
    from todsynth.models.presets import PRESETS
    from todsynth.seg.models import SEG_MODELS

    assert set(get_args(PresetName)) <= set(PRESETS)
    assert set(get_args(SegModelName)) <= set(SEG_MODELS)


def test_generator_train_fields_are_trainconfig_fields():
    import dataclasses

    from bench.schema import GeneratorTrain
    from todsynth.train import TrainConfig

    assert set(GeneratorTrain.model_fields) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_preset_overrides_checked_against_the_preset():
    problems = _problems({"name": "x", "variants": [{"name": "a"}], "generator": {"overrides": {"imagesize": 32}}})
    assert len(problems) == 1 and problems[0].startswith("generator.overrides: ") and "imagesize" in problems[0]
    assert validate_data({"name": "x", "variants": [{"name": "a"}], "generator": {"overrides": {"image_size": 32}}}, "s")
    # the training budget in the overrides: keys and values checked before any work, as the generator stage reads them
    bad = _problems({"name": "x", "variants": [{"name": "a"}], "generator": {"overrides": {"train": {"stepz": 9}}}})
    assert len(bad) == 1 and bad[0].startswith("generator.overrides.train: ") and "stepz" in bad[0]
    bad = _problems({"name": "x", "variants": [{"name": "a"}],
                     "generator": {"overrides": {"train": {"timestep_sampling": "cosine"}}}})
    assert len(bad) == 1 and "timestep_sampling" in bad[0]
    assert validate_data({"name": "x", "variants": [{"name": "a"}],
                          "generator": {"overrides": {"train": {"logit_mean": -0.5}}}}, "s")


def test_partial_evaluator_keeps_the_evaluators_defaults():
    """evaluator: {iters: 500} fills in the evaluator's defaults (deeplabv3plus-r18, seed 1), not the judge's: before,
    it silently became an fcn-r18 of seed 0, the judge's architecture."""
    base = {"name": "x", "variants": [{"name": "a"}]}
    default = validate_data(base, "s").evaluator
    partial = validate_data({**base, "evaluator": {"iters": 500}}, "s").evaluator
    assert (default.model, default.seed, default.iters) == ("deeplabv3plus-r18", 1, 200)
    assert (partial.model, partial.seed, partial.iters) == ("deeplabv3plus-r18", 1, 500)
    judge = validate_data({**base, "judge": {"iters": 500}}, "s").judge
    assert (judge.model, judge.seed) == ("fcn-r18", 0)


def test_segmenter_lr_defaults_to_its_optimizers():
    """lr left out is the optimizer's default, as `todsynth seg train` has it (0.01 SGD, 1e-3 AdamW); before, a suite's
    AdamW segmenter silently trained at SGD's 0.01, ten times the CLI's rate."""
    from todsynth.seg.defaults import SEG_DEFAULT_LR

    base = {"name": "x", "variants": [{"name": "a"}]}
    adamw = validate_data({**base, "judge": {"optimizer": "adamw"}, "evaluator": {"optimizer": "adamw"},
                           "downstream": {"optimizer": "adamw"}}, "s")
    assert adamw.judge.lr == adamw.evaluator.lr == adamw.downstream.lr == SEG_DEFAULT_LR["adamw"] == 1e-3
    plain = validate_data(base, "s")
    assert plain.judge.lr == plain.downstream.lr == SEG_DEFAULT_LR["sgd"] == 0.01
    assert validate_data({**base, "judge": {"optimizer": "adamw", "lr": 0.05}}, "s").judge.lr == 0.05


def test_train_override_clashes_are_named():
    """A budget key in generator.overrides.train that another suite key sets is refused, not silently dropped; a class
    count other than LoveDA's is refused before any work."""
    def gen(**g):
        return {"name": "x", "variants": [{"name": "a"}], "generator": g}

    assert validate_data(gen(overrides={"train": {"steps": 200}}), "s")  # the budget alone: fine
    assert validate_data(gen(train={"lr": 1e-3}, overrides={"train": {"steps": 200}}), "s")  # different keys: fine
    bad = _problems(gen(train={"steps": 100}, overrides={"train": {"steps": 200}}))
    assert bad == ["generator.overrides.train.steps: generator.train.steps sets it too (and wins); set it in one place"]
    bad = _problems(gen(overrides={"train": {"seed": 3}}))  # generator.train.seed defaults to 0 and always applies
    assert bad == ["generator.overrides.train.seed: generator.train.seed (default 0) applies instead; set it there"]
    # the autoencoder's budget likewise (before: dropped, and an unknown key ignored)
    assert validate_data(gen(overrides={"vae_train": {"steps": 20}}), "s")
    bad = _problems(gen(vae_train={"steps": 10}, overrides={"vae_train": {"steps": 20}}))
    assert bad == ["generator.overrides.vae_train.steps: generator.vae_train.steps sets it too (and wins); set it in "
                   "one place"]
    assert _problems(gen(overrides={"vae_train": {"seed": 3}})) == [
        "generator.overrides.vae_train.seed: generator.vae_train.seed (default 0) applies instead; set it there"]
    # two preset keys the generator stage sets itself (before: accepted, re-keyed, and never used)
    assert _problems(gen(overrides={"vae_path": "/x/vae"})) == [
        "generator.overrides.vae_path: preset tiny's VAE is the autoencoder stage's output, which replaces it; remove "
        "the key"]
    assert _problems(gen(train={"mask_init": "fresh"}, overrides={"mask_stream": {"init": "image"}})) == [
        "generator.overrides.mask_stream.init: generator.train.mask_init sets it too (and wins); set it in one place"]
    assert validate_data(gen(overrides={"mask_stream": {"init": "fresh"}}), "s")  # one place: fine
    assert _problems(gen(overrides={"vae_train": {"stepz": 3}})) == [
        "generator.overrides: preset 'tiny': unknown vae_train key(s) ['stepz']; known keys: ['batch_size', "
        "'kl_weight', 'lr', 'seed', 'steps']"]
    # the generator's choices (before: `bench validate` said ok, and the generator stage failed building the model)
    assert _problems(gen(overrides={"prediction": "eps"})) == [
        "generator.overrides: preset 'tiny': prediction='eps' must be one of ('velocity', 'sample')"]
    assert _problems(gen(overrides={"mask_stream": {"encoding": "rgb"}})) == [
        "generator.overrides: preset 'tiny': mask_stream.encoding='rgb' must be one of ('grey', 'onehot')"]
    # the preset's class count: every suite dataset is LoveDA-format (7 classes); before, the generator stage failed
    assert _problems(gen(overrides={"num_classes": 5})) == [
        "generator.overrides.num_classes: 5 is not the 7 LoveDA classes every suite dataset has"]
    bad = _problems(gen(overrides={"train": {"init_from": "/x", "vae_dir": "/y"}}))  # TrainConfig.from_preset's rule
    assert bad == ["generator.overrides.train: preset 'tiny': train key(s) ['init_from', 'vae_dir'] name what the run "
                   "starts from (its preset, VAE or weights), not its budget; give them to the run itself"]


def test_sampling_and_crfm_sections_are_the_library_configs():
    """The suite's sampling:/crfm: fields, types and defaults come from SamplerConfig/CRFMConfig (declared once)."""
    import dataclasses

    from bench.schema import CRFM, Sampling
    from todsynth.sample.config import CRFMConfig, SamplerConfig

    for section, config, left_out in ((Sampling, SamplerConfig, {"precision"}),
                                      (CRFM, CRFMConfig, {"ignore_index", "micro_batch", "return_x0"})):
        declared = [f for f in dataclasses.fields(config) if f.name not in left_out]
        assert list(section.model_fields) == [f.name for f in declared]
        assert {k: v.default for k, v in section.model_fields.items()} == {f.name: f.default for f in declared}
        assert section().to_config() == config()
    # the config's own rule is the schema's (one message, under the key)
    with pytest.raises(ValueError, match="CRFMConfig.skip_below_error must be in"):
        CRFMConfig(skip_below_error=2.0)
    assert _problems({"name": "x", "crfm": {"skip_below_error": 2.0}}) == [
        "crfm.skip_below_error: must be in [0, 1] or None, got 2.0"]


def test_variant_override_is_a_partial_mapping_where_null_is_a_value():
    """A key left out keeps the suite default; `null` is a value (clamp: null turns clamping off)."""
    base = {"name": "x", "crfm": {"rectified_step": 2, "clamp": 0.5}, "sampling": {"num_inference_steps": 4}}
    suite = validate_data({**base, "variants": [
        {"name": "keep"}, {"name": "off", "crfm": {"clamp": None}}, {"name": "rs0", "crfm": {"rectified_step": 0}}]}, "s")
    v = {r.name: r for r in resolve_variants(suite)}
    assert (v["keep"].crfm.clamp, v["keep"].crfm.rectified_step) == (0.5, 2)
    assert (v["off"].crfm.clamp, v["off"].crfm.rectified_step) == (None, 2)
    assert (v["rs0"].crfm.clamp, v["rs0"].crfm.rectified_step) == (0.5, 0)
    assert suite.variants[1].crfm.overrides() == {"clamp": None} and suite.variants[0].crfm.overrides() == {}
    # a matrix row keeps the same rule: the base's given keys, then the axis
    mat = validate_data({**base, "variants": [], "matrix": {
        "base": {"name": "m", "crfm": {"clamp": None}}, "axes": {"crfm.rectified_step": [0, 1]}}}, "s")
    assert [(r.name, r.crfm.clamp, r.crfm.rectified_step) for r in resolve_variants(mat)] == [
        ("m-rs0", None, 0), ("m-rs1", None, 1)]
    # a baseline takes no settings, not even a null one
    assert _problems({**base, "variants": [{"name": "b", "kind": "baseline", "crfm": {"clamp": None}}]}) == [
        "variants[0]: a baseline variant takes no sampling/crfm settings"]


@pytest.mark.parametrize(("device", "gpus", "visible", "expected"), [
    ("auto", 1, 0, None),  # the CPU when there is no GPU
    ("cpu", 1, 2, None),
    ("cuda", 1, 1, None),
    ("auto", 2, 2, None),
    ("cuda", 1, 0, "resources.device: cuda, but torch sees no CUDA GPU here"),
    ("auto", 2, 0, "resources.gpus: 2, but torch sees 0 CUDA GPU(s) here; set gpus to at most 1"),
    ("cuda", 4, 2, "resources.gpus: 4, but torch sees 2 CUDA GPU(s) here; set gpus to at most 2"),
])
def test_gpu_problem_names_gpus_this_machine_lacks(monkeypatch, device, gpus, visible, expected):
    import torch

    from bench.schema.checks import gpu_problem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    problem = gpu_problem(device, gpus)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected), problem


def test_workspace_problem_names_a_file_on_the_path_and_an_unwritable_folder(tmp_path, monkeypatch):
    from bench.schema.checks import workspace_problem

    assert workspace_problem(tmp_path / "new" / "ws") is None  # created by the run, inside a writable folder
    (tmp_path / "f").write_text("x")
    assert workspace_problem(tmp_path / "f" / "ws") == (
        f"workspace: {tmp_path / 'f'} is a file, not a folder; pick another --workspace (or the suite's workspace key)")
    monkeypatch.setattr("os.access", lambda path, mode: False)  # as a user without write permission (tests run as root)
    problem = workspace_problem(tmp_path / "new" / "ws")
    assert problem == f"workspace: {tmp_path} is not writable by this user; pick another --workspace (or the suite's workspace key)"
    assert not (tmp_path / "new").exists()  # a check creates nothing


@pytest.mark.parametrize(("change", "message"), [
    ({"judge": {"lr": float("inf")}}, "judge.lr: Input should be a finite number"),
    ({"downstream": {"ratio": float("inf")}}, "downstream.ratio: Input should be a finite number"),
    ({"crfm": {"max_step_size": float("nan")}}, "crfm.max_step_size: Input should be a finite number"),
    ({"seeds": [0, -1]}, "seeds[1]: Input should be greater than or equal to 0"),
    ({"dataset": {"procedural": {"seed": -1}}}, "dataset.procedural.seed: Input should be greater than or equal to 0"),
])
def test_nan_inf_and_negative_seeds_are_schema_errors(change, message):
    """Before, `bench validate` said ok: an infinite learning rate trained NaN weights and exited 0, an infinite ratio
    crashed the graph, and a negative seed failed inside a stage without naming its key."""
    problems = _problems({"name": "x", "variants": [{"name": "a"}], **change})
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize("entry", ["x", "cache", "mlartifacts", "x/results.json"])
def test_workspace_entries_of_the_wrong_kind_are_named_before_the_run(tmp_path, entry):
    """A file where the run keeps a folder (or a folder where it writes results.json) was a traceback, the last one
    after every stage had computed."""
    suite = validate_data({"name": "x", "variants": [{"name": "a"}], "workspace": str(tmp_path)}, "s")
    path = tmp_path / entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if entry.endswith(".json") else path.write_text("in the way")
    assert any(p.startswith(f"workspace: {path} is a") for p in check_runnable(suite)), check_runnable(suite)
