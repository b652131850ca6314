"""Held-out flow-matching loss with the true masks vs shuffled masks: a quick mask-conditioning proxy.

A generator that uses its mask predicts the velocity better with the mask that belongs to the image;
``loss_shuffled - loss_true`` > 0 (relative gap) measures how much it relies on the mask.
"""

from __future__ import annotations

from typing import Any

import torch

from todsynth.models.generator import Generator, draw_noise
from todsynth.text.base import PromptSource
from todsynth.train.data import encode_dataset
from todsynth.train.flow import flow_matching_loss, noisy_latents


@torch.no_grad()
def conditioning_gap(
    gen: Generator,
    dataset: Any,
    prompt_cache: PromptSource,
    seed: int = 0,
    sigmas: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9),
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean velocity MSE over the dataset at fixed sigmas with true vs cyclically shifted masks.

    Every item is paired with the mask of the next item (a derangement for N >= 2); noise comes from
    ``torch.Generator(seed)`` and is shared by both evaluations. Returns ``loss_true``,
    ``loss_shuffled``, ``gap`` (= shuffled - true) and ``relative_gap`` (= gap / true).
    """
    data = encode_dataset(gen, dataset, prompt_cache, batch_size=batch_size)
    n = len(data)
    if n < 2:
        raise ValueError(f"conditioning_gap needs at least 2 items, got {n}")
    model = gen.transformer
    was_training = model.training
    model.eval()
    device, dtype = gen.device, model.dtype
    rng = torch.Generator().manual_seed(seed)
    x0_all, m_all = data.latents[0], data.mask_latents[0]
    m_shuffled = m_all.roll(1, dims=0)
    totals = {"true": 0.0, "shuffled": 0.0}
    count = 0
    for sigma in sigmas:
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            x0 = x0_all[sl]
            noise = draw_noise(x0.shape, rng, gen.noise_offset, gen.noise_groups)  # as the generator trains, samples
            s = torch.full((x0.shape[0],), float(sigma))
            xt = noisy_latents(x0, noise, s).to(device, dtype)
            t = (s * gen.num_train_timesteps).to(device, dtype)
            rows = data.prompt_index[sl]
            e, p = data.embeds[rows].to(device, dtype), data.pooled[rows].to(device, dtype)
            for key, masks in (("true", m_all[sl]), ("shuffled", m_shuffled[sl])):
                pred = model(xt, masks.to(device, dtype), t, e, p)
                totals[key] += flow_matching_loss(pred, x0.to(device), noise.to(device)).item() * x0.shape[0]
            count += x0.shape[0]
    model.train(was_training)
    loss_true, loss_shuffled = totals["true"] / count, totals["shuffled"] / count
    gap = loss_shuffled - loss_true
    return {"loss_true": loss_true, "loss_shuffled": loss_shuffled, "gap": gap, "relative_gap": gap / loss_true}
