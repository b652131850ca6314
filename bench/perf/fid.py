"""FID feature extraction throughput.

Inception when ``TODSYNTH_INCEPTION_WEIGHTS`` is set, else the segmenter fallback on the judge's network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.perf.config import PerfConfig
from bench.perf.timing import stats, timed


def measure_fid(judge: nn.Module, cfg: PerfConfig) -> dict[str, Any]:
    """FID feature extraction throughput (images/s) on random [0,1] images at the sampling size."""
    from todsynth.metrics.fid import build_extractor, extract_features

    device = torch.device(cfg.device)
    extractor = build_extractor("auto", evaluator=getattr(judge, "model", judge), device=device)
    n, res = cfg.fid_images, cfg.res
    assert res is not None, "measure_fid takes a resolved PerfConfig"
    images = torch.rand(n, 3, res, res, generator=torch.Generator("cpu").manual_seed(cfg.seed))
    feats: list[Any] = []
    seconds = timed(lambda: feats.append(extract_features(images, extractor, batch_size=16)), device, cfg.repeats)
    return {
        "extractor": getattr(extractor, "name", type(extractor).__name__),
        "comparable": bool(getattr(extractor, "comparable", False)),
        "n_images": n,
        "feature_dim": int(feats[-1].shape[1]),
        "images_per_s": stats([n / s for s in seconds]),
    }
