"""What every suite section shares.

The closed vocabularies, the strict base model, environment-variable paths, and how a pydantic error is
reported (``key.path: message``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bench.metrics import scored

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
    """Base: unknown keys are errors, and so are nan and inf in every number.

    (A learning rate of .inf trained NaN weights and exited 0; a ratio of .inf crashed the graph.)
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def env_path(value: Path | None, env: str) -> Path | None:
    """Explicit suite value, else the environment variable, else None (absolute when set)."""
    if value is None and os.environ.get(env):
        value = Path(os.environ[env])
    return value.expanduser().absolute() if value is not None else None


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute (``sqlite:///``, ``file:`` or a bare path); servers kept."""
    for scheme in ("sqlite:///", "file://", "file:"):
        if uri.startswith(scheme):
            path = uri[len(scheme):]
            return uri if path.startswith("/") or path == ":memory:" else f"{scheme}{Path(path).absolute()}"
    return uri if "://" in uri else str(Path(uri).absolute())


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
