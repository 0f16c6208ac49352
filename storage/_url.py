"""One function from what a user types (a URL or a path) to an Optuna storage.

    (nothing)                     sqlite:///runs/dal-search.db, the embedded default
    runs/x.db, sqlite:///x.db     SQLite, in WAL mode with a 30 s busy timeout, so a few local worker
                                  processes share it without "database is locked"
    postgresql+psycopg://...      PostgreSQL (postgresql:// and postgres:// are taken as psycopg 3)
    journal:PATH, PATH.log        Optuna's journal file storage
    redis://host:port/db          Optuna's journal on Redis
    grpc://host:port              Optuna's gRPC storage proxy (`dal-search storage-proxy`), for large pools

RDB storages get heartbeats (a trial whose worker stops beating for `grace_period` seconds is failed, and
RetryHeartbeatStaleTrialCallback queues it again with the same params), a small connection pool with
pre-ping (so a restarted database is reconnected to, not an error), and their schema on first use.

The server is probed with a short timeout before Optuna touches it, so an unreachable host, a wrong
password or a missing database is one line (`StorageError`) naming the fix, and nothing gets written.
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

# Heartbeats and the retry callback are marked experimental in Optuna 5; they are what we rely on, knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_URL = "sqlite:///runs/dal-search.db"
MAX_RETRY = 3
ACCEPTED = ("sqlite:///PATH.db (or a bare PATH.db), postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB, "
            "journal:PATH.log, redis://HOST:PORT/DB, grpc://HOST:PORT")


class StorageError(ValueError):
    """A storage URL is malformed or its server cannot be used; one line naming the fix."""


def describe_storage(url: str | None) -> str:
    """The URL with any password masked, for logs and messages."""
    url = url or DEFAULT_URL
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def normalise_url(url: str | None) -> str:
    url = (url or "").strip() or DEFAULT_URL
    if url.startswith(("postgres://", "postgresql://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url and not url.startswith("journal:"):
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            url = "sqlite:///" + url
        elif url.endswith((".log", ".journal")):
            url = "journal:" + url
    return url


def open_storage(url: str | None = None, *, heartbeat_interval: int | None = 60, grace_period: int | None = None,
                 for_workers: bool = True) -> optuna.storages.BaseStorage:
    url = normalise_url(url)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat_interval else None
    if url.startswith("sqlite:///"):
        return _sqlite(url, heartbeat_interval, grace_period, retry)
    if url.startswith("postgresql+psycopg://"):
        return _postgres(url, heartbeat_interval, grace_period, retry)
    if url.startswith("journal:"):
        return _journal_file(url[len("journal:"):])
    if url.startswith("redis://"):
        return _redis(url)
    if url.startswith("grpc://"):
        return _grpc(url)
    raise StorageError(f"unsupported storage {describe_storage(url)!r}; use one of: {ACCEPTED}")


def _rdb(url: str, engine_kwargs: dict, heartbeat_interval, grace_period, retry) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
        grace_period=grace_period if heartbeat_interval else None,
        heartbeat_stale_trial_callback=retry)


def _sqlite(url, heartbeat_interval, grace_period, retry) -> optuna.storages.RDBStorage:
    path = url[len("sqlite:///"):]
    if not path or path.endswith("/"):
        raise StorageError(f"SQLite URL {url!r} names no file; use e.g. sqlite:///runs/dal-search.db")
    if path != ":memory:":
        p = Path(path)
        if p.is_dir():
            raise StorageError(f"SQLite path {p} is a folder; name a file such as {p / 'dal-search.db'}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the folder {p.parent} for the SQLite file: {e.strerror}") from None
    storage = _rdb(url, {"connect_args": {"timeout": 30}}, heartbeat_interval, grace_period, retry)
    _sqlite_pragmas(storage)
    return storage


def _sqlite_pragmas(storage: optuna.storages.RDBStorage) -> None:
    """WAL lets readers and one writer proceed together; busy_timeout makes writers wait, not fail."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    engine.dispose()  # connections made before the listener existed get the pragmas on reconnect


def _postgres(url, heartbeat_interval, grace_period, retry) -> optuna.storages.RDBStorage:
    _probe_postgres(url)
    engine_kwargs = {"pool_size": 2, "max_overflow": 4, "pool_pre_ping": True, "pool_recycle": 1800,
                     "connect_args": {"connect_timeout": 10}}
    return _rdb(url, engine_kwargs, heartbeat_interval, grace_period, retry)


def _probe_postgres(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5432
    user = unquote(parts.username) if parts.username else os.environ.get("PGUSER", "")
    db = parts.path.lstrip("/")
    if not db:
        raise StorageError(f"PostgreSQL URL {describe_storage(url)!r} names no database; add /DBNAME at the end")
    plain = urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
    try:
        with psycopg.connect(plain, connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as e:
        msg = str(e).lower()
        if "password authentication failed" in msg or "no password supplied" in msg:
            raise StorageError(f"authentication failed for user {user!r} on {host}:{port}: check the password "
                               f"in the storage URL (or POSTGRES_PASSWORD in .env)") from None
        if "does not exist" in msg and "database" in msg:
            raise StorageError(f"database {db!r} does not exist on {host}:{port}; create it with: "
                               f"createdb -h {host} -p {port} {db}") from None
        if "role" in msg and "does not exist" in msg:
            raise StorageError(f"PostgreSQL user {user!r} does not exist on {host}:{port}; use an existing "
                               f"user in the storage URL") from None
        raise StorageError(f"cannot reach PostgreSQL at {host}:{port} ({_first_line(e)}); is it running, "
                           f"and is the host/port in the storage URL right?") from None


def _journal_file(path: str) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if not path:
        raise StorageError("journal storage needs a file: journal:./runs/dal-search.log")
    p = Path(path)
    if p.is_dir():
        raise StorageError(f"journal path {p} is a folder; name a file such as {p / 'dal-search.log'}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the folder {p.parent} for the journal: {e.strerror}") from None
    return optuna.storages.JournalStorage(JournalFileBackend(str(p), lock_obj=JournalFileOpenLock(str(p))))


def _redis(url: str) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalRedisBackend

    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except (redis.RedisError, ValueError) as e:
        parts = urlsplit(url)
        raise StorageError(f"cannot reach Redis at {parts.hostname}:{parts.port or 6379} ({_first_line(e)}); "
                           f"is it running?") from None
    return optuna.storages.JournalStorage(JournalRedisBackend(url))


def _grpc(url: str) -> optuna.storages.BaseStorage:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise StorageError(f"gRPC storage URL {url!r} needs a host and port: grpc://HOST:PORT")
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=3).close()
    except OSError:
        raise StorageError(f"no storage proxy listens on {parts.hostname}:{parts.port}; start one with: "
                           f"dal-search storage-proxy --storage URL --port {parts.port}") from None
    return optuna.storages.GrpcStorageProxy(host=parts.hostname, port=parts.port)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
