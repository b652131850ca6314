"""Euler schedule/step: equal to diffusers' FlowMatchEulerDiscreteScheduler, pure and fp32."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from todsynth.sample.euler import euler_step, flow_sigmas, timesteps_from_sigmas


@pytest.mark.parametrize("shift", [1.0, 3.0, 2.5])
@pytest.mark.parametrize("num_steps", [1, 2, 4, 23, 28])
def test_flow_sigmas_equal_diffusers(shift: float, num_steps: int) -> None:
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(num_steps)
    sigmas = flow_sigmas(num_steps, shift)
    assert sigmas.shape == (num_steps + 1,) and sigmas.dtype == torch.float32
    assert torch.equal(sigmas, sched.sigmas)
    assert torch.equal(timesteps_from_sigmas(sigmas), sched.timesteps)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_shift_moves_steps_towards_noise() -> None:
    assert bool((flow_sigmas(8, 3.0)[1:-1] > flow_sigmas(8, 1.0)[1:-1]).all())


def test_euler_step_equals_scheduler_step_and_is_pure() -> None:
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    sigmas = flow_sigmas(4, 3.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    x_ref = x.clone()
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(2, 4, 8, 8, generator=g)
        ref = sched.step(v, t, x_ref, return_dict=False)[0]
        out = euler_step(x, v, float(sigmas[i]), float(sigmas[i + 1]))
        again = euler_step(x, v, float(sigmas[i]), float(sigmas[i + 1]))  # no hidden step index
        assert torch.allclose(out, ref, atol=1e-6) and torch.equal(out, again)
        x, x_ref = out, ref


def test_euler_step_upcasts_and_keeps_dtype() -> None:
    x = torch.full((1, 1, 2, 2), 1.0, dtype=torch.bfloat16)
    v = torch.full((1, 1, 2, 2), 1.0 + 2**-7, dtype=torch.bfloat16)
    out = euler_step(x, v, 1.0, 0.999)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (x.float() - 0.001 * v.float()).bfloat16())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_steps": 0, "shift": 1.0}, "num_steps"),
    ({"num_steps": 4, "shift": 0.0}, "shift"),
    ({"num_steps": 2.5, "shift": 1.0}, "num_steps"),
])
def test_flow_sigmas_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        flow_sigmas(**kwargs)


def test_euler_step_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        euler_step(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3), 1.0, 0.5)
