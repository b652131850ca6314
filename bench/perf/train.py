"""One generator training step: seconds, samples/s and peak memory."""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import Tensor

from bench.perf.config import PerfConfig
from bench.perf.memory import PeakMemory
from bench.perf.models import autocast, perf_inputs
from bench.perf.timing import stats, timed


def measure_train(gen: Any, cfg: PerfConfig) -> dict[str, Any]:
    """Time one generator training step on random latents: seconds, samples/s, peak memory.

    The step is ``todsynth.train.step.train_step`` as ``train_generator`` runs it (branches trainable,
    flow-matching MSE, backward, clip 1.0, AdamW).
    """
    from todsynth.train.step import TrainBatch, train_step
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
    x0, noise = (torch.randn(shape, generator=g).to(device) for _ in range(2))
    masks, embeds, pooled = perf_inputs(gen, b, cfg.seed + 2)
    m = gen.encode_mask(masks.to(device))
    sigma = torch.rand(b, generator=g).to(device)
    batch = TrainBatch(x0=x0, mask_latents=m, embeds=embeds.to(device), pooled=pooled.to(device), noise=noise,
                       sigma=sigma, timestep=sigma * gen.num_train_timesteps)

    def forward(*args: Tensor) -> Tensor:  # what accelerate's mixed precision does to a prepared model's forward
        with autocast(device, cfg.precision):
            out: Tensor = model(*args)
            return out

    def step() -> None:
        train_step(forward, [batch], opt, list(params.values()), max_grad_norm=1.0)

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
