"""The generator bundle (mask-conditioned MM-DiT + VAE + flow settings): build, save, load.

Saved layout (``save_generator``): ``config.json`` (the resolved preset and what was saved),
``transformer.safetensors`` (MaskMMDiT state dict; for a pretrained source without the frozen text
stream, which is rebuilt from the base directory) and, for scratch presets, ``vae.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

from todsynth.errors import ConfigError, WeightsNotFoundError
from todsynth.files import read_json, read_safetensors
from todsynth.models.io import atomic_dir, save_tensors
from todsynth.models.mmdit import MaskMMDiT, is_text_stream
from todsynth.models.presets import SD35_DOWNLOAD_HINT, is_scratch, mask_encoding, mask_stream, noise_offset
from todsynth.models.vae import (
    Autoencoder,
    build_vae,
    encode_latents,
    load_vae,
    mask_to_grey,
    onehot_mask_latents,
    vae_kwargs,
    vae_scale_factor,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TRANSFORMER_FILE = "transformer.safetensors"
VAE_FILE = "vae.safetensors"


@dataclass
class Generator:
    """A mask-conditioned generator ready to train or sample.

    Attributes:
        transformer: the MaskMMDiT (velocity model).
        vae: AutoencoderKL or SpaceToDepthAutoencoder; latents are normalised by ``todsynth.models.vae``.
        shift: SD3 timestep shift of the flow schedule (3.0 for SD3.5).
        num_train_timesteps: timestep scale (1000); model timesteps are ``sigma * num_train_timesteps``.
        num_classes: classes of the mask (7 for LoveDA); image_size: pixels (square).
        config: the resolved preset this generator was built from.
    """

    transformer: MaskMMDiT
    vae: Autoencoder
    shift: float
    num_train_timesteps: int
    num_classes: int
    image_size: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (the autoencoder's downsampling)."""
        return vae_scale_factor(self.vae)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of one image's latents."""
        s = self.image_size // self.vae_scale_factor
        return (int(self.vae.config["latent_channels"]), s, s)

    @property
    def device(self) -> torch.device:
        """Device of the transformer's weights."""
        return self.transformer.device

    @property
    def noise_offset(self) -> float:
        """Std of the per-image constants added to the Gaussian noise (:func:`draw_noise`); 0: none."""
        return noise_offset(self.config)

    @property
    def noise_groups(self) -> int:
        """Channel groups that share one noise offset (:func:`draw_noise`).

        The image's colours for the pixel shuffle (its latent channels are colour-major blocks of ``factor**2`` pixel
        positions: one offset per position painted a ``factor``-pixel grid on the tiny preset's samples), else one
        group per latent channel.
        """
        if self.vae.config.get("kind") == "space_to_depth":
            return int(self.vae.config["in_channels"])
        return int(self.vae.config["latent_channels"])

    @property
    def mask_encoding(self) -> str:
        """How masks enter the model: ``grey`` (the paper's grey image through the VAE) or ``onehot``."""
        return mask_encoding(self.config)

    @torch.no_grad()
    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Reduced label map long (B,H,W) -> mask latents (B,c,h,w) on the latents' grid.

        ``grey``: the grey image (``mask_to_grey``) through the frozen VAE, c = the latent channels. ``onehot``:
        one channel per class plus one for ignore (no-data), 0/1, each latent cell's f x f pixels stacked
        (``pixel_unshuffle`` by the VAE factor f), c = (num_classes + 1) * f * f.
        """
        if mask.ndim != 3 or tuple(mask.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"mask must be (B,{self.image_size},{self.image_size}) for this generator, got {tuple(mask.shape)}"
            )
        mask = mask.to(self.vae.device)
        if self.mask_encoding == "onehot":
            return onehot_mask_latents(mask, self.num_classes, self.vae_scale_factor)
        grey = mask_to_grey(mask, self.num_classes)
        return encode_latents(self.vae, grey)

    @torch.no_grad()
    def encode_images(self, images_01: torch.Tensor) -> torch.Tensor:
        """Images float (B,3,H,W) in [0,1] -> normalised latents (B,c,h,w) (frozen VAE)."""
        return encode_latents(self.vae, images_01)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Generator:
        """Move transformer and VAE (in place) and return self."""
        kw: dict[str, Any] = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        self.transformer.to(**kw)
        self.vae.to(**kw)
        return self


def draw_noise(shape: Sequence[int], generator: torch.Generator, offset: float = 0.0,
               groups: int | None = None) -> torch.Tensor:
    """Flow-matching noise of ``shape`` (..., c, h, w), float32 on the generator's device.

    Standard normal, plus, when ``offset > 0``, normal constants scaled by ``offset`` ("offset noise": it gives the
    noise a share of each image's mean, which a mean colour can then follow), drawn after the standard part from the
    same ``generator``: one per leading index and channel group, the c channels split into ``groups`` contiguous
    blocks (None: one per channel). With ``offset == 0`` nothing more is drawn, so the noise is exactly
    ``torch.randn(shape, generator=generator)``.
    """
    shape = tuple(int(d) for d in shape)
    noise = torch.randn(shape, generator=generator, device=generator.device)
    if offset > 0:
        c = shape[-3]
        g = c if groups is None else groups
        if g < 1 or c % g:
            raise ValueError(f"{c} channels do not split into {g} noise-offset groups")
        const = torch.randn((*shape[:-3], g, 1, 1), generator=generator, device=generator.device)
        noise = noise + offset * const.repeat_interleave(c // g, dim=-3)
    return noise


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed module initialisation without touching the caller's global RNG (forked and restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _subdir(source: Path, section: Mapping[str, Any], what: str) -> str:
    """The sub-folder of a local SD3.5 dir for ``what``, checked to hold a config.json."""
    sub = str(section.get("subfolder", what))
    if not (source / sub / "config.json").is_file() and not (source / sub / "scheduler_config.json").is_file():
        raise WeightsNotFoundError(
            f"SD3.5 {what} not found: {source / sub} (needs config.json and weights); {SD35_DOWNLOAD_HINT}"
        )
    return sub


def _check_shapes(transformer: SD3Transformer2DModel, vae: Autoencoder, image_size: int) -> None:
    """Image size, VAE factor, patch size and channels must agree (ConfigError naming the values)."""
    cfg = transformer.config
    f = vae_scale_factor(vae)
    if image_size % (f * cfg["patch_size"]):
        raise ConfigError(
            f"image_size={image_size} must be divisible by vae factor {f} x patch_size {cfg['patch_size']}"
        )
    grid = image_size // f // cfg["patch_size"]
    if cfg["pos_embed_max_size"] is not None and grid > cfg["pos_embed_max_size"]:
        raise ConfigError(f"image_size={image_size} gives {grid} patches a side > pos_embed_max_size={cfg['pos_embed_max_size']}")
    if vae.config["latent_channels"] != cfg["in_channels"]:
        raise ConfigError(
            f"vae latent_channels={vae.config['latent_channels']} != transformer in_channels={cfg['in_channels']}"
        )


def build_generator(preset: Mapping[str, Any]) -> Generator:
    """Build the generator a resolved preset describes (scratch: seeded random init; else local SD3.5 dir).

    Raises:
        WeightsNotFoundError: the local SD3.5 directory or one of its sub-folders is missing.
        ConfigError: inconsistent sizes (image size, VAE factor, patch size, channels).
    """
    preset = dict(preset)
    seed = int(preset.get("seed", 0))
    stream = mask_stream(preset)
    init, hint, tokens = stream["init"], bool(stream["hint"]), bool(stream["tokens"])
    encoding = mask_encoding(preset)
    prediction = str(preset.get("prediction", "velocity"))
    if is_scratch(preset):
        with seeded_init(seed):
            transformer = SD3Transformer2DModel(**preset["transformer"])
            vae = build_vae(preset["vae"])
        sched = dict(preset["scheduler"])
        shift, n_train = float(sched["shift"]), int(sched["num_train_timesteps"])
    else:
        source = Path(str(preset["source"])).expanduser()
        if not source.is_dir():
            raise WeightsNotFoundError(f"SD3.5 directory not found: {source}; {SD35_DOWNLOAD_HINT}")
        sub_t = _subdir(source, preset.get("transformer", {}), "transformer")
        sub_v = _subdir(source, preset.get("vae", {}), "vae")
        sub_s = _subdir(source, preset.get("scheduler", {}), "scheduler")
        transformer = SD3Transformer2DModel.from_pretrained(source, subfolder=sub_t, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(source, subfolder=sub_v, local_files_only=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder=sub_s, local_files_only=True)
        shift, n_train = float(scheduler.config.shift), int(scheduler.config.num_train_timesteps)
    if preset.get("vae_path"):
        vae = load_vae(preset["vae_path"])
    _check_shapes(transformer, vae, int(preset["image_size"]))
    with seeded_init(seed + 1):
        f = vae_scale_factor(vae)
        mask_channels = (int(preset["num_classes"]) + 1) * f * f if encoding == "onehot" else None
        model = MaskMMDiT(transformer, mask_init=init, mask_hint=hint, mask_tokens=tokens, prediction=prediction,  # type: ignore[arg-type]
                          num_train_timesteps=n_train, mask_channels=mask_channels)
    vae.requires_grad_(False).eval()
    return Generator(
        transformer=model,
        vae=vae,
        shift=shift,
        num_train_timesteps=n_train,
        num_classes=int(preset["num_classes"]),
        image_size=int(preset["image_size"]),
        config=preset,
    )


def _has_adapters(model: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def save_generator(gen: Generator, out_dir: str | Path) -> Path:
    """Write the generator to ``out_dir`` atomically (temp dir, then rename); returns ``out_dir``.

    Scratch presets are saved whole (transformer + VAE). For a pretrained source only what todsynth
    trains is saved (everything but the frozen text stream; the VAE is the base one), and
    ``load_generator`` rebuilds the rest from the base directory.
    """
    if _has_adapters(gen.transformer):
        raise ValueError("the transformer holds unmerged LoRA adapters; merge them first (todsynth.train.merge_lora)")
    config = dict(gen.config)
    scratch = is_scratch(config)
    state = gen.transformer.state_dict()
    if not scratch:
        state = {k: v for k, v in state.items() if not is_text_stream(k)}
    if scratch:
        config["vae"] = vae_kwargs(gen.vae)
        config["vae_path"] = None
    meta = {
        "format_version": FORMAT_VERSION,
        "preset": config,
        "transformer_saved": "full" if scratch else "without_text_stream",
        "vae_saved": scratch,
        "shift": gen.shift,
        "num_train_timesteps": gen.num_train_timesteps,
    }
    with atomic_dir(out_dir) as tmp:
        save_tensors(state, tmp / TRANSFORMER_FILE)
        if scratch:
            save_tensors(gen.vae.state_dict(), tmp / VAE_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return Path(out_dir)


def saved_generator_meta(gen_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of a :func:`save_generator` dir, checked for its format and keys.

    Raises:
        WeightsNotFoundError: ``gen_dir`` lacks ``config.json`` or ``transformer.safetensors``.
        ConfigError: an unknown format version, or a config that ``save_generator`` did not write.
    """
    cfg_path = gen_dir / CONFIG_FILE
    if not cfg_path.is_file() or not (gen_dir / TRANSFORMER_FILE).is_file():
        raise WeightsNotFoundError(
            f"no saved generator in {gen_dir} (needs {CONFIG_FILE} and {TRANSFORMER_FILE}); "
            "train one with `todsynth gen train`"
        )
    meta = read_json(cfg_path)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else meta
        raise ConfigError(f"{cfg_path}: format_version {found!r}, expected {FORMAT_VERSION}")
    lacking = [k for k in ("preset", "transformer_saved", "vae_saved") if k not in meta]
    if lacking or not isinstance(meta["preset"], dict):
        raise ConfigError(f"{cfg_path} lacks {lacking or ['a preset mapping']}: not a config written by save_generator")
    return meta


def _load_transformer(gen: Generator, gen_dir: Path, meta: Mapping[str, Any]) -> None:
    """``gen_dir``'s transformer weights into ``gen.transformer`` (a save without the text stream keeps the base one)."""
    state = read_safetensors(gen_dir / TRANSFORMER_FILE)
    try:
        missing, unexpected = gen.transformer.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # mis-shaped tensors
        raise ConfigError(f"{gen_dir / TRANSFORMER_FILE} does not match the preset's model: "
                          f"{str(exc).splitlines()[-1].strip()}") from exc
    if meta["transformer_saved"] != "full":
        missing = [k for k in missing if not is_text_stream(k)]
    if missing or unexpected:
        raise ConfigError(
            f"{gen_dir / TRANSFORMER_FILE} does not match the preset's model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )


def load_transformer_weights(gen: Generator, gen_dir: str | Path) -> Generator:
    """Start ``gen``'s transformer from the weights of a :func:`save_generator` dir; returns ``gen``.

    What ``TrainConfig.init_from`` does: fine-tune a generator trained before (e.g. pretrained without masks or
    prompts on unlabelled scenes). Only the transformer is read; ``gen`` keeps its own autoencoder and scheduler.

    Raises:
        WeightsNotFoundError: ``gen_dir`` holds no saved generator.
        ConfigError: its format is unknown, or its weights do not fit ``gen``'s architecture (the file is named).
    """
    gen_dir = Path(gen_dir)
    _load_transformer(gen, gen_dir, saved_generator_meta(gen_dir))
    return gen


def load_generator(gen_dir: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Rebuild a generator written by :func:`save_generator` (safetensors only, no pickle)."""
    gen_dir = Path(gen_dir)
    meta = saved_generator_meta(gen_dir)
    try:
        gen = build_generator(meta["preset"])
    except (KeyError, TypeError, ValueError) as exc:  # a damaged preset; a missing SD3.5 dir raises its own error
        raise ConfigError(f"{gen_dir / CONFIG_FILE}: its preset does not build a generator "
                          f"({type(exc).__name__}: {exc})") from exc
    _load_transformer(gen, gen_dir, meta)
    if meta["vae_saved"]:
        try:
            gen.vae.load_state_dict(read_safetensors(gen_dir / VAE_FILE))
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            raise ConfigError(f"{gen_dir / VAE_FILE} does not match the preset's autoencoder: "
                              f"{str(exc).splitlines()[0]}") from exc
    return gen.to(device)
