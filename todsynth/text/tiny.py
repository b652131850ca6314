"""A seeded, download-free prompt encoder for scratch presets and tests.

Words are hashed (BLAKE2, not Python's salted ``hash``) into a fixed vocabulary; token and position
embeddings pass through one fixed random pre-norm transformer block. Same seed and widths -> same
embeddings on any machine; different prompts (or word orders) -> different embeddings.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch
import torch.nn.functional as F

VOCAB_SIZE = 4096
_BOS, _PAD = VOCAB_SIZE, VOCAB_SIZE + 1
_WORD = re.compile(r"[a-z0-9]+")


def word_id(word: str) -> int:
    """Stable hash bucket of a lower-cased word in ``[0, VOCAB_SIZE)``."""
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % VOCAB_SIZE


class TinyPromptEncoder:
    """Word-hash embeddings + one fixed random transformer block; no weights to download.

    ``encode(prompts)`` -> ``prompt_embeds`` float32 (N, seq_len, joint_dim) and ``pooled`` float32
    (N, pooled_dim). Prompts longer than ``seq_len - 1`` words are truncated (the first token is BOS).
    """

    def __init__(self, seed: int = 0, seq_len: int = 16, joint_dim: int = 64, pooled_dim: int = 64) -> None:
        if seq_len < 2 or joint_dim < 1 or pooled_dim < 1:
            raise ValueError(
                f"need seq_len >= 2 and positive widths, got seq_len={seq_len}, joint_dim={joint_dim}, "
                f"pooled_dim={pooled_dim}"
            )
        self.seed, self.seq_len, self.joint_dim, self.pooled_dim = seed, seq_len, joint_dim, pooled_dim
        self.name = f"tiny-v1-seed{seed}-len{seq_len}-j{joint_dim}-p{pooled_dim}"
        g = torch.Generator().manual_seed(seed)
        d, hidden = joint_dim, 2 * joint_dim

        def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * scale

        self.tokens = rand(VOCAB_SIZE + 2, d)
        self.positions = rand(seq_len, d, scale=0.5)
        self.w_qkv = rand(d, 3 * d, scale=1 / math.sqrt(d))
        self.w_out = rand(d, d, scale=1 / math.sqrt(d))
        self.w_up = rand(d, hidden, scale=1 / math.sqrt(d))
        self.w_down = rand(hidden, d, scale=1 / math.sqrt(hidden))
        self.w_pool = rand(d, pooled_dim, scale=1 / math.sqrt(d))

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids long (N, seq_len) (BOS, words, PAD...) and a bool mask (N, seq_len) of real tokens."""
        ids = torch.full((len(prompts), self.seq_len), _PAD, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            words = [word_id(w) for w in _WORD.findall(prompt.lower())][: self.seq_len - 1]
            ids[i, : len(words) + 1] = torch.tensor([_BOS, *words], dtype=torch.long)
        return ids, ids != _PAD

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` (N) -> (N, seq_len, joint_dim) embeddings and (N, pooled_dim) pooled, float32."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        ids, real = self.tokenize(list(prompts))
        d = self.joint_dim
        x = self.tokens[ids] + self.positions
        q, k, v = (F.layer_norm(x, (d,)) @ self.w_qkv).split(d, dim=-1)  # type: ignore[no-untyped-call]  # torch leaves Tensor.split unannotated
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=real[:, None, :])
        x = x + attn @ self.w_out
        x = x + F.gelu(F.layer_norm(x, (d,)) @ self.w_up) @ self.w_down
        x = F.layer_norm(x, (d,))
        weights = real.unsqueeze(-1).float()
        pooled = ((x * weights).sum(1) / weights.sum(1)) @ self.w_pool
        return x, pooled
