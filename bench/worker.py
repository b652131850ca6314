"""Worker entry for launched stages: ``python -m bench.worker --stage S --job DIR --out DIR``.

Every rank runs the stage function (the library uses accelerate / torch.distributed inside);
rank 0 writes the returned artifacts to ``<job>/artifacts.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from bench.launch import read_job


def rank_device(device: str, env: Mapping[str, str]) -> str:
    """This launched process's device: ``cuda`` is ``cuda:<LOCAL_RANK>`` under a launcher; anything else is kept.

    A bare ``cuda`` is GPU 0 in every process, so each rank of a launched synthesis loaded its models there.
    """
    if device == "cuda" and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return device


def main(argv: list[str] | None = None) -> int:
    """Run one stage from a job dir written by :func:`bench.launch.write_job`."""
    from bench.cache import jsonable
    from bench.stages import STAGES

    ap = argparse.ArgumentParser(prog="bench.worker")
    ap.add_argument("--stage", required=True, choices=sorted(STAGES))
    ap.add_argument("--job", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    spec, inputs = read_job(args.job)
    device = rank_device(spec.runtime.device, os.environ)
    if device != spec.runtime.device:
        import torch

        torch.cuda.set_device(device)
        spec = spec.at(dataclasses.replace(spec.runtime, device=device))
    artifacts = STAGES[args.stage](spec, inputs, args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        (args.job / "artifacts.json").write_text(json.dumps(jsonable(artifacts or {}, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
