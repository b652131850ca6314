"""Presets, build/save/load of the generator, and the SD3.5 local-directory code path on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from safetensors.torch import save

from todsynth.errors import ConfigError, WeightsNotFoundError
from todsynth.models.generator import build_generator, load_generator, save_generator
from todsynth.models.mmdit import is_text_stream
from todsynth.models.presets import PRESETS, TINY_SCRATCH_VAE_OVERRIDES, deep_merge, resolve_preset


def velocity(gen, seed: int = 0) -> torch.Tensor:  # noqa: ANN001
    c, h, w = gen.latent_shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, h, w, generator=g)
    mask = torch.randint(0, gen.num_classes, (2, gen.image_size, gen.image_size), generator=g)
    cfg = gen.transformer.config
    e = torch.randn(2, 7, cfg.joint_attention_dim, generator=g)
    p = torch.randn(2, cfg.pooled_projection_dim, generator=g)
    with torch.no_grad():
        return gen.transformer(x, gen.encode_mask(mask), torch.tensor([700.0, 50.0]), e, p)


# ------------------------------------------------------------------ presets


def test_resolve_preset_deep_merges() -> None:
    p = resolve_preset("tiny", {"transformer": {"num_layers": 2}, "image_size": 32})
    assert p["transformer"]["num_layers"] == 2
    assert p["transformer"]["num_attention_heads"] == PRESETS["tiny"]["transformer"]["num_attention_heads"]
    assert p["image_size"] == 32
    assert PRESETS["tiny"]["transformer"]["num_layers"] == 3  # the preset itself is not mutated
    assert PRESETS["tiny"]["image_size"] == 64


def test_resolve_preset_errors() -> None:
    with pytest.raises(ConfigError, match="unknown generator preset 'huge'"):
        resolve_preset("huge")
    with pytest.raises(ConfigError, match="imagesize"):
        resolve_preset("tiny", {"imagesize": 32})
    # an override keeps the kind of value it replaces (before: a bare TypeError, or a failure inside a stage)
    for overrides, message in [({"text": 5}, "text must be a mapping, got 5"),
                               ({"train": [1]}, r"train must be a mapping, got \[1\]"),
                               ({"image_size": 0}, "image_size must be a positive integer, got 0"),
                               ({"num_classes": True}, "num_classes must be a positive integer, got True"),
                               ({"seed": "x"}, "seed must be an integer, got 'x'"),
                               ({"prediction": 1}, "prediction must be a string, got 1")]:
        with pytest.raises(ConfigError, match=message):
            resolve_preset("tiny", overrides)
    assert resolve_preset("tiny", {"seed": -1, "image_size": 32})["seed"] == -1
    # inside a section too (before: ``hint: "no"`` built a model with the hint on; ``num_layers: abc`` failed in a stage)
    for overrides, message in [({"mask_stream": {"hint": "no"}}, "mask_stream.hint must be true or false, got 'no'"),
                               ({"transformer": {"num_layers": "abc"}}, "transformer.num_layers must be a positive integer"),
                               ({"transformer": {"num_layers": 0}}, "transformer.num_layers must be a positive integer, got 0"),
                               ({"transformer": {"dual_attention_layers": 1}}, "transformer.dual_attention_layers must be a list"),
                               ({"scheduler": {"shift": "3"}}, "scheduler.shift must be a finite number, got '3'"),
                               ({"vae_train": {"steps": -1}}, "vae_train.steps must be a positive integer, got -1"),
                               ({"scheduler": {"shift": float("nan")}}, "scheduler.shift must be a finite number"),
                               ({"transformer": {"nosuch": 1}}, r"unknown transformer key\(s\) \['nosuch'\]"),
                               ({"vae": {"nosuch": 1}}, r"unknown vae key\(s\) \['nosuch'\]")]:
        with pytest.raises(ConfigError, match=f"preset 'tiny': {message}"):
            resolve_preset("tiny", overrides)
    with pytest.raises(ConfigError, match="mask_stream.tokens must be true or false"):  # a key the preset leaves out
        resolve_preset("sd3.5-medium", {"mask_stream": {"tokens": 1}})
    assert resolve_preset("tiny", {"transformer": {"pooled_projection_dim": 16}})["transformer"]["pooled_projection_dim"] == 16
    fine = resolve_preset("tiny", {"transformer": {"qk_norm": None, "dual_attention_layers": []}, "scheduler": {"shift": 3},
                                   "text": {"seed": 0}, "train": {"warmup_steps": 0}})  # null, an int for a float, 0
    assert (fine["transformer"]["qk_norm"], fine["scheduler"]["shift"], fine["train"]["warmup_steps"]) == (None, 3, 0)


def test_the_vae_train_keys_are_one_list() -> None:
    """A preset's ``vae_train`` keys, the suite's ``generator.vae_train`` fields and train_vae's arguments agree, so a
    key one accepts is never dropped by another."""
    import inspect

    from bench.schema.sections import VaeTrain
    from todsynth.models.presets import VAE_TRAIN_KEYS
    from todsynth.train.vae import train_vae

    assert set(VaeTrain.model_fields) == VAE_TRAIN_KEYS
    assert VAE_TRAIN_KEYS <= set(inspect.signature(train_vae).parameters)


def test_tiny_preset_matches_brief() -> None:
    t = PRESETS["tiny"]["transformer"]
    assert t["num_attention_heads"] * t["attention_head_dim"] == 64
    assert (t["patch_size"], t["qk_norm"], t["pos_embed_max_size"]) == (1, "rms_norm", 32)
    gen = build_generator(resolve_preset("tiny"))
    # lossless space-to-depth autoencoder: 4x4 pixels -> 48 channels, one token per 4x4 pixels, nothing to train
    assert gen.vae_scale_factor == 4 and gen.latent_shape == (48, 16, 16)
    assert sum(p.numel() for p in gen.vae.parameters()) == 0
    assert gen.transformer.mask_hint is not None and gen.transformer.prediction == "sample"
    assert (gen.shift, gen.num_train_timesteps) == (1.0, 1000)


def test_inconsistent_sizes_raise() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        build_generator(resolve_preset("tiny", {"image_size": 62}))
    with pytest.raises(ConfigError, match="pos_embed_max_size"):
        build_generator(resolve_preset("tiny", {"image_size": 512}))


# ------------------------------------------------------------------ scratch save/load


def test_build_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_generator(resolve_preset("tiny", {"transformer": {"num_layers": 2}}))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_generator(resolve_preset("tiny", {"transformer": {"num_layers": 2}}))
    c = build_generator(resolve_preset("tiny", {"transformer": {"num_layers": 2}, "seed": 1}))
    torch.testing.assert_close(velocity(a), velocity(b), rtol=0, atol=0)
    assert not torch.equal(velocity(a), velocity(c))


def test_encode_mask_checks_size() -> None:
    gen = build_generator(resolve_preset("tiny", {"transformer": {"num_layers": 2}}))
    assert gen.encode_mask(torch.zeros(3, 64, 64, dtype=torch.long)).shape == (3, 8 * 16, 16, 16)  # onehot
    grey = build_generator(resolve_preset("tiny", {"transformer": {"num_layers": 2}, "mask_stream": {"encoding": "grey"}}))
    assert grey.encode_mask(torch.zeros(3, 64, 64, dtype=torch.long)).shape == (3, 48, 16, 16)
    with pytest.raises(ValueError, match="mask must be"):
        gen.encode_mask(torch.zeros(1, 32, 32, dtype=torch.long))


def test_scratch_save_load_roundtrip(tmp_path: Path) -> None:
    """With a trainable scratch VAE (TINY_SCRATCH_VAE latents): its weights travel with the generator."""
    overrides = deep_merge(TINY_SCRATCH_VAE_OVERRIDES, {"transformer": {"num_layers": 2}, "seed": 3})
    gen = build_generator(resolve_preset("tiny", overrides))
    with torch.no_grad():
        gen.vae.decoder.conv_out.bias.add_(0.5)  # a VAE change that only the saved weights carry
    gen.vae.register_to_config(scaling_factor=1.25, shift_factor=0.1)
    out = save_generator(gen, tmp_path / "gen")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "transformer.safetensors", "vae.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]
    loaded = load_generator(out)
    assert loaded.vae.config.scaling_factor == pytest.approx(1.25)
    assert torch.equal(loaded.vae.decoder.conv_out.bias, gen.vae.decoder.conv_out.bias)
    torch.testing.assert_close(velocity(loaded), velocity(gen), rtol=0, atol=0)


def test_load_missing_generator_raises(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="gen train"):
        load_generator(tmp_path)


@pytest.mark.parametrize(("file", "content", "message"), [
    ("config.json", b"junk", r"cannot read .*config\.json"),
    ("config.json", b'{"format_version": 1}', r"config\.json lacks \['preset', 'transformer_saved', 'vae_saved'\]"),
    ("config.json", b"[1]", r"config\.json: format_version \[1\]"),
    ("transformer.safetensors", b"junk", r"cannot read weights .*transformer\.safetensors"),
    ("vae.safetensors", b"junk", r"cannot read weights .*vae\.safetensors"),
])
def test_a_damaged_saved_generator_is_named(tmp_path: Path, file: str, content: bytes, message: str) -> None:
    gen = build_generator(resolve_preset("tiny", deep_merge(TINY_SCRATCH_VAE_OVERRIDES, {"transformer": {"num_layers": 1}})))
    out = save_generator(gen, tmp_path / "gen")
    (out / file).write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_generator(out)


def test_a_saved_generator_with_another_autoencoder_is_named(tmp_path: Path) -> None:
    gen = build_generator(resolve_preset("tiny", deep_merge(TINY_SCRATCH_VAE_OVERRIDES, {"transformer": {"num_layers": 1}})))
    out = save_generator(gen, tmp_path / "gen")
    (out / "vae.safetensors").write_bytes(save({"stray": torch.zeros(2)}))
    with pytest.raises(ConfigError, match=r"vae\.safetensors does not match the preset's autoencoder"):
        load_generator(out)


# ------------------------------------------------------------------ SD3.5 local-directory path


@pytest.fixture
def sd3_dir(tmp_path: Path) -> Path:
    """A tiny random checkpoint in the published SD3.5 diffusers layout."""
    root = tmp_path / "sd35"
    torch.manual_seed(0)
    SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=16, caption_projection_dim=32, pooled_projection_dim=16,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    ).save_pretrained(root / "transformer")
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
    ).save_pretrained(root / "vae")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=2.5).save_pretrained(root / "scheduler")
    return root


def test_sd35_path_loads_local_dir(sd3_dir: Path) -> None:
    preset = resolve_preset("sd3.5-medium", {"source": str(sd3_dir), "image_size": 16})
    gen = build_generator(preset)
    ref = SD3Transformer2DModel.from_pretrained(sd3_dir / "transformer")
    for k, v in ref.state_dict().items():
        assert torch.equal(gen.transformer.transformer.state_dict()[k], v), k
    assert gen.shift == 2.5 and gen.vae.config.scaling_factor == pytest.approx(1.5305)
    assert gen.latent_shape == (4, 8, 8)
    assert velocity(gen).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("missing", ["transformer", "vae", "scheduler"])
def test_sd35_missing_subfolder_names_it(sd3_dir: Path, missing: str) -> None:
    import shutil

    shutil.rmtree(sd3_dir / missing)
    with pytest.raises(WeightsNotFoundError, match=rf"{missing}.*stable-diffusion-3.5-medium"):
        build_generator(resolve_preset("sd3.5-medium", {"source": str(sd3_dir), "image_size": 16}))


def test_sd35_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="SD3.5 directory not found"):
        build_generator(resolve_preset("sd3.5-medium", {"source": str(tmp_path / "none"), "image_size": 16}))


def test_sd35_save_only_trained_weights_and_rebuild(sd3_dir: Path, tmp_path: Path) -> None:
    gen = build_generator(resolve_preset("sd3.5-medium", {"source": str(sd3_dir), "image_size": 16}))
    with torch.no_grad():  # stand-ins for fine-tuning: an image-stream and a mask-stream change
        gen.transformer.transformer.transformer_blocks[0].attn.to_q.weight.add_(0.1)
        gen.transformer.mask_blocks[0].norm1.linear.bias.add_(0.2)
    out = save_generator(gen, tmp_path / "gen")
    from safetensors.torch import load_file

    saved = load_file(str(out / "transformer.safetensors"))
    assert not any(is_text_stream(k) for k in saved)
    assert "mask_blocks.0.norm1.linear.bias" in saved
    assert not (out / "vae.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["transformer_saved"] == "without_text_stream"
    loaded = load_generator(out)
    torch.testing.assert_close(velocity(loaded), velocity(gen), rtol=0, atol=0)


def test_unknown_mask_stream_key_is_refused() -> None:
    from todsynth.errors import ConfigError

    assert resolve_preset("tiny", {"mask_stream": {"tokens": False}})["mask_stream"]["tokens"] is False
    with pytest.raises(ConfigError, match=r"unknown mask_stream key\(s\) \['tokenz'\]"):
        resolve_preset("tiny", {"mask_stream": {"tokenz": False}})


def test_mask_stream_fills_the_keys_a_preset_leaves_out() -> None:
    from todsynth.models.presets import mask_stream

    assert mask_stream(resolve_preset("sd3.5-medium")) == {"init": "fresh", "hint": False, "tokens": True,
                                                           "encoding": "grey"}  # the paper's MM-DiT
    assert mask_stream(resolve_preset("tiny")) == {"init": "image", "hint": True, "tokens": False, "encoding": "onehot"}
    assert mask_stream({}) == mask_stream({"mask_stream": None}) == mask_stream(resolve_preset("sd3.5-medium"))


def test_onehot_mask_latents_put_each_pixel_class_in_its_own_channel() -> None:
    """One channel per class + ignore (channel 0) at every pixel of a latent cell; pixel_shuffle undoes it."""
    from todsynth.models.vae import onehot_mask_latents

    mask = torch.randint(0, 7, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    mask[0, :2, :2] = 255
    z = onehot_mask_latents(mask, 7, 4)
    assert z.shape == (2, 8 * 16, 2, 2) and set(z.unique().tolist()) == {0.0, 1.0}
    back = torch.nn.functional.pixel_shuffle(z, 4)  # (2, 8, 8, 8): the one-hot image
    assert torch.equal(back.sum(1), torch.ones(2, 8, 8))
    labels = back.argmax(1) - 1
    assert torch.equal(torch.where(labels < 0, torch.full_like(labels, 255), labels), mask)
    with pytest.raises(ValueError, match="outside 0..6"):
        onehot_mask_latents(torch.full((1, 4, 4), 7), 7, 4)


@pytest.mark.parametrize(
    ("mask_stream", "needle"),
    [({"encoding": "rgb"}, "must be one of"), ({"encoding": "onehot", "tokens": True}, "needs mask_stream.tokens: false")],
)
def test_mask_encoding_is_checked(mask_stream: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_generator(resolve_preset("tiny", {"transformer": {"num_layers": 1}, "mask_stream": mask_stream}))


def test_load_transformer_weights_names_a_foreign_architecture(tmp_path: Path) -> None:
    """A saved transformer starts another generator of the same architecture; other shapes name the file."""
    from todsynth.models.generator import load_transformer_weights

    small = {"transformer": {"num_layers": 2}, "mask_stream": {"tokens": True, "encoding": "grey"}}
    saved = build_generator(resolve_preset("tiny", small))
    with torch.no_grad():
        for p in saved.transformer.parameters():
            p.add_(0.5)
    save_generator(saved, tmp_path / "g")
    fresh = build_generator(resolve_preset("tiny", small))
    assert load_transformer_weights(fresh, tmp_path / "g") is fresh
    for name, value in saved.transformer.state_dict().items():
        torch.testing.assert_close(fresh.transformer.state_dict()[name], value)
    wider = build_generator(resolve_preset("tiny", {**small, "transformer": {"num_layers": 2, "pos_embed_max_size": 48}}))
    with pytest.raises(ConfigError, match=r"g/transformer\.safetensors does not match the preset's model: size mismatch"):
        load_transformer_weights(wider, tmp_path / "g")
    with pytest.raises(WeightsNotFoundError, match="no saved generator"):
        load_transformer_weights(fresh, tmp_path / "none")
