"""The CLI's options default to the library's and the suite's declared values (one source for each setting)."""

from __future__ import annotations

import typer.main

from cli import app
from todsynth.sample.config import CRFMConfig, SamplerConfig
from todsynth.seg import defaults as seg


def _defaults(*path: str) -> dict[str, object]:
    """{option name: default} of the command at ``path`` (e.g. "gen", "sample")."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {p.name: p.default for p in command.params}


def test_gen_sample_defaults_are_the_sampler_and_crfm_configs() -> None:
    d = _defaults("gen", "sample")
    assert (d["steps"], d["guidance"], d["batch_size"]) == (
        SamplerConfig.num_inference_steps, SamplerConfig.guidance_scale, SamplerConfig.batch_size)
    assert (d["max_step_size"], d["step_scheme"]) == (CRFMConfig.max_step_size, CRFMConfig.step_scheme)


def test_seg_train_defaults_are_the_suite_segmenters() -> None:
    """`seg train --batch-size` defaulted to 8 while a suite's judge/evaluator/downstream trained with 4."""
    from bench.schema.sections import Downstream, Segmenter

    d = _defaults("seg", "train")
    assert (d["model"], d["iters"], d["batch_size"], d["optimizer"]) == (
        seg.SEG_MODEL, seg.SEG_ITERS, seg.SEG_BATCH_SIZE, seg.SEG_OPTIMIZER)
    for section in (Segmenter(), Downstream()):
        assert (section.iters, section.batch_size, section.optimizer, section.lr) == (
            d["iters"], d["batch_size"], d["optimizer"], seg.SEG_DEFAULT_LR[d["optimizer"]])
    assert Segmenter().model == d["model"]
