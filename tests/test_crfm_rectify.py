"""CRFM: step-size schedules, config validation, and the velocity correction's behaviour."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from torch import nn

from todsynth.sample.config import CRFMConfig
from todsynth.sample.crfm import judge_loss, rectify, step_sizes

SCALING, SHIFT = 1.5035, 0.0609


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)  # test-side model init only; the library never seeds globally
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, shift_factor=SHIFT, scaling_factor=SCALING,
    ).eval()


@pytest.fixture(scope="module")
def decode(vae: AutoencoderKL):
    def _decode(z: torch.Tensor) -> torch.Tensor:
        return (vae.decode(z / SCALING + SHIFT).sample / 2 + 0.5).clamp(0, 1)
    return _decode


@pytest.fixture(scope="module")
def judge() -> nn.Module:
    conv = nn.Conv2d(3, 7, 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 3)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv.requires_grad_(False)


def _inputs(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, 4, 8, 8, generator=g)
    v = torch.randn(b, 4, 8, 8, generator=g) * 0.5
    target = torch.randint(0, 7, (b, 16, 16), generator=g)
    target[:, :2] = 255
    return latents, v, target


# The checks below call the correction with its settings as keywords; both helpers map them onto the config object.
def rectify_with_stats(v, latents, sigma, decode, judge, target, step_size, **settings):  # noqa: ANN001, ANN201
    """``rectify`` with ``settings`` as CRFMConfig fields."""
    return rectify(v, latents, sigma, decode, judge, target, step_size, CRFMConfig(**settings))


def rectify_velocity(v, latents, sigma, decode, judge, target, step_size, **settings):  # noqa: ANN001, ANN201
    """Only the corrected velocity."""
    return rectify_with_stats(v, latents, sigma, decode, judge, target, step_size, **settings).v


def _masked_ce(v, latents, sigma, decode, judge, target) -> torch.Tensor:
    with torch.no_grad():
        return judge_loss(judge(decode(latents - sigma * v)), target)[0]


def test_step_sizes_match_method() -> None:
    assert [round(a, 4) for a in step_sizes("LD", 0.1, 23, 4)] == [0.0957, 0.0913, 0.0870, 0.0826]
    assert step_sizes("C", 0.1, 23, 3) == [0.1, 0.1, 0.1]
    assert step_sizes("LI", 0.1, 10, 3) == pytest.approx([0.01, 0.02, 0.03])
    cos = step_sizes("cosine", 0.1, 23, 6)
    assert all(0 < a < 0.1 for a in cos) and cos == sorted(cos, reverse=True)
    ld = step_sizes("LD", 0.1, 23, 6)
    assert all(c > d for c, d in zip(cos, ld, strict=True))  # cosine stays near alpha_max for longer
    assert step_sizes("LD", 0.1, 23, 0) == []


@pytest.mark.parametrize(("args", "match"), [
    (("X", 0.1, 23, 4), "scheme"),
    (("LD", 0.1, 23, 24), "rectified_step"),
    (("LD", 0.1, 0, 0), "num_inference_steps"),
])
def test_step_sizes_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        step_sizes(*args)


@pytest.mark.parametrize(("field", "value"), [
    ("rectified_step", -1), ("rectified_step", 1.5), ("num_rectified", 0), ("max_step_size", -0.1),
    ("max_step_size", float("nan")), ("step_scheme", "linear"), ("l2_norm", 1), ("clamp", 0.0),
    ("ignore_index", None), ("skip_below_error", 1.5), ("judge_size", 0), ("return_x0", "yes"),
])
def test_config_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CRFMConfig(**{field: value})


def test_config_defaults_are_the_papers() -> None:
    c = CRFMConfig()
    assert (c.rectified_step, c.num_rectified, c.max_step_size, c.step_scheme) == (0, 1, 0.1, "LD")
    assert (c.l2_norm, c.shrink, c.clamp, c.error_only, c.ignore_index) == (False, False, 1.0, True, 255)
    assert (c.skip_below_error, c.judge_size, c.return_x0, c.enabled) == (None, None, False, False)
    with pytest.raises(AttributeError):
        c.rectified_step = 3  # type: ignore[misc]


def test_judge_loss_counts_only_wrong_pixels() -> None:
    logits = torch.zeros(2, 3, 1, 4)
    logits[:, 0] = 5.0  # predicts class 0 everywhere
    target = torch.tensor([[[0, 0, 1, 255]], [[0, 0, 0, 0]]])
    loss, err = judge_loss(logits, target)
    ce_wrong = torch.nn.functional.cross_entropy(logits[:1, :, :, 2], target[:1, :, 2])
    assert torch.allclose(loss, torch.stack([ce_wrong, torch.tensor(0.0)]))
    assert torch.allclose(err, torch.tensor([1 / 3, 0.0]))
    loss_all, _ = judge_loss(logits, target, error_only=False)
    assert loss_all[0] < loss[0] and loss_all[1] > 0


def test_correction_lowers_judge_loss(decode, judge) -> None:
    latents, v, target = _inputs()
    sigma = 0.8
    before = _masked_ce(v, latents, sigma, decode, judge, target)
    v_new = rectify_velocity(v, latents, sigma, decode, judge, target, 0.05, clamp=None)
    after = _masked_ce(v_new, latents, sigma, decode, judge, target)
    assert not torch.equal(v_new, v)
    assert bool((after < before).all()), (before, after)


def test_zero_step_is_identity_and_clamp_bounds(decode, judge) -> None:
    latents, v, target = _inputs()
    assert torch.equal(rectify_velocity(v, latents, 0.8, decode, judge, target, 0.0, clamp=None), v)
    out = rectify_velocity(v * 4, latents, 0.8, decode, judge, target, 0.0, clamp=1.0)
    assert out.abs().max() <= 1.0 and torch.equal(out, (v * 4).clamp(-1, 1))


def test_batch_equals_single_samples(decode, judge) -> None:
    latents, v, target = _inputs(b=3)
    batch = rectify_velocity(v, latents, 0.7, decode, judge, target, 0.1)
    singles = torch.cat([
        rectify_velocity(v[k:k + 1], latents[k:k + 1], 0.7, decode, judge, target[k:k + 1], 0.1) for k in range(3)
    ])
    assert torch.allclose(batch, singles, atol=1e-5)


def test_per_sample_step_size_tensor(decode, judge) -> None:
    latents, v, target = _inputs(b=2)
    out = rectify_velocity(v, latents, 0.7, decode, judge, target, torch.tensor([0.0, 0.1]), clamp=None)
    ref = rectify_velocity(v, latents, 0.7, decode, judge, target, 0.1, clamp=None)
    assert torch.equal(out[0], v[0]) and torch.allclose(out[1], ref[1], atol=1e-6)
    with pytest.raises(ValueError, match="step_size"):
        rectify_velocity(v, latents, 0.7, decode, judge, target, torch.tensor([0.1, 0.1, 0.1]))


def test_shrink_and_l2_norm(decode, judge) -> None:
    latents, v, target = _inputs(b=2)
    a = 0.05
    plain = rectify_velocity(v, latents, 0.7, decode, judge, target, a, clamp=None)
    shrunk = rectify_velocity(v, latents, 0.7, decode, judge, target, a, clamp=None, shrink=True)
    assert torch.allclose(shrunk, plain - a * v, atol=1e-6)
    normed = rectify_velocity(v, latents, 0.7, decode, judge, target, a, clamp=None, l2_norm=True)
    step_norm = ((v - normed) / a).flatten(1).norm(dim=1)
    assert torch.allclose(step_norm, torch.ones(2), atol=1e-4)


def test_correct_samples_are_left_alone_in_error_only_mode(decode, judge) -> None:
    latents, v, target = _inputs(b=2)
    with torch.no_grad():
        agreed = judge(decode(latents - 0.7 * v)).argmax(1)
    target = torch.stack([agreed[0], target[1]])  # sample 0: judge already right everywhere
    out = rectify_velocity(v, latents, 0.7, decode, judge, target, 0.1, clamp=None)
    assert torch.equal(out[0], v[0]) and not torch.equal(out[1], v[1])
    out_all = rectify_velocity(v, latents, 0.7, decode, judge, target, 0.1, clamp=None, error_only=False)
    assert not torch.equal(out_all[0], v[0])
    ignored = rectify_velocity(v, latents, 0.7, decode, judge, torch.full_like(target, 255), 0.1, clamp=None)
    assert torch.equal(ignored, v)


def test_skip_below_error_and_stats(decode, judge) -> None:
    latents, v, target = _inputs(b=2)
    with torch.no_grad():
        agreed = judge(decode(latents - 0.7 * v)).argmax(1)
    mostly = agreed[0].clone()
    mostly[0, :3] = (mostly[0, :3] + 1) % 7  # 3 wrong pixels of 256
    target = torch.stack([mostly, target[1]])
    r = rectify_with_stats(v * 3, latents, 0.7, decode, judge, target, 0.1, skip_below_error=0.05)
    assert r.skipped.tolist() == [True, False]
    assert torch.equal(r.v[0], v[0] * 3)  # untouched: neither stepped nor clamped
    assert r.v[1].abs().max() <= 1.0
    assert r.error_fraction[0] == pytest.approx(3 / 256) and r.loss.shape == (2,)
    all_skipped = rectify_with_stats(v, latents, 0.7, decode, judge, target, 0.1, skip_below_error=1.0)
    assert bool(all_skipped.skipped.all()) and torch.equal(all_skipped.v, v)


def test_judge_size_runs_judge_smaller(decode, judge) -> None:
    latents, v, target = _inputs(b=2)
    seen: list[tuple[int, ...]] = []

    def spy(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape))
        return judge(images)

    r = rectify_with_stats(v, latents, 0.7, decode, spy, target, 0.05, judge_size=8, clamp=None)
    assert seen == [(2, 3, 8, 8)] and r.v.shape == v.shape and not torch.equal(r.v, v)


def test_works_under_no_grad_and_never_touches_velocity_graph(decode, judge) -> None:
    latents, v, target = _inputs(b=2)
    w = nn.Parameter(torch.ones(()))
    with torch.no_grad():
        out = rectify_velocity(v, latents, 0.7, decode, judge, target, 0.1)
    assert not out.requires_grad and not torch.equal(out, v.clamp(-1, 1))
    rectify_velocity(v * w, latents, 0.7, decode, judge, target, 0.1)
    assert w.grad is None


def test_error_only_config_replace_roundtrip() -> None:
    c = replace(CRFMConfig(rectified_step=4), max_step_size=0.2)
    assert step_sizes(c.step_scheme, c.max_step_size, 23, c.rectified_step)[0] == pytest.approx(0.2 * 22 / 23)


def test_the_rectified_step_rule_is_one_function():
    """CRFM's step sizes, the sampler, suites, tune, `gen sample` and `bench perf` all ask rectified_step_problem."""
    import subprocess

    from todsynth.sample.config import rectified_step_problem

    assert rectified_step_problem(4, 4) is None and rectified_step_problem(0, 1) is None
    assert rectified_step_problem(5, 4, "sampling.num_inference_steps") == "5 > sampling.num_inference_steps 4"
    assert rectified_step_problem(-1, 4) == "must be an int >= 0, got -1"
    assert rectified_step_problem(True, 4) == "must be an int >= 0, got True"
    assert rectified_step_problem(1, 0) == "num_inference_steps must be an int >= 1, got 0"
    with pytest.raises(ValueError, match="rectified_step 5 > num_inference_steps 4"):
        step_sizes("C", 0.1, 4, 5)
    # the comparison itself is written once (git grep over the code, tests aside)
    out = subprocess.run(["git", "grep", "-nE", r"rectified(_step)? > [A-Za-z_.]*steps", "--", "*.py", ":!tests"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent).stdout
    code = [line for line in out.splitlines() if "sample/config.py" not in line and "``" not in line]  # docs may name it
    assert code == [], out
