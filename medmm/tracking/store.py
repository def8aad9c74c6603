"""A local SQLite tracking store that several processes can open at once.

MLflow creates a missing SQLite store by running its schema migrations in whichever process
touches it first; two processes doing so at once race and can leave the store broken for
every later client. :func:`prepare_store` creates the store under an inter-process lock
(``fcntl.flock`` on ``<db>.lock`` beside the database), switches it to write-ahead logging
(readers do not block the writer), and sets a busy timeout so a write that meets another
process's write waits and retries instead of failing with "database is locked".
Any other tracking URI (a server, a folder) is returned untouched.

:func:`check_store` tells, without creating anything and in well under a second (a server
that does not answer: its timeout), whether a run could be recorded there at all: the SQLite file's folder writable (or creatable), an
existing file a SQLite database, a server answering. Pipelines call it before they open a run.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from medmm.config.core import ConfigError

SQLITE_PREFIX = "sqlite:///"
BUSY_TIMEOUT_S = 60.0
SERVER_TIMEOUT_S = 3.0  # a tracking server on the same network answers /health in milliseconds
SQLITE_HEADER = b"SQLite format 3\x00"
_prepared: set[str] = set()  # stores this process has already prepared


def default_tracking_uri() -> str:
    """``sqlite:///<cwd>/mlflow.db`` (mlflow 3 refuses a plain folder store by default)."""
    return f"{SQLITE_PREFIX}{(Path.cwd() / 'mlflow.db').resolve()}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path(tracking_uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0])


@contextmanager
def store_lock(db: Path):
    """Hold an exclusive inter-process lock on ``<db>.lock`` (released when the process dies)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def retry_busy(action, timeout_s: float = BUSY_TIMEOUT_S):
    """``action()``, retried with backoff while SQLite answers "database is locked"."""
    deadline, pause = time.monotonic() + timeout_s, 0.05
    while True:
        try:
            return action()
        except Exception as exc:  # sqlite3 and SQLAlchemy (inside MLflow) wrap the busy error differently
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def _enable_wal(db: Path) -> None:
    with sqlite3.connect(db, timeout=BUSY_TIMEOUT_S) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def prepare_store(tracking_uri: str) -> str:
    """Create (once, under the lock) and open a SQLite tracking store; returns the URI."""
    db = sqlite_path(tracking_uri)
    if db is None or tracking_uri in _prepared:
        return tracking_uri
    # imported here: MLflow takes seconds to load, and medmm.tracking's callers load it only when they log
    from mlflow.tracking import MlflowClient

    with store_lock(db):
        retry_busy(lambda: _enable_wal(db))
        client = MlflowClient(tracking_uri)
        # the first touch of each store (tracking, model registry) runs its migrations
        retry_busy(lambda: client.search_experiments(max_results=1))
        retry_busy(lambda: client.search_registered_models(max_results=1))
    _prepared.add(tracking_uri)
    return tracking_uri


def writable_folder_problem(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (or in the nearest existing folder above it,
    where it does not exist yet); None when one can. Tries a real temporary file: permission
    bits alone say nothing for root or on a read-only mount."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".medmm-write-check-"):
            pass
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or type(exc).__name__})"
    return None


def _check_sqlite(tracking_uri: str, db: Path) -> None:
    if db.exists():
        if not db.is_file():
            raise ConfigError(f"tracking.uri {tracking_uri}: {db} is not a file")
        try:
            with open(db, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise ConfigError(f"tracking.uri {tracking_uri}: cannot read {db} ({exc.strerror})") from None
        if header and header != SQLITE_HEADER:
            raise ConfigError(f"tracking.uri {tracking_uri}: {db} is not a SQLite database")
        if not os.access(db, os.R_OK | os.W_OK):
            raise ConfigError(f"tracking.uri {tracking_uri}: {db} is not writable")
    problem = writable_folder_problem(db.parent)  # SQLite writes its journal and lock files beside the database
    if problem:
        raise ConfigError(f"tracking.uri {tracking_uri}: {problem}")


def _check_server(tracking_uri: str, timeout_s: float) -> None:
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) only, checked above
            response.read(64)
    except urllib.error.HTTPError:
        return  # something answers over HTTP (a proxy may refuse /health); MLflow's own errors name the rest
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"tracking.uri {tracking_uri}: no tracking server answers ({reason})") from None


def check_store(tracking_uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> str:
    """Raise :class:`ConfigError` (one line naming the URI) where no run could be recorded at
    ``tracking_uri``: a SQLite store whose folder cannot be written or whose file is not a
    SQLite database, or an http(s) server that does not answer within ``timeout_s``. Creates
    nothing. Other stores (a folder, a database server) are left to MLflow. Returns the URI."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        _check_sqlite(tracking_uri, db)
    elif tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri, timeout_s)
    return tracking_uri
