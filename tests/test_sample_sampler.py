"""Sampler: plain/CRFM/CFG paths, per-sample seeding, batch equivalence, input checks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from todsynth.models.generator import Generator, build_generator
from todsynth.models.presets import resolve_preset
from todsynth.models.vae import decode_latents
from todsynth.sample.config import CRFMConfig, SamplerConfig
from todsynth.sample.crfm import judge_loss
from todsynth.sample.observer import SECTIONS
from todsynth.sample.sampler import initial_noise, sample

SIZE, C = 32, 7


@pytest.fixture(scope="module")
def generator() -> Generator:
    """The real tiny preset at 32 px (latents 48x8x8); mask stream copied from the image stream so masks matter."""
    return build_generator(resolve_preset("tiny", {"image_size": SIZE, "mask_stream": {"init": "image"}}))


@pytest.fixture(scope="module")
def judge() -> nn.Module:
    conv = nn.Conv2d(3, C, 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 3)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv.requires_grad_(False)


def _inputs(b: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(2)
    masks = torch.randint(0, C, (b, SIZE, SIZE), generator=g)
    masks[:, :2, :2] = 255
    return masks, torch.randn(b, 5, 64, generator=g), torch.randn(b, 64, generator=g), [11 * k + 3 for k in range(b)]


CFG = SamplerConfig(num_inference_steps=3, batch_size=4)
CRFM = CRFMConfig(rectified_step=2, max_step_size=0.5)


def test_plain_sampling_matches_diffusers_scheduler_loop(generator) -> None:
    masks, embeds, pooled, seeds = _inputs(2)
    out = sample(generator, masks, embeds, pooled, seeds, CFG)
    assert out.images.shape == (2, 3, SIZE, SIZE) and out.images.dtype == torch.float32
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    sched = FlowMatchEulerDiscreteScheduler(shift=generator.shift)  # the preset's
    sched.set_timesteps(3)
    with torch.no_grad():
        mask_latents = generator.encode_mask(masks)
        x = initial_noise(seeds, generator.latent_shape)
        for t in sched.timesteps:
            v = generator.transformer(x, mask_latents, t.expand(2), embeds, pooled)
            x = sched.step(v, t, x, return_dict=False)[0]
        ref = decode_latents(generator.vae, x)
    assert torch.allclose(out.images, ref, atol=1e-5)


def test_rectified_step_zero_and_zero_alpha_equal_plain(generator, judge) -> None:
    masks, embeds, pooled, seeds = _inputs()
    plain = sample(generator, masks, embeds, pooled, seeds, CFG)
    off = sample(generator, masks, embeds, pooled, seeds, CFG, CRFMConfig(rectified_step=0), judge)
    assert torch.equal(off.images, plain.images) and off.judge_loss is None
    zero = CRFMConfig(rectified_step=2, max_step_size=0.0, clamp=None)
    zero_out = sample(generator, masks, embeds, pooled, seeds, CFG, zero, judge)
    assert torch.equal(zero_out.images, plain.images)
    assert zero_out.judge_loss is not None and zero_out.judge_loss.shape == (3, 2)
    crfm_out = sample(generator, masks, embeds, pooled, seeds, CFG, CRFM, judge)
    assert not torch.allclose(crfm_out.images, plain.images, atol=1e-4)


def test_crfm_lowers_judge_loss_of_first_x0_estimate(generator, judge) -> None:
    masks, embeds, pooled, seeds = _inputs()
    cfg_x0 = CRFMConfig(rectified_step=0, return_x0=True)
    plain = sample(generator, masks, embeds, pooled, seeds, CFG, cfg_x0, judge)
    rect = sample(generator, masks, embeds, pooled, seeds, CFG,
                  CRFMConfig(rectified_step=1, max_step_size=0.5, clamp=None, return_x0=True), judge)
    assert plain.x0 is not None and rect.x0 is not None and len(rect.x0) == 3 and rect.x0[0].shape == (3, 48, 8, 8)
    with torch.no_grad():
        loss_plain = judge_loss(judge(decode_latents(generator.vae, plain.x0[0])), masks)[0]
        loss_rect = judge_loss(judge(decode_latents(generator.vae, rect.x0[0])), masks)[0]
    assert bool((loss_rect < loss_plain).all()), (loss_plain, loss_rect)
    assert torch.allclose(rect.judge_loss[:, 0], loss_plain, atol=1e-5)  # recorded loss = before correction


@pytest.mark.parametrize("crfm", [None, CRFM], ids=["plain", "crfm"])
def test_batch_equals_single_samples(generator, judge, crfm) -> None:
    masks, embeds, pooled, seeds = _inputs(3)
    batch = sample(generator, masks, embeds, pooled, seeds, CFG, crfm, judge)
    singles = torch.cat([
        sample(generator, masks[k:k + 1], embeds[k:k + 1], pooled[k:k + 1], seeds[k:k + 1], CFG, crfm, judge).images
        for k in range(3)
    ])
    assert torch.allclose(batch.images, singles, atol=1e-5)
    chunked = sample(generator, masks, embeds, pooled, seeds, SamplerConfig(num_inference_steps=3, batch_size=2),
                     crfm, judge)
    assert torch.allclose(batch.images, chunked.images, atol=1e-5)


def test_seeds_drive_the_output(generator) -> None:
    masks, embeds, pooled, seeds = _inputs(2)
    a = sample(generator, masks, embeds, pooled, seeds, CFG)
    b = sample(generator, masks, embeds, pooled, seeds, CFG)
    c = sample(generator, masks, embeds, pooled, [seeds[0], seeds[1] + 1], CFG)
    assert torch.equal(a.images, b.images)
    assert torch.equal(c.images[0], a.images[0]) and not torch.allclose(c.images[1], a.images[1], atol=1e-4)


def test_cfg(generator) -> None:
    masks, embeds, pooled, seeds = _inputs(2)
    plain = sample(generator, masks, embeds, pooled, seeds, CFG)
    cfg = SamplerConfig(num_inference_steps=3, guidance_scale=4.5)
    same = sample(generator, masks, embeds, pooled, seeds, cfg, negative=(embeds, pooled))
    assert torch.allclose(same.images, plain.images, atol=1e-5)  # uncond == cond -> guidance is a no-op
    neg = (torch.zeros(1, 5, 64), torch.zeros(1, 64))
    guided = sample(generator, masks, embeds, pooled, seeds, cfg, negative=neg)
    assert not torch.allclose(guided.images, plain.images, atol=1e-4)


class Recorder:
    """A test observer: records the sections entered and the functions traced, and calls them unchanged."""

    def __init__(self) -> None:
        self.sections: list[str] = []
        self.traced_calls: list[str] = []

    def section(self, name):  # noqa: ANN001, ANN201
        self.sections.append(name)
        return contextlib.nullcontext()

    def traced(self, name, fn):  # noqa: ANN001, ANN201
        def call(x):  # noqa: ANN001, ANN202
            self.traced_calls.append(name)
            return fn(x)

        return call


def test_observer_sees_every_part_and_changes_nothing(generator, judge) -> None:
    masks, embeds, pooled, seeds = _inputs(2)
    cfg = SamplerConfig(num_inference_steps=3)
    rec = Recorder()
    observed = sample(generator, masks, embeds, pooled, seeds, cfg, CRFM, judge, observer=rec)
    assert set(rec.sections) == set(SECTIONS) - {"vae_decode", "judge"}
    assert rec.sections.count("transformer") == rec.sections.count("euler") == 3
    assert rec.traced_calls == ["vae_decode", "judge"] * 2  # CRFM's calls, rectified_step=2
    assert torch.equal(observed.images, sample(generator, masks, embeds, pooled, seeds, cfg, CRFM, judge).images)


@pytest.mark.parametrize(("change", "match"), [
    ({"crfm": CRFMConfig(rectified_step=4)}, "rectified_step"),
    ({"crfm": CRFM, "judge": None}, "judge"),
    ({"masks": torch.zeros(2, 16, 16, dtype=torch.long)}, "masks size"),
    ({"masks": torch.zeros(2, SIZE, SIZE)}, "masks"),
    ({"seeds": [1]}, "seeds"),
    ({"prompt_embeds": torch.zeros(1, 5, 64)}, "prompt_embeds"),
    ({"pooled": torch.zeros(2, 3, 64)}, "pooled"),
    ({"cfg": SamplerConfig(num_inference_steps=3, guidance_scale=2.0)}, "negative"),
])
def test_input_errors_name_the_argument(generator, judge, change, match) -> None:
    masks, embeds, pooled, seeds = _inputs(2)
    kwargs = dict(generator=generator, masks=masks, prompt_embeds=embeds, pooled=pooled, seeds=seeds,
                  cfg=CFG, crfm=None, judge=judge) | change
    with pytest.raises(ValueError, match=match):
        sample(**kwargs)


@pytest.mark.parametrize(("field", "value"), [
    ("num_inference_steps", 0), ("shift", 0.0), ("guidance_scale", 0.5), ("batch_size", 0),
])
def test_sampler_config_validation(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**{field: value})


def test_mask_guidance_contrasts_with_no_mask() -> None:
    """``mask_guidance``: the unconditional branch also drops the mask, so guidance with the prompt as its own
    negative still moves the images, by exactly ``v_u + g (v_c - v_u)`` with ``v_u`` computed without a mask."""
    gen = build_generator(resolve_preset("tiny", {"image_size": SIZE}))
    masks, embeds, pooled, seeds = _inputs(2)
    plain = sample(gen, masks, embeds, pooled, seeds, CFG)
    text_only = SamplerConfig(num_inference_steps=3, guidance_scale=3.0)
    with_mask = SamplerConfig(num_inference_steps=3, guidance_scale=3.0, mask_guidance=True)
    same_prompt = (embeds, pooled)
    # zero hint (as built): the mask changes nothing, so dropping it in the negative changes nothing either
    torch.testing.assert_close(sample(gen, masks, embeds, pooled, seeds, with_mask, negative=same_prompt).images,
                               plain.images, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.nn.init.normal_(gen.transformer.mask_hint.weight, std=0.2, generator=torch.Generator().manual_seed(0))
    plain = sample(gen, masks, embeds, pooled, seeds, CFG)
    torch.testing.assert_close(sample(gen, masks, embeds, pooled, seeds, text_only, negative=same_prompt).images,
                               plain.images, rtol=0, atol=1e-5)
    guided = sample(gen, masks, embeds, pooled, seeds, with_mask, negative=same_prompt).images
    assert (guided - plain.images).abs().max() > 1e-3
    # the same loop by hand: v = v_u + 3 (v_c - v_u), v_u without the mask
    sched = FlowMatchEulerDiscreteScheduler(shift=gen.shift)
    sched.set_timesteps(3)
    with torch.no_grad():
        m = gen.encode_mask(masks)
        x = torch.stack([torch.randn(gen.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        for t in sched.timesteps:
            tt = t.expand(2)
            v_c = gen.transformer(x, m, tt, embeds, pooled)
            v_u = gen.transformer(x, None, tt, embeds, pooled)
            x = sched.step(v_u + 3.0 * (v_c - v_u), t, x).prev_sample
        from todsynth.models.vae import decode_latents

        ref = decode_latents(gen.vae, x).clamp(0, 1)
    torch.testing.assert_close(guided, ref, rtol=0, atol=1e-4)


def test_cfg_negative_is_the_empty_prompt_only_when_guiding() -> None:
    asked: list[list[str]] = []

    def get(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        asked.append(prompts)
        return torch.zeros(len(prompts), 5, 64), torch.ones(len(prompts), 64)

    from todsynth.sample.sampler import cfg_negative

    assert cfg_negative(get, SamplerConfig(guidance_scale=1.0)) is None and asked == []
    embeds, pooled = cfg_negative(get, SamplerConfig(guidance_scale=1.5))
    assert asked == [[""]] and embeds.shape == (1, 5, 64) and pooled.shape == (1, 64)
