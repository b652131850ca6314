"""The search space and what a trial is.

Optuna distributions and samplers, the trial's variant and stages, its suggested parameters, and its constraint
values.

Pure functions over the suite's ``tune:`` section (no storage, no MLflow); Optuna is imported inside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from bench.metrics import needs_downstream
from bench.schema import (
    SECTIONS,
    ResolvedVariant,
    SearchDim,
    Suite,
    Tune,
    first_error,
    resolve_variants,
)
from todsynth.errors import ConfigError, StageError
from todsynth.sample.config import rectified_step_problem


def tune_spec(suite: Suite) -> Tune:
    """The suite's ``tune:`` section, or a ConfigError naming the fix."""
    if suite.tune is None:
        raise ConfigError(f"suite {suite.name!r} has no `tune:` section; add tune.search_space and tune.objectives")
    return suite.tune


def base_variant(suite: Suite) -> ResolvedVariant:
    """The variant a trial's parameters override: ``tune.base_variant``, else the suite's sampling/crfm defaults."""
    tune = tune_spec(suite)
    if tune.base_variant is not None:
        for v in resolve_variants(suite):
            if v.name == tune.base_variant:
                return v
        raise ConfigError(f"tune.base_variant: {tune.base_variant!r} is not a variant of suite {suite.name!r}")
    return ResolvedVariant(name="tune-base", kind="synthetic", sampling=suite.sampling.to_config(),
                           crfm=suite.crfm.to_config(), origin="suite defaults")


def distributions(tune: Tune) -> dict[str, Any]:
    """Search space -> Optuna distributions, in declaration order."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, dim in tune.search_space.items():
        match dim.type:
            case "categorical":
                out[key] = CategoricalDistribution(list(dim.choices or []))
            case "int":
                out[key] = IntDistribution(int(dim.low or 0), int(dim.high or 0), log=dim.log, step=int(dim.step or 1))
            case "float":
                out[key] = FloatDistribution(float(dim.low or 0.0), float(dim.high or 0.0), log=dim.log, step=dim.step)
    return out


def grid_values(dim: SearchDim, key: str = "?") -> list[Any]:
    """Every value of a discrete dimension (the grid sampler's axis)."""
    if dim.choices is not None:
        return list(dim.choices)
    if dim.step is None and dim.type == "float":
        raise ConfigError(f"tune.search_space.{key}: the grid sampler needs a step (or type: categorical)")
    low, high, step = float(dim.low or 0), float(dim.high or 0), float(dim.step or 1)
    n = int(math.floor((high - low) / step + 1e-9)) + 1
    values = [low + i * step for i in range(n)]
    return [int(round(v)) for v in values] if dim.type == "int" else values


def grid_size(tune: Tune) -> int:
    """Number of points of the grid sampler's grid (the most trials a grid study can have)."""
    return math.prod(len(grid_values(d, k)) for k, d in tune.search_space.items())


def make_sampler(name: str, tune: Tune, seed: int) -> Any:
    """An Optuna sampler by name (``tpe`` multivariate with constant liar, Optuna 5's defaults)."""
    import optuna

    match name:
        case "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        case "gp":
            return optuna.samplers.GPSampler(seed=seed)
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        case "grid":
            return optuna.samplers.GridSampler({k: grid_values(d, k) for k, d in tune.search_space.items()}, seed=seed)
    raise ConfigError(f"--sampler {name!r}: choose tpe, gp, random, grid or nsga2")


def default_params(suite: Suite) -> dict[str, Any]:
    """The base variant's own values of the searched keys that lie inside the space (the first trial)."""
    tune = tune_spec(suite)
    base = base_variant(suite)
    out: dict[str, Any] = {}
    for key, dist in distributions(tune).items():
        section, _, name = key.partition(".")
        value = getattr(getattr(base, section), name)
        try:
            if dist._contains(dist.to_internal_repr(value)):
                out[key] = value
        except (ValueError, TypeError):
            continue
    return out


def suggest(trial: Any, tune: Tune) -> dict[str, Any]:
    """The trial's value of every dimension (enqueued and retried trials return their fixed values)."""
    out: dict[str, Any] = {}
    for key, dim in tune.search_space.items():
        match dim.type:
            case "categorical":
                out[key] = trial.suggest_categorical(key, list(dim.choices or []))
            case "int":
                out[key] = trial.suggest_int(key, int(dim.low or 0), int(dim.high or 0), step=int(dim.step or 1),
                                             log=dim.log)
            case "float":
                out[key] = trial.suggest_float(key, float(dim.low or 0), float(dim.high or 0), step=dim.step,
                                               log=dim.log)
    return out


def trial_variant(suite: Suite, params: Mapping[str, Any], name: str) -> ResolvedVariant:
    """The base variant with ``params`` (``crfm.<field>``/``sampling.<field>``) applied, validated."""
    base = base_variant(suite)
    given: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key, value in params.items():
        section, _, fname = key.partition(".")
        given[section][fname] = value
    checked = {}
    for section, model in SECTIONS.items():
        try:  # the trial's values, checked like a variant's override, laid over the base variant's configs
            checked[section] = model.model_validate(given[section])
        except ValueError as exc:  # pydantic's ValidationError
            raise ConfigError(f"{name}: {section}.{first_error(exc)}") from None
    variant = ResolvedVariant(name=name, kind="synthetic", sampling=checked["sampling"].apply(base.sampling),
                              crfm=checked["crfm"].apply(base.crfm), origin=f"tune {name}")
    why = rectified_step_problem(variant.crfm.rectified_step, variant.sampling.num_inference_steps,
                                 "sampling.num_inference_steps")
    if why:
        raise ConfigError(f"{name}: crfm.rectified_step {why}")
    return variant


def trial_stages(tune: Tune) -> tuple[str, ...]:
    """Stages a trial runs: synthesize and evaluate, plus downstream when an objective/constraint needs it."""
    metrics = [o.metric for o in tune.objectives] + [c.metric for c in tune.constraints]
    return ("synthesize", "evaluate") + (("downstream",) if any(needs_downstream(m) for m in metrics) else ())


def metric_value(metrics: Mapping[str, Any], metric: str, where: str) -> float:
    """``metrics[metric]`` as a float; a StageError naming ``where`` when the stages produced no number for it."""
    value = metrics.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(float(value)):
        raise StageError(f"{where}: the stages produced no numeric {metric} (got {value!r})")
    return float(value)


def constraint_values(tune: Tune, metrics: Mapping[str, Any], reference: Mapping[str, Mapping[str, float]]
                      ) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0), one per bound, keyed ``fid<=plain+5``."""
    out: dict[str, float] = {}
    for c in tune.constraints:
        value = metric_value(metrics, c.metric, f"constraint {c.name}")
        ref = reference[c.relative_to][c.metric] if c.relative_to else 0.0
        names = c.bound_names()
        if c.max is not None:
            out[names["max"]] = value - (ref + c.max)
        if c.min is not None:
            out[names["min"]] = (ref + c.min) - value
    return out


def reference_metrics(tune: Tune) -> dict[str, set[str]]:
    """Variant name -> the metrics that constraints read from it (``relative_to``): what the study keeps of them."""
    wanted: dict[str, set[str]] = {}
    for c in tune.constraints:
        if c.relative_to is not None:
            wanted.setdefault(c.relative_to, set()).add(c.metric)
    return wanted


def gain_baseline(suite: Suite) -> ResolvedVariant | None:
    """The baseline a trial's downstream gain is over: the suite's baseline variant on the trials' labelled subset.

    None when trials stop before downstream (no gain to read) or the suite has no such baseline. Its downstream mIoU
    is a study reference (:func:`bench.tune.session.Session.reference`), so every trial's MLflow run carries
    ``real_only_miou`` and ``downstream_gain`` as a ``bench run`` variant run does.
    """
    if "downstream" not in trial_stages(tune_spec(suite)):
        return None
    subset = base_variant(suite).subset
    return next((v for v in resolve_variants(suite) if v.kind == "baseline" and v.subset == subset), None)


def real_only_miou(suite: Suite, reference: Mapping[str, Mapping[str, float]]) -> float | None:
    """The downstream mIoU of the trials' baseline (:func:`gain_baseline`) in a study's references, or None."""
    baseline = gain_baseline(suite)
    return None if baseline is None else reference.get(baseline.name, {}).get("downstream_miou")


def reference_stages(variant: ResolvedVariant, metrics: Iterable[str]) -> tuple[str, ...]:
    """Stages giving a constraint's reference variant its ``metrics`` (a baseline or ceiling has only downstream)."""
    if variant.kind != "synthetic":
        return ("downstream",)
    return ("synthesize", "evaluate") + (("downstream",) if any(needs_downstream(m) for m in metrics) else ())
