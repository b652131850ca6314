"""CRFM mask-fidelity sweep: does a CRFM setting raise the evaluator's mIoU over plain sampling, same seeds?

Issue "Sampling and CRFM", acceptance point 5. Loads a trained generator, a judge and an evaluator (any
``save_generator`` / ``save_segmentor`` directories: a ``bench run`` workspace holds them under
``cache/generator/*/generator``, ``cache/judge/*/model`` and ``cache/evaluator/*/model``), samples
``--masks`` masks of a LoveDA-layout split once per setting with the same seeds, and reports the evaluator's
and the judge's mIoU of each setting's images against their masks (the judge's own score shows whether a
correction transfers to an independent model or only fools the judge).

Run: ``todsynth bench check-crfm --generator G --judge J --evaluator E --data ROOT [--split Val]
[--masks 64] [--steps 12] [--scorer DIR ...] [--setting '{"rectified_step": 4, "max_step_size": 300, "clamp": null}' ...]``
(a setting is a YAML/JSON mapping of ``CRFMConfig`` fields; ``{}`` is plain sampling and is always first).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.checks.scoring import miou
from todsynth.errors import ConfigError

PAPER_SETTINGS: list[dict[str, Any]] = [
    {"rectified_step": 4, "max_step_size": 0.1, "step_scheme": "LD"},
    {"rectified_step": 4, "max_step_size": 100.0, "step_scheme": "C", "clamp": None},
    {"rectified_step": 4, "max_step_size": 1000.0, "step_scheme": "C", "clamp": None},
]
SPLITS = ("Train", "Val")


def check_n_masks(n_masks: int, dataset: Any) -> None:
    """ValueError unless ``1 <= n_masks <= len(dataset)``."""
    if n_masks < 1 or n_masks > len(dataset):
        raise ValueError(f"n_masks={n_masks} must be in 1..{len(dataset)} (the split's size)")


def crfm_fidelity(
    generator: Any,
    judge: torch.nn.Module,
    evaluator: torch.nn.Module,
    dataset: Any,
    prompts: Any,
    settings: Sequence[Mapping[str, Any]],
    *,
    n_masks: int = 64,
    num_inference_steps: int = 12,
    batch_size: int = 8,
    seed: int = 0,
    guidance_scale: float = 1.5,
    mask_guidance: bool = True,
    scorers: Mapping[str, torch.nn.Module] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per setting (plain first): ``setting``, ``evaluator_miou``, ``judge_miou``, ``scorer_miou``, ``n_masks``.

    Args:
        generator: a loaded ``Generator``. judge, evaluator: segmentors (image [0,1] -> logits).
        dataset: LoveDA-style items (``mask``, ``prompt``); the first ``n_masks`` are used.
        prompts: ``get(prompts) -> (embeds, pooled)`` (``PromptCache``).
        settings: ``CRFMConfig`` field mappings; an empty mapping is plain sampling.
        guidance_scale, mask_guidance: the sampler's CFG (``SamplerConfig``; the negative is the empty prompt).
        scorers: more segmentors by name, e.g. one that the settings were NOT chosen with (``scorer_miou``).
        on_row: called with each row as soon as it is scored (progress).
    """
    from todsynth.sample.config import CRFMConfig, SamplerConfig
    from todsynth.sample.sampler import cfg_negative, sample
    from todsynth.seg.judge import SegmentorLogits

    check_n_masks(n_masks, dataset)
    items = [dataset[i] for i in range(n_masks)]
    masks = torch.stack([it["mask"] for it in items])
    embeds, pooled = prompts.get([it["prompt"] for it in items])
    seeds = [seed * 100_000 + k for k in range(n_masks)]
    cfg = SamplerConfig(num_inference_steps=num_inference_steps, batch_size=batch_size, guidance_scale=guidance_scale,
                        mask_guidance=mask_guidance)
    negative = cfg_negative(prompts.get, cfg)
    judge_fn = SegmentorLogits(judge)
    rows = []
    for setting in [{}, *[s for s in settings if s]]:
        crfm = CRFMConfig(**setting) if setting else None
        images = sample(generator, masks, embeds, pooled, seeds, cfg, crfm=crfm, judge=judge_fn if crfm else None,
                        negative=negative).images
        rows.append({"setting": dict(setting), "evaluator_miou": miou(evaluator, images, masks),
                     "judge_miou": miou(judge, images, masks),
                     "scorer_miou": {k: miou(m, images, masks) for k, m in (scorers or {}).items()},
                     "n_masks": n_masks})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def parse_settings(raw: Sequence[str]) -> list[dict[str, Any]]:
    """``--setting`` values (YAML mappings of ``CRFMConfig`` fields), each checked; :data:`PAPER_SETTINGS` if none.

    Raises:
        ConfigError: naming the ``--setting`` value that is not YAML, not a mapping, or not a valid CRFMConfig.
    """
    import yaml

    from todsynth.sample.config import CRFMConfig

    settings = []
    for text in raw:
        try:
            setting = yaml.safe_load(text) or {}
            if not isinstance(setting, dict):
                raise ValueError("not a mapping of CRFMConfig fields")
            CRFMConfig(**setting)
        except (yaml.YAMLError, TypeError, ValueError) as e:
            raise ConfigError(f"--setting {text!r}: {' '.join(str(e).split())}") from None
        settings.append(setting)
    return settings or PAPER_SETTINGS


def check_crfm(
    generator: Path, judge: Path, evaluator: Path, data: Path, *, split: str = "Val", n_masks: int = 64,
    steps: int = 12, seed: int = 0, guidance_scale: float = 1.5, mask_guidance: bool = True,
    scorers: Sequence[Path] = (), settings: Sequence[str] = (),
    prompt_cache: Path | None = None, on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """The sweep from directories and CLI strings: every input checked before minutes of loading and sampling.

    Raises:
        ConfigError: a bad ``--setting``, ``--split`` or ``--masks`` (named); TodsynthError: a missing dataset
            or model directory.
    """
    from todsynth.data.loveda import LoveDA
    from todsynth.models.generator import load_generator
    from todsynth.sample.config import CRFMConfig, SamplerConfig, rectified_step_problem
    from todsynth.seg.compat import ensure_mmseg
    from todsynth.seg.io import load_segmentor
    from todsynth.text import PromptCache, preset_prompt_encoder

    parsed = parse_settings(settings)
    for setting in parsed:  # before: a ValueError traceback, after the plain row was sampled
        if why := rectified_step_problem(CRFMConfig(**setting).rectified_step, steps, "--steps"):
            raise ConfigError(f"--setting {setting}: rectified_step {why}")
    for flag, field, value in (("--guidance", "guidance_scale", guidance_scale),
                               ("--mask-guidance", "mask_guidance", mask_guidance)):
        if why := SamplerConfig.field_problem(field, value):
            raise ConfigError(f"{flag} {why}")
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    dataset = LoveDA(data, split)
    try:
        check_n_masks(n_masks, dataset)
    except ValueError as e:
        raise ConfigError(f"--masks {n_masks}: {e}, split {data}/{split}") from None
    ensure_mmseg()
    gen = load_generator(generator)
    size = tuple(dataset[0]["mask"].shape[-2:])
    if size != (gen.image_size, gen.image_size):
        raise ConfigError(f"--data {data}: its {size[0]}x{size[1]} px masks do not fit the generator's image_size "
                          f"{gen.image_size} ({generator})")
    judge_model, evaluator_model = load_segmentor(judge), load_segmentor(evaluator)
    scorer_models = {str(d): load_segmentor(d) for d in scorers}
    text = dict(gen.config["text"])  # the resolved preset it was built from
    with tempfile.TemporaryDirectory() as tmp:
        cache = PromptCache(prompt_cache or Path(tmp), preset_prompt_encoder(text, sd3_dir=gen.config.get("source")))
        return crfm_fidelity(gen, judge_model, evaluator_model, dataset, cache, parsed, n_masks=n_masks,
                             num_inference_steps=steps, seed=seed, guidance_scale=guidance_scale,
                             mask_guidance=mask_guidance, scorers=scorer_models, on_row=on_row)
