"""Benchmark helper (not a test): seconds per image for plain sampling vs CRFM, with a cost breakdown.

The CRFM overhead ratio is ``(crfm - plain) / necessary`` per image, where ``necessary`` is what CRFM cannot
avoid: ``rectified_step * num_rectified`` times a VAE decode forward + backward and a judge forward + backward,
timed standalone on the same shapes. A ratio near 1 means the correction adds nothing beyond those passes; the
target is <= 1.1. Each round is symmetric, passes, plain, CRFM, passes, CRFM, plain, so a load drift that is
linear over the round cancels in the round's ``mean(CRFM) - mean(plain)`` over the mean of its two pass groups,
and each variant runs once right after the passes (cold caches) and once right after the other variant. ``cfg.clock`` picks the clock ("cpu" = process
CPU seconds); the standalone passes synchronise CUDA around every timed region.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from todsynth.sample.crfm import CRFMConfig
from todsynth.sample.sampler import SampleOutput, SamplerConfig, _decoder, _device_dtype, sample
from todsynth.sample.timing import clock_function


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _necessary_pass(
    decode: Callable[[Tensor], Tensor],
    judge: Callable[[Tensor], Tensor],
    z: Tensor,
    target: Tensor,
    now: Callable[[], float],
) -> tuple[float, float]:
    """One standalone (decode fwd+bwd, judge fwd+bwd) pass on a batch: the work CRFM cannot avoid."""
    device = z.device
    with torch.enable_grad():
        leaf = z.clone().requires_grad_(True)
        _sync(device)
        t0 = now()
        images = decode(leaf)
        images.sum().backward()
        _sync(device)
        t1 = now()
        image_leaf = images.detach().requires_grad_(True)
        F.cross_entropy(judge(image_leaf).float(), target, ignore_index=255).backward()
        _sync(device)
        t2 = now()
    return t1 - t0, t2 - t1


def _best(runs: list[SampleOutput]) -> SampleOutput:
    return min(runs, key=lambda r: r.timings["total"])


def _mean_timings(runs: tuple[SampleOutput, ...]) -> dict[str, float]:
    """Section seconds averaged over runs (a section missing from a run counts 0)."""
    keys = {k for r in runs for k in r.timings}
    return {k: sum(r.timings.get(k, 0.0) for r in runs) / len(runs) for k in keys}


def profile_sampling(
    generator: Any,
    judge: Callable[[Tensor], Tensor],
    masks: Tensor,
    prompt_embeds: Tensor,
    pooled: Tensor,
    cfg: SamplerConfig,
    crfm: CRFMConfig,
    repeats: int = 3,
    warmup: int = 1,
) -> dict[str, Any]:
    """Time plain vs CRFM sampling of ``masks`` (one batch) and return per-image figures.

    Args:
        generator, judge, masks, prompt_embeds, pooled, cfg: as for :func:`todsynth.sample.sampler.sample`
            (``cfg.batch_size`` should cover the batch so one call is one batch).
        crfm: the CRFM settings to profile (``rectified_step`` > 0), e.g. 4 of 23 steps.
        repeats: timed rounds (each: passes, plain, CRFM, passes, CRFM, plain), after ``warmup`` rounds.

    Returns:
        Flat dict: ``plain_seconds_per_image``, ``crfm_seconds_per_image`` (the fastest single runs),
        ``crfm_extra_seconds_per_image``, ``crfm_necessary_seconds_per_image``, ``overhead_ratio`` (extra /
        standalone necessary, from those minima), ``in_loop_ratio`` (extra / the decode + judge time measured
        inside the loop: the sampler's own bookkeeping), ``slowdown``, ``breakdown`` (per image:
        ``transformer_step``, ``vae_decode_fwd_bwd`` and ``judge_fwd_bwd`` per correction, in-loop and standalone),
        and ``runs``: every timed round's values (lists, one entry per round, same units) for median/min/max:
        ``plain``, ``crfm`` (the mean of the round's two runs), ``necessary`` (seconds per image, the mean of the
        round's two pass groups),
        ``vae_decode_fwd_bwd``, ``judge_fwd_bwd`` (standalone, per correction per image), ``crfm_timings`` and
        ``plain_timings`` (the variant's section seconds per image, the mean of the round's two runs).
    """
    if not crfm.enabled:
        raise ValueError("crfm.rectified_step must be > 0 to profile CRFM against plain sampling")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    b = masks.shape[0]
    seeds = list(range(b))
    cfg = replace(cfg, batch_size=max(cfg.batch_size, b))
    device, _ = _device_dtype(generator.transformer)
    with torch.no_grad():
        latent_shape = tuple(generator.encode_mask(masks[:1].to(device)).shape[1:])
    z = torch.randn((b, *latent_shape), generator=torch.Generator("cpu").manual_seed(0)).to(device)
    decode, target = _decoder(generator), masks.to(device).long()
    now = clock_function("wall" if cfg.clock == "cuda" else cfg.clock)
    n, corrections = cfg.num_inference_steps, crfm.rectified_step * crfm.num_rectified

    def plain() -> SampleOutput:
        return sample(generator, masks, prompt_embeds, pooled, seeds, cfg)

    def rectified() -> SampleOutput:
        return sample(generator, masks, prompt_embeds, pooled, seeds, cfg, crfm, judge)

    plain_runs, crfm_runs, passes = [], [], []
    def necessary() -> tuple[float, float]:
        per_pass = [_necessary_pass(decode, judge, z, target, now) for _ in range(corrections)]
        return sum(d for d, _ in per_pass), sum(j for _, j in per_pass)

    for k in range(warmup + repeats):
        # Each variant runs once right after the passes (cold caches) and once right after the other variant.
        first = necessary()
        rnd = [plain(), rectified()]
        second = necessary()
        rnd += [rectified(), plain()]
        if k >= warmup:
            plain_runs.append((rnd[0], rnd[3]))
            crfm_runs.append((rnd[1], rnd[2]))
            passes.append(((first[0] + second[0]) / 2, (first[1] + second[1]) / 2))
    plain_best, crfm_best = _best([r for pair in plain_runs for r in pair]), _best([r for pair in crfm_runs for r in pair])
    decode_s, judge_s = min(p[0] for p in passes), min(p[1] for p in passes)
    plain_s = plain_best.timings["total"] / b
    crfm_s = crfm_best.timings["total"] / b
    necessary = (decode_s + judge_s) / b
    extra = crfm_s - plain_s
    in_loop = (crfm_best.timings.get("vae_decode", 0.0) + crfm_best.timings.get("judge", 0.0)) / b
    runs = {
        "plain": [_mean_timings(pair)["total"] / b for pair in plain_runs],
        "crfm": [_mean_timings(pair)["total"] / b for pair in crfm_runs],
        "necessary": [(d + j) / b for d, j in passes],
        "vae_decode_fwd_bwd": [d / corrections / b for d, _ in passes],
        "judge_fwd_bwd": [j / corrections / b for _, j in passes],
        "crfm_timings": [{k: v / b for k, v in _mean_timings(pair).items()} for pair in crfm_runs],
        "plain_timings": [{k: v / b for k, v in _mean_timings(pair).items()} for pair in plain_runs],
    }
    return {
        "device": str(_device_dtype(generator.transformer)[0]),
        "batch_size": b,
        "num_inference_steps": n,
        "rectified_step": crfm.rectified_step,
        "num_rectified": crfm.num_rectified,
        "judge_size": crfm.judge_size,
        "repeats": repeats,
        "warmup": warmup,
        "clock": cfg.clock,
        "plain_seconds_per_image": plain_s,
        "crfm_seconds_per_image": crfm_s,
        "crfm_extra_seconds_per_image": extra,
        "crfm_necessary_seconds_per_image": necessary,
        "overhead_ratio": extra / necessary if necessary > 0 else float("nan"),
        "in_loop_ratio": extra / in_loop if in_loop > 0 else float("nan"),
        "slowdown": crfm_s / plain_s if plain_s > 0 else float("nan"),
        "breakdown": {
            "transformer_step": plain_best.timings["transformer"] / n / b,
            "vae_decode_fwd_bwd_in_loop": crfm_best.timings.get("vae_decode", 0.0) / corrections / b,
            "judge_fwd_bwd_in_loop": crfm_best.timings.get("judge", 0.0) / corrections / b,
            "vae_decode_fwd_bwd_standalone": decode_s / corrections / b,
            "judge_fwd_bwd_standalone": judge_s / corrections / b,
            "final_decode": plain_best.timings["final_decode"] / b,
            "encode_mask": plain_best.timings["encode_mask"] / b,
        },
        "runs": runs,
    }
