"""What the tracker and the queries share.

MLflow's length limits, the keys and values it accepts, and the retry around a locked sqlite store.

Imports nothing of the project (and not mlflow).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH
BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
T = TypeVar("T")


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}``; lists become JSON strings, None becomes ``"null"``."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = _scalar(v)
    elif prefix:
        out[prefix] = _scalar(data)
    return out


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def clean_key(key: str) -> str:
    r"""A key MLflow accepts: ``[\w ./-]`` only, at most 250 characters."""
    return re.sub(r"[^\w ./-]", "_", key)[:MAX_KEY]


def cut(value: str, limit: int) -> str:
    """Truncate a value to MLflow's limit, marking the cut."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call ``fn``, retrying with exponential backoff while sqlite reports a lock."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if i == attempts - 1 or not _is_locked(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")
