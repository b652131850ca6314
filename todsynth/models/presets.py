"""Generator presets as data: a scratch ``tiny`` model for CPU and SD3.5-medium from a local directory.

A preset is a plain dict; ``build_generator`` reads it the same way for every preset (no per-preset
code path). Keys:
    source: ``"scratch"`` (random init from ``transformer``/``vae`` kwargs, seeded by ``seed``) or
        the path of a local SD3.5 directory (``transformer/``, ``vae/``, ``scheduler/`` sub-folders,
        as published by Stability AI; loaded with ``local_files_only=True``).
    image_size, num_classes, seed.
    transformer: ``SD3Transformer2DModel`` kwargs (scratch) or ``{"subfolder": "transformer"}``
        (pretrained: the directory's own config.json is authoritative, since weights must match it).
    mask_stream: ``{"init": "fresh" | "image", "hint": bool, "tokens": bool, "encoding": "grey" | "onehot"}`` (see
        ``MaskMMDiT``; a key left out takes :data:`MASK_STREAM_DEFAULTS`, read through :func:`mask_stream`).
    prediction: ``"velocity"`` (SD3) or ``"sample"`` (the network predicts x0; ``MaskMMDiT`` returns velocity).
    vae: ``AutoencoderKL`` kwargs (optionally ``kind: autoencoder_kl``) or ``{"kind": "space_to_depth",
        "factor": f}`` (scratch; ``build_vae``) or
        ``{"subfolder": "vae"}``; ``vae_path``: a directory
        written by ``train_vae``/``save_vae`` that replaces the random scratch VAE.
    scheduler: ``{"shift", "num_train_timesteps"}`` (scratch) or ``{"subfolder": "scheduler"}``.
    text: prompt encoder kind and widths (``todsynth.text.build_prompt_encoder``).
    vae_train, train: default training budgets (``train_vae`` kwargs, ``TrainConfig`` fields).
    noise_offset (optional; :data:`PRESET_DEFAULTS`, read through :func:`noise_offset`): the standard deviation of
        the per-image constants added to the Gaussian noise, one per channel group (``Generator.noise_groups``: the
        pixel shuffle's colours, else each latent channel), in training and sampling alike ("offset noise"). 0 is
        SD3's plain Gaussian noise.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Mapping
from typing import Any

from todsynth.errors import ConfigError

# Facts of the published SD3.5-medium transformer config (METHOD.md "Generator"); used to build the
# model on the meta device for parameter counts and as documentation of what a local dir must hold.
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}

# Facts of the published SD3.5-medium VAE config (16 latent channels, 8x downsampling, scaling/shift from
# METHOD.md); with SD35_MEDIUM_TRANSFORMER it builds the full-size model without the checkpoint (bench perf).
SD35_MEDIUM_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

# The tiny preset's former scratch VAE (4x down, 4 latent channels; trained by the autoencoder stage). A suite can
# still choose it (generator.overrides: {vae: <this dict>, transformer: {in_channels: 4, out_channels: 4,
# patch_size: 2, sample_size: 64}}: its own ``kind`` replaces the preset's vae section whole); it caps fidelity at
# this scale (see the tiny preset's "vae" comment).
TINY_SCRATCH_VAE: dict[str, Any] = {
    "kind": "autoencoder_kl",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": False,
}

# Preset overrides that put the tiny preset back on TINY_SCRATCH_VAE latents (4 channels, 16x16, patch 2).
TINY_SCRATCH_VAE_OVERRIDES: dict[str, Any] = {
    "vae": TINY_SCRATCH_VAE,
    "transformer": {"in_channels": 4, "out_channels": 4, "patch_size": 2, "sample_size": 64},
}

SD35_DOWNLOAD_HINT = (
    "download the gated repo stabilityai/stable-diffusion-3.5-medium (accept its licence on the Hub) on a "
    "connected machine, e.g. `huggingface-cli download stabilityai/stable-diffusion-3.5-medium --local-dir DIR`, "
    "copy DIR here and set the preset's source to it (--source DIR / preset override source: DIR)"
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "source": "scratch",
        "seed": 0,
        "image_size": 64,
        "num_classes": 7,
        "transformer": {
            # 16x16 latent grid, patch 1: a token covers 4x4 pixels (the old scratch VAE + patch 2 gave 8x8, wider
            # than the scenes' 2-3 px roads). sample_size sets PatchEmbed's base_size (32 = pos_embed_max_size):
            # the sincos positions of neighbouring patches are 1 unit apart, which made the image <-> mask
            # routing in joint attention train visibly faster than 1/4 apart.
            "sample_size": 32,
            "patch_size": 1,
            "in_channels": 48,
            "out_channels": 48,
            "num_layers": 3,
            "attention_head_dim": 16,
            "num_attention_heads": 4,
            "joint_attention_dim": 64,
            "caption_projection_dim": 64,
            "pos_embed_max_size": 32,
            "pooled_projection_dim": 64,
            "dual_attention_layers": [0],
            "qk_norm": "rms_norm",
        },
        # "image" (copy the image stream) beat "fresh" on the scratch tiny model: held-out loss gap with true vs
        # shuffled masks 3.1% vs 0.7% after 800 steps (12.8% vs 4.5% at sigma 0.95). SD3.5 keeps the paper's fresh.
        # "hint": the mask latents are also added to the image tokens (MaskMMDiT.mask_hint). Without it, 1500 steps
        # gave samples that ignore their masks (dcnn evaluator mIoU on 16 Val masks: true 0.031, shuffled 0.031);
        # with it 0.105 vs 0.039 (docs/measurements.md "The tiny preset").
        # "tokens": False drops the mask token stream and leaves the mask to the hint: the same fidelity per step (1500
        # steps: 0.186 vs 0.183, shuffled 0.059 vs 0.054) at 1.8x the steps per second (20.8 vs 11.4 it/s on 2 quiet
        # cores), so the same minutes buy twice the steps (docs/measurements.md "The tiny preset"). SD3.5 keeps the mask stream.
        # "encoding": "onehot" gives the hint one channel per class (+ no-data) for each pixel of a token instead of the
        # paper's grey image through the autoencoder: a linear hint can then look up each class's appearance, where a
        # grey level had to be decoded by the blocks first. Same budget (3000 steps), 64 held-out Val masks: evaluator
        # mIoU 0.420 vs 0.255 (0.59 vs 0.36 of its ceiling), shuffled 0.088 vs 0.085 (docs/measurements.md "The tiny preset").
        "mask_stream": {"init": "image", "hint": True, "tokens": False, "encoding": "onehot"},
        # The network predicts clean pixels (x0) and MaskMMDiT turns them into a velocity: with logit-normal
        # timesteps, 0.178 vs 0.053 (velocity head: 0.105 vs 0.039); each 4x4-pixel token is a 48-dim vector,
        # close to the model's width of 64, the regime where predicting x0 learns faster.
        "prediction": "sample",
        # A fixed, lossless pixel shuffle (4x4 pixels -> 48 channels) in place of a scratch VAE: the VAE trained
        # for 1500 steps capped the evaluator's mIoU on reconstructions at 0.15 (real images 0.39); this one
        # reconstructs exactly (cap 1.0) and costs no training. Latent scaling/shift are fitted by the
        # autoencoder stage like a VAE's.
        "vae": {"kind": "space_to_depth", "in_channels": 3, "factor": 4, "sample_size": 64,
                "scaling_factor": 1.0, "shift_factor": 0.0},
        "vae_path": None,
        # No timestep shift (SD3.5's 3.0 is for 1024 px; SD3 used 1.0 at its 256 px base resolution, and these
        # images are 64 px). The shift moves training and sampling towards high noise, where a 64 px scene's layout
        # is settled early; at 3.0 the fine textures (barren grain, crop rows) got few training draws and few Euler
        # steps. 3000 training steps, 64 held-out Val masks, guidance 1.5: evaluator mIoU 0.623 vs 0.487 (0.88 vs 0.69
        # of its ceiling), shuffled 0.100 vs 0.090 (docs/measurements.md "The tiny preset").
        "scheduler": {"shift": 1.0, "num_train_timesteps": 1000},
        "text": {"kind": "tiny", "seed": 0, "seq_len": 16, "joint_dim": 64, "pooled_dim": 64},
        # Budgets (todsynth bench check-conditioning, 400 procedural 64 px scenes, 2 CPU cores, 13-20 it/s): 2000
        # steps, for make demo's 10 minutes. Shift 1, onehot, guidance 1.5, 64 held-out masks: 0.72 of the evaluator's
        # ceiling at 1500 steps, 0.83 at 2000, 0.88 at 3000 (with shift 3 and the grey mask: 0.38 at 3000, 0.48 at 4500).
        # vae_train only applies to a trainable VAE override (TINY_SCRATCH_VAE); the pixel shuffle fits its scaling.
        "vae_train": {"steps": 1500, "batch_size": 8, "lr": 2e-3},
        "train": {
            "steps": 2000,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_steps": 30,
            "weight_decay": 0.0,
            "caption_dropout": 0.1,
            # The mask is dropped with the prompt (one draw): for mask guidance (sampling guidance_scale > 1 with
            # mask_guidance). Onehot, 64 Val masks: unguided 0.405, guidance 1.5 0.487, 2.0 0.460 (no dropout: 0.420).
            "mask_dropout": 0.1,
            "timestep_sampling": "logit_normal",
            "checkpoint_every": 500,
        },
    },
    "sd3.5-medium": {
        "source": "models/stable-diffusion-3.5-medium",
        "seed": 0,
        "image_size": 512,
        "num_classes": 7,
        "transformer": {"subfolder": "transformer"},
        "mask_stream": {"init": "fresh"},
        "prediction": "velocity",  # SD3's velocity head (todsynth.models.mmdit.MaskMMDiT)
        "vae": {"subfolder": "vae"},
        "vae_path": None,
        "scheduler": {"subfolder": "scheduler"},
        "text": {"kind": "sd3", "t5_max_length": 256},
        "vae_train": None,
        # Release defaults (METHOD.md): lr 1e-4, 20k steps, 512 px, batch 1 x accum 2 per GPU, bf16.
        "train": {
            "steps": 20000,
            "batch_size": 1,
            "grad_accum": 2,
            "lr": 1e-4,
            "warmup_steps": 500,
            "mixed_precision": "bf16",
            "gradient_checkpointing": True,
            "checkpoint_every": 1000,
        },
    },
}


# What build_generator reads (MaskMMDiT's options) and the value of a key a preset leaves out: SD3.5's MM-DiT
# (a fresh mask token stream fed the grey mask's latents, no hint).
MASK_STREAM_DEFAULTS: dict[str, Any] = {"init": "fresh", "hint": False, "tokens": True, "encoding": "grey"}
MASK_STREAM_KEYS = frozenset(MASK_STREAM_DEFAULTS)

# What a scratch preset's ``vae_train`` budget may name (``todsynth.train.vae.train_preset_vae`` reads these).
VAE_TRAIN_KEYS = frozenset({"steps", "batch_size", "lr", "kl_weight", "seed"})


# Top-level keys a preset may leave out, with the value that stands for them (an override may still set them).
PRESET_DEFAULTS: dict[str, Any] = {"noise_offset": 0.0}


def noise_offset(preset: Mapping[str, Any]) -> float:
    """The preset's ``noise_offset`` (:data:`PRESET_DEFAULTS` when left out).

    Raises:
        ConfigError: not a finite number >= 0.
    """
    value = preset.get("noise_offset", PRESET_DEFAULTS["noise_offset"])
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) < float("inf"):
        raise ConfigError(f"preset noise_offset must be a number >= 0, got {value!r}")
    return float(value)


def mask_stream(preset: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's ``mask_stream`` section with :data:`MASK_STREAM_DEFAULTS` for the keys it leaves out."""
    return {**MASK_STREAM_DEFAULTS, **(preset.get("mask_stream") or {})}


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``base`` with ``overrides`` merged in: nested dicts merge, other values replace.

    A nested dict that names another ``kind`` than the one it overrides (``vae: {kind: autoencoder_kl, ...}``
    over the tiny preset's ``space_to_depth``) replaces it whole: the two kinds take different keys.
    """
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        other_kind = isinstance(value, Mapping) and "kind" in value and value.get("kind") != (
            out[key].get("kind") if isinstance(out.get(key), Mapping) else None)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and not other_kind:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _kind_problem(key: str, base: Any, value: Any) -> str | None:
    """What ``value`` must be to replace ``base`` (None when it may): kinds, and counts > 0 but for seeds."""
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(base, Mapping):
        ok, want = isinstance(value, Mapping), "a mapping"
    elif isinstance(base, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(base, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or leaf == "seed")
        want = "an integer" if leaf == "seed" else "a positive integer"
    elif isinstance(base, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        want = "a finite number"
    elif isinstance(base, str):
        ok, want = isinstance(value, str | os.PathLike), "a string"
    elif isinstance(base, list | tuple):
        ok, want = isinstance(value, list | tuple), "a list"
    else:
        return None
    return None if ok else f"{key} must be {want}, got {value!r}"


# Sections whose keys an override may set to other kinds or to 0: ``train`` is TrainConfig's to check.
_UNCHECKED_SECTIONS = frozenset({"train"})


def _check_types(name: str, preset: Mapping[str, Any]) -> None:
    """An override keeps the kind of value it replaces, at the top level and inside a section.

    A section stays a mapping, a count a positive int, a name a string, a switch a bool. Inside a section
    (``transformer.num_layers``, ``mask_stream.hint``) null stays allowed: the library's default (``qk_norm: null``).

    Raises ConfigError naming the key (``text: 5`` would otherwise fail deep inside a stage, or as a bare TypeError;
    ``mask_stream.hint: "no"`` would have been true).
    """
    for key, base in PRESETS[name].items():
        value = preset.get(key)
        if isinstance(base, bool) or base is None:
            continue
        problem = _kind_problem(key, base, value)
        if problem is None and isinstance(value, Mapping) and key not in _UNCHECKED_SECTIONS:
            inner = {**MASK_STREAM_DEFAULTS, **base} if key == "mask_stream" else base
            found = (_kind_problem(f"{key}.{k}", b, value[k]) for k, b in inner.items()
                     if b is not None and value.get(k) is not None)
            problem = next((p for p in found if p), None)
        if problem is not None:
            raise ConfigError(f"preset {name!r}: {problem}")


def resolve_preset(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The preset ``name`` deep-merged with ``overrides``.

    Unknown top-level, ``mask_stream`` and ``vae_train`` keys, and values of another kind than the preset's, are refused.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown generator preset {name!r}; choose one of {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PRESETS[name]) - set(PRESET_DEFAULTS))
    if unknown:
        raise ConfigError(f"preset {name!r}: unknown override key(s) {unknown}; "
                          f"known keys: {sorted(set(PRESETS[name]) | set(PRESET_DEFAULTS))}")
    preset = deep_merge(PRESETS[name], overrides)
    _check_types(name, preset)
    for section, known in (("mask_stream", MASK_STREAM_KEYS), ("vae_train", VAE_TRAIN_KEYS)):
        stray = sorted(set(preset.get(section) or {}) - known)
        if stray:
            raise ConfigError(f"preset {name!r}: unknown {section} key(s) {stray}; known keys: {sorted(known)}")
    _check_model_keys(name, preset, overrides)
    _check_choices(name, preset)
    noise_offset(preset)
    preset["name"] = name
    return preset


def _check_model_keys(name: str, preset: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """A scratch preset's ``transformer``/``vae`` keys are arguments of the class they build (else ConfigError).

    Checked only when an override adds a key the preset does not set (the classes' imports are slow). Before, an
    unknown key passed ``bench validate`` and failed inside the autoencoder or generator stage.
    """
    if not is_scratch(preset):
        return
    for section in ("transformer", "vae"):
        added = set(overrides.get(section) or {}) - set(PRESETS[name].get(section) or {})
        if not added:
            continue
        if section == "transformer":
            from diffusers import SD3Transformer2DModel

            known = set(inspect.signature(SD3Transformer2DModel.__init__).parameters)
        else:
            from todsynth.models.vae import vae_argument_names

            known = vae_argument_names(preset["vae"].get("kind"))
        if stray := sorted(added - known - {"self", "kind"}):
            raise ConfigError(f"preset {name!r}: unknown {section} key(s) {stray}")


MASK_ENCODINGS = ("grey", "onehot")
PREDICTIONS = ("velocity", "sample")  # todsynth.models.mmdit.MaskMMDiT's


def mask_encoding(preset: Mapping[str, Any]) -> str:
    """The preset's ``mask_stream.encoding`` (default ``grey``), checked (ConfigError naming the value)."""
    stream = mask_stream(preset)
    encoding = str(stream["encoding"])
    if encoding not in MASK_ENCODINGS:
        raise ConfigError(f"mask_stream.encoding={encoding!r} must be one of {MASK_ENCODINGS}")
    if encoding == "onehot" and bool(stream["tokens"]):
        raise ConfigError("mask_stream.encoding='onehot' needs mask_stream.tokens: false (the mask token stream "
                          "embeds VAE latents with the image stream's patch embedding)")
    return encoding


def _check_choices(name: str, preset: Mapping[str, Any]) -> None:
    """Refuse values the generator cannot pick: ``prediction`` and ``mask_stream.encoding`` (ConfigError).

    Checked when the preset resolves, so ``bench validate`` names them; before, only building the generator did.
    """
    if (prediction := preset.get("prediction", "velocity")) not in PREDICTIONS:
        raise ConfigError(f"preset {name!r}: prediction={prediction!r} must be one of {PREDICTIONS}")
    try:
        mask_encoding(preset)
    except ConfigError as exc:
        raise ConfigError(f"preset {name!r}: {exc}") from None


def is_scratch(preset: Mapping[str, Any]) -> bool:
    """True for presets built from configs (random init), False for a local pretrained directory."""
    return preset.get("source") == "scratch"
