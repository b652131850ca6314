"""The suite's stages: one small plain function each, ``(spec, inputs, out_dir) -> artifacts``.

``spec`` is the node's typed spec (:mod:`bench.specs`: what the cache hash covers) with its ``runtime`` (device,
launcher, a resumable ``work_dir``, progress; not hashed) filled in. ``inputs`` maps a role (``data``, ``generator``,
``judge``...) to the finished :class:`bench.cache.CachedStage` it depends on. A stage writes only under
``out_dir`` (a temp dir the cache renames into place) and returns JSON values; paths inside
``out_dir`` are stored relative. ``metrics`` are logged to the stage's MLflow child run,
``mlflow_artifacts`` (relative paths) are attached to it.

Rooms, by job: :mod:`~bench.stages.data` (data, prompts), :mod:`~bench.stages.models` (autoencoder, generator,
judge, evaluator), :mod:`~bench.stages.synthesis` (real_features, synthesize, evaluate),
:mod:`~bench.stages.downstream`, and :mod:`~bench.stages.common` (what they share). This package holds the table
(:data:`STAGES`, :data:`STAGE_VERSIONS`) and re-exports the public names the engine, the report and the tests use.

Heavy imports (torch, diffusers, mmseg) stay inside the functions: importing this package is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.stages.common import LazyEncoder, artifact_path
from bench.stages.data import SAMPLES_FILE, bad_sample_files, stage_data, stage_prompts
from bench.stages.downstream import stage_downstream
from bench.stages.models import (
    AUTOENCODER_METRICS,
    stage_autoencoder,
    stage_evaluator,
    stage_generator,
    stage_judge,
)
from bench.stages.synthesis import (
    painted_pairs,
    source_samples,
    stage_evaluate,
    stage_real_features,
    stage_synthesize,
    synthetic_pairs,
)

# Bump a stage's version when its function changes what it computes: its cache entries (and their
# dependents') are then recomputed. The package version is part of every key as well.
STAGE_VERSIONS: dict[str, int] = {
    "data": 1, "prompts": 1, "autoencoder": 1, "generator": 2, "judge": 1, "evaluator": 1,
    "real_features": 1, "synthesize": 1, "evaluate": 4, "downstream": 1,
}  # evaluate 2: adds evaluator_real_miou (the evaluator on the real images of the synthesized masks); 3: FID/KID's
#   image counts (fid_n_real, fid_n_synthetic) and resize (fid_resize); 4: precision and recall. generator 2: the
#   tiny preset drops the mask token stream and trains 3000 steps (since then the autoencoder and generator specs
#   carry graph.preset_digest, the resolved preset's hash, so a preset change re-keys them without a bump here)

StageFn = Callable[[Any, dict[str, CachedStage], Path], dict[str, Any]]  # spec: the stage's bench.specs type

STAGES: dict[str, StageFn] = {
    "data": stage_data,
    "prompts": stage_prompts,
    "autoencoder": stage_autoencoder,
    "generator": stage_generator,
    "judge": stage_judge,
    "evaluator": stage_evaluator,
    "real_features": stage_real_features,
    "synthesize": stage_synthesize,
    "evaluate": stage_evaluate,
    "downstream": stage_downstream,
}

__all__ = [
    "AUTOENCODER_METRICS", "SAMPLES_FILE", "STAGES", "STAGE_VERSIONS", "LazyEncoder", "StageFn", "artifact_path",
    "bad_sample_files", "painted_pairs", "source_samples", "stage_autoencoder", "stage_data", "stage_downstream",
    "stage_evaluate", "stage_evaluator", "stage_generator", "stage_judge", "stage_prompts", "stage_real_features",
    "stage_synthesize", "synthetic_pairs",
]
