"""`bench report`: files from a harness run read back through MLflow; numbers equal results.json's."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from bench.engine import run_suite
from bench.report import ReportError, write_report
from bench.report.plots import pareto_front, rectified_panels, rectified_series
from bench.report.tables import best_variants, fmt, render_csv, render_latex, table_rows
from bench.suites import validate_data


def report_stages(fake_stages):
    """The harness's fake stages, with a data stage writing real procedural scenes and a synthesize stage
    writing the real on-disk layout (``copy-<r>/manifest.json`` + LoveDA-layout PNGs), so images can be found."""
    fns, calls = fake_stages

    def data(spec, inputs, out_dir):
        from todsynth.data.procedural import generate_dataset

        calls.append("data")
        root = generate_dataset(out_dir / "data", 4, 2, 32, 0)
        return {"root": root}

    def synthesize(spec, inputs, out_dir):
        from todsynth.data.classes import colorize, reduce_labels
        from todsynth.data.loveda import list_samples

        calls.append("synthesize")
        rs = (spec.crfm.rectified_step if spec.crfm else 0)
        root = inputs["data"].dir / inputs["data"].artifacts["root"]
        copy = out_dir / "copy-0"
        entries = []
        for s in list_samples(root, "Train"):
            mask = np.asarray(Image.open(s.mask_path))
            rgb = colorize(reduce_labels(mask)).astype(np.int16)
            img = np.clip(rgb // 2 + 30 * rs + np.random.default_rng(int(s.id)).integers(0, 40, rgb.shape), 0, 255)
            base = copy / "Train" / s.domain
            (base / "images_png").mkdir(parents=True, exist_ok=True)
            (base / "masks_png").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(base / "images_png" / f"{s.id}.png")
            Image.fromarray(mask).save(base / "masks_png" / f"{s.id}.png")
            entries.append({"id": s.id, "domain": s.domain, "image": f"Train/{s.domain}/images_png/{s.id}.png",
                            "mask": f"Train/{s.domain}/masks_png/{s.id}.png", "source_mask": str(s.mask_path)})
        (copy / "manifest.json").write_text(json.dumps({"images": entries}))
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out_dir / "grid.png")
        return {"copies": [copy], "metrics": {"seconds_per_image": 0.5 + 0.1 * rs}, "mlflow_artifacts": ["grid.png"]}

    return {**fns, "data": data, "synthesize": synthesize}


@pytest.fixture
def ran(tiny_suite_data, bench_workspace, fake_stages):
    """A finished 2-seed run of a 4-variant suite (plain, crfm at 1 and 2 steps, a real-only baseline)."""
    data = {**tiny_suite_data, "seeds": [0, 1], "workspace": str(bench_workspace)}
    data["variants"] = [*data["variants"], {"name": "crfm-rs1", "crfm": {"rectified_step": 1}}]
    suite = validate_data(data, "test")
    outcome = run_suite(suite, stage_fns=report_stages(fake_stages), stage_versions={}, progress=False)
    return suite, outcome


def _md_table(md: str) -> dict[str, dict[str, str]]:
    lines = md[md.index("## Results"):].splitlines()
    rows = [ln for ln in lines if ln.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for ln in rows[2:]:
        cells = [c.strip().strip("*") for c in ln.strip("|").split("|")]
        if len(cells) != len(header):
            break
        out[cells[0]] = dict(zip(header, cells, strict=True))
    return out


def test_report_files_and_numbers_equal_results(ran, tmp_path):
    suite, outcome = ran
    results = json.loads(outcome.results_file.read_text())
    out = write_report(suite, tmp_path / "report")
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "index.html", "results.csv", "results.tex", "rectified_steps.png", "per_class_iou.png",
            "samples.png"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dirs swapped away

    # CSV: raw floats equal results.json exactly
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text()))}
    assert list(rows) == [v["name"] for v in results["variants"]]
    for v in results["variants"]:
        for key in ("downstream_miou", "downstream_oa", "downstream_macc", "fid", "kid", "mask_miou"):
            if key in v["metrics"]:
                assert float(rows[v["name"]][key]) == v["metrics"][key]
                assert float(rows[v["name"]][f"{key}_std"]) == v["metrics_std"][key]
            else:
                assert rows[v["name"]][key] == ""
        for cls, iou in v["metrics"]["per_class_iou"].items():
            assert float(rows[v["name"]][f"iou_{cls}"]) == iou
    assert rows["crfm"]["fid_comparable"] == "false" and rows["crfm"]["fid_extractor"] == "evaluator"

    # Markdown: every cell is the formatted mean ± std of results.json; best per column in bold
    md = (out / "report.md").read_text()
    assert "ceilings, not methods" not in md  # no rerender/oracle row, no note about them
    table = _md_table(md)
    best = best_variants(results)
    for v in results["variants"]:
        cells = table[v["name"]]
        m, s = v["metrics"], v["metrics_std"]
        assert cells["mIoU ↑"] == fmt(m["downstream_miou"], s["downstream_miou"])
        shown_mean, shown_std = (float(x) for x in cells["mIoU ↑"].split(" ± "))
        assert abs(shown_mean - m["downstream_miou"]) <= 5e-5 and abs(shown_std - s["downstream_miou"]) <= 5e-5
        assert cells["mAcc ↑"] == fmt(m["downstream_macc"], s["downstream_macc"])
        if v["kind"] == "synthetic":  # FID up to 100: one decimal for the whole column
            assert cells["FID ↓"] == fmt(m["fid"], s["fid"], 1)
            assert cells["comparable"] == "no" and cells["FID extractor"] == "evaluator"
        else:
            assert cells["FID ↓"] == "–"
    line = next(ln for ln in md.splitlines() if ln.startswith("| crfm |"))
    assert f"**{table['crfm']['FID ↓']}**" in line  # fid 100 - 3*rs: crfm (rs=2) is best (lowest)
    assert best["fid"] == {"crfm"} and best["downstream_miou"] == {"crfm"} and best["seconds_per_image"] == {"plain"}
    assert best["kid"] == set()  # every variant has kid 0.1: a tie of all is nobody's win
    assert f"**{fmt(0.1, 0.0)}**" not in md
    assert "MLflow" in md and outcome.parent_run_id in md and results["config_hash"] in md
    # provenance: no temp path (the workspace is a pytest tmp dir), no GPU count on a CPU run
    prov = dict(ln.strip("|").split("|", 1) for ln in md[md.index("## Provenance"):].splitlines()[4:] if ln)
    prov = {k.strip(): v.strip() for k, v in prov.items()}
    assert str(suite.workspace) not in md and "sqlite mlflow.db in a temporary workspace" in prov["MLflow"]
    assert prov["device"].startswith("cpu") and "gpus" not in prov["device"]

    # HTML: same numbers, images embedded
    html = (out / "index.html").read_text()
    for v in results["variants"]:
        assert f'data-variant="{v["name"]}"' in html
        assert fmt(v['metrics']['downstream_miou'], v['metrics_std']['downstream_miou']) in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)

    # LaTeX: booktabs, escaped names, best bold, non-comparable FID daggered
    tex = (out / "results.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"real-only &" in tex and r"\textbf{" + fmt(results["variants"][2]["metrics"]["fid"], decimals=1) in tex
    assert r"$^\dagger$" in tex

    _check_grid(out)

    # a second report replaces the first one whole (a report file it no longer writes goes too)
    (out / "grid_gone.png").write_bytes(b"an old variant's grid")
    write_report(suite, out)
    assert not (out / "grid_gone.png").exists() and (out / "report.md").is_file()


def _check_grid(out):
    grid = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    # 5 columns of 128 px cells (mask, real, plain, crfm, crfm-rs1) and 4 rows, with padding + a header strip
    assert grid.shape[1] == 5 * (128 + 4) + 4
    assert grid.shape[0] == 18 + 4 * (128 + 4) + 4
    md = (out / "report.md").read_text()
    assert "Columns: mask, real, plain, crfm, crfm-rs1" in md
    # the plain and CRFM columns differ (the fake CRFM shifts brightness with rectified_step)
    cell = lambda j: grid[18:18 + 128, 4 + j * 132: 4 + j * 132 + 128]  # noqa: E731
    assert not np.array_equal(cell(2), cell(3))
    # the mask column uses the LoveDA palette only (plus black no-data)
    from todsynth.data.classes import PALETTE

    colours = {tuple(c) for c in cell(0).reshape(-1, 3)}
    assert colours <= set(PALETTE) | {(0, 0, 0)}


@pytest.mark.parametrize("subsets", [None, [4, 2]])
def test_samples_grid_shows_the_rerender_ceiling_beside_the_samples(tiny_suite_data, bench_workspace, fake_stages,
                                                                    tmp_path, subsets):
    """A rerender ceiling's painted images (where its downstream stage wrote them) get one column of their own, also
    when each subset size has its own ceiling row (their first painted copies are the same images)."""
    from bench.specs import RerenderDownstreamSpec
    from bench.stages.synthesis import rerender_dir
    from todsynth.data.loveda import list_samples
    from todsynth.data.procedural import rerender_samples

    fns = report_stages(fake_stages)

    def downstream(spec, inputs, out_dir):
        if isinstance(spec, RerenderDownstreamSpec):  # the real painter, into the stage's real layout
            pool = list_samples(inputs["data"].dir / inputs["data"].artifacts["root"], "Train")
            rerender_samples(pool, pool, 0, 32, 1, rerender_dir(out_dir, 0))
        return fns["downstream"](spec, inputs, out_dir)

    data = {**tiny_suite_data, "workspace": str(bench_workspace),
            "variants": [*tiny_suite_data["variants"], {"name": "perfect", "kind": "rerender"}]}
    if subsets:
        data["dataset"] = {**data["dataset"], "subsets": subsets}
    suite = validate_data(data, "test")
    run_suite(suite, stage_fns={**fns, "downstream": downstream}, stage_versions={}, progress=False)
    out = write_report(suite, tmp_path / "r")
    md = (out / "report.md").read_text()
    samples = "plain@n4, plain@n2, crfm@n4, crfm@n2" if subsets else "plain, crfm"
    assert f"Columns: mask, real, {samples}, perfect." in md
    assert md.count("is a ceiling, not a sample") == 1 and "Column perfect is a ceiling, not a sample" in md
    columns = 2 + (4 if subsets else 2) + 1
    grid = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    assert grid.shape[1] == columns * (128 + 4) + 4
    cell = lambda j: grid[18:18 + 128, 4 + j * 132: 4 + j * 132 + 128]  # noqa: E731
    first = re.search(r"ids \w+/(\d+)", md).group(1)  # the first row's scene
    pngs = sorted(bench_workspace.glob(f"cache/downstream/*/rerender/copy-0/images_png/{first}.png"))
    assert len(pngs) == (2 if subsets else 1)  # a ceiling stage per subset size
    painted = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert all(np.array_equal(np.asarray(Image.open(p).convert("RGB")), painted) for p in pngs)
    # 32 px upscaled (nearest) to the 128 px cell; every subset size painted it alike
    assert np.array_equal(cell(columns - 1), painted.repeat(4, 0).repeat(4, 1))
    assert not np.array_equal(cell(columns - 1), cell(1))  # painted anew: not the real image of the same mask


def test_report_latest_run_and_workspace_cross_check(ran, tmp_path):
    suite, outcome = ran
    original = outcome.results_file.read_text()
    out = write_report(suite, tmp_path / "r", run_id=outcome.parent_run_id)
    assert outcome.parent_run_id in (out / "report.md").read_text()
    # tamper with the workspace copy: the report refuses to disagree with MLflow
    results = json.loads(outcome.results_file.read_text())
    results["variants"][0]["metrics"]["downstream_miou"] += 0.01
    outcome.results_file.write_text(json.dumps(results))
    with pytest.raises(ReportError, match="differs from the results.json logged"):
        write_report(suite, tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    # a damaged workspace copy is named in the report, which reads MLflow's copy
    outcome.results_file.write_text('{"suite": ')
    md = (write_report(suite, tmp_path / "r3") / "report.md").read_text()
    assert f"cannot read {outcome.results_file}" in md and "uses the results.json logged to MLflow run" in md
    outcome.results_file.write_text(original)  # the module's other tests read the run's results


def test_fid_counts_sentence(ran, tmp_path):
    from bench.report.tables import fid_counts

    suite, outcome = ran
    out = write_report(suite, tmp_path / "r", run_id=outcome.parent_run_id)
    line = "FID/KID per variant and seed: 8 real vs 4 synthetic images, resize `none: native resolution`."
    assert line in (out / "report.md").read_text()
    assert "8 real vs 4 synthetic images, resize <code>none: native resolution</code>" in (out / "index.html").read_text()
    two = {"variants": [{"name": "a", "metrics": {"fid_n_real": 8, "fid_n_synthetic": 4, "fid_resize": "r"}},
                        {"name": "b", "metrics": {"fid_n_real": 8.0, "fid_n_synthetic": 12, "fid_resize": "r"}},
                        {"name": "real-only", "metrics": {}}]}
    assert fid_counts(two).startswith("FID/KID per variant and seed: 8 real vs 4 synthetic images, resize `r` (a); "
                                      "8 real vs 12 synthetic images, resize `r` (b).")
    assert fid_counts({"variants": [{"name": "real-only", "metrics": {}}]}) is None


def test_report_refuses_a_variant_run_that_disagrees(ran, tmp_path):
    from mlflow.tracking import MlflowClient

    suite, outcome = ran
    run_id = outcome.results["mlflow"]["variant_runs"]["crfm"]["1"]
    MlflowClient(tracking_uri=suite.tracking_uri).log_metric(run_id, "mask_miou", 0.123)  # the newest value wins
    with pytest.raises(ReportError, match=r"crfm seed 1: mask_miou: run .* has 0.123"):
        write_report(suite, tmp_path / "r", run_id=outcome.parent_run_id)


def test_report_errors(tiny_suite_data, tmp_path, bench_workspace):
    empty = validate_data({**tiny_suite_data, "workspace": str(tmp_path / "nothing")}, "test")
    with pytest.raises(ReportError, match="no MLflow store"):
        write_report(empty, tmp_path / "r")
    assert not (tmp_path / "nothing").exists()  # no DB created by looking
    never_ran = validate_data({**tiny_suite_data, "workspace": str(bench_workspace)}, "test")
    with pytest.raises(ReportError, match="no finished `bench run`"):
        write_report(never_ran, tmp_path / "r")
    with pytest.raises(ReportError, match="no such MLflow run"):
        write_report(never_ran, tmp_path / "r", run_id="0123456789abcdef")
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(ReportError, match="not a report dir"):  # never replaces a dir that is not a report
        write_report(never_ran, precious)
    assert (precious / "thesis.tex").read_text() == "keep me"
    # nor one that holds a report.md beside the user's own files (before, a report.md was enough to replace it all)
    (precious / "report.md").write_text("my draft")
    (precious / "figures").mkdir()
    with pytest.raises(ReportError, match=r"it holds figures, thesis\.tex, which a report does not write"):
        write_report(never_ran, precious)
    assert (precious / "thesis.tex").read_text() == "keep me" and (precious / "report.md").read_text() == "my draft"


def test_provenance_paths_and_device(tmp_path, monkeypatch):
    from pathlib import Path

    from bench.report.provenance import device_text, display_path, store_text

    ws = tmp_path / "ws"
    assert store_text(f"sqlite:///{ws}/mlflow.db", ws) == "sqlite mlflow.db in a temporary workspace"
    assert display_path(ws / "t" / "results.json", ws) == "t/results.json in a temporary workspace"
    assert display_path(tmp_path / "elsewhere" / "mlflow.db", ws) == "mlflow.db (in a temporary directory)"
    monkeypatch.chdir(tmp_path)  # a workspace typed relative to the current directory stays relative
    monkeypatch.setattr("bench.report.provenance._under_temp", lambda p: False)
    assert store_text(f"sqlite:///{ws}/mlflow.db", Path("ws")) == "sqlite mlflow.db in workspace ws"
    assert store_text("postgresql://db/mlflow", ws) == "postgresql://db/mlflow"
    assert device_text("cpu: AMD EPYC (2 cores)", "1") == "cpu: AMD EPYC (2 cores)"
    assert device_text("cuda: NVIDIA H200 x1", "1") == "cuda: NVIDIA H200 x1, gpus=1"


def test_best_is_ranked_within_each_subset_size_at_the_displayed_decimals():
    """With dataset.subsets a row is best among the rows of its own n (before: real-only@n160 was bolded as the
    suite's best mIoU, and the FID of the size with the most images); ties are judged at the decimals the column is
    displayed with, ceilings included (before: two cells that print differently could both be bold)."""
    def row(name, kind, n, **m):  # noqa: ANN001, ANN003, ANN202
        return {"name": name, "kind": kind, "n": n, "metrics": m, "metrics_std": {}}

    results = {"seeds": [0], "variants": [
        row("real-only@n16", "baseline", 16, downstream_miou=0.30),
        row("plain@n16", "synthetic", 16, downstream_miou=0.31, fid=3.0, kid=0.012341),
        row("crfm@n16", "synthetic", 16, downstream_miou=0.305, fid=2.0, kid=0.012344),
        row("perfect@n16", "rerender", 16, downstream_miou=0.40, fid=0.001, kid=0.0001),
        row("real-only@n160", "baseline", 160, downstream_miou=0.39),
        row("plain@n160", "synthetic", 160, downstream_miou=0.37, fid=1.0, kid=0.5),
        row("crfm@n160", "synthetic", 160, downstream_miou=0.38, fid=1.5, kid=0.5)]}
    best = best_variants(results)
    assert best["downstream_miou"] == {"plain@n16", "real-only@n160"}
    assert best["fid"] == {"crfm@n16", "plain@n160"}
    assert best["kid"] == {"plain@n16"}  # 0.012341 vs 0.012344 print apart at the column's decimals (a ceiling's 1e-4)
    cells = {r["name"]: r["cells"]["kid"] for r in table_rows(results)}
    assert cells["plain@n16"]["best"] and not cells["crfm@n16"]["best"]


def test_pareto_front():
    pts = [(10.0, 0.5), (8.0, 0.4), (12.0, 0.6), (11.0, 0.45), (8.0, 0.4)]
    # fid min, miou max: (11, .45) is dominated by (10, .5); duplicates both stay
    assert pareto_front(pts, (False, True)) == [0, 1, 2, 4]
    assert pareto_front(pts, (True, True)) == [2]
    with pytest.raises(ValueError, match="2 values"):
        pareto_front([(1.0,)], (False, True))


def test_rectified_series_groups_by_everything_but_the_step():
    def var(name, rs, scheme="LD", kind="synthetic"):
        return {"name": name, "kind": kind, "params": {"sampling": {"num_inference_steps": 8},
                                                       "crfm": {"rectified_step": rs, "step_scheme": scheme,
                                                                "max_step_size": 0.1}},
                "metrics": {"downstream_miou": 0.5 + rs / 100, "fid": 30.0 + rs}, "metrics_std": {}}

    results = {"variants": [{"name": "real-only", "kind": "baseline", "params": {}, "metrics": {}},
                            var("plain", 0), var("rs4", 4), var("rs2", 2), var("c4", 4, "C")]}
    series = rectified_series(results)
    assert [s["steps"] for s in series] == [[0, 2, 4], [0, 4]]
    assert series[0]["variants"] == ["plain", "rs2", "rs4"] and series[0]["fid"] == [30.0, 32.0, 34.0]
    # legends in the suite's parameter names: only what tells the series apart (here the step scheme)
    assert [s["label"] for s in series] == ["crfm.step_scheme=LD", "crfm.step_scheme=C"]
    assert rectified_series({"variants": [var("plain", 0), var("c4", 4, "C")][:1]}) == []
    one = rectified_series({"variants": [var("plain", 0), var("rs2", 2)]})
    assert one[0]["label"] == "crfm.step_scheme=LD, crfm.max_step_size=0.1"  # never `alpha_max`


def _rect_results(seeds, miou=(0.4512, 0.4515, 0.4514), fid=(31.2, 30.1, 29.0)):
    def var(name, rs, m, f):
        return {"name": name, "kind": "synthetic",
                "params": {"sampling": {"num_inference_steps": 8},
                           "crfm": {"rectified_step": rs, "step_scheme": "LD", "max_step_size": 0.1}},
                "metrics": {"downstream_miou": m, "fid": f},
                "metrics_std": {"downstream_miou": 0.0 if len(seeds) == 1 else 0.002, "fid": 0.0 if len(seeds) == 1 else 0.4}}

    return {"seeds": seeds, "variants": [var(n, rs, m, f) for n, rs, m, f in
                                         zip(("plain", "rs2", "rs4"), (0, 2, 4), miou, fid, strict=True)]}


def test_rectified_panels_two_panels_honest_range_and_error_bars_only_with_seeds():
    res = _rect_results([0, 1])
    panels = rectified_panels(rectified_series(res), with_std=True)
    assert [p["metric"] for p in panels] == ["downstream_miou", "fid"]  # two panels on one x axis, not twin axes
    (miou,), (fid,) = (p["lines"] for p in panels)
    assert miou["x"] == fid["x"] == [0, 2, 4]
    assert miou["y"] == [0.4512, 0.4515, 0.4514] and fid["y"] == [31.2, 30.1, 29.0]
    assert miou["yerr"] == [0.002] * 3 and fid["yerr"] == [0.4] * 3
    # a 0.0003 mIoU difference does not fill the height: the range spans >= 10% of the values
    lo, hi = panels[0]["ylim"]
    assert hi - lo >= 0.1 * 0.4515 and lo < 0.4512 and hi > 0.4515
    assert (0.4515 - 0.4512) / (hi - lo) < 0.1
    flo, fhi = panels[1]["ylim"]
    assert flo < 29.0 - 0.4 and fhi > 31.2 + 0.4  # error bars inside the panel
    # one seed: no error bars at all (a std of 0.0 is not a std)
    one = rectified_panels(rectified_series(_rect_results([0])), with_std=False)
    assert all(ln["yerr"] is None for p in one for ln in p["lines"])
    # a series without FID draws the mIoU panel only
    nofid = _rect_results([0], fid=(None, None, None))
    assert [p["metric"] for p in rectified_panels(rectified_series(nofid), False)] == ["downstream_miou"]


def test_pareto_front_is_drawn_above_the_variant_stars(monkeypatch, tmp_path):
    import bench.report.plots as plots

    figs = []
    monkeypatch.setattr(plots, "_save_figure", lambda fig, path: figs.append(fig) or path)
    trials = [{"number": i, "x": f, "y": m, "feasible": True}
              for i, (f, m) in enumerate([(90.0, 0.4), (95.0, 0.5), (99.0, 0.45)])]
    variants = [{"name": "crfm", "metrics": {"fid": 90.0, "mask_miou": 0.4}}]  # on the front, under a star
    plots.plot_pareto(trials, [0, 1], variants, tmp_path / "p.png")
    (ax,) = figs[0].axes
    front = next(ln for ln in ax.get_lines() if ln.get_label() == "Pareto front")
    stars = next(c for c in ax.collections if c.get_label() == "suite variants")
    assert list(front.get_xdata()) == [90.0, 95.0]
    assert front.get_zorder() > stars.get_zorder()
    assert ax.get_xlabel() == "FID (↓)" and ax.get_ylabel() == "mask mIoU (↑)"
    plots.plot_pareto(trials, [0], [], tmp_path / "q.png", axes=("kid", "downstream_miou"))  # the suite's objectives
    assert figs[1].axes[0].get_xlabel() == "KID (↓)" and figs[1].axes[0].get_title() == "Tuning trials: KID vs mIoU"
    import matplotlib.pyplot as plt

    for fig in figs:
        plt.close(fig)


def test_tuning_axes_follow_the_suite_objectives(tiny_suite_data):
    from bench.report.gather import tuning_axes

    def suite(objectives):
        tune = {"search_space": {"crfm.rectified_step": {"type": "int", "low": 0, "high": 4}},
                "objectives": [{"metric": m, "direction": d} for m, d in objectives], "n_trials": 2}
        return validate_data({**tiny_suite_data, "tune": tune}, "test")

    assert tuning_axes(suite([("mask_miou", "maximize"), ("fid", "minimize")])) == ("fid", "mask_miou")
    assert tuning_axes(suite([("downstream_miou", "maximize"), ("kid", "minimize")])) == ("kid", "downstream_miou")
    assert tuning_axes(suite([("fid", "minimize")])) == ("mask_miou", "fid")
    assert tuning_axes(validate_data(tiny_suite_data, "test")) == ("fid", "mask_miou")


def _two(seeds):
    """Two synthetic variants whose FID and KID columns used to mix precisions (24.05 beside 9.8139, 6.16e-03)."""
    std = 0.0 if len(seeds) == 1 else 0.5
    return {"suite": "s", "config_hash": "abc", "seeds": seeds, "metric_specs": [], "variants": [
        {"name": "a", "kind": "synthetic", "metrics": {"downstream_miou": 0.5, "fid": 24.05, "kid": 0.00616},
         "metrics_std": {"downstream_miou": std / 10, "fid": std, "kid": std / 100}},
        {"name": "b", "kind": "synthetic", "metrics": {"downstream_miou": 0.25, "fid": 9.8139, "kid": 0.0123},
         "metrics_std": {"downstream_miou": std / 10, "fid": std, "kid": std / 100}}]}


def test_columns_have_fixed_decimals_and_one_seed_has_no_std():
    rows = {r["name"]: r["cells"] for r in table_rows(_two([0]))}
    assert [rows[n]["fid"]["text"] for n in "ab"] == ["24.05", "9.81"]  # one precision per column
    assert [rows[n]["kid"]["text"] for n in "ab"] == ["0.00616", "0.01230"]  # no scientific notation
    assert [rows[n]["downstream_miou"]["text"] for n in "ab"] == ["0.5000", "0.2500"]
    assert all(c["std"] is None for r in rows.values() for c in r.values())
    csv_rows = list(csv.DictReader(io.StringIO(render_csv(_two([0])))))
    assert csv_rows[0]["fid"] == "24.05" and csv_rows[0]["fid_std"] == "" and csv_rows[0]["kid_std"] == ""
    # two seeds: mean ± std at the column's decimals, raw stds in the CSV
    rows = {r["name"]: r["cells"] for r in table_rows(_two([0, 1]))}
    assert rows["b"]["fid"]["text"] == "9.81 ± 0.50" and rows["a"]["kid"]["text"] == "0.00616 ± 0.00500"
    assert next(csv.DictReader(io.StringIO(render_csv(_two([0, 1])))))["fid_std"] == "0.5"


def test_latex_escapes_and_marks():
    results = {"suite": "s", "config_hash": "abc", "seeds": [0], "metric_specs": [],
               "variants": [{"name": "a_b&c", "kind": "synthetic", "metrics": {"fid": 10.0, "fid_comparable": True},
                             "metrics_std": {}},
                            {"name": "d", "kind": "synthetic", "metrics": {"fid": 12.0, "fid_comparable": True},
                             "metrics_std": {}}]}
    tex = render_latex(results)
    assert r"a\_b\&c & \textbf{10.00} \\" in tex and r"d & 12.00 \\" in tex and "dagger" not in tex


def test_latex_daggers_fid_and_kid_of_a_fallback_extractor_with_a_footnote_row():
    results = _two([0])
    for v in results["variants"]:
        v["metrics"] |= {"fid_extractor": "evaluator", "fid_comparable": False}
    results["variants"].append({"name": "real-only", "kind": "baseline", "metrics": {"downstream_miou": 0.4},
                                "metrics_std": {}})
    lines = render_latex(results).splitlines()
    row = next(ln for ln in lines if ln.startswith("b &"))
    assert row == r"b & 0.2500 & \textbf{9.81}$^\dagger$ & 0.01230$^\dagger$ \\"  # FID and KID: the same extractor
    assert next(ln for ln in lines if ln.startswith("real-only &")).count("dagger") == 0  # no number, no mark
    end = lines.index(r"\end{tabular}")
    assert lines[end - 2] == r"\bottomrule"
    assert lines[end - 1].startswith(r"\multicolumn{4}{l}{\footnotesize $^\dagger$ FID, KID, precision and recall from a fallback")
    assert lines[end - 1].endswith(r"\\") and not any(ln.startswith("%") and "dagger" in ln for ln in lines)


def test_report_tuning_trials_pareto(ran, tmp_path):
    """Trials logged as bench.tune does (study run, trial children with fid/mask_miou, stage grandchildren)."""
    from bench.tracking import Tracker

    suite, _ = ran
    tracker = Tracker(suite.tracking_uri, suite.artifact_location, suite.experiment, suite.workspace)
    study = tracker.start_parent("tune:s", {"n": 1}, {"optuna.study": "s", "todsynth.suite": suite.name}, "x: 1",
                                 kind="study")
    points = [(90.0, 0.40, 1.0), (95.0, 0.50, 1.0), (92.0, 0.38, 1.0), (80.0, 0.30, 0.0), (99.0, 0.45, 1.0)]
    for number, (fid, miou, feasible) in enumerate(points):
        run = tracker.start_child(f"trial-{number}", {"crfm": {"rectified_step": number}},
                                  {"todsynth.kind": "trial", "optuna.trial_number": str(number),
                                   "optuna.params": json.dumps({"crfm.rectified_step": number})})
        tracker.log_metrics(run, {"fid": fid, "mask_miou": miou, "feasible": feasible})
        stage = tracker.with_parent(run).start_child("evaluate[trial]", {}, {"todsynth.kind": "stage"})
        tracker.log_metrics(stage, {"fid": 1.0, "mask_miou": 0.99})  # a grandchild: never counted as a trial
        tracker.end(stage)
        tracker.end(run)
    ref = tracker.start_child("evaluate[plain]", {}, {"todsynth.kind": "stage"})  # a study-level stage run
    tracker.log_metrics(ref, {"fid": 1.0, "mask_miou": 0.99})
    tracker.end(ref)
    tracker.end(study)

    out = write_report(suite, tmp_path / "r")
    assert (out / "pareto.png").is_file()
    md = (out / "report.md").read_text()
    section = md[md.index("### Pareto-optimal trials"):md.index("## Samples")]
    assert "(2 of 5, study s)" in section  # trial 3 is infeasible, 2 and 4 are dominated by 0 and 1
    numbers = [int(ln.split("|")[1]) for ln in section.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert numbers == [0, 1]
    assert "`crfm.rectified_step=1`" in section
    assert "No tuning trials" not in md


@pytest.mark.slow
def test_report_of_the_real_tests_suite(bench_workspace, tmp_path):
    """The real stages (suites/tests.yaml, ~2 min on 2 cores): sample grid from their on-disk outputs, numbers equal."""
    from pathlib import Path

    from bench.suites import load_suite

    suite = load_suite(Path(__file__).parent.parent / "suites" / "tests.yaml", [], bench_workspace)
    outcome = run_suite(suite, progress=False)
    out = write_report(suite, tmp_path / "r")
    results = json.loads(outcome.results_file.read_text())
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text()))}
    for v in results["variants"]:
        assert float(rows[v["name"]]["downstream_miou"]) == v["metrics"]["downstream_miou"]
    grid = Image.open(out / "samples.png")
    assert grid.width == 4 * (128 + 4) + 4  # mask, real, plain, crfm
    assert "Columns: mask, real, plain, crfm" in (out / "report.md").read_text()
