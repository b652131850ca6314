"""VAE helpers: latent normalisation, differentiable decode, mask -> grey rule, safetensors I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from todsynth.errors import ConfigError, WeightsNotFoundError
from todsynth.models.vae import (
    SpaceToDepthAutoencoder,
    build_vae,
    decode_latents,
    encode_latents,
    is_trainable,
    load_vae,
    mask_to_grey,
    save_vae,
    vae_kwargs,
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


# --- the tiny preset's lossless space-to-depth autoencoder ---------------------------------------------------


def s2d(factor: int = 4, scaling: float = 1.0, shift: float = 0.0) -> SpaceToDepthAutoencoder:
    return build_vae({"kind": "space_to_depth", "in_channels": 3, "factor": factor,
                      "scaling_factor": scaling, "shift_factor": shift})


def test_space_to_depth_round_trip_is_exact() -> None:
    vae = s2d(4, scaling=2.5, shift=-0.1)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    z = encode_latents(vae, images)
    assert z.shape == (2, 48, 4, 4)
    assert vae_scale_factor(vae) == 4 and vae.config.latent_channels == 48
    torch.testing.assert_close(decode_latents(vae, z), images, atol=1e-6, rtol=0)
    # normalisation as SD3's: (x*2-1 - shift) * scaling; one 4x4 block of channel 0 becomes 16 latent channels
    torch.testing.assert_close(z[0, :16, 0, 0], ((images[0, 0, :4, :4] * 2 - 1).flatten() + 0.1) * 2.5)


def test_space_to_depth_decode_passes_gradients() -> None:
    vae = s2d(2, scaling=2.0)
    z = torch.randn(1, 12, 4, 4, requires_grad=True)
    decode_latents(vae, z * 0.1).sum().backward()  # small values: nothing clamped
    torch.testing.assert_close(z.grad, torch.full_like(z, 0.1 * 0.5 / 2.0))  # d/dz of (z/s + 1)/2


def test_space_to_depth_save_load_keeps_fitted_scaling(tmp_path: Path) -> None:
    vae = s2d(4)
    vae.register_to_config(scaling_factor=3.0, shift_factor=0.25)
    loaded = load_vae(save_vae(vae, tmp_path / "vae"))
    assert isinstance(loaded, SpaceToDepthAutoencoder) and not is_trainable(loaded)
    assert (loaded.config.scaling_factor, loaded.config.shift_factor, loaded.config.factor) == (3.0, 0.25, 4)
    assert loaded.to(dtype=torch.float64).dtype == torch.float64


def test_build_vae_keeps_autoencoder_kl_kwargs() -> None:
    vae = build_vae({"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
                     "block_out_channels": [8, 8], "latent_channels": 4, "norm_num_groups": 4})
    assert isinstance(vae, AutoencoderKL) and is_trainable(vae) and vae_scale_factor(vae) == 2


def test_damaged_saved_autoencoder_files_are_named(tmp_path: Path) -> None:
    out = save_vae(tiny_vae(1.7, -0.2), tmp_path / "vae")
    good = (out / "vae.safetensors").read_bytes()
    (out / "vae.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"cannot read weights .*vae\.safetensors"):
        load_vae(out)
    (out / "vae.safetensors").write_bytes(good)
    (out / "config.json").write_text('{"latent_channels": 4, "down_block_types": ')
    with pytest.raises(ConfigError, match=r"cannot read .*config\.json"):
        load_vae(out)
    (out / "config.json").write_text('{"no_such_argument": 1}')
    with pytest.raises(ConfigError, match=r"config\.json does not build an autoencoder \(TypeError"):
        load_vae(out)
    config = json.loads(json.dumps(vae_kwargs(tiny_vae(1.7, -0.2))))
    (out / "config.json").write_text(json.dumps(config | {"latent_channels": config["latent_channels"] + 1}))
    with pytest.raises(ConfigError, match=r"vae\.safetensors does not match .*config\.json"):
        load_vae(out)
