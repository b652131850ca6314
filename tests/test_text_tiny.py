"""TinyPromptEncoder: seeded, deterministic, prompt-sensitive, protocol-conforming."""

from __future__ import annotations

import pytest
import torch

from todsynth.errors import ConfigError
from todsynth.text import PromptEncoder, TinyPromptEncoder, build_prompt_encoder

PROMPTS = ["a satellite image of building, road", "a satellite image of water", "a satellite image of road, building", ""]


def test_shapes_dtype_and_protocol():
    enc = TinyPromptEncoder(seed=0, seq_len=8, joint_dim=32, pooled_dim=24)
    embeds, pooled = enc.encode(PROMPTS)
    assert embeds.shape == (4, 8, 32) and pooled.shape == (4, 24)
    assert embeds.dtype == pooled.dtype == torch.float32
    assert torch.isfinite(embeds).all() and torch.isfinite(pooled).all()
    assert isinstance(enc, PromptEncoder)
    assert (enc.joint_dim, enc.pooled_dim) == (32, 24)


def test_deterministic_and_seeded():
    a = TinyPromptEncoder(seed=0).encode(PROMPTS)
    b = TinyPromptEncoder(seed=0).encode(PROMPTS)
    c = TinyPromptEncoder(seed=1).encode(PROMPTS)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0])
    assert TinyPromptEncoder(seed=0).name != TinyPromptEncoder(seed=1).name
    assert TinyPromptEncoder(joint_dim=32).name != TinyPromptEncoder().name


def test_different_prompts_differ_and_batch_independent():
    enc = TinyPromptEncoder()
    embeds, pooled = enc.encode(PROMPTS)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (pooled[i] - pooled[j]).abs().max() > 1e-3, (i, j)  # word order matters too (0 vs 2)
    alone = enc.encode([PROMPTS[1]])
    torch.testing.assert_close(alone[0][0], embeds[1])
    torch.testing.assert_close(alone[1][0], pooled[1])


def test_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TinyPromptEncoder(seed=5).encode(PROMPTS)
    assert torch.equal(torch.rand(3), expected)


def test_long_prompts_truncate_and_bad_arguments():
    enc = TinyPromptEncoder(seq_len=4)
    assert enc.encode(["one two three four five six"])[0].shape == (1, 4, 64)
    with pytest.raises(ValueError, match="seq_len"):
        TinyPromptEncoder(seq_len=1)
    with pytest.raises(TypeError, match="list of prompts"):
        enc.encode("a satellite image of road")


def test_build_prompt_encoder():
    enc = build_prompt_encoder("tiny", seed=3, joint_dim=16)
    assert isinstance(enc, TinyPromptEncoder) and enc.joint_dim == 16 and enc.seed == 3
    with pytest.raises(ConfigError, match="kind='clip'"):
        build_prompt_encoder("clip")  # type: ignore[arg-type]
