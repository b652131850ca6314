"""Prompt vectorization: SD3's CLIP-L + CLIP-G + T5 from a local dir, or a tiny seeded encoder."""

from __future__ import annotations

from typing import Any, Literal

from todsynth.errors import ConfigError
from todsynth.text.base import PromptEncoder
from todsynth.text.cache import PromptCache
from todsynth.text.sd3 import SD3PromptEncoder
from todsynth.text.tiny import TinyPromptEncoder

ENCODER_KINDS: tuple[str, ...] = ("tiny", "sd3")


def build_prompt_encoder(kind: Literal["tiny", "sd3"], **kwargs: Any) -> PromptEncoder:
    """``tiny`` -> ``TinyPromptEncoder(**kwargs)``; ``sd3`` -> ``SD3PromptEncoder.from_local(**kwargs)``."""
    match kind:
        case "tiny":
            return TinyPromptEncoder(**kwargs)
        case "sd3":
            return SD3PromptEncoder.from_local(**kwargs)
        case _:
            raise ConfigError(f"prompt encoder kind={kind!r} is not one of {', '.join(ENCODER_KINDS)}")


__all__ = ["ENCODER_KINDS", "PromptCache", "PromptEncoder", "SD3PromptEncoder", "TinyPromptEncoder", "build_prompt_encoder"]
