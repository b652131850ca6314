"""Offset noise (the optional preset key ``noise_offset``): one draw for training, sampling and the held-out loss."""

from __future__ import annotations

import pytest
import torch

from bench.graph import preset_digest
from todsynth.errors import ConfigError
from todsynth.models.generator import build_generator, draw_noise, load_generator, save_generator
from todsynth.models.presets import noise_offset, resolve_preset
from todsynth.sample.sampler import initial_noise


def test_zero_offset_draws_exactly_torch_randn():
    a = draw_noise((2, 3, 4, 4), torch.Generator().manual_seed(5))
    assert torch.equal(a, torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(5)))
    plain = torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(7))
    assert torch.equal(initial_noise([7], (3, 4, 4))[0], plain)  # the sampler's seeds give what they always gave


def test_offset_adds_one_constant_per_image_and_channel():
    g = torch.Generator().manual_seed(0)
    noise = draw_noise((4000, 2, 8, 8), g, offset=0.5)
    base = torch.randn((4000, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    extra = noise - base  # the same standard part first, then the offsets
    assert torch.allclose(extra, extra[..., :1, :1].expand_as(extra), atol=1e-6)  # constant over h, w
    assert extra[:, 0, 0, 0].std().item() == pytest.approx(0.5, rel=0.05)
    assert not torch.allclose(extra[:, 0], extra[:, 1])  # one per channel
    # the image mean of offset noise spreads ~ offset; of plain noise ~ 1/8 (64 cells)
    assert noise.mean(dim=(-2, -1)).std().item() > 3 * base.mean(dim=(-2, -1)).std().item()
    # grouped: one constant per block of channels (the pixel shuffle's colours), never per pixel position
    grouped = draw_noise((10, 6, 4, 4), torch.Generator().manual_seed(1), offset=1.0, groups=2)
    extra = grouped - torch.randn((10, 6, 4, 4), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(extra[:, :3], extra[:, :1].expand(-1, 3, -1, -1), atol=1e-6)
    assert not torch.allclose(extra[:, 0], extra[:, 3])
    with pytest.raises(ValueError, match="do not split"):
        draw_noise((1, 6, 4, 4), torch.Generator(), offset=1.0, groups=4)
    # seeded: the sampler's per-image noise repeats
    assert torch.equal(initial_noise([3, 4], (2, 8, 8), 0.5), initial_noise([3, 4], (2, 8, 8), 0.5))


def test_preset_key_is_optional_checked_and_carried_by_the_generator(tmp_path):
    assert "noise_offset" not in resolve_preset("tiny")  # left out: the tiny preset's digest (its caches) unchanged
    assert preset_digest(resolve_preset("tiny", {"noise_offset": 0.3})) != preset_digest(resolve_preset("tiny"))
    assert noise_offset(resolve_preset("tiny")) == 0.0
    preset = resolve_preset("tiny", {"noise_offset": 0.3})
    gen = build_generator(preset)
    assert gen.noise_offset == 0.3 and gen.noise_groups == 3  # the pixel shuffle's colours
    assert load_generator(save_generator(gen, tmp_path / "g")).noise_offset == 0.3  # sampling draws what training did
    for bad in (-0.1, "big", True, float("inf")):
        with pytest.raises(ConfigError, match="noise_offset"):
            resolve_preset("tiny", {"noise_offset": bad})
    with pytest.raises(ConfigError, match="unknown override key"):
        resolve_preset("tiny", {"noise_ofset": 0.3})
