"""One generator training step: seconds, samples/s and peak memory."""

from __future__ import annotations

import gc
from typing import Any

import torch

from bench.perf.config import PerfConfig
from bench.perf.memory import PeakMemory
from bench.perf.models import autocast, perf_inputs
from bench.perf.timing import stats, timed


def measure_train(gen: Any, cfg: PerfConfig) -> dict[str, Any]:
    """One generator training step (branches trainable, flow-matching MSE, backward, clip 1.0, AdamW):
    seconds, samples/s and peak memory. Mirrors ``todsynth.train.generator``'s step on random latents."""
    from todsynth.train.flow import flow_matching_loss, noisy_latents
    from todsynth.train.trainable import configure_trainable

    device = torch.device(cfg.device)
    model = getattr(gen.transformer, "_orig_mod", gen.transformer)
    model.to(torch.float32)  # fp32 master weights; bf16 is autocast, as accelerate's mixed precision
    checkpointing = bool(gen.config.get("train", {}).get("gradient_checkpointing", False))
    model.gradient_checkpointing = checkpointing
    params = configure_trainable(model, "branches")
    opt = torch.optim.AdamW(list(params.values()), lr=1e-6)
    b = int(cfg.train_batch)  # type: ignore[arg-type]
    g = torch.Generator("cpu").manual_seed(cfg.seed + 1)
    shape = (b, *gen.latent_shape)
    x0, noise, m = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    _, embeds, pooled = perf_inputs(gen, b, cfg.seed + 2)
    embeds, pooled = embeds.to(device), pooled.to(device)
    sigma = torch.rand(b, generator=g).to(device)
    t = sigma * gen.num_train_timesteps

    def step() -> None:
        with autocast(device, cfg.precision):
            pred = model(noisy_latents(x0, noise, sigma), m, t, embeds, pooled)
        loss = flow_matching_loss(pred, x0, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    try:
        seconds = timed(step, device, cfg.repeats, warmup=2)
        with PeakMemory(device) as mem:
            step()
    finally:
        model.requires_grad_(False).eval()
        model.gradient_checkpointing = False
        opt.state.clear()  # free the AdamW moments before sampling is measured
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "batch": b,
        "step_seconds": stats(seconds),
        "samples_per_s": stats([b / s for s in seconds]),
        "precision": cfg.precision,
        "gradient_checkpointing": checkpointing,
        "trainable_params": sum(p.numel() for p in params.values()),
        "memory": mem.as_dict(),
    }
