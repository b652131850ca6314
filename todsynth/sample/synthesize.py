"""Synthesize a LoveDA-layout dataset: one generated image per real training mask.

Output: ``<out>/Train/<domain>/images_png/<id>.png`` (generated RGB), ``<out>/Train/<domain>/masks_png/<id>.png``
(the raw mask, byte-copied; resized nearest if the generator's image size differs) and ``<out>/manifest.json``.
Every file is written atomically (temp file + ``os.replace``), so a killed run leaves no half PNG.

Seeds: sample ``s`` uses ``sample_seed(seed, s)`` = the first 8 bytes of ``sha256(f"{seed}/{domain}/{id}")`` as
a 63-bit int. It depends only on the run seed and the sample's identity, never on order, batch or shard, so
a sharded run (``accelerate launch``) writes the same images as a single process.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from todsynth.data.classes import prompt_for_labels, raw_labels
from todsynth.data.loveda import IMAGES_DIR, MASKS_DIR, Sample, load_mask
from todsynth.errors import DataValidationError
from todsynth.files import atomic_write_bytes, png_bytes
from todsynth.progress import progress_bar
from todsynth.sample.config import CRFMConfig, SamplerConfig
from todsynth.sample.sampler import cfg_negative, sample
from todsynth.text.base import PromptSource

MANIFEST = "manifest.json"
SPLIT = "Train"


def sample_seed(seed: int, sample_: Sample) -> int:
    """Per-sample seed from the run seed and the sample's domain/id (see module docstring)."""
    digest = hashlib.sha256(f"{int(seed)}/{sample_.domain}/{sample_.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def image_to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _shard_name(rank: int, world: int) -> str:
    return f"manifest.shard-{rank}-of-{world}.json"


def _settings(generator: Any, cfg: SamplerConfig, crfm: CRFMConfig, seed: int, n_total: int) -> dict[str, Any]:
    return {
        "sampler": asdict(cfg),
        "crfm": asdict(crfm),
        "seed": int(seed),
        "seed_rule": "sha256(f'{seed}/{domain}/{id}')[:8] & (2**63 - 1)",
        "generator": {
            "image_size": generator.image_size,
            "shift": float(generator.shift if cfg.shift is None else cfg.shift),
            "num_train_timesteps": int(generator.num_train_timesteps),
            "num_classes": int(generator.num_classes),
        },
        "n_samples": n_total,
    }


def _load_target(s: Sample, hw: tuple[int, int]) -> tuple[Tensor, bool]:
    """Reduced mask (H, W) long at the generator's size; True when it had to be resized (nearest)."""
    if s.mask_path is None:
        raise DataValidationError(f"sample {s.domain}/{s.id} has no mask ({s.image_path}); synthesis needs masks")
    mask = load_mask(s.mask_path)
    if tuple(mask.shape) == hw:
        return mask, False
    resized = torch.nn.functional.interpolate(mask[None, None].float(), size=hw, mode="nearest")
    return resized[0, 0].long(), True


def _auto_shard() -> tuple[tuple[int, int], Any]:
    """(rank, world) and the accelerate state when launched with several processes, else ((0, 1), None)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return (0, 1), None
    from accelerate import PartialState

    state = PartialState()
    return (state.process_index, state.num_processes), state


def merge_manifests(out_dir: str | Path, world: int) -> dict[str, Any]:
    """Merge the ``world`` shard manifests in ``out_dir`` into ``manifest.json`` (input order) and return it."""
    out_dir = Path(out_dir)
    shards = []
    for rank in range(world):
        path = out_dir / _shard_name(rank, world)
        if not path.is_file():
            raise DataValidationError(f"shard manifest missing: {path} (did process {rank} of {world} finish?)")
        shards.append(json.loads(path.read_text()))
        if shards[-1]["settings"] != shards[0]["settings"]:
            raise DataValidationError(f"shard manifest {path} was written with other settings than shard 0 (stale run?)")
    images = sorted((e for s in shards for e in s["images"]), key=lambda e: e["index"])
    manifest = _manifest(shards[0]["settings"], images, world)
    atomic_write_bytes(out_dir / MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def _manifest(settings: dict[str, Any], images: list[dict[str, Any]], world: int) -> dict[str, Any]:
    seconds = sum(e["seconds"] for e in images)
    return {
        "settings": settings,
        "world": world,
        "images": images,
        "totals": {
            "n_images": len(images),
            "seconds": seconds,
            "seconds_per_image": seconds / len(images) if images else 0.0,
        },
    }


def synthesize(
    generator: Any,
    samples: Sequence[Sample],
    out_dir: str | Path,
    prompt_cache: PromptSource,
    cfg: SamplerConfig,
    crfm: CRFMConfig | None = None,
    judge: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Generate one image per sample's mask into a LoVEDA-layout ``out_dir``; returns the manifest.

    Args:
        generator: a ``Generator`` (see :func:`todsynth.sample.sampler.sample`).
        samples: real training samples (their masks condition the generator).
        out_dir: output root; ``Train/<domain>/{images_png,masks_png}/<id>.png`` and ``manifest.json``.
        prompt_cache: ``get(prompts) -> (embeds, pooled)``; the prompt is built from the mask's classes.
        cfg, crfm, judge: as for ``sample``. With ``cfg.guidance_scale > 1`` the empty prompt is the negative.
        seed: run seed; per-sample seeds follow :func:`sample_seed`.
        progress: show a rich progress bar.
        shard: ``(rank, world)``: this process takes samples ``rank::world`` and writes
            ``manifest.shard-<rank>-of-<world>.json``; the merged ``manifest.json`` is written once every shard
            exists (by rank 0 after a barrier under ``accelerate launch``). None = detect accelerate, else (0, 1).

    Returns:
        The merged manifest when this call completed it, else this shard's manifest.
    """
    crfm = crfm or CRFMConfig()
    state = None
    if shard is None:
        shard, state = _auto_shard()
    rank, world = shard
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    if not samples:
        raise ValueError("samples is empty: nothing to synthesize")
    out_dir = Path(out_dir)
    hw = (generator.image_size,) * 2 if isinstance(generator.image_size, int) else tuple(generator.image_size)
    negative = cfg_negative(prompt_cache.get, cfg)
    settings = _settings(generator, cfg, crfm, seed, len(samples))
    mine = [(i, s) for i, s in enumerate(samples) if i % world == rank]
    entries: list[dict[str, Any]] = []
    with progress_bar(f"synthesize [{rank}/{world}]", len(mine), enabled=progress and rank == 0) as update:
        for lo in range(0, len(mine), cfg.batch_size):
            chunk = mine[lo : lo + cfg.batch_size]
            loaded = [_load_target(s, hw) for _, s in chunk]
            masks = torch.stack([m for m, _ in loaded])
            prompts = [prompt_for_labels(m.numpy()) for m, _ in loaded]
            embeds, pooled = prompt_cache.get(prompts)
            seeds = [sample_seed(seed, s) for _, s in chunk]
            t0 = time.perf_counter()
            out = sample(generator, masks, embeds, pooled, seeds, cfg, crfm, judge, negative)
            seconds = (time.perf_counter() - t0) / len(chunk)  # the batch's wall time, split evenly
            for k, ((index, s), (mask, resized)) in enumerate(zip(chunk, loaded, strict=True)):
                entry = _write_pair(out_dir, s, out.images[k], mask, resized)
                entry = {"index": index, "id": s.id, "domain": s.domain, "seed": seeds[k], "prompt": prompts[k],
                         **entry, "seconds": seconds}
                if out.judge_loss is not None and out.error_fraction is not None:
                    entry["judge_loss"] = out.judge_loss[k].tolist()
                    entry["judge_error_fraction"] = out.error_fraction[k].tolist()
                entries.append(entry)
            update(advance=len(chunk))
    return _finish(out_dir, settings, entries, rank, world, state)


def _write_pair(out_dir: Path, s: Sample, image: Tensor, mask: Tensor, resized: bool) -> dict[str, Any]:
    """Write one generated image and its mask (byte copy unless resized); their manifest fields."""
    domain_dir = out_dir / SPLIT / s.domain
    image_path = domain_dir / IMAGES_DIR / f"{s.id}.png"
    mask_path = domain_dir / MASKS_DIR / f"{s.id}.png"
    atomic_write_bytes(image_path, png_bytes(image_to_uint8(image)))
    if resized:
        atomic_write_bytes(mask_path, png_bytes(raw_labels(mask.numpy())))
    else:
        atomic_write_bytes(mask_path, Path(s.mask_path).read_bytes())  # type: ignore[arg-type]
    return {
        "image": image_path.relative_to(out_dir).as_posix(),
        "mask": mask_path.relative_to(out_dir).as_posix(),
        "source_mask": str(s.mask_path),
        "mask_resized": resized,
    }


def _finish(out_dir: Path, settings: dict[str, Any], entries: list[dict[str, Any]], rank: int, world: int,
            state: Any) -> dict[str, Any]:
    """Write ``manifest.json`` (one process) or this shard's manifest, merging once every shard is written."""
    if world == 1:
        manifest = _manifest(settings, entries, 1)
        atomic_write_bytes(out_dir / MANIFEST, json.dumps(manifest, indent=2).encode())
        return manifest
    shard_manifest = {"shard": [rank, world], "settings": settings, "images": entries}
    atomic_write_bytes(out_dir / _shard_name(rank, world), json.dumps(shard_manifest, indent=2).encode())
    if state is not None:  # accelerate: every shard is written after the barrier; rank 0 merges once
        state.wait_for_everyone()
        merged = merge_manifests(out_dir, world) if state.is_main_process else None
        state.wait_for_everyone()
        return merged if merged is not None else shard_manifest
    if all((out_dir / _shard_name(r, world)).is_file() for r in range(world)):
        return merge_manifests(out_dir, world)  # explicit shards: whoever finishes last merges (idempotent)
    return shard_manifest
