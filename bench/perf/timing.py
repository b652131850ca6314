"""Timing instruments of ``bench perf``: a section stopwatch, repeated timings and their summary.

They are the sampler's section :class:`Stopwatch` (wall clock, process CPU time or CUDA events), repeated timings
``timed(fn, device, repeats)`` and their summary ``stats(values)``.

``"wall"`` (perf counters) adds no synchronisation, so on CUDA it measures launch time only. ``"cpu"``
counts this process's CPU seconds (all threads), which a busy shared machine barely disturbs: use it to
compare CPU costs. ``"cuda"`` records an event pair per section and resolves them with one synchronize at
:meth:`Stopwatch.totals`.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch
from torch import Tensor

Clock = Literal["wall", "cpu", "cuda"]
CLOCKS: tuple[str, ...] = get_args(Clock)


def clock_function(clock: Clock) -> Callable[[], float]:
    """``time.perf_counter`` for "wall", ``time.process_time`` for "cpu".

    Raises:
        ValueError: for "cuda" (CUDA events are not a function).
    """
    match clock:
        case "wall":
            return time.perf_counter
        case "cpu":
            return time.process_time
        case _:
            raise ValueError(f"clock must be 'wall' or 'cpu' here, got {clock!r}")


class Stopwatch:
    """Accumulates seconds per named section (``transformer``, ``vae_decode``, ``judge`` ...).

    A ``todsynth.sample.observer.SamplingObserver``: pass it to ``sample(..., observer=sw)`` to time the loop.
    """

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
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]  # torch leaves cuda.Event unannotated
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

    def traced(self, name: str, fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        """``fn`` with its forward pass and its part of any later backward pass timed under ``name``.

        The backward part runs from the moment the gradient w.r.t. ``fn``'s output is complete to the moment
        the gradient w.r.t. its input is: tensor hooks mark both, so one backward pass through several traced
        functions (CRFM's judge, then the VAE decoder) is still split per function.
        """

        def observed(x: Tensor) -> Tensor:
            with self.section(name):
                y = fn(x)
            if x.requires_grad and y.requires_grad:
                self._time_backward(name, x, y)
            return y

        return observed

    def _time_backward(self, name: str, x: Tensor, y: Tensor) -> None:
        """Hooks timing the backward from ``y``'s gradient to ``x``'s (they fire only if the backward runs)."""
        if self.cuda_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]  # torch leaves cuda.Event unannotated

            def begin(_grad: Tensor) -> None:
                start.record()

            def finish(_grad: Tensor) -> None:
                end.record()
                self._events.append((name, start, end))
        else:
            marks: list[float] = []

            def begin(_grad: Tensor) -> None:
                marks.append(self._now())

            def finish(_grad: Tensor) -> None:
                if marks:
                    self._seconds[name] += self._now() - marks.pop()

        y.register_hook(begin)  # type: ignore[no-untyped-call]  # torch leaves Tensor.register_hook unannotated
        x.register_hook(finish)  # type: ignore[no-untyped-call]

    def totals(self) -> dict[str, float]:
        """Seconds per section so far (one CUDA synchronize when events are used)."""
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self._seconds[name] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        return dict(self._seconds)


def stats(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no measurements")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls (CUDA synchronised around each)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out
