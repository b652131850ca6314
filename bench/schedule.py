"""Running a stage graph side by side (``resources.jobs > 1``), and the stage counter shown while it runs.

:func:`run_side_by_side` starts up to ``jobs`` ready nodes at once, each stage function in a
:class:`bench.pool.StagePool` process, while one engine thread per running node drives the engine's ``step``
(cache lock, MLflow child run). :class:`StageProgress` prints the counter lines (``[3/17] generator``) and, side
by side, a display with a row per running stage fed by the stages' progress reports.

Imports :mod:`bench.pool` and :mod:`bench.cache`/:mod:`bench.graph` (types); the engine passes its own ``step``.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.markup import escape

from bench.cache import CachedStage
from bench.graph import Node

Result = tuple[CachedStage, bool, float]  # (finished stage, computed, seconds)
Step = Callable[[Node, Mapping[str, CachedStage], Any], Result]  # (node, done, pooled stage fn or None)
ProgressFn = Callable[[str, str, int, int, Mapping[str, float]], None]  # (key, label, completed, total, fields)


def descendants(nodes: Sequence[Node]) -> dict[str, set[str]]:
    """The nodes that depend on each node, directly or not (:func:`run_side_by_side` starts those with most first)."""
    below: dict[str, set[str]] = {n.key: set() for n in nodes}
    for node in reversed(nodes):  # graph order lists dependencies first
        for dep in node.deps.values():
            below[dep] |= below[node.key] | {node.key}
    return below


def peers(nodes: Sequence[Node]) -> dict[str, int]:
    """For each node, how many nodes could run beside it: neither its ancestors nor its descendants.

    A property of the graph alone, so a stage's thread count (:func:`bench.pool.stage_threads`) does not depend on
    timing or on what the cache holds: a resumed or forced run computes what an uninterrupted cold run does.
    """
    below = descendants(nodes)
    above: dict[str, set[str]] = {n.key: set() for n in nodes}
    for key, deps in below.items():
        for d in deps:
            above[d].add(key)
    return {n.key: len(nodes) - 1 - len(below[n.key]) - len(above[n.key]) for n in nodes}


def run_side_by_side(nodes: Sequence[Node], jobs: int, step: Step, *, stage_fns: Mapping[str, Any],
                     reusable: Callable[[Node], bool], on_start: Callable[[Node], None] | None = None,
                     on_done: Callable[..., None] | None = None, on_progress: ProgressFn | None = None
                     ) -> dict[str, CachedStage]:
    """Compute or reuse every node, up to ``jobs`` at once; node key -> finished stage.

    A node is ready when its inputs are done; among ready ones, those with the most dependents start first. A
    ``reusable`` node (cached) is reused in this thread without a slot: ``step(node, done, None)``. Others run as
    ``step(node, done, pooled)`` in an engine thread, ``pooled`` being the stage function bound to a pool process
    with :func:`bench.pool.stage_threads` torch threads (every core for a node that no other node could run
    beside, whatever the timing: :func:`peers`; a share otherwise). The stages' progress bars go to ``on_progress`` (None: nowhere), not the terminal, where two would
    draw over each other. ``on_start(node)`` and ``on_done(node, cached, computed, seconds)`` are called from this
    thread. When a node fails nothing new starts, the running ones finish (their outputs are cached) and the first
    error is raised. Ctrl-C ends the pool's processes.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from bench.pool import StagePool, check_picklable, stage_threads, usable_cores

    check_picklable(dict(stage_fns), f"resources.jobs {jobs}: the stage functions")
    cpus, order, beside = usable_cores(), {n.key: i for i, n in enumerate(nodes)}, peers(nodes)
    rank = {k: len(v) for k, v in descendants(nodes).items()}
    waiting, done = list(nodes), {}
    running: dict[Future[Result], Node] = {}
    failure: BaseException | None = None

    def finish(node: Node, result: Result) -> None:
        done[node.key] = result[0]
        if on_done is not None:
            on_done(node, *result)

    def start(node: Node) -> None:
        waiting.remove(node)
        if on_start is not None:
            on_start(node)

    with StagePool(jobs, on_progress) as pool, ThreadPoolExecutor(jobs, thread_name_prefix="stage") as threads:
        try:
            while (waiting and failure is None) or running:
                queue = [] if failure is not None else sorted(
                    (n for n in waiting if all(d in done for d in n.deps.values())),
                    key=lambda n: (-rank[n.key], order[n.key]))
                reused = [n for n in queue if reusable(n)]
                for node in reused:  # cached: no slot, no process
                    start(node)
                    finish(node, step(node, done, None))
                if reused:
                    continue
                while queue and len(running) < jobs:
                    node = queue.pop(0)
                    threads_now = stage_threads(beside[node.key], jobs, cpus, os.environ)
                    start(node)
                    pooled = functools.partial(pool.call, stage_fns[node.stage], threads_now, node.key)
                    running[threads.submit(step, node, dict(done), pooled)] = node
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    node = running.pop(future)
                    try:
                        finish(node, future.result())
                    except Exception as exc:  # keep the first; let the others finish and cache their work
                        failure = failure or exc
        except KeyboardInterrupt:
            pool.terminate()
            raise
    if failure is not None:
        raise failure
    return done


def serialized(tracker: Any) -> Any:
    """``tracker`` with its methods run one at a time (engine threads share one MLflow client); None stays None."""
    return None if tracker is None else _Serialized(tracker, threading.Lock())


class _Serialized:
    def __init__(self, inner: Any, lock: Any) -> None:
        self._inner, self._lock = inner, lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return locked


class StageProgress:
    """Stage counter lines (``[3/17] generator``); a stage's own rich bars (training, sampling) show beneath.

    Not a rich Live display while stages run one at a time: only one may be active, and long stages bring their
    own. With ``live`` (stages side by side in pool processes) a transient display under the counter lines holds
    one row per running stage that reports a bar: its key, its current bar (:meth:`report`: label, done/total,
    fields) and the time it has run. A row appears with the stage's first report, so a stage reused from the cache
    never gets one.
    """

    def __init__(self, total: int, console: Any, enabled: bool, live: bool = False) -> None:
        self.total, self.console, self.enabled = total, console, enabled
        self.started = self.done = 0
        self._live: Any = None
        self._tasks: dict[str, Any] = {}
        self._running: set[str] = set()
        self._lock = threading.Lock()  # report() runs in the pool's reader thread
        if enabled and live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[text]}"), TimeElapsedColumn(),
                                  console=console, transient=True)

    def __enter__(self) -> StageProgress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()

    def start(self, key: str) -> None:
        """A stage started (or is being looked up in the cache)."""
        self.started += 1
        if self.enabled:
            self.console.print(f"[bold]\\[{self.started}/{self.total}][/] {escape(key)} ...", highlight=False)
            with self._lock:
                self._running.add(key)

    def report(self, key: str, label: str, completed: int, total: int, fields: Mapping[str, float]) -> None:
        """A running stage's bar moved (from the pool's reader thread)."""
        from todsynth.progress import fields_text

        with self._lock:
            if self._live is None or key not in self._running:  # not live, or the stage just finished
                return
            if key not in self._tasks:
                self._tasks[key] = self._live.add_task(escape(key), total=None, text="")
            self._live.update(self._tasks[key], total=total, completed=completed, description=escape(f"{key}: {label}"),
                              text=escape(fields_text(fields)))

    def finish(self, key: str, computed: bool, seconds: float) -> None:
        """A stage finished: computed in ``seconds``, or reused from the cache."""
        self.done += 1
        if self.enabled:
            with self._lock:
                self._running.discard(key)
                if key in self._tasks:
                    self._live.remove_task(self._tasks.pop(key))
            mark = f"[green]done[/] in {seconds:.1f}s" if computed else "[cyan]cached[/]"
            # the start line's [k/N] numbers starts; side by side stages end in another order, so the end line
            # counts ends apart from it (one stage once read "[9/18] ... ..." then "[11/18] ...: done")
            self.console.print(f"{escape(key)}: {mark} ({self.done}/{self.total} finished)", highlight=False)
