"""Local worker processes of a study (``--workers K``).

K - 1 spawned processes beside this one, each a :class:`~bench.tune.session.Session` working until the cap, with
its share of the CPU cores.

Spawned workers receive the suite, options, stage functions and trial-start callback pickled, so callables passed
in must be importable module-level ones (:func:`check_picklable` says so before anything starts).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

from bench.engine import StageFn
from bench.schema import Suite
from bench.tune.session import Session, TrialStartFn, TuneOptions
from todsynth.errors import ConfigError, TodsynthError


def worker_threads(workers: int, cpus: int | None, env: Mapping[str, str]) -> int | None:
    """Torch intra-op threads for each of ``workers`` tune processes on one machine (None: leave torch's default).

    Every process defaults to one thread per core, so W workers oversubscribe the CPU W times; OpenMP threads
    then spin against each other (tiny-preset generator training on 2 cores: 20 it/s alone with 1 thread, 2 it/s
    with 2 threads beside another busy process). Cores are split evenly instead, unless the user pinned
    ``OMP_NUM_THREADS`` (respected as given).
    """
    if workers <= 1 or env.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cpus or 1) // workers)


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


def check_picklable(stage_fns: Mapping[str, StageFn] | None, stage_versions: Mapping[str, int] | None,
                    on_trial_start: TrialStartFn | None = None) -> None:
    """Spawned workers receive the stage functions pickled (by reference): refuse ones they could not import."""
    try:
        pickle.dumps((stage_fns, stage_versions, on_trial_start))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(f"--workers > 1: the stage functions and on_trial_start must be importable module-level "
                          f"callables to reach spawned workers ({type(exc).__name__}: {exc})") from None


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
