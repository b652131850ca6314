"""Processes that run stages side by side: ``resources.jobs > 1`` (``bench run``) and ``--workers K`` (``bench tune``).

On a CPU the small models of the tiny preset leave cores idle: a downstream FCN trains about as fast with one
torch thread as with two, a CNN judge 1.5 times faster with two. Two such stages side by side, one thread each,
take less time than one after the other on both cores (the smoke suite's 17 stages: 458 s against 568 s; beside
each other each runs slower than alone, as they share caches and memory bandwidth). :class:`StagePool` keeps ``jobs`` spawned processes (each imports torch once) and
runs a stage function in one of them with a given number of torch threads; the engine decides how many
(:func:`stage_threads`). Every stage seeds its own generators from its spec, so where it runs changes nothing
but floating-point rounding (thread count changes the order of reductions).

Spawned processes receive the stage functions pickled (by reference): they must be importable module-level
callables (:func:`check_picklable`).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from todsynth.errors import ConfigError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_threads(workers: int, cpus: int | None, env: Mapping[str, str]) -> int | None:
    """Torch intra-op threads for each of ``workers`` busy processes on one machine (None: leave torch's default).

    Every process defaults to one thread per core, so W workers oversubscribe the CPU W times; OpenMP threads
    then spin against each other (tiny-preset generator training on 2 cores: 20 it/s alone with 1 thread, 2 it/s
    with 2 threads beside another busy process). Cores are split evenly instead, unless the user pinned
    ``OMP_NUM_THREADS`` (respected as given).
    """
    if workers <= 1 or env.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cpus or 1) // workers)


def stage_threads(peers: int, jobs: int, cpus: int, env: Mapping[str, str]) -> int | None:
    """Threads for a stage that ``peers`` other stages of its graph could run beside (None: torch's default).

    A stage that nothing can run beside (every other stage is upstream or downstream of it) gets every core;
    otherwise each of the ``jobs`` slots gets its share (:func:`worker_threads`), even when the stage happens to
    run alone: the count depends on the graph, not on timing, so results do too.
    """
    if env.get("OMP_NUM_THREADS"):
        return None
    return cpus if peers == 0 else worker_threads(jobs, cpus, env)


def check_picklable(objects: Any, what: str) -> None:
    """Refuse objects a spawned process could not receive (lambdas, closures, local classes), naming ``what``."""
    try:
        pickle.dumps(objects)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{what} must be importable module-level callables to reach spawned processes "
                          f"({type(exc).__name__}: {exc})") from None


_reports: Any = None  # in a pool process: the queue its stages' progress goes to (set by _start_process)
REPORT_EVERY_S = 0.25  # a bar's updates reach the engine at most this often (and always its last one)


def _start_process(reports: Any) -> None:
    """Pool process set-up: keep the progress queue; leave Ctrl-C to the parent (:meth:`StagePool.terminate`)."""
    global _reports
    _reports = reports
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _reporter(key: str) -> Any:
    """A :func:`todsynth.progress.set_sink` sink that puts ``(key, label, completed, total, fields)`` on the queue."""
    last: dict[str, float] = {}

    def sink(label: str, completed: int, total: int, fields: Mapping[str, float]) -> None:
        now = time.monotonic()
        if completed < total and now - last.get(label, -1e9) < REPORT_EVERY_S:
            return
        last[label] = now
        _reports.put((key, label, completed, total, dict(fields)))

    return sink


def _call(fn: Any, threads: int | None, key: str, args: tuple[Any, ...]) -> Any:
    """Body of a pool task: ``fn(*args)`` with ``threads`` torch threads (None: unchanged), bars reported as ``key``."""
    import torch

    from todsynth.progress import set_sink

    if threads is not None:
        torch.set_num_threads(threads)
    previous = set_sink(_reporter(key) if _reports is not None else None)
    try:
        return fn(*args)
    finally:
        set_sink(previous)


class StagePool:
    """``jobs`` spawned processes that run stage functions; use as a context manager.

    :meth:`call` blocks its (engine) thread until the stage returns in a pool process and returns its result, or
    raises what the stage raised. A process that dies (killed, out of memory) raises
    :class:`concurrent.futures.process.BrokenProcessPool` in every waiting thread. The stages' progress bars
    (:mod:`todsynth.progress`) reach ``on_progress(key, label, completed, total, fields)``, called from a thread
    of this process.
    """

    def __init__(self, jobs: int, on_progress: Callable[[str, str, int, int, Mapping[str, float]], None] | None = None
                 ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.jobs = jobs
        self._terminated = False
        # a SimpleQueue writes in put() itself (no feeder thread), so a stage's last report is in the pipe before
        # its result reaches this process, and before the None that ends the reader
        self._reports = ctx.SimpleQueue()
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_start_process,
                                         initargs=(self._reports,))
        self._reader = threading.Thread(target=self._read, args=(on_progress,), daemon=True, name="stage-progress")
        self._reader.start()

    def _read(self, on_progress: Any) -> None:
        for report in iter(self._reports.get, None):  # always drained: a full pipe would block the stages
            if on_progress is not None:
                try:
                    on_progress(*report)
                except Exception:  # a display error must not stop the draining  # noqa: S110
                    pass

    def call(self, fn: Any, threads: int | None, key: str, *args: Any) -> Any:
        """``fn(*args)`` in a pool process with ``threads`` torch threads; blocks until it returns.

        Raises KeyboardInterrupt when :meth:`terminate` ended the process (the stage was interrupted, not failed).
        """
        try:
            return self._pool.submit(_call, fn, threads, key, args).result()
        except BrokenProcessPool:
            if self._terminated:
                raise KeyboardInterrupt from None
            raise

    def terminate(self) -> None:
        """End the pool's processes now (Ctrl-C): running stages stop, their waiting threads raise."""
        for p in list(getattr(self._pool, "_processes", {}).values()):  # no public kill before Python 3.14
            if p.is_alive():
                p.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._terminated = True  # a process ended mid-report may hold the queue's lock: leave the reader be

    def __enter__(self) -> StagePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if not self._terminated:  # the reader is a daemon thread: abandoned otherwise
            self._reports.put(None)
            self._reader.join(timeout=5)
