"""Control-rectify flow matching (CRFM): correct the velocity with a segmentation judge's loss.

At each of the first ``rectified_step`` sampling steps the velocity ``v`` from the transformer is nudged
down the gradient of the judge's cross-entropy on the decoded clean estimate ``x0_hat = z_t - sigma * v``
(METHOD.md, "Sampling and CRFM"). Gradients flow through the judge and the VAE decoder only: ``v`` is a
detached leaf, so the transformer is never differentiated.

Per-sample semantics: per-image losses are SUMMED before one backward pass, so every sample in a batch
receives exactly the gradient it would get alone. The public release averages over the batch instead,
which divides every sample's step by the batch size B; todsynth deliberately does not.

:func:`rectify` is one correction: :func:`judge_gradient` (decode, judge, loss, gradient) then
:func:`update_velocity`, all settings from one :class:`CRFMConfig`. Nothing here measures time: a harness
times the decoder and the judge by passing wrapped ``decode``/``judge`` callables (``bench/perf``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from todsynth.sample.config import STEP_SCHEMES, CRFMConfig, rectified_step_problem


def step_sizes(scheme: str, max_step_size: float, num_inference_steps: int, rectified_step: int) -> list[float]:
    """Step size ``alpha_i`` for each rectified step ``i in range(rectified_step)`` of ``N`` steps.

    C: ``a``; LI: ``a * (i+1)/N``; LD: ``a * (1 - (i+1)/N)``; cosine (ours): ``a * (1 + cos(pi * (i+1)/N)) / 2``,
    a smooth decay with LD's end points (``a`` before step 0, 0 at step N) that stays near ``a`` for longer.
    ``step_sizes("LD", 0.1, 23, 4)`` -> 0.0957, 0.0913, 0.0870, 0.0826.
    """
    if why := rectified_step_problem(rectified_step, num_inference_steps):
        raise ValueError(f"rectified_step {why}")
    a, n = float(max_step_size), num_inference_steps
    match scheme:
        case "C":
            return [a for _ in range(rectified_step)]
        case "LI":
            return [a * (i + 1) / n for i in range(rectified_step)]
        case "LD":
            return [a * (1 - (i + 1) / n) for i in range(rectified_step)]
        case "cosine":
            return [a * (1 + math.cos(math.pi * (i + 1) / n)) / 2 for i in range(rectified_step)]
        case _:
            raise ValueError(f"scheme must be one of {STEP_SCHEMES}, got {scheme!r}")


def judge_loss(
    logits: Tensor, target: Tensor, *, error_only: bool = True, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Per-image CE and error fraction.

    Args:
        logits: (B, C, H, W) judge logits.
        target: (B, H, W) long labels, ``ignore_index`` excluded.
        error_only: average the CE only over pixels where ``argmax != target`` (an image with none gives 0);
            otherwise over all valid pixels.

    Returns:
        ``loss (B,)`` float32 (differentiable) and ``error_fraction (B,)`` = wrong / valid pixels (detached).
    """
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"logits must be (B,C,H,W) and target (B,H,W), got {tuple(logits.shape)}, {tuple(target.shape)}")
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"logits size {tuple(logits.shape[-2:])} != target size {tuple(target.shape[-2:])}")
    logits = logits.float()
    target = target.long()
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # (B,H,W), 0 where ignored
    valid = target != ignore_index
    # max(1).indices == argmax(1) (both return the first maximal index), but argmax over the channel dim of
    # an NCHW tensor takes a slow strided path on CPU: 617 vs 31 us at (2,7,64,64), 162 vs 22 ms at (8,7,512,512).
    wrong = valid & (logits.detach().max(1).indices != target)
    n_wrong, n_valid = wrong.sum(dim=(1, 2)), valid.sum(dim=(1, 2)).clamp_min(1)  # exact integer counts, once
    weight, count = (wrong, n_wrong.clamp_min(1)) if error_only else (valid, n_valid)
    loss = (ce * weight).sum(dim=(1, 2)) / count  # bool weight: ce * weight promotes
    error_fraction = n_wrong / n_valid
    return loss, error_fraction


@dataclass(frozen=True)
class Rectified:
    """One correction's result: ``v`` (B,c,h,w) and per-sample stats measured BEFORE the correction."""

    v: Tensor
    loss: Tensor  # (B,) judge loss on x0_hat of the incoming velocity
    error_fraction: Tensor  # (B,) wrong / valid pixels
    skipped: Tensor  # (B,) bool, True where skip_below_error left the sample untouched


def rectify(
    velocity: Tensor,
    latents: Tensor,
    sigma: float | Tensor,
    decode: Callable[[Tensor], Tensor],
    judge: Callable[[Tensor], Tensor],
    target: Tensor,
    step_size: float | Tensor,
    crfm: CRFMConfig,
) -> Rectified:
    """One CRFM correction of a batch's velocity: :func:`judge_gradient`, then :func:`update_velocity`.

    Args:
        velocity: (B,c,h,w) transformer velocity (treated as a detached leaf).
        latents: (B,c,h,w) current ``z_t``.
        sigma: current noise level (a float, or a 0-d tensor).
        decode: latent (B,c,h,w) -> image (B,3,H,W) in [0,1], differentiable.
        judge: image (B,3,H,W) in [0,1] -> logits (B,C,H,W), differentiable.
        target: (B,H,W) long labels (``crfm.ignore_index`` ignored).
        step_size: ``alpha_i`` as a float or a (B,) tensor.
        crfm: the loss and update settings (``rectified_step`` and the schedule are the sampler's).

    Returns:
        :class:`Rectified`: the corrected ``v`` in ``velocity.dtype`` and the stats before the correction.

    The extras around the paper's correction: ``crfm.micro_batch`` computes the gradient that many samples at a
    time, with the same result (per-image losses are summed, so each sample's gradient is its own);
    ``crfm.skip_below_error`` (beyond the paper) leaves samples the judge already gets almost right untouched.
    Runs under ``torch.enable_grad()`` so it works inside a no-grad sampler.
    """
    _check_shapes(velocity, latents, target)
    b = velocity.shape[0]
    alpha = _per_sample(step_size, b, velocity.device)
    target = target.to(velocity.device).long()
    v = velocity.detach().to(torch.float32)
    chunks = _micro_batches(b, crfm.micro_batch)
    parts = [judge_gradient(v[c].detach(), latents[c], sigma, decode, judge, target[c], crfm) for c in chunks]
    loss, error_fraction, skipped = (_cat([p[k] for p in parts]) for k in (1, 2, 3))  # type: ignore[misc]  # p[1:] are tensors
    if all(p[0] is None for p in parts):
        return Rectified(velocity, loss, error_fraction, skipped)
    grad = _cat([torch.zeros_like(v[c]) if p[0] is None else p[0] for c, p in zip(chunks, parts, strict=True)])
    v_new = update_velocity(v, grad, alpha, crfm)
    if crfm.skip_below_error is not None:
        v_new = torch.where(skipped.view(b, 1, 1, 1).to(v_new.device), v, v_new)
    return Rectified(v_new.to(velocity.dtype), loss, error_fraction, skipped)


def judge_gradient(
    v: Tensor,
    latents: Tensor,
    sigma: float | Tensor,
    decode: Callable[[Tensor], Tensor],
    judge: Callable[[Tensor], Tensor],
    target: Tensor,
    crfm: CRFMConfig,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """Steps 2-4 up to the gradient: ``x0_hat = z_t - sigma * v``, decode, judge, loss, ``d(sum of losses)/dv``.

    ``v`` is a detached float32 (B,c,h,w) tensor; one backward pass runs through the judge and the decoder.
    Returns ``(grad (B,c,h,w) float32, or None when every sample is skipped; loss (B,); error_fraction (B,);
    skipped (B,) bool)``, all detached.
    """
    b = v.shape[0]
    with torch.enable_grad():
        v = v.requires_grad_(True)
        x0_hat = latents.detach().to(torch.float32)
        x0_hat = torch.sub(x0_hat, v, alpha=sigma) if isinstance(sigma, float) else x0_hat - sigma * v
        images, judged_target = _at_judge_size(decode(x0_hat), target, crfm.judge_size)
        loss, error_fraction = judge_loss(
            judge(images), judged_target, error_only=crfm.error_only, ignore_index=crfm.ignore_index
        )
        if crfm.skip_below_error is None:  # no data-dependent branch: no host-device sync in the sampling loop
            skipped = torch.zeros(b, dtype=torch.bool, device=loss.device)
            total = loss.sum()  # SUM: each sample's gradient is its own (see module doc)
        else:
            skipped = error_fraction < crfm.skip_below_error
            if bool(skipped.all()):  # one sync, only with this opt-in: saves the backward when nothing is left
                return None, loss.detach(), error_fraction, skipped
            total = (loss * (~skipped).float()).sum()
        (grad,) = torch.autograd.grad(total, v)
    return grad.detach(), loss.detach(), error_fraction, skipped


def update_velocity(v: Tensor, grad: Tensor, alpha: float | Tensor, crfm: CRFMConfig) -> Tensor:
    """Step 4's update of a float32 ``v`` (B,c,h,w); a new tensor.

    Optionally normalise each sample's gradient to unit L2 norm and shrink ``v *= (1 - alpha)``; then
    ``v - alpha * grad``, clamped to ``[-clamp, clamp]``. ``alpha`` is a float or a (B,1,1,1) tensor.
    """
    if crfm.l2_norm:
        grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(v.shape[0], 1, 1, 1)
    v_new = v * (1 - alpha) if crfm.shrink else v
    v_new = torch.sub(v_new, grad, alpha=alpha) if isinstance(alpha, float) else v_new - alpha * grad
    if crfm.clamp is not None:
        v_new = v_new.clamp_(-crfm.clamp, crfm.clamp)  # v_new is a fresh tensor here
    return v_new


def _check_shapes(velocity: Tensor, latents: Tensor, target: Tensor) -> None:
    if velocity.shape != latents.shape:
        raise ValueError(f"velocity {tuple(velocity.shape)} and latents {tuple(latents.shape)} must match")
    b = velocity.shape[0]
    if target.ndim != 3 or target.shape[0] != b:
        raise ValueError(f"target must be (B={b}, H, W) labels, got shape {tuple(target.shape)}")


def _at_judge_size(images: Tensor, target: Tensor, judge_size: int | None) -> tuple[Tensor, Tensor]:
    """Images resized bilinearly (antialiased) and the target nearest to ``judge_size``; as is when None or equal."""
    if judge_size is None or tuple(images.shape[-2:]) == (judge_size, judge_size):
        return images, target
    size = (judge_size, judge_size)
    resized = F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return F.interpolate(images, size=size, mode="bilinear", antialias=True), resized


def _micro_batches(batch: int, micro_batch: int | None) -> list[slice]:
    size = batch if micro_batch is None else min(micro_batch, batch)
    return [slice(lo, lo + size) for lo in range(0, batch, size)]


def _per_sample(value: float | Tensor, batch: int, device: torch.device) -> float | Tensor:
    """A float step size as is; a 0-d or (B,) tensor as (B,1,1,1) float32 on ``device``.

    A Python float stays a float: building a device tensor from it would be a host-to-device copy (a CUDA
    sync for pageable memory) at every rectified step.
    """
    if not isinstance(value, Tensor):
        return float(value)
    t = value.to(device=device, dtype=torch.float32)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"step_size must be a float or a ({batch},) tensor, got shape {tuple(t.shape)}")
    return t.view(batch, 1, 1, 1)


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
