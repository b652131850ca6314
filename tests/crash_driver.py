"""Crash-test driver: the ``todsynth`` CLI with one stage SIGKILLing its own process after writing its output.

``python tests/crash_driver.py STAGE ARGS...`` runs ``todsynth ARGS...`` with ``bench.stages.STAGES[STAGE]``
replaced by :func:`sigkill_after` of itself: the real stage writes its output into the cache's temp dir, then
the process dies before the cache publishes it (the worst moment for a crash). The fast crash tests use
:func:`sigkill_after` on fake stages passed as ``stage_fns``. Production code has no test branch for this.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

StageFn = Callable[[dict[str, Any], dict[str, Any], Path], dict[str, Any]]


def sigkill_after(fn: StageFn) -> StageFn:
    """``fn``, then SIGKILL of the calling process once ``fn`` has returned (its output is on disk)."""

    def stage(spec: dict[str, Any], inputs: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        artifacts = fn(spec, inputs, out_dir)
        os.kill(os.getpid(), signal.SIGKILL)
        return artifacts  # not reached

    return stage


def main(argv: list[str]) -> None:
    """Patch the named stage of the real stage table, then run the CLI on the remaining arguments."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bench.stages
    import cli

    stage, *args = argv
    if stage not in bench.stages.STAGES:
        raise SystemExit(f"crash_driver: unknown stage {stage!r}; one of {', '.join(sorted(bench.stages.STAGES))}")
    bench.stages.STAGES[stage] = sigkill_after(bench.stages.STAGES[stage])  # the engine reads this table per run
    sys.argv = ["todsynth", *args]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
