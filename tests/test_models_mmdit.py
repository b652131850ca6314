"""MaskMMDiT: exact base equivalence without the mask stream, init modes, param counts, SD3.5 on meta."""

from __future__ import annotations

import pytest
import torch
from diffusers import SD3Transformer2DModel

from todsynth.models.mmdit import MaskMMDiT, is_text_stream, joint_block_forward, mask_stream_param_count
from todsynth.models.presets import SD35_MEDIUM_TRANSFORMER
from todsynth.train.trainable import configure_trainable

SD35_STYLE = {"dual_attention_layers": (0,), "qk_norm": "rms_norm"}
SD3_STYLE = {"dual_attention_layers": (), "qk_norm": None}


def tiny_transformer(seed: int = 0, **kw: object) -> SD3Transformer2DModel:
    cfg = dict(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=16, caption_projection_dim=32, pooled_projection_dim=16,
        pos_embed_max_size=16, **SD35_STYLE,
    )
    cfg.update(kw)
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**cfg)


def inputs(b: int = 2, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 8, 8, generator=g)
    m = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([900.0, 120.0])[:b]
    e = torch.randn(b, 5, 16, generator=g)
    p = torch.randn(b, 16, generator=g)
    return x, m, t, e, p


@pytest.mark.parametrize("style", [SD35_STYLE, SD3_STYLE], ids=["sd3.5", "sd3"])
def test_without_mask_stream_equals_diffusers_transformer(style: dict) -> None:
    tr = tiny_transformer(**style)
    model = MaskMMDiT(tr, mask_init="image")
    x, _, t, e, p = inputs()
    with torch.no_grad():
        ref = tr(x, e, p, t).sample
        ours = model(x, None, t, e, p)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_mask_changes_velocity_and_shape() -> None:
    model = MaskMMDiT(tiny_transformer(), mask_init="fresh")
    x, m, t, e, p = inputs()
    with torch.no_grad():
        v1 = model(x, m, t, e, p)
        v2 = model(x, m.flip(0), t, e, p)
    assert v1.shape == x.shape
    assert (v1 - v2).abs().max() > 1e-4  # mask tokens are keys/values of the joint attention from the start


def test_fresh_init_keeps_mask_residual_identity() -> None:
    """Zero AdaLN-Zero modulation: every non-final block leaves the mask tokens unchanged."""
    tr = tiny_transformer()
    model = MaskMMDiT(tr, mask_init="fresh")
    x, m, t, e, p = inputs()
    with torch.no_grad():
        hidden, context = tr.pos_embed(x), tr.context_embedder(e)
        temb = tr.time_text_embed(t, p)
        mask_hidden = model.mask_embed(m)
        for block, mb in zip(tr.transformer_blocks[:-1], model.mask_blocks[:-1], strict=True):
            before = mask_hidden
            context, hidden, mask_hidden = joint_block_forward(block, mb, hidden, context, mask_hidden, temb)
            torch.testing.assert_close(mask_hidden, before, rtol=0, atol=0)
        out = joint_block_forward(tr.transformer_blocks[-1], model.mask_blocks[-1], hidden, context, mask_hidden, temb)
    assert out[0] is None and out[2] is None  # last block: text and mask are pre-only, like SD3's context


def test_image_init_mirrors_image_stream() -> None:
    """With image init and mask latents == image latents, the mask stream tracks the image stream exactly."""
    tr = tiny_transformer(**SD3_STYLE)  # no image-only dual attention, so the two streams stay symmetric
    model = MaskMMDiT(tr, mask_init="image")
    x, _, t, e, p = inputs()
    with torch.no_grad():
        hidden, context = tr.pos_embed(x), tr.context_embedder(e)
        temb = tr.time_text_embed(t, p)
        mask_hidden = model.mask_embed(x)
        for block, mb in zip(tr.transformer_blocks[:-1], model.mask_blocks[:-1], strict=True):
            context, hidden, mask_hidden = joint_block_forward(block, mb, hidden, context, mask_hidden, temb)
            torch.testing.assert_close(mask_hidden, hidden, rtol=1e-5, atol=1e-6)
    last, image_norm = model.mask_blocks[-1].norm1.linear, tr.transformer_blocks[-1].norm1.linear
    d = tr.inner_dim
    torch.testing.assert_close(last.weight[:d], image_norm.weight[d : 2 * d])  # continuous AdaLN: (scale, shift)


def test_gradient_checkpointing_same_output_and_grads() -> None:
    x, m, t, e, p = inputs()
    grads = []
    for ckpt in (False, True):
        model = MaskMMDiT(tiny_transformer(), mask_init="image", gradient_checkpointing=ckpt)
        out = model(x, m, t, e, p)
        out.square().mean().backward()
        grads.append((out.detach(), model.mask_blocks[0].to_q.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert grads[0][1].abs().sum() > 0


def test_bad_inputs_raise() -> None:
    model = MaskMMDiT(tiny_transformer())
    x, m, t, e, p = inputs()
    with pytest.raises(ValueError, match="mask_latents"):
        model(x, m[:, :, :4], t, e, p)
    with pytest.raises(ValueError, match="mask_init"):
        MaskMMDiT(tiny_transformer(), mask_init="zeros")  # type: ignore[arg-type]


@pytest.mark.parametrize("style", [SD35_STYLE, SD3_STYLE], ids=["sd3.5", "sd3"])
def test_mask_stream_param_formula_tiny(style: dict) -> None:
    tr = tiny_transformer(**style)
    model = MaskMMDiT(tr)
    counted = sum(p.numel() for p in model.mask_stream_parameters())
    assert counted == mask_stream_param_count(3, 32, 8, 4, 2, style["qk_norm"])


def test_sd35_medium_on_meta_device_counts_and_branches(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = SD35_MEDIUM_TRANSFORMER
    with torch.device("meta"):
        tr = SD3Transformer2DModel(**cfg)
        model = MaskMMDiT(tr, mask_init="fresh")
    base = sum(p.numel() for p in tr.parameters())
    mask = sum(p.numel() for p in model.mask_stream_parameters())
    expected = mask_stream_param_count(
        cfg["num_layers"], cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["attention_head_dim"],
        cfg["in_channels"], cfg["patch_size"], cfg["qk_norm"],
    )
    with capsys.disabled():
        print(f"\nSD3.5-medium base transformer params: {base:,}; new mask-stream params: {mask:,}")
    assert mask == expected > 0
    assert 2.0e9 < base < 2.6e9  # SD3.5-medium is a ~2.2-2.5B transformer
    trainable = configure_trainable(model, "branches")
    text = [n for n, _ in model.named_parameters() if is_text_stream(n)]
    assert text and all(n not in trainable for n in text)
    assert "transformer.context_embedder.weight" in text
    assert "transformer.transformer_blocks.23.attn.add_k_proj.weight" in text
    assert "transformer.transformer_blocks.0.attn2.to_q.weight" in trainable  # dual attention: image side
    assert "transformer.pos_embed.proj.weight" in trainable and "mask_embed.proj.weight" in trainable
    n_text = sum(p.numel() for n, p in model.named_parameters() if is_text_stream(n))
    assert sum(p.numel() for p in trainable.values()) == base + mask - n_text


def test_lora_trains_only_adapters_and_mask_stream() -> None:
    model = MaskMMDiT(tiny_transformer())
    trainable = configure_trainable(model, "lora", lora_rank=2)
    mask_ids = {id(p) for p in model.mask_stream_parameters()}
    lora = [n for n in trainable if "lora_" in n]
    assert lora and all("attn.to_" in n or "attn2.to_" in n for n in lora)
    assert all("lora_" in n or id(p) in mask_ids for n, p in trainable.items())
    assert mask_ids <= {id(p) for p in trainable.values()}
    x, m, t, e, p = inputs()
    model(x, m, t, e, p).square().mean().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def _pair(**kw: object) -> tuple[MaskMMDiT, MaskMMDiT]:
    """Two models with identical weights: the plain one and one with the options ``kw``."""
    torch.manual_seed(3)
    plain = MaskMMDiT(tiny_transformer(), mask_init="image")
    torch.manual_seed(3)
    other = MaskMMDiT(tiny_transformer(), mask_init="image", **kw)
    return plain, other


def test_mask_hint_starts_at_zero_then_injects_the_mask_by_position() -> None:
    plain, hinted = _pair(mask_hint=True)
    x, m, t, e, p = inputs()
    with torch.no_grad():
        torch.testing.assert_close(hinted(x, m, t, e, p), plain(x, m, t, e, p), rtol=0, atol=0)  # zero conv
        torch.testing.assert_close(hinted(x, None, t, e, p), plain(x, None, t, e, p), rtol=0, atol=0)  # no mask
        hinted.mask_hint.weight.normal_()
        assert (hinted(x, m, t, e, p) - plain(x, m, t, e, p)).abs().max() > 1e-3
    assert {id(q) for q in hinted.mask_hint.parameters()} <= {id(q) for q in hinted.mask_stream_parameters()}


def test_sample_prediction_returns_the_velocity_of_its_x0() -> None:
    """prediction='sample': v = (z - x0_hat) / max(sigma, floor), x0_hat being the velocity model's raw output."""
    plain, xpred = _pair(prediction="sample", sigma_floor=0.2, num_train_timesteps=1000)
    x, m, t, e, p = inputs()  # t = 900 and 120: sigma 0.9 and 0.12 -> floored to 0.2
    with torch.no_grad():
        raw, v = plain(x, m, t, e, p), xpred(x, m, t, e, p)
    sigma = torch.tensor([0.9, 0.2]).view(2, 1, 1, 1)
    torch.testing.assert_close(v, (x - raw) / sigma, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x - sigma * v, raw, rtol=1e-5, atol=1e-5)  # CRFM's x0_hat is the prediction
    with pytest.raises(ValueError, match="prediction"):
        MaskMMDiT(tiny_transformer(), prediction="noise")  # type: ignore[arg-type]


def test_without_mask_tokens_the_hint_alone_carries_the_mask() -> None:
    """``mask_tokens=False`` builds no mask stream; the output still depends on the mask (through the hint)."""
    from todsynth.models.generator import build_generator
    from todsynth.models.presets import resolve_preset

    preset = resolve_preset("tiny", {"image_size": 32, "transformer": {"num_layers": 2}, "mask_stream": {"tokens": False}})
    model = build_generator(preset).transformer
    assert model.mask_embed is None and len(model.mask_blocks) == 0
    assert {id(p) for p in model.mask_stream_parameters()} == {id(p) for p in model.mask_hint.parameters()}
    assert not any(k.startswith(("mask_embed.", "mask_blocks.")) for k in model.state_dict())
    with torch.no_grad():
        torch.nn.init.normal_(model.mask_hint.weight, std=0.1)
        z = torch.randn(2, 48, 8, 8)
        c = model.mask_channels  # the preset's onehot mask: (7 classes + no-data) x 4 x 4 pixels
        assert c == 8 * 16
        m1, m2 = torch.randn(2, c, 8, 8), torch.randn(2, c, 8, 8)
        t, e, p = torch.full((2,), 500.0), torch.randn(2, 16, 64), torch.randn(2, 64)
        assert not torch.allclose(model(z, m1, t, e, p), model(z, m2, t, e, p))
    with pytest.raises(ValueError, match="mask_tokens=False needs mask_hint=True"):
        MaskMMDiT(model.transformer, mask_hint=False, mask_tokens=False)


def test_mask_keep_drops_the_hint_per_sample_as_no_mask_would() -> None:
    """``mask_keep`` 0 computes a sample as with ``mask_latents`` None, 1 as with its mask; rows are independent."""
    from todsynth.models.generator import build_generator
    from todsynth.models.presets import resolve_preset

    preset = resolve_preset("tiny", {"image_size": 32, "transformer": {"num_layers": 2}, "mask_stream": {"tokens": False}})
    model = build_generator(preset).transformer
    with torch.no_grad():
        torch.nn.init.normal_(model.mask_hint.weight, std=0.1)
        z, m = torch.randn(3, 48, 8, 8), torch.randn(3, model.mask_channels, 8, 8)
        t, e, p = torch.full((3,), 500.0), torch.randn(3, 16, 64), torch.randn(3, 64)
        with_mask, without = model(z, m, t, e, p), model(z, None, t, e, p)
        mixed = model(z, m, t, e, p, mask_keep=torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(mixed[[0, 2]], with_mask[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], without[1], rtol=0, atol=1e-6)
    assert (with_mask[1] - without[1]).abs().max() > 1e-3  # the mask mattered for the dropped row
    with pytest.raises(ValueError, match=r"mask_keep must be \(3,\)"):
        model(z, m, t, e, p, mask_keep=torch.ones(2))
    tokens = MaskMMDiT(tiny_transformer(), mask_hint=True)
    x, m2, t2, e2, p2 = inputs()
    with pytest.raises(ValueError, match="mask_keep needs mask_tokens=False"):
        tokens(x, m2, t2, e2, p2, mask_keep=torch.ones(2))
