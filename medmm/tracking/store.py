"""A local SQLite tracking store that several processes can open at once.

MLflow creates a missing SQLite store by running its schema migrations in whichever process
touches it first; two processes doing so at once race and can leave the store broken for
every later client. :func:`prepare_store` creates the store under an inter-process lock
(``fcntl.flock`` on ``<db>.lock`` beside the database), switches it to write-ahead logging
(readers do not block the writer), and sets a busy timeout so a write that meets another
process's write waits and retries instead of failing with "database is locked".
Any other tracking URI (a server, a folder) is returned untouched.
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
BUSY_TIMEOUT_S = 60.0
_prepared: set[str] = set()  # stores this process has already prepared


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
