"""Run a suite: build its stage graph, compute or reuse each stage, track in MLflow, write results.json.

Wiring only: the stages are plain functions in :mod:`bench.stages` (``(spec, inputs, out_dir) ->
artifacts``), the cache (:mod:`bench.cache`) and the tracker (:mod:`bench.tracking`) wrap them from
outside, so ``run``, ``tune`` and tests call the same functions. Tests inject fake stage functions
through ``stage_fns``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from bench.cache import CODE_VERSION, CacheCorruptError, CachedStage, StageCache, stage_hash
from bench.graph import Node, build_graph, node_key, select_forced
from bench.provenance import device_label, git_commit, now_iso, package_versions
from bench.results import collect_results, results_path, strict_json, write_results
from bench.schedule import ProgressFn, StageProgress
from bench.schema import Suite, check_runnable
from bench.specs import Runtime
from bench.suites import SuiteError, config_hash, resolved_dict, resolved_yaml
from todsynth.errors import StageError, TodsynthError

if TYPE_CHECKING:  # the stage table is loaded when stages run, not with the engine
    from bench.stages import StageFn

RUNS_LOG = "runs.jsonl"


@dataclass
class RunOutcome:
    """What one ``bench run`` did: results, which stages were computed or reused, where it is tracked."""

    results: dict[str, Any]
    results_file: Path
    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    seconds: float = 0.0


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _stage_registry(
    nodes: Sequence[Node], stage_fns: Mapping[str, Any] | None, stage_versions: Mapping[str, int] | None
) -> tuple[Mapping[str, Any], Mapping[str, int]]:
    """The stage functions and versions to use (defaults: :mod:`bench.stages`); every node's stage must have one."""
    if stage_fns is None or stage_versions is None:
        from bench import stages as _stages

        stage_fns = stage_fns if stage_fns is not None else _stages.STAGES
        stage_versions = stage_versions if stage_versions is not None else _stages.STAGE_VERSIONS
    if missing := sorted({n.stage for n in nodes} - set(stage_fns)):
        raise StageError(f"no stage function for: {', '.join(missing)}")
    return stage_fns, stage_versions


def stage_code_version(stage: str, versions: Mapping[str, int]) -> str:
    """Code tag in a stage's hash: package version + the stage's own version (bumped when it changes)."""
    return f"{CODE_VERSION}/{stage}-v{versions.get(stage, 1)}"


def graph_hashes(nodes: list[Node], stage_versions: Mapping[str, int]) -> dict[str, str]:
    """Cache hash of every node (its spec, its inputs' hashes, its stage's code version), in graph order."""
    hashes: dict[str, str] = {}
    for node in nodes:
        inputs = {role: hashes[dep] for role, dep in node.deps.items()}
        hashes[node.key] = stage_hash(node.stage, node.spec.hashed(), inputs, stage_code_version(node.stage, stage_versions))
    return hashes


def preflight(suite: Suite, force: list[str] | tuple[str, ...] = (), *, every_stage: bool = False) -> list[Node]:
    """Before the workspace is touched: paths the stages read exist (``every_stage``: all, for tune); --force is valid."""
    nodes = build_graph(suite)
    problems = check_runnable(suite, None if every_stage else {n.stage for n in nodes})
    try:
        select_forced(nodes, force)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise SuiteError(suite.name, problems)
    return nodes


def plan(suite: Suite, force: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """What ``bench run`` would do, touching nothing: one row per node, in graph order.

    A row is the node's ``key``, ``stage``, ``deps``, ``hash`` and ``status`` (``cached``, ``compute``, ``forced``
    or ``damaged``: a cache entry ``StageCache.lookup`` refuses, where ``bench run`` stops unless forced).
    Raises :class:`SuiteError` as :func:`preflight` does.
    """
    from bench.stages import STAGE_VERSIONS

    nodes = preflight(suite, force)
    forced = select_forced(nodes, force)
    hashes = graph_hashes(nodes, STAGE_VERSIONS)
    cache = StageCache(suite.workspace)
    rows = []
    for n in nodes:
        try:
            done = cache.lookup(n.stage, hashes[n.key]) is not None
        except CacheCorruptError:  # what run_suite would stop at
            status = "damaged"
        else:
            status = "cached" if done else "compute"
        status = "forced" if n.key in forced else status
        rows.append({"key": n.key, "stage": n.stage, "deps": list(n.deps.values()), "hash": hashes[n.key],
                     "status": status})
    return rows


def run_suite(
    suite: Suite,
    *,
    force: list[str] | tuple[str, ...] = (),
    stage_fns: Mapping[str, StageFn] | None = None,
    stage_versions: Mapping[str, int] | None = None,
    track: bool = True,
    progress: bool = True,
    console: Any = None,
) -> RunOutcome:
    """Run (or resume) every stage of ``suite`` and write ``<workspace>/<suite>/results.json``.

    Args:
        suite: a validated suite.
        force: stage names or node keys to recompute (their dependents are recomputed too).
        stage_fns: stage name -> function; defaults to :data:`bench.stages.STAGES`.
        stage_versions: stage name -> version in the cache key; defaults to :data:`bench.stages.STAGE_VERSIONS`.
        track: log to MLflow (tests of the cache alone may turn it off).
        progress: show rich progress bars.
        console: a rich Console for messages (default: a new one).
    """
    nodes = preflight(suite, force)
    stage_fns, stage_versions = _stage_registry(nodes, stage_fns, stage_versions)
    forced = select_forced(nodes, force)
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)

    t_start = time.perf_counter()
    ws = suite.workspace
    suite_dir = ws / suite.name
    suite_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(ws)
    for d in cache.cleanup_stale():
        console.print(f"[dim]removed leftover {d} of a killed run[/]", soft_wrap=True)
    chash = config_hash(suite)
    device = resolve_device(suite.resources.device)
    tracker, parent = _start_suite_run(suite, chash, console) if track else (None, None)
    invocation = {"suite": suite.name, "config_hash": chash, "parent_run_id": parent, "pid": os.getpid(),
                  "host": socket.gethostname(), "started": now_iso()}
    _append_log(suite_dir / RUNS_LOG, {**invocation, "event": "start"})

    outcome = RunOutcome(results={}, results_file=results_path(suite), parent_run_id=parent)
    hashes = graph_hashes(nodes, stage_versions)
    stage_rows: list[dict[str, Any]] = []
    status = "FAILED"
    try:
        done = _run_suite_nodes(suite, nodes, hashes, forced, cache, stage_fns, stage_versions, tracker, device,
                                outcome, stage_rows, console=console, progress=progress)
        outcome.results = _write_suite_results(suite, done, hashes, chash, parent, tracker, outcome.results_file)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        outcome.seconds = time.perf_counter() - t_start
        _append_log(suite_dir / RUNS_LOG, {**invocation, "event": "end", "status": status, "finished": now_iso(),
                                          "computed": len(outcome.computed), "cached": len(outcome.cached),
                                          "seconds": outcome.seconds})
        if tracker is not None and parent is not None:
            _end_suite_run(tracker, parent, stage_rows, outcome, status)
    return outcome


def _start_suite_run(suite: Suite, chash: str, console: Any) -> tuple[Any, str]:
    """The suite's Tracker and its new parent run (tagged with config hash, commit, device, versions) -> id."""
    from bench.tracking.tracker import Tracker

    tracker = Tracker(suite.tracking_uri, suite.artifact_location, suite.experiment, suite.workspace)
    for run_id in tracker.mark_stale_killed():
        console.print(f"[yellow]marked MLflow run {run_id} KILLED (its process is gone)[/]", soft_wrap=True)
    versions = package_versions()
    commit = git_commit()
    tags = {
        "todsynth.suite": suite.name,
        "todsynth.suite_version": str(suite.version),
        "todsynth.config_hash": chash,
        "todsynth.git_commit": commit,
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        "todsynth.device": device_label(resolve_device(suite.resources.device)),
        **{f"todsynth.version.{k}": v for k, v in versions.items()},
    }
    parent = tracker.start_parent(f"{suite.name}@{chash[:8]}", resolved_dict(suite), tags, resolved_yaml(suite))
    return tracker, parent


def _run_suite_nodes(
    suite: Suite, nodes: list[Node], hashes: Mapping[str, str], forced: set[str], cache: StageCache,
    stage_fns: Mapping[str, StageFn], stage_versions: Mapping[str, int], tracker: Any, device: str,
    outcome: RunOutcome, stage_rows: list[dict[str, Any]], *, console: Any, progress: bool,
) -> dict[str, CachedStage]:
    """Compute or reuse every node in order, with the stage counter.

    Fills ``outcome``'s computed/cached lists and ``stage_rows`` (``stages.json``) as each node finishes, so a
    failure keeps what was done.
    """
    jobs = suite.resources.jobs
    # the "[k/N] stage ..." lines always print (a log without them is silent for minutes); progress=False (bench run
    # --no-progress) leaves out the bars
    bar = StageProgress(len(nodes), console, enabled=True, live=progress and jobs > 1)

    def finished(node: Node, cached: CachedStage, computed: bool, seconds: float) -> None:
        (outcome.computed if computed else outcome.cached).append(node.key)
        stage_rows.append({"key": node.key, "stage": node.stage, "hash": hashes[node.key],
                           "status": "computed" if computed else "cached", "dir": str(cached.dir),
                           "mlflow_run_id": cached.marker.get("mlflow_run_id"), "seconds": seconds})
        bar.finish(node.key, computed, seconds)

    with bar:
        return _compute_nodes(suite, nodes, hashes, cache, stage_fns, stage_versions, tracker, device,
                              console=console, progress=progress, forced=forced,
                              on_start=lambda node: bar.start(node.key), on_done=finished, jobs=jobs,
                              on_progress=bar.report)


def _compute_nodes(
    suite: Suite, nodes: list[Node], hashes: Mapping[str, str], cache: StageCache, stage_fns: Mapping[str, StageFn],
    stage_versions: Mapping[str, int], tracker: Any, device: str, *, console: Any, progress: bool,
    forced: set[str] | frozenset[str] = frozenset(), on_start: Callable[[Node], None] | None = None,
    on_done: Callable[[Node, CachedStage, bool, float], None] | None = None, jobs: int = 1,
    on_progress: ProgressFn | None = None,
) -> dict[str, CachedStage]:
    """The one node loop of ``run_suite`` and ``run_nodes``: each node's inputs, then :func:`_run_node`.

    ``jobs`` 1 runs the nodes in graph order in this process; more runs independent ones side by side in spawned
    processes (:func:`bench.schedule.run_side_by_side`). ``on_start(node)`` and ``on_done(node, cached, computed, seconds)``
    let the caller count and report; both are called from this thread. Side by side, the stages' progress bars
    reach ``on_progress(key, label, completed, total, fields)`` instead of the terminal (from another thread).
    """
    if jobs > 1:
        from bench.schedule import run_side_by_side, serialized

        locked = serialized(tracker)  # engine threads share one MLflow client

        def step(node: Node, done: Mapping[str, CachedStage], pooled: StageFn | None) -> tuple[CachedStage, bool, float]:
            fn = pooled if pooled is not None else stage_fns[node.stage]  # None: cached, reused here
            bars = progress and pooled is not None and node.launcher == "inprocess"  # launched ones would draw
            return _node_step(node, done, suite, hashes, cache, fn, stage_versions, locked, device, forced=forced,
                              console=console, progress=bars)

        def reusable(node: Node) -> bool:
            return node.key not in forced and cache.lookup(node.stage, hashes[node.key]) is not None

        return run_side_by_side(nodes, jobs, step, stage_fns=stage_fns, reusable=reusable, on_start=on_start,
                                on_done=on_done, on_progress=on_progress if progress else None)
    done: dict[str, CachedStage] = {}
    for node in nodes:
        if on_start is not None:
            on_start(node)
        cached, computed, seconds = _node_step(node, done, suite, hashes, cache, stage_fns[node.stage], stage_versions,
                                               tracker, device, forced=forced, console=console, progress=progress)
        done[node.key] = cached
        if on_done is not None:
            on_done(node, cached, computed, seconds)
    return done


def _node_step(node: Node, done: Mapping[str, CachedStage], suite: Suite, hashes: Mapping[str, str],
               cache: StageCache, fn: StageFn, stage_versions: Mapping[str, int], tracker: Any, device: str, *,
               forced: set[str] | frozenset[str], console: Any, progress: bool) -> tuple[CachedStage, bool, float]:
    """:func:`_run_node` for ``node`` with its finished inputs from ``done``."""
    inputs = {role: done[dep] for role, dep in node.deps.items()}
    input_hashes = {role: hashes[dep] for role, dep in node.deps.items()}
    return _run_node(node, hashes[node.key], inputs, input_hashes, stage_code_version(node.stage, stage_versions),
                     cache, fn, tracker, suite, device, force=node.key in forced, console=console,
                     log_dir=suite.workspace / suite.name / "logs", progress=progress)


def _write_suite_results(suite: Suite, done: Mapping[str, CachedStage], hashes: Mapping[str, str], chash: str,
                         parent: str | None, tracker: Any, path: Path) -> dict[str, Any]:
    """Collect results.json from the finished stages (+ the variant runs' ids when tracked), write it, return it."""
    results: dict[str, Any] = strict_json(collect_results(suite, done, chash, parent))
    if tracker is not None:
        results["mlflow"]["variant_runs"] = _log_variant_runs(tracker, suite, results, done, hashes)
    write_results(path, results)
    return results


def _end_suite_run(tracker: Any, parent: str, stage_rows: list[dict[str, Any]], outcome: RunOutcome,
                   status: str) -> None:
    """Log ``stages.json``, the stage counts and results.json (if written) to the parent run, then end it."""
    try:
        tracker.log_text(parent, json.dumps(stage_rows, indent=2), "stages.json")
        tracker.log_metrics(parent, {"stages_computed": len(outcome.computed),
                                     "stages_cached": len(outcome.cached), "seconds": outcome.seconds})
        if outcome.results:
            tracker.log_artifact(parent, outcome.results_file)
    finally:
        tracker.end(parent, status)


VARIANT_RUN_VERSION = 1  # part of a variant run's identity: bump when its fields change


def _log_variant_runs(tracker: Any, suite: Suite, results: dict[str, Any], done: Mapping[str, CachedStage],
                      hashes: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """One MLflow run per variant and seed (:meth:`bench.tracking.tracker.Tracker.variant_run`); ``{variant: {seed: id}}``."""
    from bench.results import variant_runs

    ids: dict[str, dict[str, str]] = {}
    for r in variant_runs(results):
        name, seed = r["variant"], r["seed"]
        stages = {s: node_key(s, name, seed) for s in ("synthesize", "evaluate", "downstream")}
        stages = {s: k for s, k in stages.items() if k in done}
        identity = hashlib.sha256(json.dumps(
            {"version": VARIANT_RUN_VERSION, "suite": suite.name, "stages": {k: hashes[k] for k in stages.values()},
             "params": r["params"], "metrics": r["metrics"]}, sort_keys=True, default=str).encode()).hexdigest()[:32]
        runs = {s: done[k].marker.get("mlflow_run_id") for s, k in stages.items()}
        note = "\n".join([f"**{name}**, seed {seed}: {r['kind']} variant of suite `{suite.name}`.", "", "Stage runs:"]
                         + [f"- {s}: [{stages[s]}]({tracker.run_link(rid)})" for s, rid in runs.items() if rid])
        tags = {"todsynth.kind": "variant" if r["kind"] == "synthetic" else r["kind"], "todsynth.suite": suite.name,
                "todsynth.variant": name, "todsynth.seed": str(seed), "todsynth.config_hash": results["config_hash"],
                "mlflow.note.content": note, **{f"todsynth.run.{s}": rid for s, rid in runs.items() if rid}}
        if r["params"]["n"] != "all":
            tags["todsynth.subset"] = str(r["params"]["n"])
        syn = done.get(stages.get("synthesize", ""))
        grids = [syn.dir / rel for rel in syn.artifacts.get("mlflow_artifacts", [])] if syn is not None else []
        run_id, _ = tracker.variant_run(f"{name}[seed={seed}]", r["params"], r["metrics"], tags, identity,
                                        [g for g in grids if g.exists()])
        ids.setdefault(name, {})[str(seed)] = run_id
    return ids


def run_nodes(
    suite: Suite,
    nodes: list[Node],
    *,
    tracker: Any = None,
    stage_fns: Mapping[str, StageFn] | None = None,
    stage_versions: Mapping[str, int] | None = None,
    console: Any = None,
    progress: bool = False,
) -> dict[str, CachedStage]:
    """Compute or reuse ``nodes`` (dependencies first) exactly as :func:`run_suite` does, without its parent run.

    New work is logged as child runs of ``tracker.parent_run_id`` when a tracker is given. Returns node key ->
    finished stage. Used by ``bench tune`` for each trial.
    """
    stage_fns, stage_versions = _stage_registry(nodes, stage_fns, stage_versions)
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    cache = StageCache(suite.workspace)
    device = resolve_device(suite.resources.device)
    hashes = graph_hashes(nodes, stage_versions)
    return _compute_nodes(suite, nodes, hashes, cache, stage_fns, stage_versions, tracker, device, console=console,
                          progress=progress)


def _run_node(
    node: Node, h: str, inputs: dict[str, CachedStage], input_hashes: dict[str, str], code: str,
    cache: StageCache, fn: StageFn, tracker: Any, suite: Suite, device: str, *, force: bool, console: Any,
    log_dir: Path, progress: bool = False,
) -> tuple[CachedStage, bool, float]:
    """Compute or reuse one node; on new work, a child MLflow run wraps the stage function."""
    meta: dict[str, Any] = {"key": node.key, "spec": node.spec.hashed(), "inputs": input_hashes, "code_version": code}
    work_dir = cache.root / node.stage / f".work-{h}"  # resumable checkpoints of long stages (kept across kills)
    spec = node.spec.at(Runtime(device=device, launcher=node.launcher, gpus=suite.resources.gpus,
                                work_dir=str(work_dir), progress=progress))
    child: list[str] = []

    def work(tmp: Path) -> dict[str, Any]:  # runs under the stage's lock
        if force and work_dir.exists():  # --force starts from scratch, not from a killed run's checkpoints
            shutil.rmtree(work_dir)
        if tracker is not None:
            tags = {"todsynth.kind": "stage", "todsynth.stage": node.stage, "todsynth.key": node.key,
                    "todsynth.stage_hash": h, "todsynth.suite": suite.name}
            if node.variant is not None:
                tags |= {"todsynth.variant": node.variant, "todsynth.seed": str(node.seed)}
            if node.subset is not None:
                tags["todsynth.subset"] = str(node.subset)
            child.append(tracker.start_child(node.key, meta["spec"], tags))
            meta["mlflow_run_id"] = child[0]
        if node.launcher == "inprocess":
            return fn(spec, inputs, tmp)
        from bench.launch import run_launched

        job = tmp / ".launch"
        try:
            return run_launched(node.launcher, suite.resources.gpus, node.stage, spec, inputs, tmp, job)
        finally:
            shutil.rmtree(job, ignore_errors=True)

    def waiting() -> None:
        console.print(f"[dim]{escape(node.key)}: another run is computing it; waiting to reuse its output[/]")

    t0 = time.perf_counter()
    try:
        cached, computed = cache.compute(node.stage, h, work, meta, force=force, on_wait=waiting)
    except KeyboardInterrupt:
        if child:
            tracker.end(child[0], "KILLED")
        raise
    except Exception as exc:
        if child:
            tracker.end(child[0], "FAILED")
        if isinstance(exc, TodsynthError):
            raise
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{node.key.replace('/', '_')}.traceback.txt"
        log.write_text(traceback.format_exc())
        raise StageError(
            f"stage {node.key} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            f"(traceback in {log}; finished stages are kept, rerun to resume)"
        ) from exc
    seconds = time.perf_counter() - t0
    if computed and child:
        arts = cached.artifacts
        tracker.log_metrics(child[0], {**arts.get("metrics", {}), "stage_seconds": seconds})
        for rel in arts.get("mlflow_artifacts", []):
            tracker.log_artifact(child[0], cached.dir / rel)
        tracker.end(child[0], "FINISHED")
    return cached, computed, seconds


def _append_log(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per invocation event (read by ``bench ls``)."""
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
