"""Plain vs CRFM sampling: seconds per image, CRFM's breakdown and extra, the standalone passes, peak memory.

The rounds come from :func:`profile_sampling` (passes, plain, CRFM, passes, CRFM, plain); here they become the
report's ``plain``, ``crfm``, ``vae`` and ``judge`` sections and the headline ratios: ``crfm_over_plain`` and
``crfm_overhead_vs_parts`` are medians of per-round ratios, the ``*_min`` variants divide minima over rounds.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import Tensor, nn

from bench.perf.config import PerfConfig
from bench.perf.memory import PeakMemory
from bench.perf.models import autocast
from bench.perf.rounds import profile_sampling
from bench.perf.timing import stats

SECTIONS = ("transformer", "vae_decode", "judge", "euler", "final_decode", "encode_mask")  # the sampler's (observer.py)


def measure_sampling(gen: Any, judge: nn.Module, masks: Tensor, embeds: Tensor, pooled: Tensor,
                     cfg: PerfConfig) -> dict[str, Any]:
    """Plain vs CRFM seconds per image, CRFM's breakdown, standalone VAE/judge passes, peak memory, ratios."""
    from todsynth.sample.config import CRFMConfig, SamplerConfig
    from todsynth.sample.sampler import sample

    device = torch.device(cfg.device)
    clock = "cuda" if device.type == "cuda" else cfg.clock
    scfg = SamplerConfig(num_inference_steps=cfg.steps, batch_size=int(cfg.batch),  # type: ignore[arg-type]
                         precision=cfg.precision)  # type: ignore[arg-type]
    crfm = CRFMConfig(rectified_step=cfg.rectified)
    with autocast(device, cfg.precision):  # the standalone passes run like the in-loop ones
        prof = profile_sampling(gen, judge, masks, embeds, pooled, scfg, crfm, clock=clock,  # type: ignore[arg-type]
                                repeats=cfg.repeats)
    seeds = list(range(masks.shape[0]))
    with PeakMemory(device) as plain_mem:
        sample(gen, masks, embeds, pooled, seeds, scfg)
    with PeakMemory(device) as crfm_mem:
        sample(gen, masks, embeds, pooled, seeds, scfg, crfm, judge)
    runs = prof["runs"]
    crfm_rows, plain_rows = section_rows(runs["crfm_timings"]), section_rows(runs["plain_timings"])
    return {
        "plain": {
            "seconds_per_image": stats(runs["plain"]),
            "transformer_seconds_per_step_per_image": prof["breakdown"]["transformer_step"],
            "breakdown_seconds_per_image": {k: stats([r[k] for r in plain_rows]) for k in (*SECTIONS, "other")
                                            if k not in ("vae_decode", "judge")},
            "memory": plain_mem.as_dict(),
        },
        "crfm": crfm_section(runs, crfm_rows, plain_rows, cfg.rectified, prof["in_loop_ratio"], crfm_mem.as_dict()),
        "vae": {
            "decode_fwd_bwd_seconds_per_image": stats(runs["vae_decode_fwd_bwd"]),
            "decode_fwd_bwd_in_loop_seconds_per_image": stats([r["vae_decode"] / cfg.rectified for r in crfm_rows]),
            "final_decode_seconds_per_image": stats([t["final_decode"] for t in runs["crfm_timings"]]),
            "params": sum(p.numel() for p in gen.vae.parameters()),
        },
        "judge": {
            "model": cfg.judge,
            "fwd_bwd_seconds_per_image": stats(runs["judge_fwd_bwd"]),
            "fwd_bwd_in_loop_seconds_per_image": stats([r["judge"] / cfg.rectified for r in crfm_rows]),
            "params": sum(p.numel() for p in judge.parameters()),
        },
        **headline_ratios(runs),
    }


def section_rows(timings: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each round's seconds per image of :data:`SECTIONS` (0 when absent) and ``other`` = total - their sum."""
    rows = []
    for t in timings:
        row = {k: t.get(k, 0.0) for k in SECTIONS}
        row["other"] = t["total"] - sum(row.values())
        rows.append(row)
    return rows


def crfm_section(runs: dict[str, Any], crfm_rows: list[dict[str, float]], plain_rows: list[dict[str, float]],
                 rectified: int, in_loop_ratio: float, memory: dict[str, Any]) -> dict[str, Any]:
    """The report's ``crfm``: seconds per image, its breakdown, where the extra over plain goes, round by round."""
    keys = (*SECTIONS, "other")
    pairs = list(zip(crfm_rows, plain_rows, runs["necessary"], strict=True))
    # Where the extra goes, round by round: CRFM's section minus plain's (vae_decode/judge: the in-loop passes),
    # and the part beyond the necessary passes (extra - standalone passes), as a fraction of those passes.
    beyond = {
        "transformer": [(c["transformer"] - p["transformer"]) / n for c, p, n in pairs],
        "passes_in_loop_vs_standalone": [(c["vae_decode"] + c["judge"] - n) / n for c, _, n in pairs],
        "rest": [sum(c[k] - p[k] for k in ("euler", "final_decode", "encode_mask", "other")) / n for c, p, n in pairs],
    }
    return {
        "seconds_per_image": stats(runs["crfm"]),
        "rectified_steps": rectified,
        "breakdown_seconds_per_image": {k: stats([r[k] for r in crfm_rows]) for k in keys},
        "extra_seconds_per_image": min(runs["crfm"]) - min(runs["plain"]),
        "extra_breakdown_seconds_per_image": {k: stats([c[k] - p[k] for c, p, _ in pairs]) for k in keys},
        "beyond_parts_fraction": {k: statistics.median(v) for k, v in beyond.items()},  # of the necessary passes
        "necessary_seconds_per_image": stats(runs["necessary"]),
        "rounds": {k: runs[k] for k in ("plain", "crfm", "necessary")},  # seconds per image, round by round
        "in_loop_ratio": in_loop_ratio,
        "memory": memory,
    }


def headline_ratios(runs: dict[str, Any]) -> dict[str, float]:
    """``crfm_over_plain`` and ``crfm_overhead_vs_parts`` (medians of per-round ratios) and their ``*_min``."""
    plain_min, crfm_min, parts_min = min(runs["plain"]), min(runs["crfm"]), min(runs["necessary"])
    paired = [(c - p) / n for p, c, n in zip(runs["plain"], runs["crfm"], runs["necessary"], strict=True)]
    return {
        "crfm_over_plain": statistics.median(c / p for p, c in zip(runs["plain"], runs["crfm"], strict=True)),
        "crfm_over_plain_min": crfm_min / plain_min,
        "crfm_overhead_vs_parts": statistics.median(paired),
        "crfm_overhead_vs_parts_min": (crfm_min - plain_min) / parts_min,
    }
