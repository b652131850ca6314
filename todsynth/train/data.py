"""Training inputs: dataset items resized to the model size, encoded once by the frozen VAE.

Horizontal flips are applied to image AND mask together before encoding; with ``cache_latents``
both orientations are encoded up front, so a flip is an exact choice between two cached latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from todsynth.errors import DataValidationError
from todsynth.models.generator import Generator


class PromptSource(Protocol):
    """What training needs from a prompt cache: ``get(prompts) -> (embeds (N,L,D), pooled (N,P))``."""

    def get(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Embeddings of ``prompts``: (N, L, D) and pooled (N, P)."""
        ...


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


@torch.no_grad()
def encode_pairs(gen: Generator, images: Tensor, masks: Tensor, flip: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(image latents, mask latents), flipping the samples where ``flip`` (B,) bool is True (both together)."""
    if flip is not None and bool(flip.any()):
        f = flip.view(-1, 1, 1)
        images = torch.where(f[:, None], images.flip(-1), images)
        masks = torch.where(f, masks.flip(-1), masks)
    return gen.encode_images(images).float().cpu(), gen.encode_mask(masks).float().cpu()


@dataclass
class LatentSet:
    """Pre-encoded training set (CPU float32): latents[k] is orientation k (0 = as is, 1 = flipped)."""

    latents: Tensor  # (2, N, c, h, w)
    mask_latents: Tensor  # (2, N, c, h, w)
    prompt_index: Tensor  # (N,) long, row of embeds/pooled (prompts repeat, so they are stored once)
    embeds: Tensor  # (U, L, D)
    pooled: Tensor  # (U, P)

    def __len__(self) -> int:
        return self.latents.shape[1]


def encode_dataset(
    gen: Generator, dataset: Any, prompts: PromptSource, batch_size: int = 16, flips: bool = True
) -> LatentSet:
    """Encode every item (and its flip) once with the frozen VAE; prompts vectorised through the cache."""
    n = len(dataset)
    if n == 0:
        raise DataValidationError("the training dataset is empty")
    lat: list[list[Tensor]] = [[], []]
    mlat: list[list[Tensor]] = [[], []]
    all_prompts: list[str] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        images, masks, batch_prompts = load_items(dataset, idx, gen.image_size)
        all_prompts += batch_prompts
        for k in range(2 if flips else 1):
            flip = torch.full((len(idx),), bool(k))
            z, m = encode_pairs(gen, images, masks, flip)
            lat[k].append(z)
            mlat[k].append(m)
    if not flips:
        lat[1], mlat[1] = lat[0], mlat[0]
    unique = sorted(set(all_prompts))
    embeds, pooled = prompts.get(unique)
    row = {p: i for i, p in enumerate(unique)}
    return LatentSet(
        latents=torch.stack([torch.cat(lat[0]), torch.cat(lat[1])]),
        mask_latents=torch.stack([torch.cat(mlat[0]), torch.cat(mlat[1])]),
        prompt_index=torch.tensor([row[p] for p in all_prompts], dtype=torch.long),
        embeds=embeds.float().cpu(),
        pooled=pooled.float().cpu(),
    )
