"""Local worker processes of a study (``--workers K``).

K - 1 spawned processes beside this one, each a :class:`~bench.tune.session.Session` working until the cap, with
its share of the CPU cores.

Spawned workers receive the suite, options, stage functions and trial-start callback pickled, so callables passed
in must be importable module-level ones (:func:`bench.pool.check_picklable` says so before anything starts).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from bench.pool import worker_threads
from bench.schema import Suite
from bench.tune.session import Session, TrialStartFn, TuneOptions
from todsynth.errors import TodsynthError

if TYPE_CHECKING:
    from bench.stages import StageFn


def work_with_core_share(session: Session, workers: int) -> int:
    """``session.work()`` with this process's share of the cores (:func:`worker_threads`); returns trials run."""
    from bench.perf import torch_threads

    with torch_threads(worker_threads(workers, os.cpu_count(), os.environ)):
        return session.work()


def spawned_worker(suite: Suite, opts: TuneOptions, stage_fns: Mapping[str, StageFn] | None,
                   stage_versions: Mapping[str, int] | None, on_trial_start: TrialStartFn | None) -> None:
    """Body of a ``--workers`` child process (spawned): join the study and work until the cap."""
    try:
        session = Session(suite, opts, stage_fns=stage_fns, stage_versions=stage_versions,
                          on_trial_start=on_trial_start)
        work_with_core_share(session, opts.workers)
    except TodsynthError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] tune worker {os.getpid()}: {exc}", highlight=False)
        raise SystemExit(2) from None


@contextlib.contextmanager
def worker_processes(suite: Suite, opts: TuneOptions, stage_fns: Mapping[str, StageFn] | None,
                     stage_versions: Mapping[str, int] | None, on_trial_start: TrialStartFn | None = None
                     ) -> Iterator[list[Any]]:
    """Start ``opts.workers - 1`` spawned workers for the body; terminate them if it raises; always wait for them."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    try:
        for _ in range(opts.workers - 1):
            p = ctx.Process(target=spawned_worker, args=(suite, opts, stage_fns, stage_versions, on_trial_start),
                            daemon=False)
            p.start()
            procs.append(p)
        yield procs
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
