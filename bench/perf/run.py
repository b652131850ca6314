"""``run_perf``: build the models once, measure every part in order, assemble the JSON-ready report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch

from bench.perf.config import SCHEMA, PerfConfig
from bench.perf.device import device_info
from bench.perf.fid import measure_fid
from bench.perf.models import build_perf_models, perf_inputs
from bench.perf.sampling import measure_sampling
from bench.perf.train import measure_train
from bench.perf.transformer import measure_transformer

ProgressFn = Callable[[str], None]


@contextmanager
def _phase(progress: ProgressFn | None, name: str) -> Iterator[None]:
    if progress is not None:
        progress(name)
    yield


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` torch intra-op threads (None: unchanged); the previous count is restored after."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_perf(cfg: PerfConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for and return the JSON-ready report (see ``bench.perf``)."""
    cfg = cfg.resolved()
    with torch_threads(cfg.threads):
        return _run(cfg, progress)


def _run(cfg: PerfConfig, progress: ProgressFn | None) -> dict[str, Any]:
    from todsynth.sample.speed import prepare_for_sampling

    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    with _phase(progress, "building models"):
        gen, judge = build_perf_models(cfg)
        masks, embeds, pooled = perf_inputs(gen, int(cfg.batch), cfg.seed)  # type: ignore[arg-type]
    with _phase(progress, "device peak"):
        dev = device_info(cfg)
    with _phase(progress, "training step"):
        train = measure_train(gen, cfg)
    dtype = torch.bfloat16 if (cfg.precision == "bf16" and device.type == "cuda") else None
    prepare_for_sampling(gen, judge, dtype=dtype, channels_last=bool(cfg.channels_last), compile=cfg.compile)
    with _phase(progress, "transformer forward + FLOPs"):
        transformer = measure_transformer(gen, masks, embeds, pooled, cfg, float(dev["peak_tflops"]))
    with _phase(progress, "plain vs CRFM sampling"):
        sampling = measure_sampling(gen, judge, masks, embeds, pooled, cfg)
    with _phase(progress, "FID features"):
        fid = measure_fid(judge, cfg)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": asdict(cfg),
        "crfm_over_plain": sampling.pop("crfm_over_plain"),
        "crfm_overhead_vs_parts": sampling.pop("crfm_overhead_vs_parts"),
        "crfm_over_plain_min": sampling.pop("crfm_over_plain_min"),
        "crfm_overhead_vs_parts_min": sampling.pop("crfm_overhead_vs_parts_min"),
        "device": dev,
        "transformer": transformer,
        **sampling,
        "train": train,
        "fid": fid,
    }
    report["seconds"] = time.perf_counter() - t_start
    return report
