"""Training inputs: dataset items resized to the model size, encoded once by the frozen VAE.

Orientations (horizontal flips and, optionally, quarter turns: the 8 symmetries of a square, which a nadir view
does not prefer) are applied to image AND mask together before encoding; with ``cache_latents`` every orientation
in use is encoded up front, so drawing one is an exact choice between cached latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from todsynth.errors import DataValidationError
from todsynth.models.generator import Generator
from todsynth.text.base import PromptSource


def resize_pair(image: Tensor, mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Image (3,H,W) bilinear (antialiased) and mask (H,W) nearest, to (size, size); no-op if already."""
    if tuple(image.shape[-2:]) == (size, size):
        return image, mask
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return image.clamp(0, 1), mask


def load_items(dataset: Any, indices: Sequence[int], size: int) -> tuple[Tensor, Tensor, list[str]]:
    """Images (B,3,S,S) [0,1], masks long (B,S,S) and prompts of dataset items (LoveDA dict items)."""
    images, masks, prompts = [], [], []
    for i in indices:
        item = dataset[int(i)]
        if "mask" not in item:
            raise DataValidationError(f"dataset item {item.get('id', i)!r} has no mask; generator training needs masks")
        image, mask = resize_pair(item["image"], item["mask"], size)
        images.append(image)
        masks.append(mask)
        prompts.append(item["prompt"])
    return torch.stack(images), torch.stack(masks), prompts


def orientation_code(flip: Any, turns: Any) -> Any:
    """The code of a horizontal flip (0 or 1) then ``turns`` quarter turns: ints, or (B,) long tensors alike.

    ``code % 2`` is the flip and ``code // 2`` the turns (0..7); :func:`orient` applies it.
    """
    return flip + 2 * turns


def orientations(hflip: bool, rot90: bool) -> tuple[int, ...]:
    """The orientation codes in use (:func:`orientation_code` of every flip and turn allowed)."""
    return tuple(orientation_code(f, r) for r in range(4 if rot90 else 1) for f in range(2 if hflip else 1))


def orient(x: Tensor, code: Tensor) -> Tensor:
    """``x`` (B, ..., H, W) with sample i in orientation ``code[i]`` (B,) long (see ``orientations``); square H = W."""
    out = x.clone()
    for c in sorted(set(code.tolist())):
        rows = code == c
        y = x[rows].flip(-1) if c % 2 else x[rows]
        out[rows] = torch.rot90(y, c // 2, dims=(-2, -1))
    return out


@torch.no_grad()
def encode_pairs(gen: Generator, images: Tensor, masks: Tensor, code: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(image latents, mask latents), sample i in orientation ``code[i]`` (B,) long, image and mask together."""
    if code is not None and bool(code.any()):
        images, masks = orient(images, code), orient(masks, code)
    return gen.encode_images(images).float().cpu(), gen.encode_mask(masks).float().cpu()


@dataclass
class LatentSet:
    """Pre-encoded training set (CPU float32): latents[j] is orientation ``codes[j]`` (``orientations``)."""

    codes: tuple[int, ...]  # (K,) orientation codes, codes[0] == 0 (as is)
    latents: Tensor  # (K, N, c, h, w)
    mask_latents: Tensor  # (K, N, c, h, w)
    prompt_index: Tensor  # (N,) long, row of embeds/pooled (prompts repeat, so they are stored once)
    embeds: Tensor  # (U, L, D)
    pooled: Tensor  # (U, P)

    def __len__(self) -> int:
        return self.latents.shape[1]

    def rows(self, code: Tensor) -> Tensor:
        """Index into ``latents``' first axis of each orientation code (B,) long."""
        return torch.tensor([self.codes.index(c) for c in code.tolist()], dtype=torch.long)


def encode_dataset(
    gen: Generator, dataset: Any, prompts: PromptSource, batch_size: int = 16, codes: tuple[int, ...] = (0,)
) -> LatentSet:
    """Encode every item in each orientation of ``codes`` once with the frozen VAE; prompts vectorised."""
    n = len(dataset)
    if n == 0:
        raise DataValidationError("the training dataset is empty")
    if not codes or codes[0] != 0:
        raise ValueError(f"orientation codes {codes!r} must start with 0 (as is)")
    lat: list[list[Tensor]] = [[] for _ in codes]
    mlat: list[list[Tensor]] = [[] for _ in codes]
    all_prompts: list[str] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        images, masks, batch_prompts = load_items(dataset, idx, gen.image_size)
        all_prompts += batch_prompts
        for j, c in enumerate(codes):
            z, m = encode_pairs(gen, images, masks, torch.full((len(idx),), c, dtype=torch.long))
            lat[j].append(z)
            mlat[j].append(m)
    unique = sorted(set(all_prompts))
    embeds, pooled = prompts.get(unique)
    row = {p: i for i, p in enumerate(unique)}
    return LatentSet(
        codes=tuple(codes),
        latents=torch.stack([torch.cat(z) for z in lat]),
        mask_latents=torch.stack([torch.cat(m) for m in mlat]),
        prompt_index=torch.tensor([row[p] for p in all_prompts], dtype=torch.long),
        embeds=embeds.float().cpu(),
        pooled=pooled.float().cpu(),
    )
