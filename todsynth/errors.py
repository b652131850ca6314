"""Domain errors. Each names the offending path/key/value and, where there is one, the fix.

The CLI turns any :class:`TodsynthError` into a one-line message and exit code 2.
"""

from __future__ import annotations


def first_few(items: list[str], shown: int = 3, sep: str = ", ") -> str:
    """The first ``shown`` of ``items`` joined by ``sep``, with how many more there are (for one-line messages)."""
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" for none): a driver's multi-line text in a one-line error."""
    return (str(exc).strip().splitlines() or [""])[0]


class TodsynthError(Exception):
    """Base class: a user-facing problem with inputs or configuration (exit code 2)."""


class DatasetNotFoundError(TodsynthError):
    """A dataset root or split does not exist or holds no samples."""


class DataValidationError(TodsynthError):
    """A dataset is present but malformed (unreadable PNG, bad mask values, size mismatch...)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class WeightsNotFoundError(TodsynthError):
    """Local model weights (SD3.5, CLIP/T5, Inception, MMSeg checkpoint) are missing."""


class ConfigError(TodsynthError):
    """An invalid or contradictory configuration value."""


class UntrustedCheckpointError(TodsynthError):
    """A checkpoint needs full unpickling; refused without an explicit trust flag."""


class StageError(TodsynthError):
    """A bench stage failed; previous results are left intact."""
