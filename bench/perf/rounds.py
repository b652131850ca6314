"""Seconds per image of plain sampling vs CRFM, in interleaved rounds, with the passes CRFM cannot avoid.

The CRFM overhead ratio is ``(crfm - plain) / necessary`` per image, where ``necessary`` is what CRFM cannot
avoid: ``rectified_step * num_rectified`` times a VAE decode forward + backward and a judge forward + backward,
timed standalone on the same shapes. A ratio near 1 means the correction adds nothing beyond those passes; the
target is <= 1.1. Each round is symmetric, passes, plain, CRFM, passes, CRFM, plain, so a load drift that is
linear over the round cancels in the round's ``mean(CRFM) - mean(plain)`` over the mean of its two pass groups,
and each variant runs once right after the passes (cold caches) and once right after the other variant. ``clock``
picks the clock ("cpu" = process CPU seconds, "cuda" = events); the standalone passes synchronise CUDA around
every timed region.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.perf.timing import Clock, Stopwatch, clock_function, sync
from todsynth.sample.config import CRFMConfig, SamplerConfig
from todsynth.sample.sampler import latent_decoder, sample

Timings = dict[str, float]


def timed_sample(generator: Any, masks: Tensor, prompt_embeds: Tensor, pooled: Tensor, cfg: SamplerConfig,
                 crfm: CRFMConfig | None, judge: Callable[[Tensor], Tensor] | None, clock: Clock) -> Timings:
    """One ``sample`` call's seconds per section (:data:`todsynth.sample.observer.SECTIONS`) and ``total``."""
    sw = Stopwatch(clock)
    seeds = list(range(masks.shape[0]))
    t0 = sw.now()
    sample(generator, masks, prompt_embeds, pooled, seeds, cfg, crfm, judge, observer=sw)
    total = sw.now() - t0
    return {**sw.totals(), "total": total}


def necessary_pass(
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
        sync(device)
        t0 = now()
        images = decode(leaf)
        images.sum().backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        sync(device)
        t1 = now()
        image_leaf = images.detach().requires_grad_(True)
        F.cross_entropy(judge(image_leaf).float(), target, ignore_index=255).backward()  # type: ignore[no-untyped-call]
        sync(device)
        t2 = now()
    return t1 - t0, t2 - t1


def _mean(runs: tuple[Timings, ...]) -> Timings:
    """Section seconds averaged over runs (a section missing from a run counts 0)."""
    keys = {k for r in runs for k in r}
    return {k: sum(r.get(k, 0.0) for r in runs) / len(runs) for k in keys}


def _check(crfm: CRFMConfig, repeats: int, warmup: int) -> None:
    if not crfm.enabled:
        raise ValueError("crfm.rectified_step must be > 0 to profile CRFM against plain sampling")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def profile_sampling(
    generator: Any,
    judge: Callable[[Tensor], Tensor],
    masks: Tensor,
    prompt_embeds: Tensor,
    pooled: Tensor,
    cfg: SamplerConfig,
    crfm: CRFMConfig,
    *,
    clock: Clock = "wall",
    repeats: int = 3,
    warmup: int = 1,
) -> dict[str, Any]:
    """Time plain vs CRFM sampling of ``masks`` (one batch) and return per-image figures.

    Args:
        generator, judge, masks, prompt_embeds, pooled, cfg: as for :func:`todsynth.sample.sampler.sample`
            (``cfg.batch_size`` is raised to cover the batch so one call is one batch).
        crfm: the CRFM settings to profile (``rectified_step`` > 0), e.g. 4 of 23 steps.
        clock: "wall", "cpu" (process CPU seconds) or "cuda" (events for the sections, wall for the passes).
        repeats: timed rounds (each: passes, plain, CRFM, passes, CRFM, plain), after ``warmup`` rounds.

    Returns:
        Flat dict: ``plain_seconds_per_image``, ``crfm_seconds_per_image`` (the fastest single runs),
        ``crfm_extra_seconds_per_image``, ``crfm_necessary_seconds_per_image``, ``overhead_ratio`` (extra /
        standalone necessary, from those minima), ``in_loop_ratio`` (extra / the decode + judge time measured
        inside the loop: the sampler's own bookkeeping), ``slowdown``, ``breakdown`` (per image:
        ``transformer_step``, ``vae_decode_fwd_bwd`` and ``judge_fwd_bwd`` per correction, in-loop and standalone),
        and ``runs``: every timed round's values (lists, one entry per round, same units) for median/min/max:
        ``plain``, ``crfm`` (the mean of the round's two runs), ``necessary`` (seconds per image, the mean of the
        round's two pass groups), ``vae_decode_fwd_bwd``, ``judge_fwd_bwd`` (standalone, per correction per
        image), ``crfm_timings`` and ``plain_timings`` (the variant's section seconds per image, the mean of the
        round's two runs).
    """
    _check(crfm, repeats, warmup)
    b = masks.shape[0]
    cfg = replace(cfg, batch_size=max(cfg.batch_size, b))
    device = next(generator.transformer.parameters()).device
    z = torch.randn((b, *generator.latent_shape), generator=torch.Generator("cpu").manual_seed(0)).to(device)
    decode, target = latent_decoder(generator), masks.to(device).long()
    now = clock_function("wall" if clock == "cuda" else clock)
    corrections = crfm.rectified_step * crfm.num_rectified

    def plain() -> Timings:
        return timed_sample(generator, masks, prompt_embeds, pooled, cfg, None, None, clock)

    def rectified() -> Timings:
        return timed_sample(generator, masks, prompt_embeds, pooled, cfg, crfm, judge, clock)

    def necessary() -> tuple[float, float]:
        per_pass = [necessary_pass(decode, judge, z, target, now) for _ in range(corrections)]
        return sum(d for d, _ in per_pass), sum(j for _, j in per_pass)

    plain_runs, crfm_runs, passes = [], [], []
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
    figures = _figures(plain_runs, crfm_runs, passes, b, cfg.num_inference_steps, corrections)
    settings = {"device": str(device), "batch_size": b, "num_inference_steps": cfg.num_inference_steps,
                "rectified_step": crfm.rectified_step, "num_rectified": crfm.num_rectified,
                "judge_size": crfm.judge_size, "repeats": repeats, "warmup": warmup, "clock": clock}
    return {**settings, **figures}


def _figures(plain_runs: list[tuple[Timings, Timings]], crfm_runs: list[tuple[Timings, Timings]],
             passes: list[tuple[float, float]], b: int, n: int, corrections: int) -> dict[str, Any]:
    """The per-image figures of :func:`profile_sampling` from its timed rounds (``b`` images, ``n`` steps)."""
    plain_best = min((r for pair in plain_runs for r in pair), key=lambda r: r["total"])
    crfm_best = min((r for pair in crfm_runs for r in pair), key=lambda r: r["total"])
    decode_s, judge_s = min(p[0] for p in passes), min(p[1] for p in passes)
    plain_s, crfm_s = plain_best["total"] / b, crfm_best["total"] / b
    necessary = (decode_s + judge_s) / b
    extra = crfm_s - plain_s
    in_loop = (crfm_best.get("vae_decode", 0.0) + crfm_best.get("judge", 0.0)) / b
    runs = {
        "plain": [_mean(pair)["total"] / b for pair in plain_runs],
        "crfm": [_mean(pair)["total"] / b for pair in crfm_runs],
        "necessary": [(d + j) / b for d, j in passes],
        "vae_decode_fwd_bwd": [d / corrections / b for d, _ in passes],
        "judge_fwd_bwd": [j / corrections / b for _, j in passes],
        "crfm_timings": [{k: v / b for k, v in _mean(pair).items()} for pair in crfm_runs],
        "plain_timings": [{k: v / b for k, v in _mean(pair).items()} for pair in plain_runs],
    }
    return {
        "plain_seconds_per_image": plain_s,
        "crfm_seconds_per_image": crfm_s,
        "crfm_extra_seconds_per_image": extra,
        "crfm_necessary_seconds_per_image": necessary,
        "overhead_ratio": extra / necessary if necessary > 0 else float("nan"),
        "in_loop_ratio": extra / in_loop if in_loop > 0 else float("nan"),
        "slowdown": crfm_s / plain_s if plain_s > 0 else float("nan"),
        "breakdown": {
            "transformer_step": plain_best["transformer"] / n / b,
            "vae_decode_fwd_bwd_in_loop": crfm_best.get("vae_decode", 0.0) / corrections / b,
            "judge_fwd_bwd_in_loop": crfm_best.get("judge", 0.0) / corrections / b,
            "vae_decode_fwd_bwd_standalone": decode_s / corrections / b,
            "judge_fwd_bwd_standalone": judge_s / corrections / b,
            "final_decode": plain_best["final_decode"] / b,
            "encode_mask": plain_best["encode_mask"] / b,
        },
        "runs": runs,
    }
