"""Scratch VAE training (tiny presets): L1 reconstruction + a small KL, then latent scale/shift fitting.

SD3's latent normalisation ``(z - shift) * scaling`` gives unit-variance latents; for a VAE trained
here the two factors are fitted on the training images (posterior means) and stored in its config.

The generator's mask stream encodes each mask's grey image with this same VAE (METHOD.md). SD3.5's
VAE, trained on web-scale images, reconstructs such flat grey maps faithfully; a scratch VAE trained on
the scene photos alone does not (measured on 64 px procedural masks: 43% of pixels decode to the right
class grey), so part of the mask's layout never reaches the generator. ``mask_fraction`` of the
training samples are therefore the training masks' grey images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from todsynth.data.classes import NUM_CLASSES
from todsynth.files import atomic_write_bytes
from todsynth.models.generator import seeded_init
from todsynth.models.vae import (
    Autoencoder,
    build_vae,
    is_trainable,
    mask_to_grey,
    reconstruct,
    save_vae,
)
from todsynth.train.data import resize_pair

# Below this many bytes of images the whole training set is held in memory.
_PRELOAD_BYTES = 512 * 2**20


def _load_images(dataset: Any, indices: list[int], size: int, num_classes: int | None = None) -> torch.Tensor:
    """Images (B,3,S,S) in [0,1]; with ``num_classes``, also their masks' grey images: (2,B,3,S,S)."""
    out, greys = [], []
    for i in indices:
        item = dataset[int(i)]
        image = item["image"]
        mask = item["mask"] if num_classes is not None else torch.zeros(image.shape[-2:], dtype=torch.long)
        if tuple(image.shape[-2:]) != (size, size):
            image, mask = resize_pair(image, mask, size)
        out.append(image)
        greys.append(mask)
    if num_classes is None:
        return torch.stack(out)
    return torch.stack([torch.stack(out), mask_to_grey(torch.stack(greys), num_classes)])


def _has_masks(dataset: Any) -> bool:
    """True when the dataset's items carry masks (LoveDA Train/Val; not Test), judged by the first item."""
    return "mask" in dataset[0]


@torch.no_grad()
def fit_latent_scaling(vae: Autoencoder, images: Any, batch_size: int = 32) -> tuple[float, float]:
    """(scaling_factor, shift_factor) = (1 / std, mean) of the posterior means over the images (N,3,H,W)."""
    vae.eval()
    zs = [vae.encode(images[i : i + batch_size] * 2 - 1).latent_dist.mean for i in range(0, len(images), batch_size)]
    z = torch.cat(zs).double()
    return float(1.0 / z.std().clamp_min(1e-6)), float(z.mean())


@torch.no_grad()
def reconstruction_l1(vae: Autoencoder, images_01: torch.Tensor, batch_size: int = 32) -> float:
    """Mean |decode(encode(x)) - x| in [-1, 1] units over images (N,3,H,W) in [0,1] (0 for a lossless one)."""
    total = 0.0
    for i in range(0, len(images_01), batch_size):
        x = images_01[i : i + batch_size]
        total += float((reconstruct(vae, x) - x).abs().sum()) * 2
    return total / images_01.numel()


@dataclass(frozen=True)
class _Images:
    """Where the training images come from.

    ``preloaded`` (photos (N,3,H,W), or photo/grey pairs (2,N,3,H,W) when ``grey_classes`` is set) or read from
    ``dataset`` per batch.
    """

    dataset: Any
    size: int
    grey_classes: int | None
    mask_fraction: float
    preloaded: torch.Tensor | None

    def batch(self, batch_size: int, rng: torch.Generator) -> torch.Tensor:
        """A random batch in [-1, 1]: photos, some swapped for their masks' grey images, randomly flipped."""
        idx = torch.randint(len(self.dataset), (batch_size,), generator=rng)
        if self.grey_classes is None:
            x = self.preloaded[idx] if self.preloaded is not None else _load_images(self.dataset, idx.tolist(), self.size)
        else:
            pair = (self.preloaded[:, idx] if self.preloaded is not None
                    else _load_images(self.dataset, idx.tolist(), self.size, self.grey_classes))
            use_grey = (torch.rand(batch_size, generator=rng) < self.mask_fraction).view(-1, 1, 1, 1)
            x = torch.where(use_grey, pair[1], pair[0])
        flip = (torch.rand(batch_size, generator=rng) < 0.5).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x) * 2 - 1

    def for_scaling(self) -> torch.Tensor:
        """The photos the latent scaling is fitted on: all preloaded ones, else the first 256."""
        if self.preloaded is not None:
            return self.preloaded if self.grey_classes is None else self.preloaded[0]
        return _load_images(self.dataset, list(range(min(len(self.dataset), 256))), self.size)


def _fit(vae: Autoencoder, images: _Images, steps: int, batch_size: int, lr: float, kl_weight: float,
         rng: torch.Generator, progress: bool) -> list[float]:
    """``steps`` AdamW steps (cosine schedule, clip 1.0) on L1 + ``kl_weight`` KL; returns each step's L1."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from todsynth.progress import progress_bar

    rec_hist: list[float] = []
    vae.train()
    if steps:
        opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
        sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    with progress_bar("vae train", steps, enabled=progress and steps > 0) as update:
        for _ in range(steps):
            x = images.batch(batch_size, rng)
            dist = vae.encode(x).latent_dist
            rec = vae.decode(dist.sample(generator=rng)).sample
            rec_loss = F.l1_loss(rec, x)
            loss = rec_loss + kl_weight * dist.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            rec_hist.append(rec_loss.item())
            update(advance=1, l1=rec_hist[-1])
    return rec_hist


def train_vae(
    dataset: Any,
    vae_cfg: dict[str, Any],
    out_dir: str | Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    *,
    image_size: int | None = None,
    kl_weight: float = 1e-6,
    mask_fraction: float = 0.25,
    num_classes: int = NUM_CLASSES,
    progress: bool = False,
) -> Path:
    """Train the autoencoder ``build_vae(vae_cfg)`` on the dataset's images; writes ``save_vae`` files to ``out_dir``.

    A fixed transform (``kind: space_to_depth``) has nothing to train: only its latent scaling is fitted.

    Args:
        dataset: items with ``"image"`` float (3,H,W) in [0,1]; resized to ``image_size``
            (default ``vae_cfg["sample_size"]``).
        steps, batch_size, lr, seed: AdamW steps with cosine decay; all randomness (order, flips,
            posterior samples) from a ``torch.Generator(seed)``; init seeded by ``seed`` too.
        kl_weight: weight of the KL term (per-sample sum, batch mean) beside the mean L1 loss.
        mask_fraction: probability that a training sample is its mask's grey image (``mask_to_grey`` with
            ``num_classes``) instead of the photo, so the VAE also encodes masks faithfully (module docstring);
            used only when every item has a ``"mask"`` (the effective value is in the summary).

    Returns:
        ``out_dir`` with ``vae.safetensors``, ``config.json`` (fitted ``scaling_factor``/``shift_factor``)
        and ``train_summary.json`` (final losses, seconds).
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    if not 0.0 <= mask_fraction < 1.0:
        raise ValueError(f"mask_fraction must be in [0, 1), got {mask_fraction}")
    n = len(dataset)
    if n == 0:
        raise ValueError("train_vae: the dataset is empty")
    size = int(image_size or vae_cfg.get("sample_size", 64))
    with seeded_init(seed):
        vae = build_vae(vae_cfg)
    if not is_trainable(vae):
        steps = 0
    rng = torch.Generator().manual_seed(seed)
    has_masks = _has_masks(dataset)
    mask_fraction = mask_fraction if has_masks else 0.0
    grey_classes = num_classes if mask_fraction > 0 else None
    preload = n * 3 * size * size * 4 * (2 if grey_classes else 1) <= _PRELOAD_BYTES
    all_images = _load_images(dataset, list(range(n)), size, grey_classes) if preload else None
    images = _Images(dataset, size, grey_classes, mask_fraction, all_images)
    t0 = time.perf_counter()
    rec_hist = _fit(vae, images, steps, batch_size, lr, kl_weight, rng, progress)
    seconds = time.perf_counter() - t0
    fit_images = images.for_scaling()
    scaling, shift = fit_latent_scaling(vae, fit_images)
    vae.register_to_config(scaling_factor=scaling, shift_factor=shift)
    vae.eval().requires_grad_(False)
    recon_l1 = reconstruction_l1(vae, fit_images)
    out_dir = save_vae(vae, out_dir)
    tail = rec_hist[-max(1, steps // 10) :] or [recon_l1]
    summary = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "image_size": size,
        "mask_fraction": mask_fraction,
        "final_l1": sum(tail) / len(tail),  # in [-1,1] units; the training tail (or recon_l1 with no training)
        "recon_l1": recon_l1,  # in [-1,1] units, after training, through the normalised latents
        "scaling_factor": scaling,
        "shift_factor": shift,
        "params": sum(p.numel() for p in vae.parameters()),
        "train_seconds": seconds,
    }
    atomic_write_bytes(out_dir / "train_summary.json", json.dumps(summary, indent=2).encode())
    return out_dir


def vae_budget(preset: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A scratch preset's ``vae_train`` budget, the non-None ``overrides`` (steps, batch_size, lr, kl_weight, seed) over it."""
    return {**(preset.get("vae_train") or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}


def train_preset_vae(dataset: Any, preset: dict[str, Any], out_dir: str | Path,
                     overrides: dict[str, Any] | None = None, *, progress: bool = False) -> Path:
    """Train a resolved scratch preset's autoencoder on the dataset with its :func:`vae_budget`.

    ``preset["vae"]`` at ``preset["image_size"]``; seed 0 unless the budget gives one, the KL weight only when it
    names one. What the suite's autoencoder stage and ``todsynth gen train`` both call; returns ``out_dir`` (:func:`train_vae`).
    """
    budget = vae_budget(preset, overrides)
    kw = {"kl_weight": budget["kl_weight"]} if budget.get("kl_weight") is not None else {}
    return train_vae(dataset, preset["vae"], out_dir, steps=budget["steps"], batch_size=budget["batch_size"],
                     lr=budget["lr"], seed=budget.get("seed", 0), image_size=preset["image_size"], progress=progress,
                     **kw)
