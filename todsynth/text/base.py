"""The prompt-encoder protocol shared by the tiny and the SD3 encoders, and what training and sampling read prompts from."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class PromptEncoder(Protocol):
    """Turns prompts into SD3-style conditioning tensors.

    ``name`` identifies the encoder and its weights; it goes into prompt-cache keys, so two encoders
    with the same name must give the same embeddings. ``joint_dim``/``pooled_dim`` are the widths the
    transformer's ``joint_attention_dim``/``pooled_projection_dim`` must match.
    """

    name: str

    @property
    def joint_dim(self) -> int:
        """Width of ``prompt_embeds``' last dim."""
        ...

    @property
    def pooled_dim(self) -> int:
        """Width of ``pooled``."""
        ...

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` (N) -> ``prompt_embeds`` (N, L, joint_dim), ``pooled`` (N, pooled_dim)."""
        ...


class PromptSource(Protocol):
    """What training and synthesis need from a prompt cache (``PromptCache``): embeddings by prompt."""

    def get(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of ``prompts``: (N, L, D) and pooled (N, P)."""
        ...
