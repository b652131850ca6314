"""The suite model and its variants resolved against its defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import Field, NonNegativeInt, field_validator

from bench.schema.base import KNOWN_METRICS, NAME_PATTERN, Strict, absolute_uri
from bench.schema.sections import (
    Dataset,
    Downstream,
    Evaluator,
    Fid,
    GeneratorSpec,
    MetricSpec,
    Resources,
    Segmenter,
    Tracking,
)
from bench.schema.tuning import Tune
from bench.schema.variants import CRFM, Matrix, ResolvedVariant, Sampling, Variant, expand_matrix, subset_name


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
    evaluator: Evaluator = Evaluator()
    downstream: Downstream = Downstream()
    sampling: Sampling = Sampling()
    crfm: CRFM = CRFM()
    variants: list[Variant] = []
    matrix: Matrix | None = None
    metrics: list[MetricSpec] = [MetricSpec(name=n) for n in KNOWN_METRICS]
    seeds: list[NonNegativeInt] = [0]
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
        """The MLflow tracking URI (default ``sqlite:///<workspace>/mlflow.db``), local paths made absolute.

        A relative ``sqlite:///runs/mlflow.db`` would name another store from another directory.
        """
        return absolute_uri(self.tracking.uri or f"sqlite:///{self.workspace / 'mlflow.db'}")

    @property
    def artifact_location(self) -> str:
        """The MLflow artifact root (default ``<workspace>/mlartifacts``; a local path is made absolute)."""
        return absolute_uri(self.tracking.artifacts or str(self.workspace / "mlartifacts"))

    @property
    def experiment(self) -> str:
        """The MLflow experiment name (``todsynth/<suite>`` by default)."""
        return self.tracking.experiment or f"todsynth/{self.name}"


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
