"""Model preparation for fast sampling: weight dtype, memory format, ``torch.compile``, decoder checkpointing.

Each switch is measured by ``todsynth bench perf`` (before/after figures in the README's "Performance"
section); none changes what is computed beyond floating-point rounding (bf16 weights round). Defaults are
what paid: channels_last on (CPU and GPU); bf16 weights are for GPUs (slower on the CPU); compile and decoder
checkpointing are opt-in (compile time; memory for speed).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from todsynth.sample.config import SamplerConfig


def prepare_for_sampling(
    generator: Any,
    judge: nn.Module | None = None,
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
    compile: bool = False,
    decoder_checkpointing: bool = False,
) -> tuple[Any, nn.Module | None]:
    """Prepare a ``Generator`` (and a CRFM judge) for sampling, in place; returns ``(generator, judge)``.

    Args:
        generator: a ``todsynth.models.generator.Generator``.
        judge: the CRFM judge (image [0,1] -> logits); None when sampling without CRFM.
        dtype: cast the transformer and VAE weights (``torch.bfloat16`` on GPU, with
            ``SamplerConfig(precision="bf16")`` so the judge runs under autocast too); None keeps them.
        channels_last: NHWC memory format for the VAE and the judge (convolution-heavy): -20% VAE decode
            fwd+bwd and -10% judge fwd+bwd on the tiny preset on CPU; the usual layout for conv nets on GPU.
        compile: ``torch.compile`` the transformer (its forward is the same every step); first calls compile.
        decoder_checkpointing: recompute the VAE decoder's blocks in CRFM's backward pass instead of keeping
            their activations (bounds CRFM memory at 512 px, at the cost of one more decoder forward).
    """
    if dtype is not None:
        generator.transformer.to(dtype=dtype)
        generator.vae.to(dtype=dtype)
    if channels_last:
        generator.vae.to(memory_format=torch.channels_last)
        if isinstance(judge, nn.Module):
            judge.to(memory_format=torch.channels_last)
    if decoder_checkpointing:
        generator.vae.enable_gradient_checkpointing()
    if compile:
        generator.transformer = torch.compile(generator.transformer)
    return generator, judge


def default_precision(device: torch.device | str) -> str:
    """Return the sampler precision an entry point uses on ``device``: ``bf16`` on CUDA, ``fp32`` elsewhere.

    bf16 autocast on the CPU measured slower (plain 71 -> 108 ms/image on the tiny preset).
    """
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def prepare_sampling_run(
    generator: Any,
    judge: nn.Module | None,
    cfg: SamplerConfig,
    *,
    precision: str | None = None,
    compile: bool = False,
) -> SamplerConfig:
    """Prepare a sampling run as the entry points do; returns ``cfg`` with its precision resolved.

    This is what the sampling entry points (``gen sample``, the suite's synthesize stage) do before sampling,
    the setup ``bench perf`` measures; ``generator`` and ``judge`` are prepared in place.

    Args:
        generator, judge: as for :func:`prepare_for_sampling` (judge None without CRFM).
        cfg: the sampler settings; only ``precision`` is replaced.
        precision: ``fp32`` / ``bf16``; None = :func:`default_precision` of the generator's device. bf16 on
            CUDA also casts the transformer and VAE weights to bf16 (on the CPU it is autocast only).
        compile: ``torch.compile`` the transformer (opt-in: compile time, see the README's Performance).

    Raises:
        ValueError: ``precision`` is neither ``fp32``, ``bf16`` nor None.

    channels_last is always on: it does not change results beyond float rounding (tested on the tiny preset).
    """
    device = generator.device
    precision = precision or default_precision(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16' (or None for the device default), got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" and device.type == "cuda" else None
    prepare_for_sampling(generator, judge, dtype=dtype, channels_last=True, compile=compile)
    return replace(cfg, precision=precision)  # type: ignore[arg-type]
