"""VAE helpers: latent normalisation, differentiable decode, mask -> grey rule, safetensors I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from todsynth.errors import WeightsNotFoundError
from todsynth.models.vae import (
    decode_latents,
    encode_latents,
    load_vae,
    mask_to_grey,
    save_vae,
    vae_scale_factor,
)


def tiny_vae(scaling: float = 1.0, shift: float = 0.0) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
        scaling_factor=scaling, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False,
    )


def test_mask_to_grey_values() -> None:
    mask = torch.tensor([[[0, 6], [255, 3]]])
    grey = mask_to_grey(mask, num_classes=7)
    assert grey.shape == (1, 3, 2, 2)
    # raw label (k+1, ignore -> 0) * 255 / 7, floored to 8 bits
    expected = torch.tensor([[255 // 7, 255], [0, 4 * 255 // 7]]) / 255.0
    torch.testing.assert_close(grey[0, 0], expected)
    assert torch.equal(grey[0, 0], grey[0, 2])


@pytest.mark.parametrize("bad", [torch.tensor([[[7]]]), torch.tensor([[[-1]]]), torch.zeros(2, 2, dtype=torch.long)])
def test_mask_to_grey_rejects_bad_masks(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        mask_to_grey(bad, num_classes=7)


def test_encode_applies_shift_and_scaling_once() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z1 = encode_latents(tiny_vae(1.0, 0.0), images)
        z2 = encode_latents(tiny_vae(2.0, 0.5), images)
    assert z1.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z2, (z1 - 0.5) * 2.0)


def test_decode_is_differentiable_and_in_range() -> None:
    vae = tiny_vae(1.5, 0.1)
    assert vae_scale_factor(vae) == 2
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    images = decode_latents(vae, z)
    assert images.shape == (1, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_decode_undoes_normalisation() -> None:
    """decode(z) with (scaling, shift) == raw decode of z / scaling + shift."""
    vae = tiny_vae(2.0, 0.3)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ours = decode_latents(vae, z)
        raw = ((vae.decode(z / 2.0 + 0.3).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(ours, raw)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    vae = tiny_vae(1.7, -0.2)
    out = save_vae(vae, tmp_path / "vae")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "vae.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]  # no temp dirs left behind
    loaded = load_vae(out)
    assert loaded.config.scaling_factor == pytest.approx(1.7)
    for (k, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_load_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="vae.safetensors"):
        load_vae(tmp_path / "nope")
