"""Suite schema: pydantic v2 models (``extra="forbid"`` everywhere) and cross-field checks.

A suite declares data, generator, judge, evaluator, downstream protocol, sampling variants, metrics,
seeds and an optional tuning space. :func:`check_suite` adds the checks pydantic cannot express on one
field (``rectified_step > num_inference_steps`` after merging a variant with the defaults, duplicate
names, judge == evaluator); :func:`check_runnable` adds the checks that need the files on disk
(``bench validate`` does not call it, ``bench run`` does, before creating anything).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)

from bench.metrics import needs_downstream, scored
from todsynth.sample.config import CRFMConfig, SamplerConfig, rectified_step_problem

# Closed vocabularies (kept in step with todsynth.models.presets.PRESETS and todsynth.seg.models.SEG_MODELS;
# tests/test_bench_schema.py checks that every name here exists there).
PresetName = Literal["tiny", "sd3.5-medium"]
SegModelName = Literal["fcn-tiny", "dcnn", "fcn-r18", "deeplabv3plus-r18", "pspnet-r50", "deeplabv3plus-r50"]
Domain = Literal["Urban", "Rural"]

ENV_LOVEDA_ROOT = "TODSYNTH_LOVEDA_ROOT"
ENV_SD3_DIR = "TODSYNTH_SD3_DIR"
ENV_INCEPTION = "TODSYNTH_INCEPTION_WEIGHTS"

# Metric name -> higher_is_better. Direction drives tune and report.
KNOWN_METRICS: dict[str, bool] = scored()  # name -> higher_is_better, from the registry (bench.metrics)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    """Base: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def _env_path(value: Path | None, env: str) -> Path | None:
    """Explicit suite value, else the environment variable, else None (absolute when set)."""
    if value is None and os.environ.get(env):
        value = Path(os.environ[env])
    return value.expanduser().absolute() if value is not None else None


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
    seed: int = 0


class Dataset(Strict):
    """Where the real data comes from; ``limit`` caps the training masks used for synthesis (smoke mode).

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
    subset_seed: int = 0

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
            object.__setattr__(self, "root", _env_path(self.root, ENV_LOVEDA_ROOT))
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
    caption_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    hflip: bool | None = None
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    gradient_checkpointing: bool | None = None
    cache_latents: bool | None = None
    checkpoint_every: NonNegativeInt | None = None
    keep_checkpoints: NonNegativeInt | None = None
    seed: int = 0


class VaeTrain(Strict):
    """Scratch VAE training (``todsynth.train.train_vae``); None = the preset's ``vae_train`` budget."""

    steps: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: PositiveFloat | None = None
    kl_weight: NonNegativeFloat | None = None
    seed: int = 0


class GeneratorSpec(Strict):
    """Generator preset; ``sd3_dir`` falls back to $TODSYNTH_SD3_DIR; ``overrides`` patch the preset dict."""

    preset: PresetName = "tiny"
    sd3_dir: Path | None = None
    text_encoder: Literal["tiny", "sd3"] | None = None
    overrides: dict[str, Any] = {}
    train: GeneratorTrain = GeneratorTrain()
    vae_train: VaeTrain = VaeTrain()

    @model_validator(mode="after")
    def _resolve(self) -> GeneratorSpec:
        if self.text_encoder is None:
            object.__setattr__(self, "text_encoder", "tiny" if self.preset == "tiny" else "sd3")
        if self.preset != "tiny" or self.text_encoder == "sd3":
            object.__setattr__(self, "sd3_dir", _env_path(self.sd3_dir, ENV_SD3_DIR))
        return self

    @property
    def scratch(self) -> bool:
        """True when the preset is built from config and trained here (needs the autoencoder stage)."""
        return self.preset == "tiny"


class Segmenter(Strict):
    """A segmentation model trained on the real training set (or loaded from a user checkpoint)."""

    model: SegModelName = "fcn-r18"
    iters: PositiveInt = 200
    batch_size: PositiveInt = 4
    lr: PositiveFloat = 0.01
    optimizer: Literal["sgd", "adamw"] = "sgd"
    seed: int = 0
    crop_size: PositiveInt | None = None
    checkpoint: Path | None = None
    trust_checkpoint: bool = False

    @field_validator("checkpoint")
    @classmethod
    def _abs(cls, v: Path | None) -> Path | None:
        return v.expanduser().absolute() if v is not None else None


class FreeMask(Strict):
    """FreeMask filtering (``todsynth.seg.freemask``): synthetic pixels of class c whose judge loss exceeds
    ``margin`` x the class's mean loss become ignore; larger margins keep more pixels."""

    enabled: bool = False
    margin: PositiveFloat = 1.25


class Downstream(Strict):
    """Downstream protocol: train on real (+ synthetic), evaluate on real Val.

    ``ratio`` (synthetic:real) sets both how many images are synthesized per training mask
    (``round(ratio * n_masks)``) and the sampling weights that draw synthetic images ``ratio`` times as
    often as real ones (``todsynth.seg.downstream.downstream_items``).
    """

    model: SegModelName = "deeplabv3plus-r18"
    iters: PositiveInt = 200
    batch_size: PositiveInt = 4
    lr: PositiveFloat = 0.01
    optimizer: Literal["sgd", "adamw"] = "sgd"
    seed: int = 0
    crop_size: PositiveInt | None = None
    ratio: PositiveFloat = 3.0
    freemask: FreeMask = FreeMask()


class ConfigSection(Strict):
    """A suite section generated from a library config dataclass (:func:`config_section`).

    As a suite default it holds every field; as a variant's override it is a partial mapping: only the keys
    the YAML gives are set (pydantic's ``model_fields_set`` is the explicit "unset" marker, so ``null`` is a
    value, e.g. ``clamp: null`` turns clamping off), and :meth:`apply` lays them over a config with
    :func:`dataclasses.replace`.
    """

    config_class: ClassVar[type[Any]]

    def to_config(self) -> Any:
        """The library config with every field of this section (the rest at the library's defaults)."""
        return self.config_class(**{k: getattr(self, k) for k in type(self).model_fields})

    def overrides(self) -> dict[str, Any]:
        """The keys given, in field order: ``{"rectified_step": 0}`` for ``crfm: {rectified_step: 0}``."""
        return {k: getattr(self, k) for k in type(self).model_fields if k in self.model_fields_set}

    def apply(self, config: Any) -> Any:
        """``config`` with the keys given here replaced."""
        return dataclasses.replace(config, **self.overrides())

    @classmethod
    def values_of(cls, config: Any) -> dict[str, Any]:
        """A config's values of this section's fields, in field order (what is hashed, logged and reported)."""
        return {k: getattr(config, k) for k in cls.model_fields}


def config_section(name: str, config: type[Any], exclude: tuple[str, ...], doc: str) -> type[ConfigSection]:
    """The suite section ``name`` (the module attribute it is bound to, so it pickles) of a library config:
    its dataclass fields (types, defaults) minus ``exclude``.

    Each given value is checked by the config's own ``field_problem`` and reported under its key
    (``variants[1].crfm.rectified_step: must be an int >= 0, got -1``): the rules are written once, there.
    """
    hints = typing.get_type_hints(config)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(config) if f.name not in exclude}

    def check(cls: type, value: Any, info: ValidationInfo) -> Any:
        if why := config.field_problem(info.field_name, value):
            raise ValueError(why)
        return value

    model = create_model(  # type: ignore[call-overload]
        name, __base__=ConfigSection, __doc__=doc, __module__=__name__,
        __validators__={"field_rules": field_validator(*fields)(check)}, **fields)
    model.config_class = config
    return model


# Which fields of the library configs a suite sets. Left out: the sampler's precision (a device setting, see
# resources), CRFM's ignore_index (the dataset's label, 255 for LoveDA), micro_batch and return_x0 (memory and
# debugging knobs that change no image).
Sampling = config_section("Sampling", SamplerConfig, exclude=("precision",), doc=(
    "Euler flow sampler (todsynth.sample.config.SamplerConfig); ``shift`` None = the preset's scheduler shift; "
    "guidance 1.0 = no CFG."))
CRFM = config_section("CRFM", CRFMConfig, exclude=("ignore_index", "micro_batch", "return_x0"), doc=(
    "Control-rectify flow matching (todsynth.sample.config.CRFMConfig); ``rectified_step: 0`` is plain sampling."))


class Variant(Strict):
    """One row of the comparison: ``baseline`` (real data only) or ``synthetic`` (real + generated)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=80)
    kind: Literal["baseline", "synthetic"] = "synthetic"
    sampling: Sampling = Sampling()  # type: ignore[valid-type]  # partial: only the keys given override
    crfm: CRFM = CRFM()  # type: ignore[valid-type]

    @field_serializer("sampling", "crfm")
    def _given(self, section: ConfigSection) -> dict[str, Any]:
        """Dump an override as the keys given (the resolved suite and its hash show what the YAML said)."""
        return section.overrides()


class Matrix(Strict):
    """Cartesian product of ``axes`` over ``base``; names ``<base.name>-<abbr><value>`` unless ``names`` given.

    Axis keys are ``crfm.<field>`` or ``sampling.<field>``; the abbreviation is the initials of the
    field (``rectified_step`` -> ``rs``), so ``crfm.rectified_step: [0, 2]`` gives ``crfm-rs0``, ``crfm-rs2``.
    """

    base: Variant
    axes: dict[str, list[Any]]
    names: list[str] | None = None

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v:
            raise ValueError("needs at least one axis, e.g. {crfm.rectified_step: [0, 2, 4]}")
        for key, values in v.items():
            section, _, field = key.partition(".")
            model = {"crfm": CRFM, "sampling": Sampling}.get(section)
            if model is None or field not in model.model_fields:
                raise ValueError(f"axis {key!r} is not crfm.<field> or sampling.<field>")
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return v

    @model_validator(mode="after")
    def _kind(self) -> Matrix:
        if self.base.kind != "synthetic":
            raise ValueError("matrix.base must be a synthetic variant")
        n = 1
        for values in self.axes.values():
            n *= len(values)
        if self.names is not None and len(self.names) != n:
            raise ValueError(f"matrix.names has {len(self.names)} names for {n} combinations")
        return self


class MetricSpec(Strict):
    """A reported metric and its direction (defaults to the known direction)."""

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
        object.__setattr__(self, "inception_weights", _env_path(self.inception_weights, ENV_INCEPTION))
        return self


class Resources(Strict):
    """Where to run; ``gpus > 1`` launches generator/synthesis with accelerate and MMSeg with torchrun."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: PositiveInt = 1

    @model_validator(mode="after")
    def _cpu(self) -> Resources:
        if self.device == "cpu" and self.gpus > 1:
            raise ValueError(f"gpus: {self.gpus} needs device cuda or auto, not cpu")
        return self


class SearchDim(Strict):
    """One tuning dimension: int/float range (``step``, ``log``) or categorical ``choices`` (Optuna's suggest_*)."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> SearchDim:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty choices list")
            if any(c is not None and not isinstance(c, bool | int | float | str) for c in self.choices):
                raise ValueError(f"categorical choices must be scalars (None, bool, int, float, str), got {self.choices}")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"duplicate choice in {self.choices}")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("categorical takes only choices (no low/high/step/log)")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not choices (use type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} > high {self.high:g}")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError(f"int needs integer low/high/step, got low {self.low:g}, high {self.high:g}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got {self.low:g}")
        if self.log and self.step is not None and self.step != 1:
            raise ValueError("log and step cannot be combined")
        return self

    def probe_values(self) -> list[Any]:
        """Values that must all be valid for the field: the bounds and a midpoint, or every choice."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None  # checked in _shape
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high, (self.low + self.high) / 2]


class Objective(Strict):
    """A tuning objective: a known metric; ``direction`` defaults to the metric's ``higher_is_better``.

    Written as a mapping (``{metric: fid, direction: min}``) or as the bare metric name (``fid``).
    """

    metric: str
    direction: Literal["max", "min", "maximize", "minimize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        return {"metric": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known(self) -> Objective:
        if self.metric not in KNOWN_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(KNOWN_METRICS)}")
        want = "maximize" if KNOWN_METRICS[self.metric] else "minimize"
        given = {"max": "maximize", "min": "minimize"}.get(self.direction or want, self.direction or want)
        if given != want:
            raise ValueError(f"{self.metric} is {'higher' if want == 'maximize' else 'lower'}-is-better; "
                             f"direction must be {want[:3]}, not {self.direction}")
        object.__setattr__(self, "direction", want)
        return self

    @property
    def optuna_direction(self) -> Literal["maximize", "minimize"]:
        """``maximize`` or ``minimize`` (normalised)."""
        return "maximize" if self.direction == "maximize" else "minimize"


class Constraint(Strict):
    """A tuning constraint ``min <= metric <= max``; with ``relative_to: <variant>`` the bounds are offsets from
    that variant's value (``{metric: fid, relative_to: plain, max: 5}`` means FID <= FID(plain) + 5)."""

    metric: str
    min: float | None = None
    max: float | None = None
    relative_to: str | None = None

    @model_validator(mode="after")
    def _known(self) -> Constraint:
        if self.metric not in KNOWN_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(KNOWN_METRICS)}")
        if self.min is None and self.max is None:
            raise ValueError("needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} > max {self.max:g}")
        return self

    def bound_names(self) -> dict[str, str]:
        """``{"max": "fid<=plain+5", "min": ...}`` for the bounds given: keys of Optuna constraint values."""
        def bound(v: float) -> str:
            return f"{self.relative_to}{v:+g}" if self.relative_to else f"{v:g}"

        out = {}
        if self.min is not None:
            out["min"] = f"{self.metric}>={bound(self.min)}"
        if self.max is not None:
            out["max"] = f"{self.metric}<={bound(self.max)}"
        return out

    @property
    def name(self) -> str:
        """A readable name (``fid<=plain+5``; both bounds comma-separated)."""
        return ",".join(self.bound_names().values())


class Tune(Strict):
    """Optuna search over variant settings (keys ``crfm.<field>`` / ``sampling.<field>``), run by ``bench tune``.

    ``base_variant`` (default: the suite's sampling/crfm defaults) is what the searched keys override; its
    own values are enqueued as the first trial (``enqueue_default``). ``heartbeat_s``/``grace_s`` decide
    when a silent worker's trial counts as dead (FAIL, then retried up to ``max_retry`` times).
    """

    search_space: dict[str, SearchDim]
    objectives: list[Objective]
    constraints: list[Constraint] = []
    n_trials: PositiveInt = 20
    sampler: Literal["tpe", "gp", "random", "grid", "nsga2"] = "tpe"
    seed: int = 0
    storage: str | None = None
    base_variant: str | None = None
    timeout_s: PositiveFloat | None = None
    enqueue_default: bool = True
    heartbeat_s: PositiveInt = 30
    grace_s: PositiveInt | None = None
    max_retry: NonNegativeInt = 2

    @field_validator("search_space")
    @classmethod
    def _keys(cls, v: dict[str, SearchDim]) -> dict[str, SearchDim]:
        if not v:
            raise ValueError("needs at least one dimension")
        for key in v:
            section, _, field = key.partition(".")
            model = {"crfm": CRFM, "sampling": Sampling}.get(section)
            if model is None or field not in model.model_fields:
                raise ValueError(f"search dimension {key!r} is not crfm.<field> or sampling.<field>")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[Objective]) -> list[Objective]:
        if not v:
            raise ValueError("needs at least one objective")
        metrics = [o.metric for o in v]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"duplicate objective metric in {metrics}")
        return v

    @model_validator(mode="after")
    def _grace(self) -> Tune:
        if self.grace_s is not None and self.grace_s <= self.heartbeat_s:
            raise ValueError(f"grace_s {self.grace_s} must exceed heartbeat_s {self.heartbeat_s}")
        return self

    @property
    def grace_period_s(self) -> int:
        """Seconds without a heartbeat after which a RUNNING trial is stale (default 4 heartbeats)."""
        return self.grace_s if self.grace_s is not None else 4 * self.heartbeat_s


class Suite(Strict):
    """A declared benchmark suite (see suites/*.yaml)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=80)
    version: int | str = 1
    description: str = ""
    workspace: Path = Path("runs")
    tracking: Tracking = Tracking()
    dataset: Dataset = Dataset()
    generator: GeneratorSpec = GeneratorSpec()
    judge: Segmenter = Segmenter()
    evaluator: Segmenter = Segmenter(model="deeplabv3plus-r18", seed=1)
    downstream: Downstream = Downstream()
    sampling: Sampling = Sampling()  # type: ignore[valid-type]
    crfm: CRFM = CRFM()  # type: ignore[valid-type]
    variants: list[Variant] = []
    matrix: Matrix | None = None
    metrics: list[MetricSpec] = [MetricSpec(name=n) for n in KNOWN_METRICS]
    seeds: list[int] = [0]
    fid: Fid = Fid()
    resources: Resources = Resources()
    tune: Tune | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one seed")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate seed in {v}")
        return v

    @field_validator("workspace")
    @classmethod
    def _ws(cls, v: Path) -> Path:
        return v.expanduser().absolute()

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI (default ``sqlite:///<workspace>/mlflow.db``), with local paths made absolute: a
        relative ``sqlite:///runs/mlflow.db`` would name another store from another directory."""
        return absolute_uri(self.tracking.uri or f"sqlite:///{self.workspace / 'mlflow.db'}")

    @property
    def artifact_location(self) -> str:
        """The MLflow artifact root (default ``<workspace>/mlartifacts``; a local path is made absolute)."""
        return absolute_uri(self.tracking.artifacts or str(self.workspace / "mlartifacts"))

    @property
    def experiment(self) -> str:
        """The MLflow experiment name (``todsynth/<suite>`` by default)."""
        return self.tracking.experiment or f"todsynth/{self.name}"


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute (``sqlite:///``, ``file:`` or a bare path); servers kept."""
    for scheme in ("sqlite:///", "file://", "file:"):
        if uri.startswith(scheme):
            path = uri[len(scheme):]
            return uri if path.startswith("/") or path == ":memory:" else f"{scheme}{Path(path).absolute()}"
    return uri if "://" in uri else str(Path(uri).absolute())


@dataclass(frozen=True)
class ResolvedVariant:
    """A variant: the suite's sampling/crfm defaults with its overrides applied, as the library's configs."""

    name: str
    kind: Literal["baseline", "synthetic"]
    sampling: SamplerConfig
    crfm: CRFMConfig
    origin: str  # key path of its declaration, for error messages
    subset: int | None = None  # labelled-subset size n (dataset.subsets), None = the whole training split

    @property
    def declared(self) -> str:
        """The declared variant's name (``plain`` for ``plain@n16``)."""
        return self.name.partition("@")[0]


def subset_name(name: str, n: int) -> str:
    """A variant's name at labelled-subset size n: ``plain@n16`` (``@`` never occurs in a declared name)."""
    return f"{name}@n{n}"


def _abbr(field: str) -> str:
    """Initials of a snake_case field name (``rectified_step`` -> ``rs``)."""
    return "".join(part[0] for part in field.split("_") if part)


def expand_matrix(matrix: Matrix) -> list[tuple[str, Variant]]:
    """Matrix -> ``(origin, Variant)`` per combination, in axis order (cartesian product)."""
    keys = list(matrix.axes)
    out: list[tuple[str, Variant]] = []
    for i, combo in enumerate(itertools.product(*(matrix.axes[k] for k in keys))):
        data = matrix.base.model_dump(exclude_unset=True)  # the base's given keys; the axes add theirs
        parts = [matrix.base.name]
        for key, value in zip(keys, combo, strict=True):
            section, _, field = key.partition(".")
            data.setdefault(section, {})[field] = value
            parts.append(f"{_abbr(field)}{value}")
        data["name"] = matrix.names[i] if matrix.names else "-".join(str(p) for p in parts)
        origin = f"matrix[{data['name']}]"
        try:
            out.append((origin, Variant.model_validate(data)))
        except Exception as exc:  # pydantic ValidationError: re-raise with the matrix key path
            raise ValueError(f"{origin}: {first_error(exc)}") from None
    return out


def describe_error(e: Mapping[str, Any]) -> str:
    """One pydantic error as ``key.path: message (got value)``; the value is left out where the message has it."""
    msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    quiet = e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) or ", got " in msg
    return f"{format_loc(e['loc'])}: {msg}" + ("" if quiet else f" (got {got!r})")


def first_error(exc: Exception) -> str:
    """A pydantic error's first problem (:func:`describe_error`); other errors as their text."""
    errors = getattr(exc, "errors", None)
    return describe_error(errors()[0]) if callable(errors) else str(exc)


def format_loc(loc: tuple[Any, ...]) -> str:
    """Pydantic location tuple -> ``variants[2].crfm.rectified_step``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<suite>"


def resolve_variants(suite: Suite, per_subset: bool = True) -> list[ResolvedVariant]:
    """Declared variants then matrix rows, each merged with the suite defaults.

    With ``dataset.subsets`` (and ``per_subset``), every variant once per size n, grouped by n in the declared
    order of the sizes: ``real-only@n16, plain@n16, ..., real-only@n48, ...``.
    """
    declared = [(f"variants[{i}]", v) for i, v in enumerate(suite.variants)]
    if suite.matrix is not None:
        declared += expand_matrix(suite.matrix)
    resolved = [
        ResolvedVariant(
            name=v.name,
            kind=v.kind,
            sampling=v.sampling.apply(suite.sampling.to_config()),
            crfm=v.crfm.apply(suite.crfm.to_config()),
            origin=origin,
        )
        for origin, v in declared
    ]
    if not per_subset or suite.dataset.subsets is None:
        return resolved
    return [dataclasses.replace(v, name=subset_name(v.name, n), origin=f"{v.origin}@n{n}", subset=n)
            for n in suite.dataset.subsets for v in resolved]


def check_suite(suite: Suite) -> list[str]:
    """Cross-field problems, each prefixed with its key path; empty when the suite is consistent."""
    problems: list[str] = []
    try:
        variants = resolve_variants(suite, per_subset=False)
    except ValueError as exc:
        return [str(exc)]
    if not variants:
        problems.append("variants: the suite declares no variant (add `variants:` or `matrix:`)")
    seen: dict[str, str] = {}
    baselines = []
    for v in variants:
        if v.name in seen:
            problems.append(f"{v.origin}.name: duplicate variant name {v.name!r} (first at {seen[v.name]})")
        seen.setdefault(v.name, v.origin)
        if v.kind == "baseline":
            baselines.append(v.origin)
            continue
        why = rectified_step_problem(v.crfm.rectified_step, v.sampling.num_inference_steps,
                                     "sampling.num_inference_steps")
        if why:
            problems.append(f"{v.origin}.crfm.rectified_step: {why}")
    for origin in baselines[1:]:
        problems.append(f"{origin}: a second baseline variant (real-only training is one row; remove it)")
    for i, v in enumerate(suite.variants):
        if v.kind == "baseline" and (v.sampling.overrides() or v.crfm.overrides()):
            problems.append(f"variants[{i}]: a baseline variant takes no sampling/crfm settings")
    same_ckpt = suite.judge.checkpoint is not None and suite.judge.checkpoint == suite.evaluator.checkpoint
    same_train = (
        suite.judge.checkpoint is None
        and suite.evaluator.checkpoint is None
        and suite.judge.model_dump() == suite.evaluator.model_dump()
    )
    if same_ckpt or same_train:
        problems.append(
            "evaluator: identical to judge; mask fidelity must be scored by an independent model "
            "(change evaluator.seed or evaluator.model)"
        )
    problems += _subset_problems(suite)
    if suite.tune is not None:
        problems += _tune_problems(suite.tune, variants, suite)
    problems += _preset_problems(suite.generator)
    return problems


def _subset_problems(suite: Suite) -> list[str]:
    """``dataset.subsets`` checks: sizes the procedural training split can hold; no tuning over several sizes."""
    ds = suite.dataset
    if ds.subsets is None:
        return []
    problems = []
    if ds.kind == "procedural" and max(ds.subsets) > ds.procedural.n_train:
        problems.append(f"dataset.subsets: {max(ds.subsets)} > dataset.procedural.n_train {ds.procedural.n_train} "
                        "(subsets are drawn from the training scenes)")
    if suite.judge.checkpoint is not None:
        problems.append("judge.checkpoint: with dataset.subsets the judge is trained on each labelled subset; "
                        "remove the checkpoint")
    if suite.tune is not None:
        problems.append("tune: not supported together with dataset.subsets (tune in a suite without subsets, "
                        "then use the tuned settings as a variant here)")
    return problems


def _tune_problems(tune: Tune, variants: list[ResolvedVariant], suite: Suite) -> list[str]:
    """``tune:`` checks that need the rest of the suite: base variant, field types of each dimension,
    ``rectified_step`` against the step count, constraint references, grid-sampler discreteness."""
    problems: list[str] = []
    by_name = {v.name: v for v in variants}
    base_steps = suite.sampling.num_inference_steps
    if tune.base_variant is not None:
        base = by_name.get(tune.base_variant)
        if base is None:
            problems.append(f"tune.base_variant: {tune.base_variant!r} is not a variant ({', '.join(sorted(by_name))})")
        elif base.kind != "synthetic":
            problems.append(f"tune.base_variant: {tune.base_variant!r} is a baseline; name a synthetic variant")
        else:
            base_steps = base.sampling.num_inference_steps
    for key, dim in tune.search_space.items():
        section, _, field = key.partition(".")
        model = {"crfm": CRFM, "sampling": Sampling}[section]
        for value in dim.probe_values():
            try:
                model.model_validate({field: value})
            except Exception as exc:  # pydantic ValidationError
                problems.append(f"tune.search_space.{key}: value {value!r} is not a valid {key} ({first_error(exc)})")
                break
        if tune.sampler == "grid" and dim.type == "float" and dim.step is None:
            problems.append(f"tune.search_space.{key}: the grid sampler needs a step (or type: categorical)")
    steps_dim = tune.search_space.get("sampling.num_inference_steps")
    if steps_dim is not None:
        values = steps_dim.probe_values()
        base_steps = int(min(values))
    rs = tune.search_space.get("crfm.rectified_step")
    if rs is not None:
        top = max(v for v in rs.probe_values() if isinstance(v, int | float))
        why = rectified_step_problem(int(top), base_steps, "sampling.num_inference_steps")
        if why:
            what = "high" if rs.type != "categorical" else "choices"
            problems.append(f"tune.search_space.crfm.rectified_step.{what}: {why} "
                            "(rectified steps cannot exceed the sampling steps)")
    for i, c in enumerate(tune.constraints):
        if c.relative_to is None:
            continue
        ref = by_name.get(c.relative_to)
        if ref is None:
            problems.append(f"tune.constraints[{i}].relative_to: {c.relative_to!r} is not a variant "
                            f"({', '.join(sorted(by_name))})")
        elif ref.kind == "baseline" and not needs_downstream(c.metric):
            problems.append(f"tune.constraints[{i}].relative_to: baseline {c.relative_to!r} has no {c.metric} "
                            "(only downstream_* metrics)")
    return problems


def _preset_problems(gen: GeneratorSpec) -> list[str]:
    """Preset overrides the library refuses (unknown keys), named under ``generator.overrides``."""
    from todsynth.errors import ConfigError
    from todsynth.models.presets import resolve_preset

    if "source" in gen.overrides:
        return ["generator.overrides.source: set generator.sd3_dir (or $TODSYNTH_SD3_DIR) instead"]
    try:
        preset = resolve_preset(gen.preset, gen.overrides)
    except ConfigError as exc:
        return [f"generator.overrides: {exc}"]
    kind = (preset.get("text") or {}).get("kind")
    if kind is not None and gen.text_encoder != kind:
        return [f"generator.text_encoder: {gen.text_encoder} does not match preset {gen.preset}'s text encoder {kind} "
                "(the transformer's text widths come from the preset)"]
    return []


def check_runnable(suite: Suite) -> list[str]:
    """Problems that only matter when running: local data/weights that must exist (one per path)."""
    problems: list[str] = []
    if suite.dataset.kind == "loveda":
        root = suite.dataset.root
        if root is None:
            problems.append(
                f"dataset.root: not set; put the LoveDA root (holding Train/ and Val/) in the suite "
                f"or export {ENV_LOVEDA_ROOT}=/path/to/LoveDA"
            )
        elif not (root / "Train").is_dir() or not (root / "Val").is_dir():
            problems.append(
                f"dataset.root: {root} has no Train/ and Val/ folders; download LoveDA "
                f"(zenodo.org/record/5706578) there, or set dataset.root / {ENV_LOVEDA_ROOT}"
            )
    gen = suite.generator
    if gen.preset != "tiny" or gen.text_encoder == "sd3":
        if gen.sd3_dir is None:
            problems.append(
                f"generator.sd3_dir: not set; point it (or {ENV_SD3_DIR}) at a local "
                "stabilityai/stable-diffusion-3.5-medium snapshot"
            )
        elif not (gen.sd3_dir / "model_index.json").is_file():
            problems.append(
                f"generator.sd3_dir: {gen.sd3_dir} holds no model_index.json; download "
                f"stabilityai/stable-diffusion-3.5-medium there, or set generator.sd3_dir / {ENV_SD3_DIR}"
            )
    for role in ("judge", "evaluator"):
        seg: Segmenter = getattr(suite, role)
        if seg.checkpoint is not None and not seg.checkpoint.is_file():
            problems.append(f"{role}.checkpoint: {seg.checkpoint} does not exist; fix the path or remove the key to train one")
    if suite.fid.extractor == "inception":
        w = suite.fid.inception_weights
        if w is None or not w.is_file():
            problems.append(
                f"fid.inception_weights: {w or 'not set'} is not a file; put the pt_inception-2015-12-05 weights "
                f"there (fid.inception_weights or {ENV_INCEPTION}), or use fid.extractor: auto"
            )
    return problems
