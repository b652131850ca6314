"""Scratch VAE training: files, fitted latent normalisation, seeding, reconstruction improves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from todsynth.models.presets import PRESETS, TINY_SCRATCH_VAE
from todsynth.models.vae import decode_latents, encode_latents, load_vae
from todsynth.train import train_vae

VAE_CFG = {**TINY_SCRATCH_VAE, "block_out_channels": [8, 8, 8], "sample_size": 32}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from todsynth.data.loveda import LoveDA
    from todsynth.data.procedural import generate_dataset

    root = generate_dataset(tmp_path_factory.mktemp("scenes"), n_train=6, n_val=0, size=32, seed=0)
    return LoveDA(root, "Train")


def images(dataset) -> torch.Tensor:  # noqa: ANN001
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def test_train_vae_writes_and_normalises(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    out = train_vae(dataset, VAE_CFG, tmp_path / "vae", steps=2, batch_size=2, lr=1e-3, seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "train_summary.json", "vae.safetensors"]
    vae = load_vae(out)
    with torch.no_grad():
        z = encode_latents(vae, images(dataset))
    # SD3-style normalisation fitted on the training images: unit-variance, zero-mean latents
    assert z.shape == (6, 4, 8, 8)
    assert abs(z.mean().item()) < 1e-4 and abs(z.std().item() - 1.0) < 1e-3
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["scaling_factor"] == pytest.approx(vae.config.scaling_factor)


def test_train_vae_is_seeded(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    state = torch.random.get_rng_state()
    a = load_vae(train_vae(dataset, VAE_CFG, tmp_path / "a", steps=2, batch_size=2, lr=1e-3, seed=5))
    b = load_vae(train_vae(dataset, VAE_CFG, tmp_path / "b", steps=2, batch_size=2, lr=1e-3, seed=5))
    assert torch.equal(torch.random.get_rng_state(), state)  # no global seeding
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), k


def test_train_vae_improves_reconstruction(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    x = images(dataset)

    def l1(vae_dir: Path) -> float:
        vae = load_vae(vae_dir)
        with torch.no_grad():
            return (decode_latents(vae, encode_latents(vae, x)) - x).abs().mean().item()

    before = l1(train_vae(dataset, VAE_CFG, tmp_path / "a", steps=1, batch_size=4, lr=1e-9, seed=0))
    after = l1(train_vae(dataset, VAE_CFG, tmp_path / "b", steps=30, batch_size=4, lr=5e-3, seed=0))
    assert after < 0.7 * before


def test_train_vae_rejects_bad_budget(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="steps"):
        train_vae(dataset, VAE_CFG, tmp_path / "v", steps=0, batch_size=2, lr=1e-3, seed=0)


def test_space_to_depth_fits_scaling_only(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """The tiny preset's fixed autoencoder: no training steps, unit-variance latents, exact reconstruction."""
    out = train_vae(dataset, {**PRESETS["tiny"]["vae"], "sample_size": 32}, tmp_path / "s2d", steps=10,
                    batch_size=2, lr=1e-3, seed=0, image_size=32)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 0 and summary["params"] == 0 and summary["recon_l1"] < 1e-6
    vae = load_vae(out)
    z = encode_latents(vae, images(dataset))
    assert abs(float(z.std()) - 1.0) < 1e-3 and abs(float(z.mean())) < 1e-3
    torch.testing.assert_close(decode_latents(vae, z), images(dataset), atol=1e-5, rtol=0)
