"""``TrainConfig``: every setting of generator training, validated before any work."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from todsynth.errors import ConfigError

TimestepSampling = Literal["uniform", "logit_normal"]
Trainable = Literal["branches", "lora"]
MixedPrecision = Literal["no", "fp16", "bf16"]

# Fields that may differ between a run and its resumption (they do not change the weights).
RESUME_FREE_FIELDS = frozenset({"checkpoint_every", "keep_checkpoints", "log_every"})


# TrainConfig fields that name what a run starts from, not how long or how it trains: never a preset's budget
RUN_INPUTS = frozenset({"preset", "preset_overrides", "vae_dir", "init_from"})


@dataclass(frozen=True)
class TrainConfig:
    """Generator training settings (flow matching on the mask-conditioned MM-DiT).

    Args:
        preset: generator preset name (``todsynth.models.presets.PRESETS``); preset_overrides: deep-merged
            into it (e.g. ``{"source": "/models/sd3.5"}``).
        vae_dir: a VAE written by ``train_vae`` (required for scratch presets, whose VAE is not pretrained).
        steps: optimizer steps; batch_size: samples per step and process; grad_accum: micro-batches per step.
        lr, weight_decay, adam_betas, adam_eps: AdamW; warmup_steps: linear warm-up, then cosine to 0.
        max_grad_norm: gradient clipping (1.0 as in the release).
        timestep_sampling: ``uniform`` (release) or ``logit_normal`` (SD3 paper; logit_mean/logit_std).
        trainable: ``branches`` (image + mask streams fully trained, text stream frozen) or ``lora``
            (LoRA on the image stream's attention + the full mask stream); lora_rank, lora_alpha (None = rank).
        mask_init: None keeps the preset's ``mask_stream.init``; else ``fresh`` / ``image``.
        init_from: a generator dir written by ``save_generator`` whose transformer weights training starts from
            (``todsynth.models.generator.load_transformer_weights``; its architecture must be the preset's), e.g. one
            pretrained without masks or prompts on unlabelled scenes; None = the preset's own initial weights.
        caption_dropout: probability of replacing a sample's prompt by the empty prompt (for CFG); 1.0 trains every
            sample without its prompt.
        mask_dropout: probability of training a sample without its mask (for mask guidance,
            ``SamplerConfig.mask_guidance``). One uniform draw per sample decides both dropouts (prompt dropped
            below ``caption_dropout``, mask below ``mask_dropout``), so with equal values a sample loses both
            together: the unconditional sample that guidance contrasts with. Both at 1.0: unconditional training
            (pretraining on images without labels). Needs a generator without a mask token stream
            (``mask_stream.tokens: false``).
        hflip: flip image AND mask together with probability 0.5.
        rot90: also turn image AND mask by 0-3 quarter turns (uniform); with hflip, all 8 symmetries of a square.
            For nadir views, whose content has no up; with ``cache_latents`` it stores 4x the latents.
        ema_decay: keep an EMA of the trained weights and save it as the final generator (None = off).
        mixed_precision: accelerate's setting (``bf16``/``fp16`` on GPU).
        gradient_checkpointing: recompute blocks in backward.
        cache_latents: encode the dataset (every orientation in use) once with the frozen VAE.
        checkpoint_every: write ``checkpoint-<step>`` every K steps (0 = never); keep_checkpoints: how many.
        log_every: steps between log lines; seed: all training randomness.
    """

    preset: str = "tiny"
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    vae_dir: str | None = None
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    timestep_sampling: TimestepSampling = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    trainable: Trainable = "branches"
    lora_rank: int = 16
    lora_alpha: float | None = None
    mask_init: Literal["fresh", "image"] | None = None
    init_from: str | None = None
    caption_dropout: float = 0.0
    mask_dropout: float = 0.0
    hflip: bool = True
    rot90: bool = False
    ema_decay: float | None = None
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {rule}")

        for name in ("steps", "batch_size", "grad_accum", "lora_rank", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "must be an int >= 1")
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(name, "must be an int >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", "must be a finite number > 0")
        if not self.max_grad_norm > 0:
            raise bad("max_grad_norm", "must be > 0")
        for name in ("caption_dropout", "mask_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must be in [0, 1]")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in (0, 1) or None")
        choices = {
            "timestep_sampling": ("uniform", "logit_normal"),
            "trainable": ("branches", "lora"),
            "mask_init": (None, "fresh", "image"),
            "mixed_precision": ("no", "fp16", "bf16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {allowed}")
        if self.logit_std <= 0:
            raise bad("logit_std", "must be > 0")
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))

    @classmethod
    def from_preset(cls, preset: str = "tiny", **overrides: Any) -> TrainConfig:
        """The preset's default training budget with ``overrides`` on top.

        The budget is the preset's ``train`` with ``preset_overrides`` merged in, as the generator sees the preset.
        """
        from todsynth.models.presets import resolve_preset

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        budget = resolve_preset(preset, overrides.get("preset_overrides")).get("train") or {}
        unknown = sorted(set(budget) - known)
        if unknown:
            raise ConfigError(f"preset {preset!r}: unknown train key(s) {unknown}; known: {sorted(known)}")
        if inputs := sorted(set(budget) & RUN_INPUTS):  # the caller's to give; a budget value would be dropped
            raise ConfigError(f"preset {preset!r}: train key(s) {inputs} name what the run starts from (its preset, "
                              "VAE or weights), not its budget; give them to the run itself")
        values = {**budget, **overrides, "preset": preset}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    def resume_mismatch(self, saved: dict[str, Any]) -> list[str]:
        """Fields (other than logging/checkpoint cadence) whose value differs from a saved run's."""
        mine = self.to_dict()
        return sorted(k for k in mine if k not in RESUME_FREE_FIELDS and saved.get(k) != mine[k])
