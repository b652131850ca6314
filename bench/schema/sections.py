"""The suite's plain sections: tracking, data, generator, segmenters, downstream protocol, metrics, FID, resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from bench.schema.base import (
    ENV_INCEPTION,
    ENV_LOVEDA_ROOT,
    ENV_SD3_DIR,
    KNOWN_METRICS,
    Domain,
    PresetName,
    SegModelName,
    Strict,
    env_path,
)
from todsynth.seg.defaults import SEG_BATCH_SIZE, SEG_DEFAULT_LR, SEG_ITERS, SEG_MODEL, SEG_OPTIMIZER


class Tracking(Strict):
    """MLflow store; ``None`` means ``sqlite:///<workspace>/mlflow.db`` and ``<workspace>/mlartifacts``."""

    uri: str | None = None
    artifacts: str | None = None
    experiment: str | None = None


class Procedural(Strict):
    """Seeded procedural LoveDA-format scenes (CPU, no download)."""

    n_train: PositiveInt = 48
    n_val: PositiveInt = 16
    size: int = Field(64, ge=16, le=2048)
    seed: NonNegativeInt = 0


class Dataset(Strict):
    """Where the real data comes from; ``limit`` caps the training masks used for synthesis (smoke mode).

    ``val_limit`` caps the Val scenes that score the downstream models only; the judge's and evaluator's Val scores
    (``evaluator_real_miou``, the mask-fidelity ceiling) use all of Val.

    ``subsets`` (data-efficiency studies): labelled-subset sizes n. For each n, the generator (and its
    autoencoder), the judge, synthesis (from the subset's masks, then ``limit``), FreeMask and downstream
    training see only n training scenes, drawn by ``todsynth.data.subset.labelled_subset`` (nested and
    domain-balanced, seeded by ``subset_seed``); the evaluator, the FID reference features and Val stay shared.
    """

    kind: Literal["procedural", "loveda"] = "procedural"
    root: Path | None = None
    procedural: Procedural = Procedural()
    domains: list[Domain] = ["Urban", "Rural"]
    limit: PositiveInt | None = None
    val_limit: PositiveInt | None = None
    # A faulty sample (unreadable PNG, bad mask mode/values, size mismatch, unpaired file) of a loveda root:
    # "error" stops the run naming every file; "skip" drops it with a warning and counts it in results.json.
    on_bad_sample: Literal["error", "skip"] = "error"
    subsets: list[PositiveInt] | None = None
    subset_seed: NonNegativeInt = 0

    @field_validator("subsets")
    @classmethod
    def _subsets(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not v:
            raise ValueError("needs at least one size (or leave subsets out to use the whole training split)")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"duplicate size in {v}")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one of Urban, Rural")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate domain in {v}")
        return v

    @model_validator(mode="after")
    def _root_from_env(self) -> Dataset:
        if self.kind == "loveda":
            object.__setattr__(self, "root", env_path(self.root, ENV_LOVEDA_ROOT))
        elif self.root is not None:
            raise ValueError("dataset.root is only used with kind: loveda (procedural data lives in the workspace)")
        return self


class GeneratorTrain(Strict):
    """Generator (MM-DiT) training: ``todsynth.train.TrainConfig`` fields; None = the preset's default budget."""

    steps: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    grad_accum: PositiveInt | None = None
    lr: PositiveFloat | None = None
    weight_decay: NonNegativeFloat | None = None
    warmup_steps: NonNegativeInt | None = None
    max_grad_norm: PositiveFloat | None = None
    timestep_sampling: Literal["uniform", "logit_normal"] | None = None
    trainable: Literal["branches", "lora"] | None = None
    lora_rank: PositiveInt | None = None
    lora_alpha: PositiveFloat | None = None
    mask_init: Literal["fresh", "image"] | None = None
    caption_dropout: float | None = Field(None, ge=0.0, le=1.0)
    hflip: bool | None = None
    rot90: bool | None = None
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    gradient_checkpointing: bool | None = None
    cache_latents: bool | None = None
    checkpoint_every: NonNegativeInt | None = None
    keep_checkpoints: NonNegativeInt | None = None
    seed: NonNegativeInt = 0


class VaeTrain(Strict):
    """Scratch VAE training (``todsynth.train.train_vae``); None = the preset's ``vae_train`` budget."""

    steps: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: PositiveFloat | None = None
    kl_weight: NonNegativeFloat | None = None
    seed: NonNegativeInt = 0


# What a saved generator dir must hold for ``generator.init_from`` (todsynth.models.generator's CONFIG_FILE and
# TRANSFORMER_FILE, named here so that validating a suite does not import the models)
SAVED_GENERATOR_FILES = ("config.json", "transformer.safetensors")


def saved_generator_problem(path: Path) -> str | None:
    """Why ``path`` is not a saved generator dir (one of :data:`SAVED_GENERATOR_FILES` missing), or None."""
    if all((path / name).is_file() for name in SAVED_GENERATOR_FILES):
        return None
    return f"{path} holds no saved generator ({' and '.join(SAVED_GENERATOR_FILES)})"


class GeneratorSpec(Strict):
    """Generator preset; ``sd3_dir`` falls back to $TODSYNTH_SD3_DIR; ``overrides`` patch the preset dict.

    ``init_from``: a generator dir written by ``todsynth gen train`` (its ``OUT/generator``) whose transformer weights
    the generator stage starts from instead of the preset's (e.g. one pretrained without masks or prompts on unlabelled
    scenes: ``--mask-dropout 1 --caption-dropout 1``); the stage key carries a digest of its weights.
    """

    preset: PresetName = "tiny"
    sd3_dir: Path | None = None
    text_encoder: Literal["tiny", "sd3"] | None = None
    overrides: dict[str, Any] = {}
    init_from: Path | None = None
    train: GeneratorTrain = GeneratorTrain()
    vae_train: VaeTrain = VaeTrain()

    @field_validator("init_from")
    @classmethod
    def _abs(cls, v: Path | None) -> Path | None:
        return v.expanduser().absolute() if v is not None else None

    @model_validator(mode="after")
    def _resolve(self) -> GeneratorSpec:
        if self.text_encoder is None:
            object.__setattr__(self, "text_encoder", "tiny" if self.preset == "tiny" else "sd3")
        if self.preset != "tiny" or self.text_encoder == "sd3":
            object.__setattr__(self, "sd3_dir", env_path(self.sd3_dir, ENV_SD3_DIR))
        return self

    @property
    def scratch(self) -> bool:
        """True when the preset is built from config and trained here (needs the autoencoder stage)."""
        return self.preset == "tiny"


def _default_lr(data: Any) -> Any:
    """Fill a missing ``lr`` from the optimizer's :data:`SEG_DEFAULT_LR` (a model_validator's ``before`` step)."""
    if isinstance(data, dict) and "lr" not in data and (opt := data.get("optimizer", SEG_OPTIMIZER)) in SEG_DEFAULT_LR:
        return {**data, "lr": SEG_DEFAULT_LR[opt]}
    return data


class Segmenter(Strict):
    """A segmentation model trained on the real training set (or loaded from a user checkpoint).

    ``lr`` left out: :data:`SEG_DEFAULT_LR` of the optimizer (0.01 for SGD, 1e-3 for AdamW).
    """

    model: SegModelName = SEG_MODEL
    iters: PositiveInt = SEG_ITERS
    batch_size: PositiveInt = SEG_BATCH_SIZE
    lr: PositiveFloat = SEG_DEFAULT_LR[SEG_OPTIMIZER]
    optimizer: Literal["sgd", "adamw"] = SEG_OPTIMIZER
    seed: NonNegativeInt = 0
    crop_size: PositiveInt | None = None
    checkpoint: Path | None = None
    trust_checkpoint: bool = False

    _lr = model_validator(mode="before")(_default_lr)

    @field_validator("checkpoint")
    @classmethod
    def _abs(cls, v: Path | None) -> Path | None:
        return v.expanduser().absolute() if v is not None else None


class Evaluator(Segmenter):
    """The independent evaluator: a :class:`Segmenter` with its own defaults (another architecture, another seed).

    A partial ``evaluator:`` section fills in these, not the judge's.
    """

    model: SegModelName = "deeplabv3plus-r18"
    seed: NonNegativeInt = 1


class FreeMask(Strict):
    """FreeMask filtering (``todsynth.seg.freemask``).

    Synthetic pixels of class c whose judge loss exceeds ``margin`` x the class's mean loss become ignore;
    larger margins keep more pixels.
    """

    enabled: bool = False
    margin: PositiveFloat = 1.25


class Downstream(Strict):
    """Downstream protocol: train on real (+ synthetic), evaluate on real Val.

    ``ratio`` (synthetic:real) sets both how many images are synthesized per training mask
    (``round(ratio * n_masks)``) and the sampling weights that draw synthetic images ``ratio`` times as
    often as real ones (``todsynth.seg.downstream.downstream_items``). ``lr`` left out: :data:`SEG_DEFAULT_LR`.
    """

    model: SegModelName = "deeplabv3plus-r18"
    iters: PositiveInt = SEG_ITERS
    batch_size: PositiveInt = SEG_BATCH_SIZE
    lr: PositiveFloat = SEG_DEFAULT_LR[SEG_OPTIMIZER]
    optimizer: Literal["sgd", "adamw"] = SEG_OPTIMIZER
    seed: NonNegativeInt = 0
    crop_size: PositiveInt | None = None
    ratio: PositiveFloat = 3.0
    freemask: FreeMask = FreeMask()

    _lr = model_validator(mode="before")(_default_lr)


class MetricSpec(Strict):
    """A metric's direction (defaults to the known direction), recorded in results.json's ``metric_specs``.

    The list does not choose what is reported: results, the report and MLflow carry every metric the stages produce.
    """

    name: str
    higher_is_better: bool | None = None

    @model_validator(mode="after")
    def _known(self) -> MetricSpec:
        if self.name not in KNOWN_METRICS:
            raise ValueError(f"unknown metric {self.name!r}; known: {', '.join(KNOWN_METRICS)}")
        known = KNOWN_METRICS[self.name]
        if self.higher_is_better is None:
            object.__setattr__(self, "higher_is_better", known)
        elif self.higher_is_better != known:
            raise ValueError(f"{self.name} has higher_is_better={known}, not {self.higher_is_better}")
        return self


class Fid(Strict):
    """FID/KID feature extractor: ``auto`` = Inception when weights exist, else the evaluator (not comparable)."""

    extractor: Literal["auto", "inception", "evaluator"] = "auto"
    inception_weights: Path | None = None

    @model_validator(mode="after")
    def _env(self) -> Fid:
        object.__setattr__(self, "inception_weights", env_path(self.inception_weights, ENV_INCEPTION))
        return self


class Resources(Strict):
    """Where to run; ``gpus > 1`` launches generator/synthesis with accelerate and MMSeg with torchrun.

    ``jobs > 1`` runs up to that many independent stages at once, each in its own process with its share of the
    CPU cores (:mod:`bench.pool`); it changes how long a run takes, not what it computes, so the config hash
    leaves it out. ``device`` places prompt encoding, synthesis, features and scoring; the training stages
    (accelerate, MMEngine) take a visible GPU regardless (``CUDA_VISIBLE_DEVICES=`` keeps them on the CPU).
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: PositiveInt = 1
    jobs: PositiveInt = 1

    @model_validator(mode="after")
    def _cpu(self) -> Resources:
        if self.device == "cpu" and self.gpus > 1:
            raise ValueError(f"gpus: {self.gpus} needs device cuda or auto, not cpu")
        return self
