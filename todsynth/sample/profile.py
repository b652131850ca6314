"""Benchmark helper (not a test): seconds per image for plain sampling vs CRFM, with a cost breakdown.

The CRFM overhead ratio is ``(crfm - plain) / necessary`` per image, where ``necessary`` is what CRFM cannot
avoid: ``rectified_step * num_rectified`` times a VAE decode forward + backward and a judge forward + backward,
timed standalone on the same shapes. A ratio near 1 means the correction adds nothing beyond those passes;
the target is <= 1.1. Times are the minimum over ``repeats`` (the least noisy estimator of a fixed cost)
after one warm-up run; CUDA is synchronised around every timed region (this is a benchmark, not the sampler).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from todsynth.sample.crfm import CRFMConfig
from todsynth.sample.sampler import SampleOutput, SamplerConfig, _decoder, _device_dtype, sample


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _necessary_seconds(
    generator: Any, judge: Callable[[Tensor], Tensor], masks: Tensor, latent_shape: tuple[int, ...], repeats: int
) -> tuple[float, float]:
    """Standalone (decode fwd+bwd, judge fwd+bwd) seconds for one batch, min over ``repeats`` after a warm-up."""
    device, _ = _device_dtype(generator.transformer)
    decode = _decoder(generator)
    gen = torch.Generator("cpu").manual_seed(0)
    z = torch.randn((masks.shape[0], *latent_shape), generator=gen).to(device)
    target = masks.to(device).long()
    best_decode, best_judge = float("inf"), float("inf")
    for k in range(repeats + 1):
        with torch.enable_grad():
            leaf = z.clone().requires_grad_(True)
            _sync(device)
            t0 = time.perf_counter()
            images = decode(leaf)
            images.sum().backward()
            _sync(device)
            t1 = time.perf_counter()
            image_leaf = images.detach().requires_grad_(True)
            loss = F.cross_entropy(judge(image_leaf).float(), target, ignore_index=255)
            loss.backward()
            _sync(device)
            t2 = time.perf_counter()
        if k > 0:  # the first pass is a warm-up
            best_decode, best_judge = min(best_decode, t1 - t0), min(best_judge, t2 - t1)
    return best_decode, best_judge


def _best(runs: list[SampleOutput]) -> SampleOutput:
    return min(runs, key=lambda r: r.timings["total"])


def profile_sampling(
    generator: Any,
    judge: Callable[[Tensor], Tensor],
    masks: Tensor,
    prompt_embeds: Tensor,
    pooled: Tensor,
    cfg: SamplerConfig,
    crfm: CRFMConfig,
    repeats: int = 3,
) -> dict[str, Any]:
    """Time plain vs CRFM sampling of ``masks`` (one batch) and return per-image figures.

    Args:
        generator, judge, masks, prompt_embeds, pooled, cfg: as for :func:`todsynth.sample.sampler.sample`
            (``cfg.batch_size`` should cover the batch so one call is one batch).
        crfm: the CRFM settings to profile (``rectified_step`` > 0), e.g. 4 of 23 steps.
        repeats: timed runs per variant (min taken), after one warm-up each.

    Returns:
        Flat dict: ``plain_seconds_per_image``, ``crfm_seconds_per_image``, ``crfm_extra_seconds_per_image``,
        ``crfm_necessary_seconds_per_image``, ``overhead_ratio``, ``slowdown``, and ``breakdown`` (per image:
        ``transformer_step``, ``vae_decode_fwd_bwd`` and ``judge_fwd_bwd`` per correction, in-loop and standalone).
    """
    if not crfm.enabled:
        raise ValueError("crfm.rectified_step must be > 0 to profile CRFM against plain sampling")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    b = masks.shape[0]
    seeds = list(range(b))
    cfg = replace(cfg, batch_size=max(cfg.batch_size, b))
    plain_runs, crfm_runs = [], []
    for k in range(repeats + 1):
        plain = sample(generator, masks, prompt_embeds, pooled, seeds, cfg)
        rect = sample(generator, masks, prompt_embeds, pooled, seeds, cfg, crfm, judge)
        if k > 0:  # interleaved so drifting machine load hits both variants alike
            plain_runs.append(plain)
            crfm_runs.append(rect)
    plain_best, crfm_best = _best(plain_runs), _best(crfm_runs)
    n, corrections = cfg.num_inference_steps, crfm.rectified_step * crfm.num_rectified
    latent_shape = tuple(generator.encode_mask(masks[:1].to(_device_dtype(generator.transformer)[0])).shape[1:])
    decode_s, judge_s = _necessary_seconds(generator, judge, masks, latent_shape, repeats)
    plain_s = plain_best.timings["total"] / b
    crfm_s = crfm_best.timings["total"] / b
    necessary = corrections * (decode_s + judge_s) / b
    extra = crfm_s - plain_s
    return {
        "device": str(_device_dtype(generator.transformer)[0]),
        "batch_size": b,
        "num_inference_steps": n,
        "rectified_step": crfm.rectified_step,
        "num_rectified": crfm.num_rectified,
        "judge_size": crfm.judge_size,
        "repeats": repeats,
        "plain_seconds_per_image": plain_s,
        "crfm_seconds_per_image": crfm_s,
        "crfm_extra_seconds_per_image": extra,
        "crfm_necessary_seconds_per_image": necessary,
        "overhead_ratio": extra / necessary if necessary > 0 else float("nan"),
        "slowdown": crfm_s / plain_s if plain_s > 0 else float("nan"),
        "breakdown": {
            "transformer_step": plain_best.timings["transformer"] / n / b,
            "vae_decode_fwd_bwd_in_loop": crfm_best.timings.get("vae_decode", 0.0) / corrections / b,
            "judge_fwd_bwd_in_loop": crfm_best.timings.get("judge", 0.0) / corrections / b,
            "vae_decode_fwd_bwd_standalone": decode_s / b,
            "judge_fwd_bwd_standalone": judge_s / b,
            "final_decode": plain_best.timings["final_decode"] / b,
            "encode_mask": plain_best.timings["encode_mask"] / b,
        },
    }
