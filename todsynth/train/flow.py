"""Flow-matching training pieces: SD3's shifted sigma table, timestep sampling, noising, loss.

Convention (SD3): ``x_sigma = (1 - sigma) x0 + sigma noise``, target velocity ``noise - x0``, MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from torch import Tensor

from todsynth.train.config import TimestepSampling


def train_sigma_table(num_train_timesteps: int, shift: float) -> tuple[Tensor, Tensor]:
    """SD3's training table: sigmas (N,) and timesteps (N,), exactly as ``FlowMatchEulerDiscreteScheduler`` builds them.

    Sigmas run from ~1 down to 1/N with the timestep shift applied; timesteps = sigmas * N (float32).
    """
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    return scheduler.sigmas.float().clone(), scheduler.timesteps.float().clone()


def sample_sigmas(
    scheme: TimestepSampling,
    batch_size: int,
    sigmas: Tensor,
    timesteps: Tensor,
    generator: torch.Generator,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Draw (sigma (B,), timestep (B,)) from the table: u ~ uniform or logit-normal, index = floor(u N)."""
    if scheme not in ("uniform", "logit_normal"):
        raise ValueError(f"timestep sampling must be 'uniform' or 'logit_normal', got {scheme!r}")
    u = compute_density_for_timestep_sampling(
        weighting_scheme="logit_normal" if scheme == "logit_normal" else "none",
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        generator=generator,
    )
    n = sigmas.shape[0]
    idx = (u * n).long().clamp_(0, n - 1)
    return sigmas[idx], timesteps[idx]


def noisy_latents(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """x_sigma = (1 - sigma) x0 + sigma noise, sigma (B,) broadcast over (B,c,h,w)."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1.0 - s) * x0 + s * noise


def flow_matching_loss(pred: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """MSE between the predicted velocity and ``noise - x0`` (float32, mean over all elements)."""
    return F.mse_loss(pred.float(), (noise - x0).float())
