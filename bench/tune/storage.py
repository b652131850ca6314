"""Where a study lives and who is alive in it.

Storage URLs and opening, the study-wide lock, trial heartbeats, and reaping the RUNNING trials of dead workers
(failed, their parameters enqueued again).

A trial's worker is recorded on the trial (``todsynth:host``/``todsynth:pid``, see :func:`claim_trial`); it is
dead when that pid is gone on this host, or (journal) when its ``todsynth:heartbeat`` is older than
``tune.grace_s``; RDB storages use Optuna's own heartbeat table for the latter.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cache import process_alive
from bench.schema import Suite, Tune
from bench.tune.space import tune_spec
from todsynth.errors import ConfigError, first_line

JOURNAL = "optuna.journal"
ATTR_HOST, ATTR_PID, ATTR_BEAT = "todsynth:host", "todsynth:pid", "todsynth:heartbeat"
CONNECT_TIMEOUT_S = 30  # PostgreSQL/MySQL: a host that drops packets fails in this time, not the OS's minutes


def journal_path(suite: Suite) -> Path:
    """Default storage file: ``<workspace>/<suite>/optuna.journal``."""
    return suite.workspace / suite.name / JOURNAL


def storage_url(suite: Suite, storage: str | None = None) -> str:
    """The storage in use: ``--storage``, else ``tune.storage``, else ``journal:<workspace>/<suite>/optuna.journal``."""
    url = storage or tune_spec(suite).storage
    return url if url else f"journal:{journal_path(suite)}"


def redact(url: str) -> str:
    """A storage URL without its password (safe for tags, logs and tune.json)."""
    if url.startswith("journal:") or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: drop anything between :// and @
        head, _, rest = url.partition("://")
        return f"{head}://***@{rest.split('@', 1)[1]}" if "@" in rest else url


def storage_file(url: str) -> Path | None:
    """The file a ``journal:`` or ``sqlite:`` storage keeps its study in; None for a server or an in-memory database.

    Raises:
        sqlalchemy.exc.ArgumentError: a malformed ``sqlite`` URL.
    """
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        db = make_url(url).database
        return Path(db) if db and db != ":memory:" else None
    return None


def storage_file_problem(url: str) -> str | None:
    """Why the file of a ``journal:`` or ``sqlite:///`` storage cannot be made or written here, or None.

    The study lock and the journal/database file go beside each other; a file in the way of their folder or a folder
    this user cannot write in is named before either is opened.
    """
    from todsynth.files import file_problem

    try:
        path = storage_file(url)
    except Exception:  # a malformed URL is open_storage's to report
        return None
    return None if path is None else file_problem(path)


def driver_missing(url: str, exc: ImportError) -> ConfigError:
    """The error for a database URL whose driver module is not installed (named with the package that brings it)."""
    hint = ("pip install mysqlclient (or PyMySQL, with mysql+pymysql://)" if url.startswith("mysql")
            else "pip install psycopg2-binary for PostgreSQL")
    return ConfigError(f"--storage {redact(url)}: database driver missing ({exc}); {hint}")


def repair_journal(path: Path) -> int:
    """Cut a record a killed process left unfinished off the end of a journal file; returns the bytes cut (0: whole).

    Optuna appends one JSON line per record; a kill inside an append leaves a last line without its newline.
    Optuna's reader skips such a line, but the next append is joined to it, and from then on every read of the study
    raises. The cut bytes go to ``<journal>.cut`` (appended), and the file keeps every whole line. Runs under
    Optuna's own journal lock (:class:`JournalFileSymlinkLock`, the backend's default), so no live append is cut.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            keep = pos = size
            while pos > 0:  # back to the last newline, a block at a time
                step = min(1 << 16, pos)
                pos -= step
                f.seek(pos)
                if (i := f.read(step).rfind(b"\n")) >= 0:
                    keep = pos + i + 1
                    break
            else:
                keep = 0
            f.seek(keep)
            cut = f.read()
            with path.with_name(path.name + ".cut").open("ab") as out:
                out.write(cut)
                out.flush()
                os.fsync(out.fileno())
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(cut)
    finally:
        lock.release()


def connect_args(url: str) -> dict[str, Any]:
    """A PostgreSQL/MySQL driver's ``connect_timeout`` (:data:`CONNECT_TIMEOUT_S`) unless the URL's query sets one."""
    from sqlalchemy.engine import make_url

    try:
        query = make_url(url).query
    except Exception:  # a malformed URL is for create_engine / RDBStorage to name
        return {}
    return {} if "connect_timeout" in query else {"connect_timeout": CONNECT_TIMEOUT_S}


def storage_error(url: str, what: str, exc: BaseException) -> ConfigError:
    """The error for a storage that failed (``what``: "cannot open", "cannot connect"), with the driver's first line."""
    return ConfigError(f"--storage {redact(url)}: {what} ({type(exc).__name__}: {first_line(exc)})")


def open_storage(url: str, tune: Tune) -> Any:
    """Optuna storage: JournalStorage over a file for ``journal:<path>``, else RDBStorage with heartbeat + retry."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"--storage {url!r}: give an SQLAlchemy URL (postgresql+psycopg2://user@host/db, "
                          "sqlite:///path.db) or leave it out for the workspace journal file")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif url.startswith(("postgresql", "mysql")):
        kwargs["engine_kwargs"] = {"connect_args": connect_args(url)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval / failed_trial_callback are "experimental"
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=tune.heartbeat_s, grace_period=tune.grace_period_s,
                failed_trial_callback=RetryCopy(tune.max_retry), **kwargs,
            )
    except ImportError as exc:
        raise driver_missing(url, exc) from None
    except Exception as exc:  # sqlalchemy OperationalError, ArgumentError ...
        raise storage_error(url, "cannot open", exc) from None


class StudyLock:
    """A lock held by one process of the study at a time (around count-and-ask, reaping, set-up).

    Journal and sqlite: a file lock beside the file; PostgreSQL: a session advisory lock; MySQL: GET_LOCK.
    Other databases get no lock (the cap may then overshoot by up to workers - 1; a warning says so).
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url, self.study_name = url, study_name
        self.kind = "none"
        self._file: Any = None
        self._engine: Any = None
        if url.startswith(("journal:", "sqlite")):
            from filelock import FileLock

            if (path := storage_file(url)) is not None:  # an in-memory sqlite database gets no lock
                self.kind, self._file = "file", FileLock(str(path.absolute()) + ".tune.lock")
        elif url.startswith(("postgresql", "mysql")):
            import sqlalchemy

            self.kind = "postgresql" if url.startswith("postgresql") else "mysql"
            try:  # the engine loads the driver: the first place a missing one shows
                self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                                        connect_args=connect_args(url))
            except ImportError as exc:
                raise driver_missing(url, exc) from None
        self.key = int.from_bytes(hashlib.sha256(f"todsynth-tune:{study_name}".encode()).digest()[:8], "big",
                                  signed=True)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the ``with`` body."""
        if self.kind == "file":
            with self._file:
                yield
            return
        if self.kind in ("postgresql", "mysql"):
            import sqlalchemy

            try:
                conn = self._engine.connect()
            except sqlalchemy.exc.SQLAlchemyError as exc:  # a server that is down or refuses us: was a traceback
                raise storage_error(self.url, "cannot connect", exc) from None
            with conn:
                if self.kind == "postgresql":
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                else:
                    conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": f"todsynth-{self.key}"})
                try:
                    yield
                finally:
                    if self.kind == "postgresql":
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                    else:
                        conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"todsynth-{self.key}"})
            return
        yield


class RetryCopy:
    """``RetryFailedTrialCallback`` that leaves out the dead run's liveness attrs, constraints and MLflow id."""

    def __init__(self, max_retry: int) -> None:
        from optuna.storages import RetryFailedTrialCallback

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning
            self._inner = RetryFailedTrialCallback(max_retry=max_retry)

    def __call__(self, study: Any, trial: Any) -> None:
        """Enqueue the failed ``trial`` again (as Optuna's callback does), from a copy without those attrs."""
        trial = copy.deepcopy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items()
                              if not k.startswith(("todsynth:", "constraints"))}
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("mlflow_run_id", "metrics")}
        self._inner(study, trial)


def claim_trial(storage: Any, trial_id: int) -> None:
    """Record this process (host, pid) and a first heartbeat on a trial it just asked for."""
    storage.set_trial_system_attr(trial_id, ATTR_HOST, socket.gethostname())
    storage.set_trial_system_attr(trial_id, ATTR_PID, os.getpid())
    storage.set_trial_system_attr(trial_id, ATTR_BEAT, time.time())


class Heartbeat:
    """Background thread proving a trial's worker is alive (RDB: Optuna's heartbeat; journal: a system attr)."""

    def __init__(self, storage: Any, trial_id: int, interval_s: float) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def beat(self) -> None:
        """Record one heartbeat now."""
        from optuna.storages import RDBStorage

        if isinstance(self.storage, RDBStorage):
            self.storage.record_heartbeat(self.trial_id)
        else:
            self.storage.set_trial_system_attr(self.trial_id, ATTR_BEAT, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # the trial was finished (or failed by a reaper): nothing left to prove
                return

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def stale_trials(study: Any, tune: Tune, now: float | None = None) -> list[Any]:
    """RUNNING trials whose worker is gone: same host and dead pid, or (journal) no heartbeat for ``grace_s``."""
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    now = time.time() if now is None else now
    host = socket.gethostname()
    journal = not isinstance(study._storage, RDBStorage)
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.system_attrs
        pid = attrs.get(ATTR_PID)
        if attrs.get(ATTR_HOST) == host and pid is not None and int(pid) != os.getpid() and not process_alive(int(pid)):
            out.append(t)
        elif journal and ATTR_BEAT in attrs and now - float(attrs[ATTR_BEAT]) > tune.grace_period_s:
            out.append(t)
    return out


def reap(study: Any, tune: Tune) -> list[int]:
    """Fail the trials of dead workers and enqueue their retries; returns the failed trial numbers."""
    import optuna
    from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
    from optuna.trial import TrialState

    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB heartbeat (no-op for the journal)
    retry = RetryCopy(tune.max_retry)
    for t in stale_trials(study, tune):
        try:
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        retry(study, study._storage.get_trial(t._trial_id))
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(after - before)
