"""Variants and their settings.

The ``sampling:``/``crfm:`` sections generated from the library's configs, a variant's partial override, the
matrix, and the resolved variant (the library's configs, ready for a stage).
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, create_model, field_serializer, field_validator, model_validator

from bench.schema.base import NAME_PATTERN, Strict, first_error
from todsynth.sample.config import CRFMConfig, SamplerConfig


class ConfigSection(Strict):
    """A suite section generated from a library config dataclass (:func:`config_section`).

    As a suite default it holds every field; as a variant's override it is a partial mapping: only the keys
    the YAML gives are set (pydantic's ``model_fields_set`` is the explicit "unset" marker, so ``null`` is a
    value, e.g. ``clamp: null`` turns clamping off), and :meth:`apply` lays them over a config with
    :func:`dataclasses.replace`.
    """

    config_class: ClassVar[type[Any]]

    if TYPE_CHECKING:  # the fields come from the config (config_section)
        def __getattr__(self, name: str) -> Any: ...

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
    """The suite section of a library config: its dataclass fields (types, defaults) minus ``exclude``.

    ``name`` is the module attribute the section is bound to (so it pickles).
    Each given value is checked by the config's own ``field_problem`` and reported under its key
    (``variants[1].crfm.rectified_step: must be an int >= 0, got -1``): the rules are written once, there.
    """
    hints = typing.get_type_hints(config)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(config) if f.name not in exclude}

    def check(cls: type, value: Any, info: ValidationInfo) -> Any:
        if why := config.field_problem(info.field_name, value):
            raise ValueError(why)
        return value

    model: type[ConfigSection] = create_model(  # type: ignore[call-overload]
        name, __base__=ConfigSection, __doc__=doc, __module__=__name__,
        __validators__={"field_rules": field_validator(*fields)(check)}, **fields)
    model.config_class = config
    return model


# Which fields of the library configs a suite sets. Left out: the sampler's precision (a device setting, see
# resources), CRFM's ignore_index (the dataset's label, 255 for LoveDA), micro_batch and return_x0 (memory and
# debugging knobs that change no image).
if TYPE_CHECKING:  # built at run time from the configs' fields; to the type checker a section's fields are Any
    class Sampling(ConfigSection):
        """The ``sampling:`` section (SamplerConfig's fields)."""

    class CRFM(ConfigSection):
        """The ``crfm:`` section (CRFMConfig's fields)."""
else:
    Sampling = config_section("Sampling", SamplerConfig, exclude=("precision",), doc=(
        "Euler flow sampler (todsynth.sample.config.SamplerConfig); ``shift`` None = the preset's scheduler shift; "
        "guidance 1.0 = no CFG."))
    CRFM = config_section("CRFM", CRFMConfig, exclude=("ignore_index", "micro_batch", "return_x0"), doc=(
        "Control-rectify flow matching (todsynth.sample.config.CRFMConfig); ``rectified_step: 0`` is plain "
        "sampling."))
SECTIONS: dict[str, type[ConfigSection]] = {"sampling": Sampling, "crfm": CRFM}  # a variant's sections, by key


def section_field(key: str) -> tuple[str, type[ConfigSection], str] | None:
    """``"crfm.clamp"`` -> ``("crfm", CRFM, "clamp")``; None unless ``key`` names a field of a variant's section."""
    section, _, field = key.partition(".")
    model = SECTIONS.get(section)
    return (section, model, field) if model is not None and field in model.model_fields else None


Kind = Literal["baseline", "synthetic", "oracle", "rerender"]
CEILING_KINDS = ("oracle", "rerender")  # rows that measure what added data could be worth, not a method's result


class Variant(Strict):
    """One row of the comparison: ``baseline`` (real only), ``synthetic`` (real + generated) or a ceiling.

    The ceilings add as many images as a synthetic variant generates, in their place and at the same ratio:
    ``oracle`` (needs ``dataset.subsets``) held-out REAL training scenes (new layouts: what more labelled data adds);
    ``rerender`` (procedural data only) the training masks' own scenes painted anew by the procedural renderer, a
    sample of the true p(image | mask): what a perfect generator fed the same masks could add.
    """

    name: str = Field(pattern=NAME_PATTERN, max_length=80)
    kind: Kind = "synthetic"
    sampling: Sampling = Sampling()  # partial: only the keys given override
    crfm: CRFM = CRFM()

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
            if section_field(key) is None:
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


@dataclass(frozen=True)
class ResolvedVariant:
    """A variant: the suite's sampling/crfm defaults with its overrides applied, as the library's configs."""

    name: str
    kind: Kind
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
