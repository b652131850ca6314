"""Suite schema: pydantic v2 models (``extra="forbid"`` everywhere) and cross-field checks.

A suite declares data, generator, judge, evaluator, downstream protocol, sampling variants, metrics,
seeds and an optional tuning space. :func:`check_suite` adds the checks pydantic cannot express on one
field (``rectified_step > num_inference_steps`` after merging a variant with the defaults, duplicate
names, judge == evaluator); :func:`check_runnable` adds the checks that need the files on disk
(``bench validate`` does not call it, ``bench run`` does, before creating anything).

Rooms: :mod:`~bench.schema.base` (vocabularies, the strict base, error reporting), :mod:`~bench.schema.sections`
(plain sections), :mod:`~bench.schema.variants` (``sampling:``/``crfm:`` generated from the library's configs,
overrides, matrix, resolved variants), :mod:`~bench.schema.tuning` (``tune:``), :mod:`~bench.schema.suite` (the
suite, :func:`resolve_variants`), :mod:`~bench.schema.checks`. The names below are the package's interface.
"""

from bench.schema.base import (
    ENV_INCEPTION,
    ENV_LOVEDA_ROOT,
    ENV_SD3_DIR,
    KNOWN_METRICS,
    NAME_PATTERN,
    Domain,
    PresetName,
    SegModelName,
    Strict,
    absolute_uri,
    describe_error,
    first_error,
    format_loc,
)
from bench.schema.checks import check_runnable, check_suite
from bench.schema.sections import (
    Dataset,
    Downstream,
    Evaluator,
    Fid,
    FreeMask,
    GeneratorSpec,
    GeneratorTrain,
    MetricSpec,
    Procedural,
    Resources,
    Segmenter,
    Tracking,
    VaeTrain,
)
from bench.schema.suite import Suite, resolve_variants
from bench.schema.tuning import Constraint, Objective, SearchDim, Tune
from bench.schema.variants import (
    CEILING_KINDS,
    CRFM,
    SECTIONS,
    ConfigSection,
    Matrix,
    ResolvedVariant,
    Sampling,
    Variant,
    config_section,
    expand_matrix,
    section_field,
    subset_name,
)

__all__ = [
    "CEILING_KINDS", "CRFM", "ENV_INCEPTION", "ENV_LOVEDA_ROOT", "ENV_SD3_DIR", "KNOWN_METRICS", "NAME_PATTERN", "ConfigSection",
    "Constraint", "Dataset", "Domain", "Downstream", "Fid", "FreeMask", "GeneratorSpec", "GeneratorTrain", "Matrix",
    "MetricSpec", "Objective", "PresetName", "Procedural", "ResolvedVariant", "Resources", "Sampling", "SearchDim",
    "Evaluator", "SECTIONS", "SegModelName", "Segmenter", "Strict", "Suite", "Tracking", "Tune", "VaeTrain", "Variant", "absolute_uri",
    "check_runnable", "check_suite", "config_section", "describe_error", "expand_matrix", "first_error",
    "format_loc", "resolve_variants", "section_field", "subset_name",
]
