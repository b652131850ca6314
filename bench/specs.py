"""Typed stage specs: one frozen dataclass per stage, built by :mod:`bench.graph` from the suite.

A spec's fields are what its cache hash covers (:meth:`StageSpec.hashed`, the JSON form the engine hashes,
logs to the stage's MLflow run and writes to its cache marker), except ``runtime`` (device, launcher, a
resumable work dir, progress bars), which the engine fills in just before the stage runs: a CPU result is
reused on a GPU box and vice versa. Sampling and CRFM settings travel as the library's
:class:`~todsynth.sample.config.SamplerConfig`/:class:`~todsynth.sample.config.CRFMConfig` from the suite to
the sampler; their hashed form is the suite section's fields (:meth:`bench.schema.ConfigSection.values_of`).

``subset`` (a labelled-subset draw) is left out of the hashed form when None, so suites without
``dataset.subsets`` keep their hashes. :func:`spec_to_json`/:func:`spec_from_json` carry a spec to the
processes of a launched stage (:mod:`bench.launch`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from bench.schema import CRFM, FreeMask, GeneratorTrain, Procedural, Sampling, VaeTrain
from todsynth.sample.config import CRFMConfig, SamplerConfig

Launcher = Literal["inprocess", "accelerate", "torchrun"]
OMIT_NONE = {"omit_none": True}  # field metadata: left out of the hashed form when None


@dataclass(frozen=True)
class Runtime:
    """How a stage runs here (not hashed): device, launcher and GPU count, a resumable work dir, progress bars."""

    device: str = "cpu"
    launcher: Launcher = "inprocess"
    gpus: int = 1
    work_dir: str | None = None
    progress: bool = False


@dataclass(frozen=True)
class Subset:
    """A labelled-subset draw (``dataset.subsets``): size ``n``, ``seed`` and the draw rule's tag."""

    n: int
    seed: int
    rule: str


def _json(value: Any) -> Any:
    """A field value in the hashed (JSON) form."""
    if isinstance(value, SamplerConfig):
        return Sampling.values_of(value)
    if isinstance(value, CRFMConfig):
        return CRFM.values_of(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


@dataclass(frozen=True)
class StageSpec:
    """Base of the stage specs: the hashed form, and the nested types :func:`spec_from_json` rebuilds."""

    nested: ClassVar[dict[str, Any]] = {}  # field -> type built from its JSON mapping

    runtime: Runtime = field(default=Runtime(), kw_only=True, metadata={"hashed": False})

    def hashed(self) -> dict[str, Any]:
        """The fields the cache hash covers, JSON-safe, in declaration order (``runtime`` out; see OMIT_NONE)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata.get("hashed", True) or (value is None and f.metadata.get("omit_none")):
                continue
            out[f.name] = _json(value)
        return out

    def at(self, runtime: Runtime) -> StageSpec:
        """This spec with ``runtime`` (what the engine hands the stage function)."""
        return dataclasses.replace(self, runtime=runtime)


@dataclass(frozen=True)
class DataSpec(StageSpec):
    """``data``: procedural scenes (``procedural``) or a LoveDA root (``root``, ``on_bad_sample``)."""

    nested: ClassVar[dict[str, Any]] = {"procedural": Procedural}

    kind: Literal["procedural", "loveda"]
    domains: list[str]
    procedural: Procedural | None = field(default=None, metadata=OMIT_NONE)
    root: str | None = field(default=None, metadata=OMIT_NONE)
    on_bad_sample: Literal["error", "skip"] | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class PromptsSpec(StageSpec):
    """``prompts``: the preset's prompt-encoder config (``kind`` + widths) and the SD3 snapshot when it is SD3's."""

    text: dict[str, Any]
    sd3_dir: str | None


@dataclass(frozen=True)
class AutoencoderSpec(StageSpec):
    """``autoencoder``: the scratch VAE of a ``tiny`` preset, trained on the (labelled) training images."""

    nested: ClassVar[dict[str, Any]] = {"train": VaeTrain, "subset": Subset}

    preset: str
    overrides: dict[str, Any]
    preset_digest: str  # of the resolved preset (graph.preset_digest): a change to PRESETS re-keys the stage
    train: VaeTrain
    subset: Subset | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class GeneratorStageSpec(StageSpec):
    """``generator``: the mask-conditioned MM-DiT, from a preset (and SD3 weights) trained on the training pairs."""

    nested: ClassVar[dict[str, Any]] = {"train": GeneratorTrain, "subset": Subset}

    preset: str
    sd3_dir: str | None
    overrides: dict[str, Any]
    preset_digest: str  # of the resolved preset (graph.preset_digest): a change to PRESETS re-keys the stage
    train: GeneratorTrain
    subset: Subset | None = field(default=None, metadata=OMIT_NONE)
    init_from: str | None = field(default=None, metadata=OMIT_NONE)  # a saved generator the training starts from
    init_digest: str | None = field(default=None, metadata=OMIT_NONE)  # of its weights (graph.saved_weights_digest)
    # accelerate processes when more than one: train.batch_size is per process, so N of them train another model
    processes: int | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class SegmenterSpec(StageSpec):
    """``judge``/``evaluator`` trained here on the (labelled) training split."""

    nested: ClassVar[dict[str, Any]] = {"subset": Subset}

    model: str
    iters: int
    batch_size: int
    lr: float
    optimizer: Literal["sgd", "adamw"]
    seed: int
    crop_size: int | None
    subset: Subset | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class CheckpointSpec(StageSpec):
    """``judge``/``evaluator`` loaded from a user checkpoint (a pickle only with ``trust_checkpoint``)."""

    model: str
    checkpoint: str
    trust_checkpoint: bool
    digest: str | None = field(default=None, metadata=OMIT_NONE)  # of the file (graph.files_digest): a new one re-keys


@dataclass(frozen=True)
class FeaturesSpec(StageSpec):
    """``real_features``: FID/KID reference features of the real training images (Inception, or the evaluator)."""

    extractor: Literal["inception", "evaluator"]
    weights: str | None
    weights_digest: str | None = field(default=None, metadata=OMIT_NONE)  # of the Inception file (graph.files_digest)


@dataclass(frozen=True)
class SynthesizeSpec(StageSpec):
    """``synthesize[variant,seed]``: the sampler's and CRFM's configs (``crfm`` None = plain), seed, how many."""

    nested: ClassVar[dict[str, Any]] = {"sampling": SamplerConfig, "crfm": CRFMConfig, "subset": Subset}

    sampling: SamplerConfig
    crfm: CRFMConfig | None
    seed: int
    limit: int | None
    ratio: float
    copies: int
    subset: Subset | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class EvaluateSpec(StageSpec):
    """``evaluate[variant,seed]``: mask fidelity with the evaluator, FID/KID with this extractor."""

    extractor: Literal["inception", "evaluator"]


@dataclass(frozen=True)
class DownstreamSpec(SegmenterSpec):
    """``downstream[variant,seed]`` of the real-only baseline: train on real data, score on real Val.

    ``val_limit`` caps the Val images scored (None: all).
    """

    val_limit: int | None = field(kw_only=True)


# The images whose class-wise mean judge loss sets FreeMask's thresholds (todsynth.seg.freemask.filter_masks's
# ``reference``): the real training images, as FreeMask's release. In the keys, so that the earlier rule's stages
# (the synthetic set's own means) are not reused.
FREEMASK_REFERENCE = "real"


# How a downstream that adds images draws them (todsynth.seg.mmdata.RepeatFactorSampler: epochs, as real-only
# draws). In the keys, so that the stages of the earlier draws (i.i.d. with replacement) are not reused.
ADDED_SAMPLER = "repeat-factor-epochs"


@dataclass(frozen=True)
class AddingDownstreamSpec(DownstreamSpec):
    """A ``downstream`` that adds images to the real ones at ``ratio`` (synthetic:real), drawn by ``sampler``.

    ``sampler`` is ADDED_SAMPLER; None before those trainings drew in epochs.
    """

    ratio: float = field(kw_only=True)
    sampler: str | None = field(default=None, kw_only=True, metadata=OMIT_NONE)


@dataclass(frozen=True)
class MixedDownstreamSpec(AddingDownstreamSpec):
    """``downstream`` of a synthetic variant: real + synthetic at ``ratio``, FreeMask-filtered unless None."""

    nested: ClassVar[dict[str, Any]] = {"subset": Subset, "freemask": FreeMask}

    freemask: FreeMask | None = field(kw_only=True)
    # what sets FreeMask's thresholds (FREEMASK_REFERENCE); None before the real images did
    freemask_reference: str | None = field(default=None, kw_only=True, metadata=OMIT_NONE)


@dataclass(frozen=True)
class OracleDownstreamSpec(AddingDownstreamSpec):
    """``downstream`` of the oracle: real + ``held_out`` real training scenes outside the subset, at ``ratio``.

    ``held_out`` is the synthetic variants' image count (fewer when the split runs out); the scenes follow the
    labelled subset in its draw order (``todsynth.data.subset.held_out``).
    """

    held_out: int = field(kw_only=True)


@dataclass(frozen=True)
class RerenderDownstreamSpec(AddingDownstreamSpec):
    """``downstream`` of ``rerender``: real + the (limited) training masks' scenes painted anew, at ``ratio``.

    As many images as synthesis makes from those masks (copy ``r`` is appearance draw ``first_draw + r``,
    ``todsynth.data.procedural.rerender_scene``); procedural data only. ``first_draw`` comes from the suite seed
    (:func:`bench.graph.rerender_first_draw`): each seed paints its own images, as each seed synthesises its own.
    """

    limit: int | None = field(kw_only=True)
    first_draw: int = field(kw_only=True)


SPEC_TYPES: dict[str, type[StageSpec]] = {cls.__name__: cls for cls in (
    DataSpec, PromptsSpec, AutoencoderSpec, GeneratorStageSpec, SegmenterSpec, CheckpointSpec, FeaturesSpec,
    SynthesizeSpec, EvaluateSpec, DownstreamSpec, MixedDownstreamSpec, OracleDownstreamSpec, RerenderDownstreamSpec,
)}


def spec_to_json(spec: StageSpec) -> dict[str, Any]:
    """A spec with its runtime as JSON: ``{"type": ..., "fields": ..., "runtime": ...}``."""
    return {"type": type(spec).__name__, "fields": spec.hashed(), "runtime": dataclasses.asdict(spec.runtime)}


def spec_from_json(data: dict[str, Any]) -> StageSpec:
    """Inverse of :func:`spec_to_json`."""
    cls = SPEC_TYPES[data["type"]]
    values = dict(data["fields"])
    for name, typ in cls.nested.items():
        if values.get(name) is not None:
            values[name] = typ(**values[name])
    return cls(**values, runtime=Runtime(**data["runtime"]))
