"""VAE helpers: the ONE place for SD3's latent normalisation, the mask-to-grey rule, and VAE file I/O.

SD3 latents are normalised as ``(z - shift) * scaling`` after encoding and un-normalised as
``z / scaling + shift`` before decoding; pipelines repeat this inline, we keep it here only.

Two autoencoders share that interface: diffusers' ``AutoencoderKL`` (SD3.5's VAE, or a scratch one) and
:class:`SpaceToDepthAutoencoder`, a fixed, lossless pixel shuffle for the tiny preset (a scratch VAE
trained for two CPU minutes capped the evaluator's mIoU on reconstructions at 0.15 against 0.39 on the
real images). ``build_vae`` picks one from a config dict (``kind: space_to_depth`` or AutoencoderKL kwargs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from torch import nn

from todsynth.data.classes import IGNORE_INDEX
from todsynth.errors import ConfigError, WeightsNotFoundError
from todsynth.files import read_json, read_safetensors
from todsynth.models.io import atomic_dir, save_tensors

VAE_WEIGHTS = "vae.safetensors"
VAE_CONFIG = "config.json"


SPACE_TO_DEPTH = "space_to_depth"
AUTOENCODER_KL = "autoencoder_kl"


class SpaceToDepthAutoencoder(nn.Module):
    """A lossless "autoencoder": ``pixel_unshuffle`` by ``factor`` (encode) and ``pixel_shuffle`` (decode).

    It answers AutoencoderKL's interface (``encode(x).latent_dist.mean``, ``decode(z).sample``, ``config``
    with ``latent_channels``/``scaling_factor``/``shift_factor``, ``dtype``, ``device``), so the generator,
    the sampler and CRFM (which backpropagates through ``decode``) use it on the same code path as SD3.5's
    VAE. Its posterior is deterministic. It has no parameters: decoding is exact, and a mask's grey image
    reaches the transformer unchanged.

    Shapes: images (B, C, H, W) in [-1, 1] <-> latents (B, C * factor**2, H / factor, W / factor).
    """

    _anchor: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, in_channels: int = 3, factor: int = 4, scaling_factor: float = 1.0, shift_factor: float = 0.0,
                 sample_size: int = 64) -> None:
        super().__init__()
        if factor < 1 or in_channels < 1:
            raise ValueError(f"factor and in_channels must be >= 1, got {factor}, {in_channels}")
        self.config = FrozenDict(kind=SPACE_TO_DEPTH, in_channels=in_channels, factor=factor,  # type: ignore[no-untyped-call]  # diffusers leaves FrozenDict unannotated
                                 latent_channels=in_channels * factor**2, scaling_factor=scaling_factor,
                                 shift_factor=shift_factor, sample_size=sample_size)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # carries device and dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype set by ``.to()`` (the transform has no weights; a buffer carries it)."""
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        """The device set by ``.to()`` (the transform has no weights; a buffer carries it)."""
        return self._anchor.device

    def register_to_config(self, **kwargs: Any) -> None:
        """Replace config values (AutoencoderKL's method of the same name; used to store fitted scaling)."""
        self.config = FrozenDict({**self.config, **kwargs})  # type: ignore[no-untyped-call]  # diffusers leaves FrozenDict unannotated

    def enable_gradient_checkpointing(self) -> None:
        """AutoencoderKL's memory switch; a no-op here (a pixel shuffle keeps no activations for backward)."""

    def encode(self, x: torch.Tensor) -> AutoencoderKLOutput:
        """Images (B, 3, H, W) -> a deterministic latent distribution of their pixel-unshuffled (B, 3f², H/f, W/f)."""
        z = F.pixel_unshuffle(x, self.config["factor"])
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(torch.cat([z, z], 1), deterministic=True))

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """Latents (B, 3f², h, w) -> images (B, 3, hf, wf) by pixel shuffle (exact inverse of ``encode``)."""
        return DecoderOutput(sample=F.pixel_shuffle(z, self.config["factor"]))


Autoencoder = AutoencoderKL | SpaceToDepthAutoencoder


def vae_argument_names(kind: str | None) -> set[str]:
    """The keys a preset's ``vae`` dict of ``kind`` (None: AutoencoderKL) may hold besides ``kind``."""
    import inspect

    if kind == SPACE_TO_DEPTH:
        return set(inspect.signature(SpaceToDepthAutoencoder.__init__).parameters) | {"latent_channels"}
    return set(inspect.signature(AutoencoderKL.__init__).parameters)


def build_vae(config: dict[str, Any]) -> Autoencoder:
    """An autoencoder from a preset's ``vae`` dict: ``kind: space_to_depth`` or ``AutoencoderKL`` kwargs."""
    config = dict(config)
    kind = config.pop("kind", AUTOENCODER_KL)
    if kind == SPACE_TO_DEPTH:
        config.pop("latent_channels", None)  # derived from in_channels and factor
        return SpaceToDepthAutoencoder(**config)
    if kind != AUTOENCODER_KL:
        raise ConfigError(f"vae kind {kind!r} is not one of {AUTOENCODER_KL!r}, {SPACE_TO_DEPTH!r}")
    return cast("AutoencoderKL", AutoencoderKL(**config))


def is_trainable(vae: Autoencoder) -> bool:
    """False for a fixed transform (nothing to train), True for a VAE with weights."""
    return any(True for _ in vae.parameters())


def _scaling_and_shift(vae: Autoencoder) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE; SD1-style VAEs have no shift (0)."""
    scaling = float(vae.config["scaling_factor"])
    shift = vae.config["shift_factor"]
    return scaling, float(shift) if shift is not None else 0.0


def encode_latents(vae: Autoencoder, images_01: torch.Tensor) -> torch.Tensor:
    """Images float (B,3,H,W) in [0,1] -> normalised latents (B,c,H/f,W/f) = (mean - shift) * scaling.

    The posterior mean is used (deterministic), as for pre-encoded training latents.
    """
    if images_01.ndim != 4 or images_01.shape[1] != 3:
        raise ValueError(f"images_01 must be (B,3,H,W), got {tuple(images_01.shape)}")
    scaling, shift = _scaling_and_shift(vae)
    x = images_01.to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
    z: torch.Tensor = vae.encode(x).latent_dist.mean
    return (z - shift) * scaling


def decode_latents(vae: Autoencoder, z: torch.Tensor) -> torch.Tensor:
    """Normalised latents (B,c,h,w) -> images float (B,3,h*f,w*f) in [0,1]; differentiable (no no_grad).

    Values are clamped to [0,1] like SD3's post-processing; the gradient is zero where clamped.
    """
    if z.ndim != 4:
        raise ValueError(f"z must be (B,c,h,w), got {tuple(z.shape)}")
    scaling, shift = _scaling_and_shift(vae)
    x = vae.decode(z.to(vae.dtype) / scaling + shift).sample
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def reconstruct(vae: Autoencoder, images_01: torch.Tensor) -> torch.Tensor:
    """decode(encode(images)): what of images (B,3,H,W) in [0,1] survives the autoencoder (exact for space-to-depth)."""
    return decode_latents(vae, encode_latents(vae, images_01))


def mask_raw_labels(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Reduced label map (B,H,W) (0..C-1, 255 ignore) -> long raw labels (ignore -> 0, k -> k+1), checked.

    The tensor form of ``todsynth.data.classes.raw_labels`` (numpy, for label files), with the labels checked.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be (B,H,W), got {tuple(mask.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    mask = mask.long()
    valid = mask != IGNORE_INDEX
    if bool(((mask < 0) | ((mask >= num_classes) & valid)).any()):
        bad = sorted(set(mask[valid].unique().tolist()) - set(range(num_classes)))  # type: ignore[no-untyped-call]  # torch leaves Tensor.unique unannotated
        raise ValueError(f"mask holds labels {bad} outside 0..{num_classes - 1} (255 = ignore)")
    return torch.where(valid, mask + 1, torch.zeros_like(mask))


def mask_to_grey(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Reduced label map long (B,H,W) (0..C-1, 255 ignore) -> grey image float (B,3,H,W) in [0,1].

    The grey level is the raw label (``mask_raw_labels``: ignore -> 0, k -> k+1) times 255 / num_classes, floored to an
    8-bit value as a PNG would hold it, and repeated on 3 channels so the image VAE can encode it.
    """
    raw = mask_raw_labels(mask, num_classes)
    grey = torch.div(raw * 255, num_classes, rounding_mode="floor").float() / 255.0
    return grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def onehot_mask_latents(mask: torch.Tensor, num_classes: int, factor: int) -> torch.Tensor:
    """Reduced labels long (B,H,W) (255 = ignore) -> (B, (num_classes + 1) f^2, H/f, W/f) float 0/1.

    Channel ``mask_raw_labels`` (0 = ignore, k + 1 = class k) is 1 at each pixel, before ``pixel_unshuffle`` by
    ``factor`` (f) stacks each latent cell's f x f pixels.
    """
    onehot = torch.nn.functional.one_hot(mask_raw_labels(mask, num_classes), num_classes + 1).permute(0, 3, 1, 2).float()
    return torch.nn.functional.pixel_unshuffle(onehot, factor)


def vae_scale_factor(vae: Autoencoder) -> int:
    """Spatial downsampling factor: ``factor`` of a pixel shuffle, 2 ** (number of blocks - 1) of a VAE."""
    if vae.config.get("kind") == SPACE_TO_DEPTH:
        return int(vae.config["factor"])
    return cast("int", 2 ** (len(vae.config["block_out_channels"]) - 1))


def save_vae(vae: Autoencoder, out_dir: str | Path) -> Path:
    """Write ``vae.safetensors`` + ``config.json`` (AutoencoderKL kwargs) atomically (temp dir, rename)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_tensors(vae.state_dict(), tmp / VAE_WEIGHTS)
        (tmp / VAE_CONFIG).write_text(json.dumps(vae_kwargs(vae), indent=2, sort_keys=True))
    return out_dir


def load_vae(vae_dir: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """Rebuild an AutoencoderKL saved by :func:`save_vae` (safetensors, no pickle)."""
    vae_dir = Path(vae_dir)
    weights, config = vae_dir / VAE_WEIGHTS, vae_dir / VAE_CONFIG
    if not weights.is_file() or not config.is_file():
        raise WeightsNotFoundError(
            f"VAE not found: {vae_dir} needs {VAE_WEIGHTS} and {VAE_CONFIG} "
            "(train one with todsynth.train.train_vae or `todsynth gen train`, which trains it for scratch presets)"
        )
    from accelerate import init_empty_weights

    kwargs = read_json(config)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{config} holds no autoencoder config (a JSON object of AutoencoderKL arguments)")
    with init_empty_weights():  # no random init (and no global RNG use): the weights come from the file
        try:
            vae = build_vae(kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{config} does not build an autoencoder ({type(exc).__name__}: {exc})") from exc
    try:
        vae.load_state_dict(read_safetensors(weights), assign=True)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise ConfigError(f"{weights} does not match {config}: {str(exc).splitlines()[0]}") from exc
    return vae.to(device).eval()  # type: ignore[arg-type]  # diffusers' @wraps(Module.to) hides the bound self


def vae_kwargs(vae: Autoencoder) -> dict[str, Any]:
    """The constructor kwargs of a VAE (its config without diffusers' private keys), JSON-ready."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vae.config.items() if not k.startswith("_")}

