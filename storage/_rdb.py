"""SQL storages: SQLite (local, a few worker processes) and PostgreSQL (pools, docker compose).

Both are Optuna's RDBStorage, which creates its schema on first use and keeps heartbeats in the database
(stamped with the database's clock, so worker clocks do not matter). What this module adds:

- SQLite: the file is switched to WAL before Optuna opens it (readers never block the writer) and every
  connection waits up to 30 s for a lock instead of failing with "database is locked".
- PostgreSQL: a short probe with psycopg before Optuna connects, so a wrong host, password or database name
  is one line naming the fix and nothing is written; a small pool (2 + 2 overflow) per process with
  pre-ping and recycling, so a restarted server is reconnected to rather than surfacing as an error.
- Several processes opening a fresh database at once race to create the schema; the loser retries.
- A RUNNING trial that never beat (its worker died between claiming it and its first heartbeat) is stale once
  the grace period has passed since it started, like a trial whose beats stopped; Optuna's RDBStorage never
  judges such a trial, so it would stay RUNNING for ever. Its start is stamped by the worker's clock (Optuna
  writes it), so for this one case the hosts' clocks and time zones must agree to well within the grace.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit, urlunsplit

import optuna

from dal_search.storage._errors import StorageError, first_line

SQLITE_BUSY_S = 30
PG_PROBE_TIMEOUT_S = 3
PG_POOL = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800,
           "pool_timeout": 60, "connect_args": {"connect_timeout": 10}}


def open_sqlite(url: str, *, must_exist: bool, **heartbeat: Any) -> optuna.storages.RDBStorage:
    path = url[len("sqlite:///"):].partition("?")[0]
    if not path or path.endswith("/"):
        raise StorageError(f"SQLite URL {url!r} names no file; use e.g. sqlite:///runs/dal-search.db")
    if path != ":memory:":
        p = Path(path)
        if p.is_dir():
            raise StorageError(f"SQLite path {p} is a folder; name a file such as {p / 'dal-search.db'}")
        if must_exist and not p.is_file():
            raise StorageError(f"no SQLite storage at {p}; check the path, or run a campaign to create it")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the folder {p.parent} for the SQLite file: {e.strerror}") from None
        _enable_wal(p)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_S}}
    storage = _create(url, engine_kwargs, **heartbeat)
    _sqlite_pragmas(storage)
    return storage


def _enable_wal(path: Path) -> None:
    """WAL is a property of the file: set once, every later connection (Optuna's included) uses it."""
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_S)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(_unwritable(path) or f"{path} is not a usable SQLite database ({first_line(e)}); "
                           f"point --storage at a .db file made by dal-search or at a new path") from None


def _unwritable(path: Path) -> str | None:
    """Why this process cannot write the database, if that is why SQLite failed, else None.

    SQLite says "unable to open database file" or "attempt to write a readonly database" when it is refused
    the file, its folder (WAL keeps PATH-wal and PATH-shm beside it) or those side files: in Docker, a
    folder mounted from the host and owned by root while the container runs as uid 1000. Checked only after
    SQLite failed, so a writable but corrupt file still gets "not a usable SQLite database".
    """
    uid, gid = os.getuid(), os.getgid()
    docker = 'or run the container as your own user: --user "$(id -u):$(id -g)"'
    folder = path.parent
    for side in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if side.exists() and not os.access(side, os.R_OK | os.W_OK):
            return (f"cannot write the SQLite database: {side} is not writable by this user (uid {uid}); "
                    f"fix: chown {uid}:{gid} {side} (on the host, for a mounted folder), {docker}")
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"cannot write the SQLite database {path}: the folder {folder} is not writable by this user "
                f"(uid {uid}); fix: chown {uid}:{gid} {folder} (on the host, for a mounted folder), {docker}")
    return None


def _sqlite_pragmas(storage: optuna.storages.RDBStorage) -> None:
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # The driver's own transaction handling starts a transaction only at the first write, so Optuna's
        # read-check-write steps (WAITING -> RUNNING above all) were not atomic: two workers could both read
        # WAITING and both claim the trial. Every transaction now starts with BEGIN IMMEDIATE (below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_S * 1000}")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe under WAL: a power cut may lose the last commits only
        cur.close()

    @event.listens_for(storage.engine, "begin")
    def _on_begin(conn):  # noqa: ANN001 - take the write lock first; others wait up to busy_timeout
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    storage.engine.dispose()  # the connections Optuna made while creating the schema get the pragmas too


def open_postgres(url: str, **heartbeat: Any) -> optuna.storages.RDBStorage:
    probe_postgres(url)
    return _create(url, dict(PG_POOL), **heartbeat)


def _where(url: str) -> tuple[str, int, str, str]:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or 5432
    except ValueError as e:  # a port that is not a number
        raise StorageError(f"malformed PostgreSQL URL ({e}); use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
                           ) from None
    user = unquote(parts.username) if parts.username else os.environ.get("PGUSER") or _os_user()
    return host, port, user, unquote(parts.path.lstrip("/"))


def _os_user() -> str:
    import getpass

    return getpass.getuser()


def probe_postgres(url: str) -> None:
    """Connect once with a short timeout and turn the server's refusal into a one-line StorageError."""
    import psycopg

    host, port, user, db = _where(url)
    if not db:
        raise StorageError(f"PostgreSQL URL names no database; add /DBNAME at the end (e.g. .../{user})")
    parts = urlsplit(url)
    plain = urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
    try:
        with psycopg.connect(plain, connect_timeout=PG_PROBE_TIMEOUT_S) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as e:
        msg = str(e)
        low = msg.lower()
        if "password authentication failed" in low or "no password supplied" in low:
            raise StorageError(f"authentication failed for user {user!r} on {host}:{port}: check the password "
                               f"in the storage URL / .env (POSTGRES_PASSWORD)") from None
        if "database" in low and "does not exist" in low:
            raise StorageError(f"database {db!r} does not exist on {host}:{port}; create it with: "
                               f"createdb -h {host} -p {port} -U {user} {db}") from None
        if "role" in low and "does not exist" in low:
            raise StorageError(f"PostgreSQL user {user!r} does not exist on {host}:{port}; put an existing user "
                               f"in the storage URL (or create it: createuser -h {host} -p {port} {user})") from None
        if "resolve host" in low or "could not translate host name" in low:
            raise StorageError(f"cannot resolve the PostgreSQL host {host!r}; check the host in the storage URL"
                               ) from None
        if "connection is bad" in low:
            raise StorageError(f"malformed PostgreSQL URL ({first_line(e)}); "
                               f"use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB") from None
        raise StorageError(f"cannot reach PostgreSQL at {host}:{port} ({_reason(msg)}); is PostgreSQL running, "
                           f"and are the host and port in the storage URL right?") from None
    except psycopg.ProgrammingError as e:  # e.g. an unknown ?option in the URL
        raise StorageError(f"malformed PostgreSQL URL ({first_line(e)}); "
                           f"use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB") from None
    except psycopg.Error as e:
        raise StorageError(f"PostgreSQL at {host}:{port} refused the connection: {first_line(e)}") from None


def _reason(msg: str) -> str:
    """psycopg's text is 'connection failed: connection to server at ... failed: REASON'; keep REASON."""
    line = msg.strip().splitlines()[0] if msg.strip() else "no answer"
    return line.rsplit("failed: ", 1)[-1].strip() or line


class HeartbeatRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose stale check also fails RUNNING trials that never beat (see the module note)."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from optuna.trial import TrialState
        from sqlalchemy import orm

        assert self.heartbeat_interval is not None
        grace = timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        stale = []
        with _create_scoped_session(self.scoped_session, True) as session:
            # Beats are stamped by the database's clock, starts by the worker's: each is compared with its own.
            db_now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
            local_now = datetime.now()
            running = (session.query(models.TrialModel)
                       .options(orm.selectinload(models.TrialModel.heartbeats))
                       .filter(models.TrialModel.state == TrialState.RUNNING,
                               models.TrialModel.study_id == study_id).all())
            for trial in running:
                if trial.heartbeats:
                    if db_now - trial.heartbeats[0].heartbeat > grace:
                        stale.append(trial.trial_id)
                elif trial.datetime_start is not None and local_now - trial.datetime_start > grace:
                    stale.append(trial.trial_id)
        return stale


def _create(url: str, engine_kwargs: dict, *, heartbeat_interval: int | None, grace_period: int | None,
            callback: Callable | None) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    def make() -> optuna.storages.RDBStorage:
        return HeartbeatRDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
            grace_period=grace_period if heartbeat_interval else None,
            heartbeat_stale_trial_callback=callback if heartbeat_interval else None)

    for attempt in range(3):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                sqlalchemy.exc.OperationalError) as e:
            text = first_line(e).lower()
            # Another process created the schema between our check and our CREATE TABLE: open it again.
            if attempt < 2 and ("already exists" in text or "duplicate" in text or "unique constraint" in text
                                or "locked" in text):
                time.sleep(0.2 * (attempt + 1))
                continue
            if "permission denied" in text:
                raise StorageError(f"the storage user may not create Optuna's tables ({first_line(e)}); grant it "
                                   f"CREATE on the schema, or let an owner open the storage once") from None
            raise StorageError(f"cannot open the storage: {first_line(e)}") from None
        except sqlalchemy.exc.SQLAlchemyError as e:
            raise StorageError(f"cannot open the storage: {first_line(e)}") from None
        except RuntimeError as e:  # Optuna's schema-version check
            if "upgrade" in str(e).lower():
                raise StorageError(f"the storage was written by another Optuna version; upgrade its schema with: "
                                   f"optuna storage upgrade --storage URL") from None
            raise
    raise AssertionError("unreachable")
