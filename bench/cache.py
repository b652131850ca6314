"""Content-addressed stage cache: ``<workspace>/cache/<stage>/<hash>/`` with a ``done.json`` marker.

A stage writes into ``<workspace>/cache/<stage>/.tmp-<hash>-<host>-<pid>`` and the directory is renamed into
place only when the function returned and the marker is written, so a killed run leaves no half
artifact. A finished stage is never recomputed (unless forced). Leftover temp dirs of dead processes
are removed on the next run on their host (a pid means nothing on another machine sharing the workspace).
A file lock per ``(stage, hash)`` makes two concurrent runs on one workspace compute a shared stage once:
the second waits, then reuses. A marker whose declared files are missing is corruption and fails loudly,
naming the directory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout

from todsynth import __version__
from todsynth.errors import StageError, first_few
from todsynth.files import atomic_write_bytes

DONE = "done.json"
CODE_VERSION = f"todsynth-{__version__}"
# ``.tmp-<hash>-<host>-<pid>`` (``<host>`` left out by versions before it was recorded)
_TMP_RE = re.compile(r"^\.(tmp|trash)-(?P<hash>[0-9a-f]+)-(?:(?P<host>[A-Za-z0-9._]+)-)?(?P<pid>\d+)$")


def _host() -> str:
    """This machine's name as temp dir names carry it (its characters outside ``[A-Za-z0-9.]`` as ``_``)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


class CacheCorruptError(StageError):
    """A cached stage directory is damaged (marker without its files, or files without a marker)."""


def canonical(obj: Any) -> str:
    """Deterministic JSON used for hashing.

    Dict entries whose value is None are left out, so adding a setting whose None keeps the old behaviour (the
    convention for new settings) leaves every existing hash, and cache, valid. A None entry and a missing one never
    meet within one schema, so no two configurations of it collide.
    """
    return json.dumps(_without_none(obj), sort_keys=True, separators=(",", ":"), default=str)


def _without_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_without_none(v) for v in obj]
    return obj


def stage_hash(stage: str, spec: dict[str, Any], input_hashes: dict[str, str], code_version: str) -> str:
    """sha256 over the stage name, its resolved spec, its inputs' hashes and the code version tag."""
    payload = canonical({"stage": stage, "spec": spec, "inputs": input_hashes, "code": code_version})
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class CachedStage:
    """A finished stage: its final directory and ``done.json`` metadata."""

    dir: Path
    marker: dict[str, Any]

    @property
    def artifacts(self) -> dict[str, Any]:
        """What the stage function returned (paths relative to :attr:`dir`)."""
        return dict(self.marker.get("artifacts", {}))

    def path(self, key: str) -> Path:
        """Absolute path of the artifact ``key`` (stored relative to the stage dir)."""
        return self.dir / str(self.marker["artifacts"][key])


def _files(root: Path) -> list[str]:
    """Every regular file under ``root`` (relative, sorted), except the marker."""
    out = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in out if f != DONE)


def jsonable(obj: Any, base: Path) -> Any:
    """Stage return value -> JSON-safe, with paths inside ``base`` made relative to it."""
    if isinstance(obj, Path):
        try:
            return obj.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, base) for v in obj]
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise StageError(f"stage returned a {type(obj).__name__} ({obj!r:.60}); artifacts must be JSON values or paths")


def _atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


class StageCache:
    """The cache of one workspace (``<workspace>/cache``)."""

    def __init__(self, workspace: Path) -> None:
        self.root = Path(workspace) / "cache"

    def dir_for(self, stage: str, h: str) -> Path:
        """Final directory of a stage output."""
        return self.root / stage / h

    def lookup(self, stage: str, h: str) -> CachedStage | None:
        """The finished stage, None when absent; raises :class:`CacheCorruptError` when damaged."""
        final = self.dir_for(stage, h)
        if not final.exists():
            return None
        marker_path = final / DONE
        if not marker_path.is_file():
            raise CacheCorruptError(
                f"cache dir {final} has no {DONE} marker (damaged); delete it or rerun with --force {stage}"
            )
        try:
            marker = json.loads(marker_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            marker = None
        if not isinstance(marker, dict) or not isinstance(marker.get("files", []), list):
            raise CacheCorruptError(f"cache marker {marker_path} is not a stage marker (a JSON object with its files); "
                                    f"delete {final} or --force {stage}")
        missing = [f for f in marker.get("files", []) if not (final / f).is_file()]
        if missing:
            raise CacheCorruptError(
                f"cache dir {final} is missing {len(missing)} declared file(s): {first_few(missing)}; "
                f"delete it or rerun with --force {stage}"
            )
        return CachedStage(final, marker)

    def lock(self, stage: str, h: str) -> FileLock:
        """Inter-process lock for one stage output (``<cache>/<stage>/.<hash>.lock``)."""
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return FileLock(str(d / f".{h}.lock"))

    def cleanup_stale(self) -> list[Path]:
        """Remove temp/trash dirs left by dead processes of this host; returns what was removed.

        Another host's dirs are left alone: its pids cannot be checked here, and one may still be computing.
        """
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        host = _host()
        for stage_dir in self.root.iterdir():
            if not stage_dir.is_dir():
                continue
            for d in stage_dir.iterdir():
                m = _TMP_RE.match(d.name)
                if m and d.is_dir() and m["host"] in (None, host) and not process_alive(int(m["pid"])):
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
        return removed

    def compute(
        self,
        stage: str,
        h: str,
        fn: Callable[[Path], dict[str, Any]],
        meta: dict[str, Any],
        force: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> tuple[CachedStage, bool]:
        """Return the cached output, or run ``fn(tmp_dir)`` and publish it atomically.

        Returns ``(stage, computed)``; ``computed`` is False when the output was reused (possibly after
        waiting for a concurrent run that held the lock).
        """
        lock = self.lock(stage, h)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another process computes it: wait, then reuse its output
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            if not force:
                hit = self.lookup(stage, h)
                if hit is not None:
                    return hit, False
            return self._run(stage, h, fn, meta), True
        finally:
            lock.release()

    def _run(self, stage: str, h: str, fn: Callable[[Path], dict[str, Any]], meta: dict[str, Any]) -> CachedStage:
        pid = os.getpid()
        tmp = self.root / stage / f".tmp-{h}-{_host()}-{pid}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            artifacts = jsonable(fn(tmp) or {}, tmp)
            if DONE in os.listdir(tmp):
                raise StageError(f"stage {stage} wrote {DONE}, which is the cache's marker name")
            marker = {
                **meta,
                "stage": stage,
                "hash": h,
                "artifacts": artifacts,
                "files": _files(tmp),
                "seconds": time.perf_counter() - t0,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "host": socket.gethostname(),
                "pid": pid,
            }
            _atomic_write_json(tmp / DONE, marker)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self.dir_for(stage, h)
        if final.exists():  # forced recompute: swap in the new output, then drop the old one
            trash = final.with_name(f".trash-{h}-{_host()}-{pid}")
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        return CachedStage(final, marker)


def process_alive(pid: int) -> bool:
    """True when a process with this pid runs on this machine (and is not a zombie)."""
    if pid == os.getpid():
        return True
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OverflowError, ValueError):  # a pid no process can have
        return False
