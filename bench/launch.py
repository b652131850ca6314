"""Multi-GPU launch: a stage runs in ``accelerate launch`` (generator, synthesis) or ``torchrun`` (MMSeg).

The engine writes the stage's spec and inputs as JSON, runs :mod:`bench.worker` under the launcher and
reads back the artifacts rank 0 wrote. MLflow stays in the parent process (one writer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.specs import StageSpec, spec_from_json, spec_to_json
from todsynth.errors import StageError


def launch_command(launcher: str, gpus: int, stage: str, job_dir: Path, out_dir: Path) -> list[str]:
    """The argv that runs ``stage`` on ``gpus`` processes (``launcher`` is ``accelerate`` or ``torchrun``)."""
    worker = ["-m", "bench.worker", "--stage", stage, "--job", str(job_dir), "--out", str(out_dir)]
    match launcher:
        case "accelerate":
            head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus)]
        case "torchrun":
            head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus)]
        case _:
            raise ValueError(f"launcher must be accelerate or torchrun, got {launcher!r}")
    return head + worker


def write_job(job_dir: Path, spec: StageSpec, inputs: dict[str, CachedStage]) -> None:
    """Spec and inputs (their dirs and markers) as JSON for the worker processes."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "spec.json").write_text(json.dumps(spec_to_json(spec), default=str))
    (job_dir / "inputs.json").write_text(
        json.dumps({role: {"dir": str(c.dir), "marker": c.marker} for role, c in inputs.items()}, default=str)
    )


def read_job(job_dir: Path) -> tuple[StageSpec, dict[str, CachedStage]]:
    """Inverse of :func:`write_job`."""
    spec = spec_from_json(json.loads((job_dir / "spec.json").read_text()))
    raw = json.loads((job_dir / "inputs.json").read_text())
    return spec, {role: CachedStage(Path(v["dir"]), v["marker"]) for role, v in raw.items()}


def run_launched(launcher: str, gpus: int, stage: str, spec: StageSpec, inputs: dict[str, CachedStage],
                 out_dir: Path, job_dir: Path) -> dict[str, Any]:
    """Run a stage under a multi-process launcher and return rank 0's artifacts."""
    write_job(job_dir, spec, inputs)
    cmd = launch_command(launcher, gpus, stage, job_dir, out_dir)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise StageError(f"stage {stage}: `{' '.join(cmd)}` exited with {proc.returncode}")
    result = job_dir / "artifacts.json"
    if not result.is_file():
        raise StageError(f"stage {stage}: the launched worker wrote no {result}")
    artifacts: dict[str, Any] = json.loads(result.read_text())
    return artifacts
