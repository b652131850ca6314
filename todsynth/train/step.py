"""One optimisation step of the generator: the step ``train_generator`` runs and ``bench perf`` times.

Flow matching (METHOD.md): ``x_sigma = (1 - sigma) x0 + sigma noise``, the model predicts the velocity
``noise - x0``, MSE. Gradients accumulate over the step's micro-batches (each loss divided by their number),
are clipped, and the optimizer steps. Distribution and loss scaling stay outside, in ``backend``: accelerate's
``Accelerator`` under ``train_generator``, plain torch (:class:`LocalBackend`) otherwise. Mixed precision is
the model's: accelerate wraps a prepared model's forward in autocast; a caller without it passes such a forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from todsynth.train.flow import flow_matching_loss, noisy_latents


@dataclass(frozen=True)
class TrainBatch:
    """One micro-batch on the model's device.

    Attributes:
        x0: (B, c, h, w) clean image latents; mask_latents: (B, m, h, w) the mask's input (``Generator.encode_mask``).
        embeds: (B, L, D) prompt embeddings; pooled: (B, P).
        noise: (B, c, h, w) standard normal; sigma: (B,) noise levels in (0, 1]; timestep: (B,) on the 0..T scale.
        mask_keep: (B,) 1 = the sample keeps its mask, 0 = trained without it (``TrainConfig.mask_dropout``);
            None = every sample keeps its mask (the model is called without the argument).
    """

    x0: Tensor
    mask_latents: Tensor
    embeds: Tensor
    pooled: Tensor
    noise: Tensor
    sigma: Tensor
    timestep: Tensor
    mask_keep: Tensor | None = None


class StepBackend(Protocol):
    """What a step needs from its runtime; ``accelerate.Accelerator`` has exactly these methods."""

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss``."""
        ...

    def no_sync(self, model: Any) -> AbstractContextManager[object]:
        """A context in which gradients are not synchronised across processes."""
        ...

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> Any:
        """Clip the gradients' global norm to ``max_norm``; returns the norm before clipping."""
        ...


class LocalBackend:
    """One process, plain torch: ``loss.backward()``, nothing to synchronise, ``clip_grad_norm_``."""

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``."""
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated

    def no_sync(self, model: Any) -> AbstractContextManager[object]:
        """Nothing to synchronise in one process."""
        return nullcontext()

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> Any:
        """``torch.nn.utils.clip_grad_norm_``."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def batch_loss(model: Callable[..., Tensor], batch: TrainBatch) -> Tensor:
    """The flow-matching loss (float32 scalar) of ``model``'s velocity on the noised micro-batch."""
    x_sigma = noisy_latents(batch.x0, batch.noise, batch.sigma)
    args = (x_sigma, batch.mask_latents, batch.timestep, batch.embeds, batch.pooled)
    pred = model(*args) if batch.mask_keep is None else model(*args, mask_keep=batch.mask_keep)
    return flow_matching_loss(pred, batch.x0, batch.noise)


def train_step(
    model: Callable[..., Tensor],
    batches: Sequence[TrainBatch],
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    *,
    max_grad_norm: float = 1.0,
    backend: StepBackend | None = None,
) -> float:
    """One optimizer step over ``batches`` (the gradient-accumulation micro-batches); returns the mean loss.

    Args:
        model: ``(x_sigma, mask_latents, timestep, embeds, pooled) -> velocity`` (a ``MaskMMDiT``, or its
            accelerate-prepared / autocast forward).
        batches: one or more micro-batches; gradients are synchronised across processes on the last only.
        optimizer: steps ``params`` and zeroes their gradients (set to None).
        params: the trained parameters, clipped to total norm ``max_grad_norm``.
        backend: backward / no_sync / clipping (an ``Accelerator``); None = :class:`LocalBackend`.

    The LR schedule and the EMA belong to the caller's loop. One host read per micro-batch (the loss value).
    """
    if not batches:
        raise ValueError("batches is empty: a step needs at least one micro-batch")
    backend = backend or LocalBackend()
    n = len(batches)
    step_loss = 0.0
    for k, batch in enumerate(batches):
        with nullcontext() if k == n - 1 else backend.no_sync(model):
            loss = batch_loss(model, batch)
            backend.backward(loss / n)
        step_loss += loss.detach().item() / n
    backend.clip_grad_norm_(list(params), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss
