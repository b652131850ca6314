"""Mask-conditioned Euler flow sampler with optional CFG and CRFM.

The loop reads like the paper's algorithm: velocity from the transformer (no gradient), CRFM correction
for ``i < rectified_step``, Euler step; decode once at the end. Each sample's initial noise comes from
its own ``torch.Generator(seed)`` (drawn on CPU, then moved), so a sample is reproducible alone, in any
batch, and on any device. Nothing here measures time: a harness passes an ``observer`` (``observer.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from todsynth.sample.config import CRFMConfig, SamplerConfig, rectified_step_problem
from todsynth.sample.crfm import rectify, step_sizes
from todsynth.sample.euler import euler_step, flow_sigmas, timesteps_from_sigmas
from todsynth.sample.observer import SamplingObserver, Unobserved


@dataclass
class SampleOutput:
    """Sampler result.

    Attributes:
        images: (B, 3, H, W) float32 in [0, 1], on CPU.
        x0: if ``crfm.return_x0``: one (B, c, h, w) CPU tensor per step, the clean-latent estimate
            ``z_t - sigma * v`` of the (corrected) velocity used for that step.
        judge_loss: (B, K) per-sample judge loss before each of the K = rectified_step * num_rectified
            corrections (None without CRFM).
        error_fraction: (B, K) fraction of valid pixels the judge got wrong before each correction.
    """

    images: Tensor
    x0: list[Tensor] | None = None
    judge_loss: Tensor | None = None
    error_fraction: Tensor | None = None


def _device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's first parameter (CPU/float32 for parameter-free callables)."""
    params = getattr(module, "parameters", None)
    if params is not None:
        for p in params():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _image_hw(generator: Any) -> tuple[int, int]:
    size = generator.image_size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_inputs(
    generator: Any,
    masks: Tensor,
    prompt_embeds: Tensor,
    pooled: Tensor,
    seeds: Sequence[int],
    cfg: SamplerConfig,
    crfm: CRFMConfig,
    judge: Callable[[Tensor], Tensor] | None,
    negative: tuple[Tensor, Tensor] | None,
) -> None:
    """Raise ``ValueError`` naming the argument before any work (as diffusers' ``check_inputs``)."""
    if not isinstance(masks, Tensor) or masks.ndim != 3 or masks.dtype.is_floating_point:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be an integer label tensor (B, H, W), got {shape}")
    b = masks.shape[0]
    if tuple(masks.shape[-2:]) != _image_hw(generator):
        raise ValueError(
            f"masks size {tuple(masks.shape[-2:])} does not match the generator's image_size {generator.image_size}"
        )
    if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != b:
        raise ValueError(f"prompt_embeds must be (B={b}, L, D), got {tuple(prompt_embeds.shape)}")
    if pooled.ndim != 2 or pooled.shape[0] != b:
        raise ValueError(f"pooled must be (B={b}, P), got {tuple(pooled.shape)}")
    if len(seeds) != b:
        raise ValueError(f"seeds must have one seed per mask: len(seeds)={len(seeds)} but B={b}")
    if why := rectified_step_problem(crfm.rectified_step, cfg.num_inference_steps):
        raise ValueError(f"rectified_step {why}")
    if crfm.enabled and judge is None:
        raise ValueError(f"judge is required when rectified_step={crfm.rectified_step} > 0")
    if cfg.guidance_scale > 1.0:
        if negative is None:
            raise ValueError(f"negative (empty-prompt embeds, pooled) is required when guidance_scale={cfg.guidance_scale} > 1")
        neg_embeds, neg_pooled = negative
        if neg_embeds.shape[-2:] != prompt_embeds.shape[-2:] or neg_pooled.shape[-1] != pooled.shape[-1]:
            raise ValueError(
                f"negative shapes {tuple(neg_embeds.shape)}, {tuple(neg_pooled.shape)} do not match "
                f"prompt_embeds {tuple(prompt_embeds.shape)}, pooled {tuple(pooled.shape)}"
            )


def initial_noise(seeds: Sequence[int], shape: Sequence[int], offset: float = 0.0, groups: int | None = None) -> Tensor:
    """(B, *shape) float32 CPU noise, sample k drawn from ``torch.Generator().manual_seed(seeds[k])``.

    ``offset``, ``groups``: the generator's noise offset (``todsynth.models.generator.draw_noise``; 0: plain Gaussian
    noise).
    """
    from todsynth.models.generator import draw_noise

    return torch.stack([draw_noise(shape, torch.Generator("cpu").manual_seed(int(s)), offset, groups) for s in seeds])


def latent_decoder(generator: Any) -> Callable[[Tensor], Tensor]:
    """Differentiable latent -> [0,1] image function for the generator's VAE (float32 out)."""
    from todsynth.models.vae import decode_latents

    _, vae_dtype = _device_dtype(generator.vae)

    def decode(z: Tensor) -> Tensor:
        return decode_latents(generator.vae, z.to(vae_dtype)).float()

    return decode


def _velocity(
    transformer: Callable[..., Tensor],
    x: Tensor,
    mask_latents: Tensor,
    t: Tensor,
    embeds: Tensor,
    pooled: Tensor,
    cfg: SamplerConfig,
    negative: tuple[Tensor, Tensor] | None,
    dtype: torch.dtype,
) -> Tensor:
    """Transformer velocity (float32); with CFG ``v_u + g (v_c - v_u)``.

    The unconditional velocity ``v_u`` has the empty prompt, and with ``cfg.mask_guidance`` no mask either (a
    call of its own); otherwise it shares one call on [uncond; cond] with ``v_c``.
    """
    b = x.shape[0]
    timestep = t.expand(b)
    guidance_scale = cfg.guidance_scale
    if guidance_scale <= 1.0 or negative is None:
        return transformer(x.to(dtype), mask_latents, timestep, embeds, pooled).float()
    neg_embeds = negative[0].to(embeds).expand(b, *embeds.shape[1:])
    neg_pooled = negative[1].to(pooled).expand(b, *pooled.shape[1:])
    if cfg.mask_guidance:
        z = x.to(dtype)
        v_uncond = transformer(z, None, timestep, neg_embeds, neg_pooled).float()
        v_cond = transformer(z, mask_latents, timestep, embeds, pooled).float()
        return v_uncond + guidance_scale * (v_cond - v_uncond)
    v = transformer(
        torch.cat([x, x]).to(dtype),
        torch.cat([mask_latents, mask_latents]),
        torch.cat([timestep, timestep]),
        torch.cat([neg_embeds, embeds]),
        torch.cat([neg_pooled, pooled]),
    ).float()
    v_uncond, v_cond = v.chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def _schedule(generator: Any, cfg: SamplerConfig, device: torch.device) -> tuple[Tensor, list[float]]:
    """Model timesteps (N,) on ``device`` and the sigmas (N+1,) as host floats (the Euler step's, never synced)."""
    shift = generator.shift if cfg.shift is None else cfg.shift
    sigmas = flow_sigmas(cfg.num_inference_steps, float(shift), int(generator.num_train_timesteps))
    timesteps = timesteps_from_sigmas(sigmas, int(generator.num_train_timesteps)).to(device)
    return timesteps, sigmas.tolist()


def _sample_batch(
    generator: Any,
    masks: Tensor,
    embeds: Tensor,
    pooled: Tensor,
    seeds: Sequence[int],
    cfg: SamplerConfig,
    crfm: CRFMConfig,
    judge: Callable[[Tensor], Tensor] | None,
    negative: tuple[Tensor, Tensor] | None,
    observer: SamplingObserver,
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """One batch through the loop; returns images (CPU), x0 list, per-correction losses and error fractions.

    Nothing inside the step loop reads a device value on the host (no ``.item()``/``.cpu()``/``bool(t)``), so
    on CUDA the loop queues work without waiting; x0 estimates and judge stats move to the CPU once, at the end.
    """
    device, dtype = _device_dtype(generator.transformer)
    masks = masks.to(device)
    embeds, pooled = embeds.to(device, dtype), pooled.to(device, dtype)
    decode = latent_decoder(generator)
    crfm_decode = observer.traced("vae_decode", decode)
    crfm_judge = observer.traced("judge", judge) if judge is not None else None
    timesteps, sigmas = _schedule(generator, cfg, device)
    alphas = step_sizes(crfm.step_scheme, crfm.max_step_size, cfg.num_inference_steps, crfm.rectified_step)
    x0s: list[Tensor] = []
    losses: list[Tensor] = []
    errors: list[Tensor] = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    # Work that never meets autograd runs in inference mode (no version counters or view tracking; -7% per plain
    # image on the tiny CPU preset): the mask encoding, every transformer call, every uncorrected step. Only a
    # rectified step's latents and (cloned) velocity enter CRFM's backward pass, so they stay normal tensors.
    with torch.no_grad(), autocast:
        with observer.section("encode_mask"), torch.inference_mode():  # only ever a transformer input
            mask_latents = generator.encode_mask(masks).to(dtype)
        x = initial_noise(seeds, generator.latent_shape, generator.noise_offset, generator.noise_groups).to(device)
        for i in range(cfg.num_inference_steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            rectified = i < crfm.rectified_step
            with observer.section("transformer"), torch.inference_mode():  # the transformer is never differentiated
                v = _velocity(generator.transformer, x, mask_latents, timesteps[i], embeds, pooled,
                              cfg, negative, dtype)
            if rectified:
                v = v.clone()  # out of inference mode, for CRFM's backward pass
                for _ in range(crfm.num_rectified):
                    r = rectify(v, x, sigma, crfm_decode, crfm_judge, masks, alphas[i], crfm)  # type: ignore[arg-type]
                    v = r.v
                    losses.append(r.loss)
                    errors.append(r.error_fraction)
            with torch.inference_mode(not rectified):  # a rectified step's x is the next correction's input
                if crfm.return_x0:
                    x0s.append(x - sigma * v)
                with observer.section("euler"):
                    x = euler_step(x, v, sigma, sigma_next)
        with observer.section("final_decode"), torch.inference_mode():
            images = decode(x).clamp(0, 1)
    images = images.cpu()
    if images.is_inference():  # a normal tensor for the caller (in-place use outside inference mode is allowed)
        images = images.clone()
    return images, _to_cpu(x0s), _to_cpu(losses), _to_cpu(errors)


def _to_cpu(tensors: list[Tensor]) -> list[Tensor]:
    """Same-shape device tensors -> CPU copies, in one transfer."""
    return list(torch.stack(tensors).cpu().unbind(0)) if tensors else []


def _join(chunks: list[list[Tensor]]) -> Tensor | None:
    """Per-batch lists of K (b,) tensors -> one (B, K) tensor (None when there are none)."""
    if not chunks[0]:
        return None
    return torch.cat([torch.stack(c, dim=1) for c in chunks])


def cfg_negative(get_prompts: Callable[[list[str]], tuple[Tensor, Tensor]], cfg: SamplerConfig) -> tuple[Tensor, Tensor] | None:
    """``sample``'s ``negative`` for ``cfg``: the empty prompt's (embeds, pooled) when it guides (scale > 1), else None.

    ``get_prompts``: a prompt cache's ``get`` (``prompts -> (embeds (N,L,D), pooled (N,P))``).
    """
    return get_prompts([""]) if cfg.guidance_scale > 1.0 else None


def sample(
    generator: Any,
    masks: Tensor,
    prompt_embeds: Tensor,
    pooled: Tensor,
    seeds: Sequence[int],
    cfg: SamplerConfig,
    crfm: CRFMConfig | None = None,
    judge: Callable[[Tensor], Tensor] | None = None,
    negative: tuple[Tensor, Tensor] | None = None,
    observer: SamplingObserver | None = None,
) -> SampleOutput:
    """Generate one image per mask.

    Args:
        generator: a ``todsynth.models.generator.Generator`` (transformer, vae, shift, num_train_timesteps,
            image_size, ``encode_mask``).
        masks: (B, H, W) long reduced labels (255 = ignore), H = W = the generator's image size.
        prompt_embeds: (B, L, D) cached prompt embeddings; pooled: (B, P).
        seeds: one int per mask; sample k's initial noise depends only on ``seeds[k]``.
        cfg: sampler settings; crfm: CRFM settings (None = off); judge: image [0,1] -> logits (B, C, H, W),
            required when CRFM is on; negative: (embeds (1|B, L, D), pooled (1|B, P)) of the empty prompt for CFG.
        observer: hooks around the loop's parts (see ``todsynth.sample.observer``); None observes nothing.
    """
    crfm = crfm or CRFMConfig()
    check_inputs(generator, masks, prompt_embeds, pooled, seeds, cfg, crfm, judge, negative)
    observer = observer or Unobserved()
    b = masks.shape[0]
    bounds = [(lo, min(lo + cfg.batch_size, b)) for lo in range(0, b, cfg.batch_size)]
    batches = [
        _sample_batch(generator, masks[lo:hi], prompt_embeds[lo:hi], pooled[lo:hi], seeds[lo:hi],
                      cfg, crfm, judge, negative, observer)
        for lo, hi in bounds
    ]
    x0_chunks = [b[1] for b in batches]
    x0 = [torch.cat([c[i] for c in x0_chunks]) for i in range(len(x0_chunks[0]))] if crfm.return_x0 else None
    return SampleOutput(
        images=torch.cat([b[0] for b in batches]),
        x0=x0,
        judge_loss=_join([b[2] for b in batches]),
        error_fraction=_join([b[3] for b in batches]),
    )
