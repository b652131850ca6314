r"""On-disk prompt-embedding cache: one safetensors file per (encoder, prompt).

Files are named ``sha256(encoder.name + "\0" + prompt).safetensors`` and hold ``prompt_embeds``
(L, D) and ``pooled_prompt_embeds`` (P) plus the prompt and encoder name as metadata. Writes are
atomic (temp file, then rename); a file that cannot be read or does not match its key is an error,
never a silent miss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from todsynth.errors import DataValidationError
from todsynth.files import atomic_write_bytes
from todsynth.text.base import PromptEncoder


class PromptCache:
    """Encode prompts once per encoder; later calls read them back from ``cache_dir``.

    Counters: ``encoded`` = calls made to ``encoder.encode`` (one per :meth:`get` with misses),
    ``prompts_encoded`` / ``prompts_cached`` = distinct prompts encoded / served from disk.
    """

    def __init__(self, cache_dir: str | Path, encoder: PromptEncoder) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.encoded = 0
        self.prompts_encoded = 0
        self.prompts_cached = 0

    def key(self, prompt: str) -> str:
        """Hex sha256 of encoder name and prompt: the file stem for this prompt."""
        return hashlib.sha256((self.encoder.name + "\0" + prompt).encode("utf-8")).hexdigest()

    def path(self, prompt: str) -> Path:
        """Where the embeddings of ``prompt`` are (or will be) stored."""
        return self.dir / f"{self.key(prompt)}.safetensors"

    def __contains__(self, prompt: str) -> bool:
        return self.path(prompt).is_file()

    def _save(self, prompt: str, embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        atomic_write_bytes(self.path(prompt), save(
            {"prompt_embeds": embeds.detach().cpu().contiguous(), "pooled_prompt_embeds": pooled.detach().cpu().contiguous()},
            metadata={"prompt": prompt, "encoder": self.encoder.name},
        ))

    def _load(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.path(prompt)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            embeds, pooled = tensors["prompt_embeds"], tensors["pooled_prompt_embeds"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise DataValidationError(f"corrupt prompt cache file {path} ({exc}); delete it to re-encode") from exc
        if meta.get("prompt") != prompt or meta.get("encoder") != self.encoder.name:
            raise DataValidationError(
                f"prompt cache file {path} holds prompt={meta.get('prompt')!r} encoder={meta.get('encoder')!r}, "
                f"expected {prompt!r} / {self.encoder.name!r}; delete it to re-encode"
            )
        return embeds, pooled

    def get(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` (N) -> ``embeds`` (N, L, D), ``pooled`` (N, P) on CPU; misses encoded in one batch."""
        if isinstance(prompts, str):
            raise TypeError("get() takes a list of prompts, not a single string")
        if len(prompts) == 0:
            raise ValueError("get() needs at least one prompt")
        unique = list(dict.fromkeys(prompts))
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        misses = [p for p in unique if p not in self]
        for p in unique:
            if p not in misses:
                found[p] = self._load(p)
        self.prompts_cached += len(unique) - len(misses)
        if misses:
            embeds, pooled = self.encoder.encode(misses)
            self.encoded += 1
            self.prompts_encoded += len(misses)
            for i, p in enumerate(misses):
                self._save(p, embeds[i], pooled[i])
                found[p] = (embeds[i].detach().cpu(), pooled[i].detach().cpu())
        return (
            torch.stack([found[p][0] for p in prompts]),
            torch.stack([found[p][1] for p in prompts]),
        )
