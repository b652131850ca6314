"""bench.perf.rounds: plain vs CRFM rounds; here only their bookkeeping is checked (no timing thresholds)."""

from __future__ import annotations

import pytest
from test_sample_sampler import _inputs, generator, judge  # noqa: F401  (fixtures: tiny preset, 1x1 judge)

from bench.perf.rounds import profile_sampling, timed_sample
from todsynth.sample.config import CRFMConfig, SamplerConfig
from todsynth.sample.observer import SECTIONS


def test_profile_reports_consistent_figures(generator, judge) -> None:  # noqa: F811
    masks, embeds, pooled, _ = _inputs(2)
    cfg = SamplerConfig(num_inference_steps=3, batch_size=1)
    r = profile_sampling(generator, judge, masks, embeds, pooled, cfg, CRFMConfig(rectified_step=2), clock="cpu",
                         repeats=1)
    assert (r["batch_size"], r["num_inference_steps"], r["rectified_step"], r["clock"]) == (2, 3, 2, "cpu")
    assert r["crfm_seconds_per_image"] > 0 and r["plain_seconds_per_image"] > 0  # no timing order: a test, not a benchmark
    assert r["crfm_extra_seconds_per_image"] == pytest.approx(r["crfm_seconds_per_image"] - r["plain_seconds_per_image"])
    assert r["overhead_ratio"] == pytest.approx(r["crfm_extra_seconds_per_image"] / r["crfm_necessary_seconds_per_image"])
    b = r["breakdown"]
    assert all(v > 0 for v in b.values()), b
    assert r["crfm_necessary_seconds_per_image"] == pytest.approx(
        2 * (b["vae_decode_fwd_bwd_standalone"] + b["judge_fwd_bwd_standalone"])
    )
    runs = r["runs"]
    assert len(runs["plain"]) == len(runs["crfm"]) == len(runs["plain_timings"]) == 1  # one timed round
    assert runs["plain_timings"][0]["total"] == pytest.approx(runs["plain"][0])  # a round's mean of its two runs
    assert "vae_decode" in runs["crfm_timings"][0] and "vae_decode" not in runs["plain_timings"][0]


def test_profile_needs_crfm(generator, judge) -> None:  # noqa: F811
    masks, embeds, pooled, _ = _inputs(1)
    with pytest.raises(ValueError, match="rectified_step"):
        profile_sampling(generator, judge, masks, embeds, pooled, SamplerConfig(num_inference_steps=2), CRFMConfig())
    with pytest.raises(ValueError, match="repeats"):
        profile_sampling(generator, judge, masks, embeds, pooled, SamplerConfig(num_inference_steps=2),
                         CRFMConfig(rectified_step=1), repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        profile_sampling(generator, judge, masks, embeds, pooled, SamplerConfig(num_inference_steps=2),
                         CRFMConfig(rectified_step=1), warmup=-1)


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_timed_sample_covers_every_section(generator, judge, clock) -> None:  # noqa: F811
    """The Stopwatch observer times every section of the sampler (CRFM's decode and judge too) and the total."""
    masks, embeds, pooled, _ = _inputs(2)
    cfg = SamplerConfig(num_inference_steps=3)
    t = timed_sample(generator, masks, embeds, pooled, cfg, CRFMConfig(rectified_step=2, max_step_size=0.5), judge, clock)
    assert set(t) == {*SECTIONS, "total"}
    for key in (*SECTIONS, "total"):
        assert t[key] > 0, key
    assert t["total"] >= t["transformer"] + t["vae_decode"]
    plain = timed_sample(generator, masks, embeds, pooled, cfg, None, None, clock)
    assert set(plain) == {*SECTIONS, "total"} - {"vae_decode", "judge"}
