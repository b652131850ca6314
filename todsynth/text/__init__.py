"""Prompt vectorization: SD3's CLIP-L + CLIP-G + T5 from a local dir, or a tiny seeded encoder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
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


def preset_prompt_encoder(text: Mapping[str, Any] | None, *, sd3_dir: str | Path | None = None,
                          device: str | None = None) -> PromptEncoder:
    """The prompt encoder a preset's ``text`` config names (``{"kind": "tiny"}`` when None).

    The config's other keys are the encoder's arguments; ``sd3`` loads from ``sd3_dir`` (on ``device`` when one
    is given, else its default). What the prompts stage, ``gen train`` and the checks build.
    """
    kw = dict(text or {"kind": "tiny"})
    kind = kw.pop("kind")
    if kind == "sd3":
        kw = {"sd3_dir": sd3_dir, **({"device": device} if device is not None else {}), **kw}
    return build_prompt_encoder(kind, **kw)


__all__ = ["ENCODER_KINDS", "PromptCache", "PromptEncoder", "SD3PromptEncoder", "TinyPromptEncoder", "build_prompt_encoder",
           "preset_prompt_encoder"]
