"""CRFM mask-fidelity sweep: does a CRFM setting raise the evaluator's mIoU over plain sampling, same seeds?

Issue "Sampling and CRFM", acceptance point 5. Loads a trained generator, a judge and an evaluator (any
``save_generator`` / ``save_segmentor`` directories: a ``bench run`` workspace holds them under
``cache/generator/*/generator``, ``cache/judge/*/model`` and ``cache/evaluator/*/model``), samples
``--masks`` masks of a LoveDA-layout split once per setting with the same seeds, and prints the evaluator's
and the judge's mIoU of each setting's images against their masks (the judge's own score shows whether a
correction transfers to an independent model or only fools the judge).

Run: ``python -m bench.crfm_fidelity --generator G --judge J --evaluator E --data ROOT [--split Val]
[--masks 64] [--steps 12] [--scorer DIR ...] [--setting '{"rectified_step": 4, "max_step_size": 300, "clamp": null}' ...]``
(a setting is a YAML/JSON mapping of ``CRFMConfig`` fields; ``{}`` is plain sampling and is always first).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.conditioning import miou

PAPER_SETTINGS: list[dict[str, Any]] = [
    {"rectified_step": 4, "max_step_size": 0.1, "step_scheme": "LD"},
    {"rectified_step": 4, "max_step_size": 100.0, "step_scheme": "C", "clamp": None},
    {"rectified_step": 4, "max_step_size": 1000.0, "step_scheme": "C", "clamp": None},
]


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
    scorers: Mapping[str, torch.nn.Module] | None = None,
) -> list[dict[str, Any]]:
    """One row per setting (plain first): ``setting``, ``evaluator_miou``, ``judge_miou``, ``scorer_miou``, ``n_masks``.

    Args:
        generator: a loaded ``Generator``. judge, evaluator: segmentors (image [0,1] -> logits).
        dataset: LoveDA-style items (``mask``, ``prompt``); the first ``n_masks`` are used.
        prompts: ``get(prompts) -> (embeds, pooled)`` (``PromptCache``).
        settings: ``CRFMConfig`` field mappings; an empty mapping is plain sampling.
        scorers: more segmentors by name, e.g. one that the settings were NOT chosen with (``scorer_miou``).
    """
    from todsynth.sample.crfm import CRFMConfig
    from todsynth.sample.sampler import SamplerConfig, sample
    from todsynth.seg.judge import SegmentorLogits

    check_n_masks(n_masks, dataset)
    items = [dataset[i] for i in range(n_masks)]
    masks = torch.stack([it["mask"] for it in items])
    embeds, pooled = prompts.get([it["prompt"] for it in items])
    seeds = [seed * 100_000 + k for k in range(n_masks)]
    cfg = SamplerConfig(num_inference_steps=num_inference_steps, batch_size=batch_size)
    judge_fn = SegmentorLogits(judge)
    rows = []
    for setting in [{}, *[s for s in settings if s]]:
        crfm = CRFMConfig(**setting) if setting else None
        images = sample(generator, masks, embeds, pooled, seeds, cfg, crfm=crfm, judge=judge_fn if crfm else None).images
        rows.append({"setting": dict(setting), "evaluator_miou": miou(evaluator, images, masks),
                     "judge_miou": miou(judge, images, masks),
                     "scorer_miou": {k: miou(m, images, masks) for k, m in (scorers or {}).items()},
                     "n_masks": n_masks})
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI (see the module docstring)."""
    import yaml

    parser = argparse.ArgumentParser(prog="python -m bench.crfm_fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", required=True, help="save_generator directory")
    parser.add_argument("--judge", required=True, help="save_segmentor directory of the CRFM judge")
    parser.add_argument("--evaluator", required=True, help="save_segmentor directory of the independent evaluator")
    parser.add_argument("--data", required=True, help="LoveDA-layout root whose masks are sampled")
    parser.add_argument("--split", default="Val", choices=["Train", "Val"])
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="Euler steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorer", action="append", default=[], metavar="DIR",
                        help="another save_segmentor directory to score with (repeatable; e.g. one the settings were not chosen with)")
    parser.add_argument("--setting", action="append", default=[], help="CRFMConfig fields as YAML (repeatable)")
    parser.add_argument("--prompt-cache", default=None, help="PromptCache directory (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from todsynth.data.loveda import LoveDA
    from todsynth.errors import TodsynthError
    from todsynth.models.generator import load_generator
    from todsynth.sample.crfm import CRFMConfig
    from todsynth.seg.compat import ensure_mmseg
    from todsynth.seg.io import load_segmentor
    from todsynth.text import PromptCache, build_prompt_encoder

    settings = []
    for raw in args.setting:  # validate every input before minutes of loading and sampling
        try:
            setting = yaml.safe_load(raw) or {}
            if not isinstance(setting, dict):
                raise ValueError("not a mapping of CRFMConfig fields")
            CRFMConfig(**setting)
        except (yaml.YAMLError, TypeError, ValueError) as e:
            parser.error(f"--setting {raw!r}: {e}")
        settings.append(setting)
    settings = settings or PAPER_SETTINGS
    try:
        dataset = LoveDA(args.data, args.split)
    except TodsynthError as e:
        parser.error(str(e))
    try:
        check_n_masks(args.masks, dataset)
    except ValueError as e:
        parser.error(f"--masks {args.masks}: {e}, split {args.data}/{args.split}")
    try:
        ensure_mmseg()
        gen = load_generator(args.generator)
        judge, evaluator = load_segmentor(args.judge), load_segmentor(args.evaluator)
        scorers = {str(d): load_segmentor(d) for d in args.scorer}
    except TodsynthError as e:
        parser.error(str(e))
    text = dict(gen.config["text"])  # the resolved preset it was built from
    with tempfile.TemporaryDirectory() as tmp:
        cache = PromptCache(args.prompt_cache or Path(tmp), build_prompt_encoder(text.pop("kind"), **text))
        rows = crfm_fidelity(gen, judge, evaluator, dataset, cache, settings, n_masks=args.masks,
                             num_inference_steps=args.steps, seed=args.seed, scorers=scorers)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
