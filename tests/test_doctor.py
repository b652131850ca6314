"""`todsynth doctor`: versions, mmcv flavour, hardware and local paths; always exit 0."""

from __future__ import annotations

from typer.testing import CliRunner

import cli
from todsynth.doctor import doctor_rows, mmcv_flavour


def _rows(**kw):
    return {r.item: r for r in doctor_rows(**kw)}


def test_versions_and_hardware(monkeypatch):
    for env in ("TODSYNTH_SD3_DIR", "TODSYNTH_INCEPTION_WEIGHTS", "TODSYNTH_LOVEDA_ROOT"):
        monkeypatch.delenv(env, raising=False)
    rows = _rows()
    import torch

    assert rows["torch"].value == torch.__version__.split("+")[0] or rows["torch"].value == torch.__version__
    for name in ("python", "torchvision", "diffusers", "transformers", "accelerate", "peft", "mmseg", "mmengine",
                 "mmcv", "CPU cores", "GPU"):
        assert name in rows
    version, flavour = mmcv_flavour()
    assert flavour in ("lite", "full") and rows["mmcv"].value == f"{version} ({flavour})"
    for name in ("SD3.5 dir", "Inception weights", "LoveDA root"):
        assert rows[name].status == "not set"


def test_paths_from_env_and_options(monkeypatch, tmp_path, procedural_root):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"0" * 1024)
    sd3 = tmp_path / "sd3"
    (sd3 / "transformer").mkdir(parents=True)
    monkeypatch.setenv("TODSYNTH_INCEPTION_WEIGHTS", str(weights))
    monkeypatch.setenv("TODSYNTH_LOVEDA_ROOT", str(procedural_root))
    monkeypatch.setenv("TODSYNTH_SD3_DIR", str(sd3))
    rows = _rows()
    assert rows["Inception weights"].status == "ok" and "$TODSYNTH_INCEPTION_WEIGHTS" in rows["Inception weights"].value
    assert rows["LoveDA root"].status == "ok" and "Train 8, Val 4" in rows["LoveDA root"].value
    assert rows["SD3.5 dir"].status == "missing" and "text_encoder_3" in rows["SD3.5 dir"].value
    rows = _rows(loveda_root=tmp_path / "none", inception=tmp_path / "none.pth", sd3_dir=tmp_path / "nosd3")
    assert rows["LoveDA root"].status == "missing" and "option" in rows["LoveDA root"].value
    assert rows["Inception weights"].status == "missing" and rows["SD3.5 dir"].status == "missing"


def test_cli_exits_0_even_when_paths_missing(tmp_path):
    res = CliRunner().invoke(cli.app, ["doctor", "--sd3-dir", str(tmp_path / "x"), "--loveda-root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "mmcv" in res.output and "LoveDA root" in res.output and "missing" in res.output


def test_does_not_import_mmseg():
    """mmseg's import has side effects on mmcv-lite (todsynth.seg.compat must run first)."""
    import subprocess
    import sys

    code = "import sys; from todsynth.doctor import doctor_rows; doctor_rows(); print('mmseg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
