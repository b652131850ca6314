"""Importable stand-in stages for bench tune's multi-process tests (spawned workers import them by name).

Same contract as bench.stages; metrics depend on the variant's CRFM settings so a wrong trial shows up as a
wrong number: mask_miou = 0.4 + 0.02 * rectified_step, fid = 100 - 3 * rectified_step. No tests here.
"""

from __future__ import annotations

import json
import time

import numpy as np
from PIL import Image

STAGE_VERSIONS: dict[str, int] = {}
TRIAL_SECONDS = 0.3  # a synthesize stage takes this long, so two workers overlap


def _stage(name: str):
    def fn(spec, inputs, out_dir):
        (out_dir / f"{name}.json").write_text(json.dumps({"spec": spec, "inputs": sorted(inputs)}, default=str))
        arts = {"file": out_dir / f"{name}.json"}
        if name == "synthesize":
            time.sleep(TRIAL_SECONDS)
            rs = (spec["crfm"] or {}).get("rectified_step", 0)
            Image.fromarray(np.full((8, 8, 3), 40 * rs, np.uint8)).save(out_dir / "grid.png")
            arts |= {"metrics": {"seconds_per_image": 0.5, "rs": rs}, "mlflow_artifacts": ["grid.png"]}
        elif name == "evaluate":
            rs = inputs["synthesize"].artifacts["metrics"]["rs"]
            arts["metrics"] = {"fid": 100.0 - 3 * rs, "kid": 0.1, "fid_extractor": "evaluator", "fid_comparable": False,
                               "mask_miou": 0.4 + 0.02 * rs, "seconds_per_image": 0.5}
        return arts

    return fn


STAGES = {s: _stage(s) for s in ("data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features",
                                 "synthesize", "evaluate", "downstream")}
