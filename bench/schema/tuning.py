"""The suite's ``tune:`` section: search dimensions, objectives and constraints over the metric registry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from bench.schema.base import KNOWN_METRICS, Strict
from bench.schema.variants import section_field


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
    """A tuning constraint ``min <= metric <= max``.

    With ``relative_to: <variant>`` the bounds are offsets from that variant's value
    (``{metric: fid, relative_to: plain, max: 5}`` means FID <= FID(plain) + 5).
    """

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
    seed: NonNegativeInt = 0
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
            if section_field(key) is None:
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
