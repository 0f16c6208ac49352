"""A lock shared by every process that uses one storage, for the few read-then-write steps Optuna's API
cannot do atomically (topping a study up to its exact trial budget).

    PostgreSQL          a session advisory lock (pg_advisory_lock) on its own connection
    SQLite, journal     an flock on a file beside the database / journal (all users share the machine)
    Redis journal       a Redis lock with a timeout (a crashed holder cannot block the pool forever)
    anything else       None: the caller must not rely on a lock (dal-search lays the whole budget at once)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path
from typing import Iterator

import optuna


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def supports_lock(storage: optuna.storages.BaseStorage) -> bool:
    return _kind(storage) is not None


def _backend(storage):
    # RDBStorage is wrapped in a cache by optuna.load_study / create_study; look through it.
    from optuna.storages._cached_storage import _CachedStorage

    return storage._backend if isinstance(storage, _CachedStorage) else storage


def _kind(storage) -> str | None:
    s = _backend(storage)
    if isinstance(s, optuna.storages.RDBStorage):
        dialect = s.engine.dialect.name
        return {"postgresql": "pg", "sqlite": "file"}.get(dialect)
    if isinstance(s, optuna.storages.JournalStorage):
        backend = s._backend
        if isinstance(backend, optuna.storages.journal.JournalFileBackend):
            return "file"
        if isinstance(backend, optuna.storages.journal.JournalRedisBackend):
            return "redis"
    return None


def _file_of(storage) -> Path:
    s = _backend(storage)
    if isinstance(s, optuna.storages.RDBStorage):
        return Path(s.engine.url.database)
    return Path(s._backend._file_path)


@contextlib.contextmanager
def storage_lock(storage: optuna.storages.BaseStorage, name: str, timeout: float = 60.0) -> Iterator[None]:
    """Hold the storage-wide lock `name` (one per study is typical) for the duration of the block."""
    kind = _kind(storage)
    if kind is None:
        raise TypeError(f"no cross-process lock for {type(_backend(storage)).__name__}")
    if kind == "pg":
        from sqlalchemy import text

        key = _key(name)
        with _backend(storage).engine.connect() as conn:
            conn.execute(text("select pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("select pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    elif kind == "file":
        path = _file_of(storage)
        # not "<file>.lock": that is the name of Optuna's own journal-file lock, which must stay free while we hold ours
        lock_path = path.with_name(path.name + ".dal-search.lock")
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        redis_client = _backend(storage)._backend._redis
        with redis_client.lock(f"dal-search:lock:{name}", timeout=timeout, blocking_timeout=timeout):
            yield
