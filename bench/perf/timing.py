"""Repeated timings and their summary: ``timed(fn, device, repeats)`` and ``stats(values)``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


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
