"""Data-efficiency suites (``dataset.subsets``): schema, per-size graph, the fewshot protocol, the report's numbers."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from bench import stages
from bench.cache import CachedStage
from bench.engine import graph_hashes, run_suite
from bench.graph import build_graph
from bench.report import write_report
from bench.report.efficiency import data_efficiency, efficiency_table, render_efficiency_csv
from bench.results import variant_runs
from bench.schema import resolve_variants
from bench.specs import RerenderDownstreamSpec
from bench.stages.common import split_samples, train_samples
from bench.suites import SuiteError, load_suite, validate_data

REPO = Path(__file__).resolve().parent.parent


def _suite(data, ws, **dataset):
    data = json.loads(json.dumps(data))
    data["dataset"] = {**data["dataset"], **dataset}
    data["workspace"] = str(ws)
    return validate_data(data, "test")


# ---------------------------------------------------------------------- the protocol of suites/fewshot.yaml
def test_fewshot_suite_protocol(tmp_path):
    suite = load_suite(REPO / "suites" / "fewshot.yaml", workspace=tmp_path / "ws")
    ds = suite.dataset
    assert ds.subsets == [16, 48, 160] and ds.limit is None  # synthesis from every mask of the subset
    assert ds.kind == "procedural" and ds.procedural.n_train >= max(ds.subsets)
    assert len(suite.seeds) >= 3
    kinds = {v.name: (v.kind, v.crfm.rectified_step) for v in resolve_variants(suite, per_subset=False)}
    assert kinds["real-only"][0] == "baseline" and kinds["plain"] == ("synthetic", 0)
    assert kinds["crfm"][0] == "synthetic" and kinds["crfm"][1] > 0
    assert kinds["perfect"][0] == "rerender"
    assert "evaluator_real_miou" in {m.name for m in suite.metrics}
    assert suite.tune is None and not (tmp_path / "ws").exists()

    nodes = build_graph(suite)
    by_key = {n.key: n for n in nodes}
    assert len(by_key) == len(nodes)
    for n in ds.subsets:  # what learns from labelled data exists once per size, on that subset only
        for stage in ("autoencoder", "generator", "judge"):
            node = by_key[f"{stage}[n={n}]"]
            assert node.spec.subset.n == n and node.subset == n
    for shared in ("data", "prompts", "evaluator", "real_features"):  # the fixed instrument and the data
        assert getattr(by_key[shared].spec, "subset", None) is None and by_key[shared].subset is None
    assert not any(k in by_key for k in ("generator", "judge", "autoencoder"))
    variants = [f"{v}@n{n}" for n in ds.subsets for v in ("real-only", "plain", "crfm")]
    for v in variants:
        for seed in suite.seeds:
            n = int(v.rpartition("@n")[2])
            down = by_key[f"downstream[{v},seed={seed}]"]
            assert down.spec.subset.n == n and down.variant == v and down.seed == seed
            if v.startswith("real-only"):
                assert f"synthesize[{v},seed={seed}]" not in by_key
                continue
            syn = by_key[f"synthesize[{v},seed={seed}]"]
            assert syn.spec.subset.n == n and syn.spec.limit is None and syn.deps["generator"] == f"generator[n={n}]"
            assert down.deps["judge"] == f"judge[n={n}]"  # FreeMask with the subset's judge
            assert by_key[f"evaluate[{v},seed={seed}]"].deps["evaluator"] == "evaluator"
            if v.startswith("crfm"):
                assert syn.deps["judge"] == f"judge[n={n}]"
    for n in ds.subsets:  # the ceiling: the subset's masks painted anew, at the synthetic variants' ratio
        perfect = by_key[f"downstream[perfect@n{n},seed=0]"]
        assert perfect.spec.ratio == suite.downstream.ratio and perfect.spec.subset.n == n
        assert perfect.deps == {"data": "data"}
        # and its painted images are measured like the synthetic ones, by the same fixed evaluator
        assert by_key[f"evaluate[perfect@n{n},seed=0]"].deps["downstream"] == f"downstream[perfect@n{n},seed=0]"
    assert len(nodes) == 2 + 3 * len(ds.subsets) + 2 + len(ds.subsets) * len(suite.seeds) * (1 + 2 * 3 + 2)
    hashes = graph_hashes(nodes, stages.STAGE_VERSIONS)
    assert len(set(hashes.values())) == len(nodes)  # nothing is shared by mistake across sizes


def test_dry_run_lists_the_graph_and_creates_nothing(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["bench", "run", str(REPO / "suites" / "fewshot.yaml"), "--dry-run",
                                   "--workspace", str(tmp_path / "ws")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "generator[n=16]" in res.output and "downstream[crfm@n160,seed=2]" in res.output
    assert "94 to compute, 0 cached" in res.output and "evaluate[perfect@n16,seed=0]" in res.output
    assert not (tmp_path / "ws").exists()


# ---------------------------------------------------------------------- schema and graph
@pytest.mark.parametrize(("dataset", "extra", "message"), [
    ({"subsets": []}, {}, "dataset.subsets: needs at least one size"),
    ({"subsets": [2, 2]}, {}, "dataset.subsets: duplicate size"),
    ({"subsets": [0]}, {}, "dataset.subsets[0]: Input should be greater than 0"),
    ({"subsets": [4, 9]}, {}, "dataset.subsets: 9 > dataset.procedural.n_train 8"),
    ({"subsets": [4]}, {"judge": {"checkpoint": "/x/judge.pth"}}, "judge.checkpoint: with dataset.subsets"),
    ({"subsets": [4]}, {"tune": {"search_space": {"crfm.rectified_step": {"type": "int", "low": 0, "high": 2}},
                                 "objectives": ["mask_miou"]}}, "tune: not supported together with dataset.subsets"),
])
def test_bad_subsets(tiny_suite_data, tmp_path, dataset, extra, message):
    data = {**tiny_suite_data, **extra, "dataset": {**tiny_suite_data["dataset"], **dataset}}
    with pytest.raises(SuiteError) as exc:
        validate_data(data, "test")
    assert any(message in p for p in exc.value.problems), exc.value.problems


ORACLE = {"name": "oracle", "kind": "oracle"}


@pytest.mark.parametrize(("subsets", "variants", "message"), [
    (None, [ORACLE], "variants[3]: an oracle variant needs dataset.subsets"),
    ([4, 8], [ORACLE], "dataset.subsets: 8 is every training scene"),
    ([4], [{**ORACLE, "crfm": {"rectified_step": 1}}], "variants[3]: an oracle variant takes no sampling/crfm"),
    ([4], [ORACLE, {"name": "oracle2", "kind": "oracle"}], "variants[4]: a second oracle variant"),
])
def test_bad_oracle(tiny_suite_data, subsets, variants, message):
    data = {**tiny_suite_data, "variants": tiny_suite_data["variants"] + variants}
    if subsets is not None:
        data["dataset"] = {**data["dataset"], "subsets": subsets}
    with pytest.raises(SuiteError) as exc:
        validate_data(data, "test")
    assert any(message in p for p in exc.value.problems), exc.value.problems


def test_oracle_graph_and_stage(tiny_suite_data, tmp_path):
    """The oracle trains on the subset + held-out real scenes, as many as synthesis makes, and nothing else."""
    from bench.specs import OracleDownstreamSpec

    data = {**tiny_suite_data, "variants": tiny_suite_data["variants"] + [ORACLE],
            "downstream": {"model": "fcn-tiny", "iters": 2, "batch_size": 2, "ratio": 1.5}}
    suite = _suite(data, tmp_path / "ws", subsets=[2, 4])
    by_key = {n.key: n for n in build_graph(suite)}
    for n, held in ((2, 3), (4, 6)):  # round(1.5 * n): the synthetic variants' image count
        down = by_key[f"downstream[oracle@n{n},seed=0]"]
        assert isinstance(down.spec, OracleDownstreamSpec) and down.spec.held_out == held
        assert down.spec.ratio == 1.5 and down.spec.subset.n == n and down.deps == {"data": "data"}
        assert down.spec.sampler == "repeat-factor-epochs"  # drawn as real-only draws (a key field)
        assert f"synthesize[oracle@n{n},seed=0]" not in by_key and f"evaluate[oracle@n{n},seed=0]" not in by_key
    limited = build_graph(_suite(data, tmp_path / "ws", subsets=[4], limit=2))
    assert next(n for n in limited if n.key == "downstream[oracle@n4,seed=0]").spec.held_out == 3  # 1.5 * 2 masks

    spec = by_key["downstream[oracle@n4,seed=0]"].spec
    data_dir = tmp_path / "data"
    arts = stages.stage_data(by_key["data"].spec, {}, data_dir)
    data_stage = CachedStage(data_dir, {"artifacts": arts, "spec": by_key["data"].spec.hashed()})
    out = stages.stage_downstream(spec, {"data": data_stage}, tmp_path / "down")
    m = out["metrics"]
    assert m["n_held_out"] == 4 and m["n_train_items"] == 8  # 6 wanted, 8 - 4 left in the split
    assert 0.0 <= m["downstream_miou"] <= 1.0
    with pytest.raises(ValueError, match="no held-out scene"):
        stages.stage_downstream(dataclasses.replace(spec, subset=dataclasses.replace(spec.subset, n=8)),
                                {"data": data_stage}, tmp_path / "down2")


def test_without_subsets_the_graph_is_unchanged(tiny_suite_data, tmp_path):
    nodes = build_graph(_suite(tiny_suite_data, tmp_path / "ws"))
    assert [n.key for n in nodes][:7] == ["data", "prompts", "autoencoder", "generator", "judge", "evaluator",
                                         "real_features"]
    assert all(getattr(n.spec, "subset", None) is None and n.subset is None for n in nodes)
    assert {n.variant for n in nodes} == {None, "real-only", "plain", "crfm"}


def test_stages_train_on_the_subset(tmp_path):
    """``train_samples``: the whole split without ``subset``, else labelled_subset (the nested draw); Val untouched."""
    from bench.schema import Procedural
    from bench.specs import DataSpec, Subset
    from todsynth.data.subset import DRAW_RULE, labelled_subset

    spec = DataSpec(kind="procedural", domains=["Urban", "Rural"],
                    procedural=Procedural(n_train=8, n_val=2, size=16, seed=0))
    arts = stages.stage_data(spec, {}, tmp_path)
    data = CachedStage(tmp_path, {"artifacts": arts, "spec": spec.hashed()})
    train = split_samples(data, "Train")
    assert train_samples(None, data) == train
    sub = Subset(n=4, seed=0, rule=DRAW_RULE)
    assert train_samples(sub, data) == labelled_subset(train, 4, 0)
    assert {s.domain for s in train_samples(sub, data)} == {"Urban", "Rural"}
    with pytest.raises(ValueError, match="rule"):
        train_samples(Subset(n=4, seed=0, rule="other"), data)


# ---------------------------------------------------------------------- the whole path with fake stages
PLAIN_GAIN = {0: 0.01, 1: 0.03}  # / n: plain helps, consistently over seeds
CRFM_GAIN = {0: 0.04, 1: -0.02}  # crfm: mean 0.01, but the seeds disagree
ORACLE_GAIN = 0.05
RERENDER_GAIN = 0.04
PERFECT = {"name": "perfect", "kind": "rerender"}


def fewshot_stages(fake_stages):
    """The harness fakes, with a downstream mIoU that depends on n, seed and the variant (known differences)."""
    fns, calls = fake_stages

    def downstream(spec, inputs, out_dir):
        calls.append("downstream")
        n, seed = spec.subset.n, spec.seed
        miou = 0.3 + 0.01 * n + 0.02 * seed
        if "synthesize" in inputs:
            rs = (inputs["synthesize"].marker["spec"]["crfm"] or {}).get("rectified_step", 0)
            miou += PLAIN_GAIN[seed] / n if rs == 0 else CRFM_GAIN[seed]
        elif getattr(spec, "held_out", None):  # the oracle: held-out real scenes
            miou += ORACLE_GAIN
        elif isinstance(spec, RerenderDownstreamSpec):  # the training masks painted anew
            miou += RERENDER_GAIN
        return {"metrics": {"downstream_miou": miou, "downstream_oa": 0.8, "downstream_macc": 0.7,
                            "per_class_iou": {"building": miou}}}

    return {**fns, "downstream": downstream}


def test_fewshot_path_with_fakes(tiny_suite_data, bench_workspace, fake_stages, tmp_path):
    suite = _suite({**tiny_suite_data, "seeds": [0, 1], "variants": tiny_suite_data["variants"] + [ORACLE, PERFECT]},
                   bench_workspace, subsets=[4, 2])
    out = run_suite(suite, stage_fns=fewshot_stages(fake_stages), stage_versions={}, progress=False)
    res = out.results
    assert res["subsets"] == [4, 2]
    rows = {v["name"]: v for v in res["variants"]}
    assert list(rows) == [f"{v}@n{n}" for n in (4, 2) for v in ("real-only", "plain", "crfm", "oracle", "perfect")]
    for name, v in rows.items():
        assert v["n"] == int(name.rpartition("@n")[2]) and v["declared"] == name.partition("@")[0]
        assert v["params"]["subset"] == {"n": v["n"], "seed": 0}
        assert ("evaluator_real_miou" in v["metrics"]) == (v["kind"] in ("synthetic", "rerender"))  # not the oracle
    assert rows["oracle@n4"]["kind"] == "oracle" and rows["oracle@n4"]["params"]["ratio"] == 3.0
    runs = {(r["variant"], r["seed"]): r for r in variant_runs(res)}
    assert runs[("oracle@n2", 1)]["metrics"]["downstream_gain"] == pytest.approx(ORACLE_GAIN)
    assert runs[("oracle@n2", 1)]["params"]["ratio"] == 3.0 and "crfm" not in runs[("oracle@n2", 1)]["params"]
    from bench.tracking import find_children, get_run_record

    logged = {r["run_name"]: r for r in find_children(suite.tracking_uri, get_run_record(suite.tracking_uri,
                                                                                         res["mlflow"]["parent_run_id"]))}
    for name, kind in (("oracle@n2", "oracle"), ("perfect@n4", "rerender"), ("plain@n4", "variant")):
        run = logged[f"{name}[seed=0]"]  # a ceiling's run has its own kind (out of the compare filter) and its gain
        assert run["tags"]["todsynth.kind"] == kind and "downstream_gain" in run["metrics"]
    # the rerender ceiling's run carries its painted images' image metrics (their ceilings); the oracle's has none
    assert logged["perfect@n4[seed=0]"]["metrics"]["mask_miou"] == 0.58
    assert "mask_miou" not in logged["oracle@n2[seed=0]"]["metrics"]
    assert json.loads(out.results_file.read_text())["variants"][0]["n"] == 4

    eff = data_efficiency(res)
    assert eff["baseline"] == "real-only" and eff["sizes"] == [2, 4]
    series = {s["variant"]: {p["n"]: p for p in s["points"]} for s in eff["series"]}
    assert set(series) == {"plain", "crfm", "oracle", "perfect"}
    assert [s["kind"] for s in eff["series"]] == ["synthetic", "synthetic", "oracle", "rerender"]
    assert [d for p in series["oracle"].values() for d in p["diffs"]] == pytest.approx([ORACLE_GAIN] * 4)
    assert series["plain"][2]["of_ceiling"] == pytest.approx({"oracle": 0.01 / ORACLE_GAIN,  # plain's mean 0.02 / 2
                                                              "rerender": 0.01 / RERENDER_GAIN})
    assert series["crfm"][4]["of_ceiling"]["oracle"] == pytest.approx(0.01 / ORACLE_GAIN)
    assert series["oracle"][4]["of_ceiling"] == series["perfect"][4]["of_ceiling"] == {}
    for n in (2, 4):
        plain, crfm = series["plain"][n], series["crfm"][n]
        assert plain["seeds"] == crfm["seeds"] == [0, 1]
        assert plain["diffs"] == pytest.approx([0.01 / n, 0.03 / n])
        assert plain["mean"] == pytest.approx(0.02 / n) and plain["std"] == pytest.approx(0.02 / n / 2 ** 0.5)
        assert plain["exceeds"] is True  # 0.02/n > 0.0141/n
        assert crfm["mean"] == pytest.approx(0.01) and crfm["std"] == pytest.approx(0.06 / 2 ** 0.5)
        assert crfm["exceeds"] is False

    report = write_report(suite, tmp_path / "report")
    assert (report / "data_efficiency.png").stat().st_size > 1000
    md = (report / "report.md").read_text()
    section = md[md.index("## Data efficiency"):]
    table = efficiency_table(eff)
    for row in table:
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {row['variant']} |"))
        assert [c.strip() for c in line.strip("|").split("|")][1:] == [row["cells"][n]["text"] for n in (2, 4)]
        assert line.count("†") == (2 if row["variant"] in ("plain", "oracle", "perfect") else 0)
    assert "sample std (ddof 1)" in section and "| variant | n=2 | n=4 |" in section
    with (report / "data_efficiency.csv").open() as f:
        got = {(r["variant"], int(r["n"])): r for r in csv.DictReader(f)}
    assert float(got[("plain", 2)]["mean_diff"]) == series["plain"][2]["mean"]
    assert got[("crfm", 4)]["exceeds_std"] == "false" and got[("plain", 4)]["n_seeds"] == "2"
    assert float(got[("plain", 2)]["of_oracle"]) == series["plain"][2]["of_ceiling"]["oracle"]
    assert float(got[("plain", 2)]["of_rerender"]) == series["plain"][2]["of_ceiling"]["rerender"]
    assert got[("oracle", 2)]["of_oracle"] == got[("perfect", 2)]["of_rerender"] == ""
    assert got[("oracle", 2)]["kind"] == "oracle" and got[("plain", 2)]["kind"] == "synthetic"
    assert "| plain | +0.0100 ± 0.0071 † (20 % of oracle, 25 % of perfect) |" in section
    html = (report / "index.html").read_text()
    assert 'id="efficiency-table"' in html and 'alt="Data efficiency"' in html
    eff = html[html.index('id="efficiency-table"'):]
    eff = eff[:eff.index("</table>")]  # † is a mark, not a win: a loss or a ceiling is never styled best there
    assert "best" not in eff and eff.count('data-exceeds="true"') == 6
    results_csv = list(csv.DictReader(io.StringIO((report / "results.csv").read_text())))
    assert results_csv[0]["n"] == "4" and results_csv[0]["declared"] == "real-only"
    assert "| oracle@n4 | oracle | 0.4000 ± 0.0100 |" in md  # the best mIoU, but a ceiling: never bold
    assert "Rows of kind rerender or oracle are ceilings, not methods" in md
    assert "| perfect@n4 | rerender | 0.3900 ± 0.0100 |" in md
    assert "| crfm@n4 | synthetic | **0.3600 ± 0.0200** |" in md
    oracle = next(r for r in results_csv if r["variant"] == "oracle@n4")
    assert oracle["kind"] == "oracle" and oracle["mask_miou"] == "" and float(oracle["downstream_miou"]) > 0


def _results(seeds, per_seed_miou):
    """A results dict with per-seed downstream mIoU: {(declared, kind, n): [mIoU per seed]}."""
    variants = []
    for (declared, kind, n), values in per_seed_miou.items():
        variants.append({"name": f"{declared}@n{n}", "declared": declared, "kind": kind, "n": n, "metrics": {},
                         "per_seed": [{"seed": s, "metrics": {"downstream_miou": x}} for s, x in zip(seeds, values,
                                                                                                   strict=True)]})
    return {"seeds": seeds, "subsets": sorted({n for _, _, n in per_seed_miou}), "variants": variants}


def test_data_efficiency_one_seed_has_no_std():
    eff = data_efficiency(_results([0], {("real-only", "baseline", 16): [0.5], ("plain", "synthetic", 16): [0.55]}))
    (point,) = eff["series"][0]["points"]
    assert point["mean"] == pytest.approx(0.05) and point["std"] is None and point["exceeds"] is False
    assert efficiency_table(eff)[0]["cells"][16]["text"] == "+0.0500"
    assert point["of_ceiling"] == {}  # no ceiling: no share


def test_data_efficiency_pairs_seeds_and_needs_a_baseline():
    res = _results([0, 1, 2], {("real-only", "baseline", 8): [0.5, 0.6, 0.7],
                               ("crfm", "synthetic", 8): [0.52, 0.58, 0.73]})
    (point,) = data_efficiency(res)["series"][0]["points"]
    assert point["diffs"] == pytest.approx([0.02, -0.02, 0.03])  # per seed, not mean minus mean
    assert point["std"] == pytest.approx(0.026457513, rel=1e-6)  # sample std (ddof 1)
    res["variants"][1]["per_seed"].pop(1)  # a missing seed drops out of the pairing
    (point,) = data_efficiency(res)["series"][0]["points"]
    assert point["seeds"] == [0, 2] and point["diffs"] == pytest.approx([0.02, 0.03])
    assert data_efficiency({**res, "variants": res["variants"][1:]}) is None  # no baseline
    assert data_efficiency({k: v for k, v in res.items() if k != "subsets"}) is None  # no subsets


def test_share_of_the_oracle_only_against_a_positive_ceiling():
    res = _results([0, 1], {("real-only", "baseline", 8): [0.5, 0.6], ("plain", "synthetic", 8): [0.51, 0.62],
                            ("oracle", "oracle", 8): [0.54, 0.66],
                            ("real-only", "baseline", 16): [0.7, 0.7], ("plain", "synthetic", 16): [0.71, 0.71],
                            ("oracle", "oracle", 16): [0.69, 0.7]})
    eff = data_efficiency(res)
    plain = {p["n"]: p for p in eff["series"][0]["points"]}
    assert plain[8]["of_ceiling"] == pytest.approx({"oracle": 0.015 / 0.05})
    assert plain[16]["of_ceiling"] == {}  # the oracle lost at n = 16: no share of a negative ceiling
    cells = efficiency_table(eff)[0]["cells"]
    assert cells[8]["text"] == "+0.0150 ± 0.0071 † (30 % of oracle)" and "oracle" not in cells[16]["text"]


def test_a_loss_prints_no_share_of_the_ceiling():
    res = _results([0, 1], {("real-only", "baseline", 8): [0.5, 0.6], ("plain", "synthetic", 8): [0.48, 0.59],
                            ("perfect", "rerender", 8): [0.52, 0.62]})
    eff = data_efficiency(res)
    (point,) = eff["series"][0]["points"]
    assert point["of_ceiling"] == pytest.approx({"rerender": -0.015 / 0.02})  # the ratio itself stays (CSV)
    assert efficiency_table(eff)[0]["cells"][8]["text"] == "-0.0150 ± 0.0071 †"
    row = next(csv.DictReader(io.StringIO(render_efficiency_csv(eff))))
    assert float(row["of_rerender"]) == pytest.approx(-0.75)


def test_share_of_a_ceiling_needs_a_ceiling_gain_above_its_noise():
    """A synthetic gain is given as a share of a ceiling's only where the ceiling's own gain is positive and exceeds
    one std: +0.005 over a ceiling of +0.0001 ± 0.02 read as "5000 % of perfect" before."""
    from bench.report.efficiency import data_efficiency, efficiency_table

    def row(name, kind, n, values):  # noqa: ANN001, ANN202
        return {"name": f"{name}@n{n}", "declared": name, "kind": kind, "n": n,
                "per_seed": [{"seed": s, "metrics": {"downstream_miou": x}} for s, x in enumerate(values)]}

    results = {"subsets": [16, 48], "variants": [
        row("real-only", "baseline", 16, [0.30, 0.30, 0.30]),
        row("plain", "synthetic", 16, [0.305, 0.306, 0.304]),
        row("perfect", "rerender", 16, [0.32, 0.28, 0.3003]),  # +0.0001 ± 0.02: inside its noise
        row("real-only", "baseline", 48, [0.40, 0.40, 0.40]),
        row("plain", "synthetic", 48, [0.41, 0.41, 0.412]),
        row("perfect", "rerender", 48, [0.42, 0.421, 0.419])]}  # +0.02 ± 0.001
    eff = data_efficiency(results)
    plain = next(s for s in eff["series"] if s["variant"] == "plain")
    assert [p["of_ceiling"] for p in plain["points"]][0] == {}
    assert plain["points"][1]["of_ceiling"]["rerender"] == pytest.approx((0.032 / 3) / 0.02)
    texts = next(r for r in efficiency_table(eff) if r["variant"] == "plain")["cells"]
    assert "%" not in texts[16]["text"] and "53 % of perfect" in texts[48]["text"]
