"""What the stages share.

A finished stage's artifacts and sample listings, the labelled subset's samples, the prompt cache, saved
segmentors and JSON outputs.

Imports :mod:`bench.cache` and :mod:`bench.specs` only (the library lazily, inside the functions), so every stage
room may import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.specs import Subset


def artifact_path(stage: CachedStage, key: str) -> Path:
    """An artifact path of a finished stage: relative ones live in its dir, absolute ones are kept."""
    p = Path(str(stage.artifacts[key]))
    return p if p.is_absolute() else stage.dir / p


def launch_rank() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when not launched)."""
    import os

    return int(os.environ.get("RANK", "0"))


def split_samples(data: CachedStage, split: str) -> list[Any]:
    """``Sample``s of a split from the data stage's listing (``Train`` or ``Val``)."""
    from todsynth.data.loveda import Sample

    listing = json.loads(artifact_path(data, "samples").read_text())
    root = artifact_path(data, "root")
    return [
        Sample(s["id"], s["domain"], root / s["image"], root / s["mask"] if s.get("mask") else None)
        for s in listing[split]
    ]


def train_samples(sub: Subset | None, data: CachedStage) -> list[Any]:
    """The training ``Sample``s a stage may learn from: the whole split (``sub`` None), or the labelled subset."""
    return labelled_samples(sub, split_samples(data, "Train"))


def labelled_samples(sub: Subset | None, samples: list[Any]) -> list[Any]:
    """The labelled subset ``sub`` of the Train split's ``samples`` (all of them for ``sub`` None)."""
    if sub is None:
        return samples
    from todsynth.data.subset import DRAW_RULE, labelled_subset

    if sub.rule != DRAW_RULE:
        raise ValueError(f"subset rule {sub.rule!r} is not this version's {DRAW_RULE!r}")
    return labelled_subset(samples, sub.n, sub.seed)


def domains(data: CachedStage) -> list[str]:
    """The domains (``Urban``, ``Rural``) the data stage listed."""
    return list(data.marker["spec"]["domains"])


class LazyEncoder:
    """A prompt encoder built on first ``encode``: reading cached prompts only needs its ``name``.

    Later stages read the prompts stage's cache without loading CLIP/T5 (gigabytes for SD3); a miss
    (a prompt not seen at the prompts stage) builds the real encoder, which must carry the same name.
    """

    def __init__(self, name: str, build: Callable[[], Any]) -> None:
        self.name = name
        self._build = build
        self._encoder: Any = None

    def _real(self) -> Any:
        """The real encoder (built now if needed)."""
        if self._encoder is None:
            self._encoder = self._build()
            if self._encoder.name != self.name:
                raise ValueError(f"prompt encoder is now {self._encoder.name!r}, the cache was written by {self.name!r}")
        return self._encoder

    @property
    def joint_dim(self) -> int:
        """The real encoder's (built now if needed)."""
        return int(self._real().joint_dim)

    @property
    def pooled_dim(self) -> int:
        """The real encoder's (built now if needed)."""
        return int(self._real().pooled_dim)

    def encode(self, prompts: list[str]) -> Any:
        """Encode with the real encoder (built now if needed)."""
        return self._real().encode(prompts)


def stage_prompt_cache(prompts: CachedStage, device: str) -> Any:
    """The prompt cache written by the ``prompts`` stage (its encoder built lazily, only on a miss)."""
    from todsynth.text import PromptCache, preset_prompt_encoder

    spec = prompts.marker["spec"]
    encoder = LazyEncoder(prompts.artifacts["encoder_name"],
                          lambda: preset_prompt_encoder(spec["text"], sd3_dir=spec["sd3_dir"], device=device))
    return PromptCache(artifact_path(prompts, "cache"), encoder)


def load_seg(stage: CachedStage, device: str) -> Any:
    """The segmentor a judge, evaluator or downstream stage saved, in eval mode on ``device``."""
    from todsynth.seg.io import load_segmentor

    return load_segmentor(artifact_path(stage, "model"), device=device).eval()


def square_crop(size: int | None) -> tuple[int, int] | None:
    """``(size, size)`` for a crop size, None for none."""
    return (size, size) if size else None


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON; returns ``path``."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path
