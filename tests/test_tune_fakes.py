"""Importable stand-in stages for bench tune's multi-process tests (spawned workers unpickle them by reference).

Same contract as bench.stages; metrics depend on the variant's CRFM settings so a wrong trial shows up as a
wrong number: mask_miou = 0.4 + 0.02 * rectified_step, fid = 100 - 3 * rectified_step. :class:`SleepAtTrialStart`
and :func:`cli_with_slow_trials` make every trial of the real CLI wait before its stages instead (so a test can kill
a worker mid-trial, even when the trial's stages are cached). No tests here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

STAGE_VERSIONS: dict[str, int] = {}
TRIAL_SECONDS = 0.3  # a synthesize stage takes this long, so two workers overlap
# A folder where worker processes check in; a synthesize stage waits there until BARRIER_N processes have.
# "trial" (default): a process checks in when it reaches a synthesize stage, so every worker runs a trial.
# "up": a spawned worker also checks in when it imports this module (before its first trial), so the others
# wait only until it is running; a worker killed mid-trial has checked in already and blocks nobody.
BARRIER_ENV = "TODSYNTH_TEST_WORKER_BARRIER"
BARRIER_KIND_ENV = "TODSYNTH_TEST_WORKER_BARRIER_KIND"
BARRIER_N = 2
BARRIER_TIMEOUT_S = 120.0


def _check_in() -> Path | None:
    folder = os.environ.get(BARRIER_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    return Path(folder)


def _wait_for_other_workers() -> None:
    """Make multi-worker tests deterministic: a fast worker cannot take all trials before a slow one starts."""
    folder = _check_in()
    if folder is None:
        return
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(folder.iterdir())) < BARRIER_N:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.iterdir()))} of {BARRIER_N} workers reached {folder}")
        time.sleep(0.05)


if os.environ.get(BARRIER_KIND_ENV) == "up":  # imported by a spawned worker's session, before its first trial
    _check_in()


class FakeStage:
    """One stand-in stage; a module-level class so spawned tune workers can unpickle it."""

    def __init__(self, name: str, trial_seconds: float = TRIAL_SECONDS) -> None:
        self.name, self.trial_seconds = name, trial_seconds

    def __call__(self, spec, inputs, out_dir):
        name = self.name
        (out_dir / f"{name}.json").write_text(json.dumps({"spec": spec.hashed(), "inputs": sorted(inputs)}, default=str))
        arts = {"file": out_dir / f"{name}.json"}
        if name == "synthesize":
            _wait_for_other_workers()
            time.sleep(self.trial_seconds)
            rs = (spec.crfm.rectified_step if spec.crfm else 0)
            Image.fromarray(np.full((8, 8, 3), 40 * rs, np.uint8)).save(out_dir / "grid.png")
            arts |= {"metrics": {"seconds_per_image": 0.5, "rs": rs}, "mlflow_artifacts": ["grid.png"]}
        elif name == "evaluate":
            rs = inputs["synthesize"].artifacts["metrics"]["rs"]
            arts["metrics"] = {"fid": 100.0 - 3 * rs, "kid": 0.1, "fid_extractor": "evaluator", "fid_comparable": False,
                               "mask_miou": 0.4 + 0.02 * rs, "seconds_per_image": 0.5}
        return arts


NAMES = ("data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features", "synthesize", "evaluate",
         "downstream")


def stages(trial_seconds: float = TRIAL_SECONDS) -> dict[str, FakeStage]:
    """The stand-in stages, a synthesize stage taking ``trial_seconds``."""
    return {s: FakeStage(s, trial_seconds) for s in NAMES}


STAGES = stages()


class SleepAtTrialStart:
    """``on_trial_start`` for bench tune: every trial waits ``sleep_s`` before its stages (picklable)."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s

    def __call__(self, trial) -> None:
        time.sleep(self.sleep_s)


def cli_with_slow_trials(sleep_s: float) -> None:
    """Run the ``todsynth`` CLI (a subprocess's main) with every tune trial waiting ``sleep_s`` before its stages.

    The CLI's ``bench tune`` calls ``bench.tune.tune_suite``; patched here to pass :class:`SleepAtTrialStart`, which
    reaches the spawned workers too.
    """
    import functools

    import bench.tune
    import cli

    bench.tune.tune_suite = functools.partial(bench.tune.tune_suite, on_trial_start=SleepAtTrialStart(sleep_s))
    cli.main()
