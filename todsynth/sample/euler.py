"""Pure flow-matching Euler pieces: the sigma schedule, timesteps, and one step.

Convention (SD3 / rectified flow): ``x_sigma = (1 - sigma) * x0 + sigma * noise``, the model predicts the
velocity ``v = noise - x0``, and sampling integrates from ``sigma = 1`` (noise) to ``sigma = 0`` (data).
Nothing here keeps a step index: the loop owns ``i`` and passes ``sigmas[i], sigmas[i + 1]``.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

Sigmas = TypeVar("Sigmas", Tensor, np.ndarray, float)


def shift_sigmas(sigmas: Sigmas, shift: float) -> Sigmas:
    """SD3's static timestep shift ``shift * s / (1 + (shift - 1) * s)`` (shift > 1 spends more steps at high noise)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> Tensor:
    """Sigma schedule ``(num_steps + 1,)`` float32, from 1 down to a final 0.

    Equal to diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps).sigmas``:
    timesteps are spaced linearly from ``1000 * sigma_max`` to ``1000 * sigma_min`` where the end points are
    the scheduler's own (already shifted) training sigmas, then divided by ``num_train_timesteps``, shifted,
    and a terminal 0 is appended.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}")
    # The scheduler's training sigmas live in float32; their end points are read back as Python floats.
    train_sigmas = torch.tensor([num_train_timesteps, 1.0], dtype=torch.float32) / num_train_timesteps
    sigma_max, sigma_min = (float(s) for s in shift_sigmas(train_sigmas, shift))
    timesteps = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    sigmas = shift_sigmas(timesteps / num_train_timesteps, shift)
    sigmas_t = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
    return torch.cat([sigmas_t, torch.zeros(1, dtype=torch.float32)])


def timesteps_from_sigmas(sigmas: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """Model timesteps ``(num_steps,)`` on the 0..1000 scale for every step (the terminal 0 dropped)."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of length >= 2, got shape {tuple(sigmas.shape)}")
    return sigmas[:-1] * num_train_timesteps


def euler_step(x: Tensor, v: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """One Euler ODE step ``x + (sigma_next - sigma) * v``, computed in float32 and returned in ``x.dtype``."""
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape, got {tuple(x.shape)} and {tuple(v.shape)}")
    dt = sigma_next - sigma
    out = x.to(torch.float32) + dt * v.to(torch.float32)
    return out.to(x.dtype)
