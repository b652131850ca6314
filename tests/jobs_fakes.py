"""Importable stand-in stages for ``resources.jobs > 1`` tests (pool processes unpickle them by reference).

Each call appends a line to ``$TODSYNTH_TEST_JOBS_LOG/<stage key>.json``: pid, start and end times and the torch
threads it ran with, so a test can see which stages overlapped. judge and evaluator (both ready as soon as the
data is) sleep ``SLOW_S``; the stage whose key is in ``$TODSYNTH_TEST_JOBS_FAIL`` raises. No tests here.
"""

from __future__ import annotations

import json
import os
import time

LOG_ENV = "TODSYNTH_TEST_JOBS_LOG"
FAIL_ENV = "TODSYNTH_TEST_JOBS_FAIL"
BARRIER_ENV = "TODSYNTH_TEST_JOBS_BARRIER"  # a folder: judge and evaluator wait there for each other
HANG_ENV = "TODSYNTH_TEST_JOBS_HANG"  # "<stage>:<folder>": that stage writes <folder>/<pid>.started, then hangs
SLOW = ("judge", "evaluator")
SLOW_S = 1.0
BARRIER_TIMEOUT_S = 60.0


def _meet(folder: str, name: str) -> None:
    """Check in as ``name`` and wait until every SLOW stage has (they run at once, or this times out)."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, name), "w").close()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not all(os.path.exists(os.path.join(folder, s)) for s in SLOW):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the other slow stages never started beside it")
        time.sleep(0.02)


class JobStage:
    """One stand-in stage (module-level class: picklable by reference)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, spec, inputs, out_dir):
        import torch

        start = time.time()
        hang = os.environ.get(HANG_ENV, "")
        if hang.split(":", 1)[0] == self.name:
            folder = hang.split(":", 1)[1]
            open(os.path.join(folder, f"{os.getpid()}.started"), "w").close()
            time.sleep(300)
        if self.name in SLOW:
            if os.environ.get(BARRIER_ENV):
                _meet(os.environ[BARRIER_ENV], self.name)
            time.sleep(SLOW_S)
        if self.name == os.environ.get(FAIL_ENV):
            raise RuntimeError(f"{self.name} failed on purpose")
        (out_dir / "out.json").write_text(json.dumps({"spec": spec.hashed(), "inputs": sorted(inputs)}, default=str))
        arts: dict = {"file": out_dir / "out.json"}
        rs = spec.crfm.rectified_step if getattr(spec, "crfm", None) else 0
        if self.name == "synthesize":
            arts["metrics"] = {"seconds_per_image": 0.5, "rs": rs}
        elif self.name == "evaluate":
            rs = inputs["synthesize"].artifacts["metrics"]["rs"] if "synthesize" in inputs else 0  # else a ceiling's
            arts["metrics"] = {"fid": 100.0 - 3 * rs, "kid": 0.1, "fid_extractor": "evaluator",
                               "fid_comparable": False, "mask_miou": 0.4 + 0.02 * rs, "evaluator_real_miou": 0.6,
                               "seconds_per_image": 0.5}
        elif self.name == "downstream":
            from todsynth.progress import progress_bar

            with progress_bar("fake train", 3, enabled=spec.runtime.progress) as update:
                for _ in range(3):
                    update(advance=1, loss=0.5)
            miou = 0.5 + (0.05 + 0.01 * inputs["synthesize"].artifacts["metrics"]["rs"] if "synthesize" in inputs else 0)
            arts["metrics"] = {"downstream_miou": miou, "downstream_oa": miou + 0.2, "downstream_macc": miou + 0.1}
        log = os.environ.get(LOG_ENV)
        if log:
            record = {"stage": self.name, "pid": os.getpid(), "start": start, "end": time.time(),
                      "threads": torch.get_num_threads()}
            with open(os.path.join(log, f"{self.name}.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        return arts


NAMES = ("data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features", "synthesize", "evaluate",
         "downstream")
STAGES = {s: JobStage(s) for s in NAMES}


def main(path: str) -> int:
    """Run the suite in the JSON file ``path`` with these stages, as ``bench run`` would (no tracking)."""
    from bench.engine import run_suite
    from bench.suites import validate_data

    with open(path) as f:
        suite = validate_data(json.load(f), path)
    try:
        run_suite(suite, stage_fns=STAGES, stage_versions={}, track=False, progress=False)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main(sys.argv[1]))
