"""Cheap per-section timing for the sampler: wall clock, process CPU time, or CUDA events.

``"wall"`` (perf counters) adds no synchronisation, so on CUDA it measures launch time only. ``"cpu"``
counts this process's CPU seconds (all threads), which a busy shared machine barely disturbs: use it to
compare CPU costs. ``"cuda"`` records an event pair per section and resolves them with one synchronize at
:meth:`Stopwatch.totals`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch

Clock = Literal["wall", "cpu", "cuda"]
CLOCKS: tuple[str, ...] = get_args(Clock)


def clock_function(clock: Clock):  # noqa: ANN201
    """``time.perf_counter`` for "wall", ``time.process_time`` for "cpu" (CUDA events are not a function)."""
    match clock:
        case "wall":
            return time.perf_counter
        case "cpu":
            return time.process_time
        case _:
            raise ValueError(f"clock must be 'wall' or 'cpu' here, got {clock!r}")


class Stopwatch:
    """Accumulates seconds per named section (``transformer``, ``vae_decode``, ``judge`` ...)."""

    def __init__(self, clock: Clock = "wall") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        self.cuda_events = clock == "cuda" and torch.cuda.is_available()
        self._now = clock_function("wall" if clock == "cuda" else clock)
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def now(self) -> float:
        """The current reading of this stopwatch's clock (seconds; wall clock for CUDA events)."""
        return self._now()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the body under ``name`` (accumulating over calls)."""
        if self.cuda_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
        else:
            t0 = self._now()
            try:
                yield
            finally:
                self._seconds[name] += self._now() - t0

    @contextmanager
    def split(self, first: str, second: str) -> Iterator[Callable[[], None]]:
        """Time the body as ``first`` until the yielded ``switch()`` is first called, then as ``second``.

        For one region that runs two things back to back where only a callback sees the boundary, e.g. one
        backward pass through the judge and then the decoder, switched by a hook on the decoded image's
        gradient. Never switched: the whole body counts as ``first``.
        """
        if self.cuda_events:
            start, mid, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            switched = [False]

            def switch_event() -> None:
                if not switched[0]:
                    switched[0] = True
                    mid.record()

            start.record()
            try:
                yield switch_event
            finally:
                if not switched[0]:
                    mid.record()
                end.record()
                self._events += [(first, start, mid), (second, mid, end)]
        else:
            t0 = self._now()
            marks: list[float] = []

            def switch() -> None:
                if not marks:
                    marks.append(self._now())

            try:
                yield switch
            finally:
                t2 = self._now()
                t1 = marks[0] if marks else t2
                self._seconds[first] += t1 - t0
                self._seconds[second] += t2 - t1

    def totals(self) -> dict[str, float]:
        """Seconds per section so far (one CUDA synchronize when events are used)."""
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self._seconds[name] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        return dict(self._seconds)
