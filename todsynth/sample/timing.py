"""Cheap per-section timing for the sampler: perf counters, or CUDA events when asked.

Perf counters add no synchronisation, so on CUDA they measure launch time only; ``cuda_events=True``
records an event pair per section and resolves them with one synchronize at :meth:`Stopwatch.totals`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Stopwatch:
    """Accumulates seconds per named section (``transformer``, ``vae_decode``, ``judge`` ...)."""

    def __init__(self, cuda_events: bool = False) -> None:
        self.cuda_events = bool(cuda_events and torch.cuda.is_available())
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

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
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._seconds[name] += time.perf_counter() - t0

    def totals(self) -> dict[str, float]:
        """Seconds per section so far (one CUDA synchronize when events are used)."""
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self._seconds[name] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        return dict(self._seconds)
