"""One function from what a user types (a URL or a path) to an Optuna storage.

    (nothing)                     $DAL_SEARCH_STORAGE, else sqlite:///runs/dal-search.db (the embedded default)
    runs/x.db, sqlite:///x.db     SQLite in WAL mode with a 30 s busy timeout, so a few local worker processes
                                  share it without "database is locked" (also .sqlite, .sqlite3)
    postgresql+psycopg://...      PostgreSQL (postgresql:// and postgres:// are taken as psycopg 3)
    journal:PATH, PATH.log        Optuna's journal in a file (also PATH.journal)
    redis://HOST:PORT/DB          Optuna's journal in Redis (?prefix=NAME keeps several apart; rediss:// too)
    grpc://HOST:PORT              Optuna's gRPC storage proxy (`dal-search storage-proxy`), for large pools

Every storage gets heartbeats (a trial whose worker stops beating for `grace_period` seconds, default twice
`heartbeat_interval`, is failed by the next worker's stale check) and `RetryHeartbeatStaleTrialCallback`,
which queues the failed trial again as a WAITING trial with the same params (system_attrs `failed_trial`,
`retry_history`), at most MAX_RETRY times. RDB storages keep beats in the database; the journal and the gRPC
client keep them as a trial system attr (see storage._heartbeat). `heartbeat_interval=None` turns both off.

Heartbeat settings are shared by every process of a pool (local workers, `dal-search worker`, the Ray pool's
driver and actors), all read in one place, `heartbeat_settings()`: DAL_SEARCH_HEARTBEAT (seconds between
beats, default 60) and DAL_SEARCH_GRACE (seconds without a beat before a trial is stale, default twice the
interval). `open_storage` uses them unless given values of its own; a value that is not a positive number is
a StorageError naming the variable.

Servers are probed with a short timeout before Optuna touches them, so an unreachable host, a wrong password
or a missing database is one line (`StorageError`) naming the fix, and nothing is written.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from dal_search.storage._errors import StorageError

# Heartbeats, the retry callback and the gRPC proxy are experimental in Optuna 5; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_URL = "sqlite:///runs/dal-search.db"
ENV_VAR = "DAL_SEARCH_STORAGE"
HEARTBEAT_VAR, GRACE_VAR = "DAL_SEARCH_HEARTBEAT", "DAL_SEARCH_GRACE"
DEFAULT_HEARTBEAT_S = 60
MAX_RETRY = 3
ACCEPTED = ("sqlite:///PATH.db (or a bare PATH.db), postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB, "
            "journal:PATH.log (or a bare PATH.log), redis://HOST:PORT/DB, grpc://HOST:PORT")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal")


def describe_storage(url: str | None) -> str:
    """The storage URL as `open_storage` reads it, with any password masked: safe for logs and messages."""
    url = normalise_url(url)
    url = re.sub(r"(//[^:/@?#]*:)[^@/]*@", r"\1***@", url)  # user:password@ (also redis://:password@)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def normalise_url(url: str | None) -> str:
    """The canonical form of what a user typed: default applied, bare paths and postgres aliases rewritten."""
    url = (url or "").strip() or os.environ.get(ENV_VAR, "").strip() or DEFAULT_URL
    for alias in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgres+psycopg://"):
        if url.startswith(alias):
            return "postgresql+psycopg://" + url[len(alias):]
    if "://" not in url and not url.startswith("journal:"):
        if url.lower().endswith(_SQLITE_SUFFIXES):
            return "sqlite:///" + url
        if url.lower().endswith(_JOURNAL_SUFFIXES):
            return "journal:" + url
    return url


class _FromEnv:
    def __repr__(self) -> str:
        return f"${HEARTBEAT_VAR} / ${GRACE_VAR}"


FROM_ENV: Any = _FromEnv()


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from DAL_SEARCH_HEARTBEAT (default 60) and
    DAL_SEARCH_GRACE (default twice the interval). Every worker of every kind gets its settings here, so a
    pool agrees on when a trial is stale. Whole seconds (Optuna's contract); "1.5" rounds up to 2. A value
    that is not a positive number is a StorageError naming the variable."""
    interval = _seconds(HEARTBEAT_VAR, DEFAULT_HEARTBEAT_S)
    return interval, _seconds(GRACE_VAR, 2 * interval)


def _seconds(var: str, default: int) -> int:
    import math

    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise StorageError(f"{var}={raw!r} is not a positive number of seconds; set it to e.g. "
                           f"{var}={default} or unset it")
    return max(1, math.ceil(value))


def open_storage(url: str | None = None, *, heartbeat_interval: int | None = FROM_ENV,
                 grace_period: int | None = FROM_ENV, for_workers: bool = True) -> optuna.storages.BaseStorage:
    """The Optuna storage named by `url` (see the module docstring for the forms); StorageError if unusable.

    Heartbeats: by default both settings come from `heartbeat_settings()` (the environment); an explicit
    `heartbeat_interval` takes its grace period from `grace_period` (None: twice the interval), and
    `heartbeat_interval=None` turns heartbeats off. `for_workers=False` is for readers (studies, export,
    report, dashboard): no heartbeats, and a SQLite or journal file that does not exist is an error rather
    than being created empty.
    """
    url = normalise_url(url)
    if heartbeat_interval is FROM_ENV:
        heartbeat_interval, env_grace = heartbeat_settings() if for_workers else (None, None)
        grace_period = env_grace if grace_period is FROM_ENV else grace_period
    elif grace_period is FROM_ENV:
        grace_period = None
    if not for_workers:
        heartbeat_interval = None
    if heartbeat_interval is not None and heartbeat_interval <= 0:
        raise StorageError(f"heartbeat interval must be a positive number of seconds, got {heartbeat_interval}")
    if grace_period is not None and grace_period <= 0:
        raise StorageError(f"heartbeat grace period must be a positive number of seconds, got {grace_period}")
    beat: dict[str, Any] = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period if heartbeat_interval else None,
        "callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat_interval else None,
    }
    scheme = url.split(":", 1)[0].lower()
    if url.startswith("sqlite:///"):
        from dal_search.storage._rdb import open_sqlite

        return open_sqlite(url, must_exist=not for_workers, **beat)
    if url.startswith("postgresql+psycopg://"):
        from dal_search.storage._rdb import open_postgres

        return open_postgres(url, **beat)
    if url.startswith("journal:"):
        from dal_search.storage._journal import open_journal_file

        return open_journal_file(url[len("journal:"):], must_exist=not for_workers, **beat)
    if url.startswith(("redis://", "rediss://")):
        from dal_search.storage._journal import open_redis

        return open_redis(url, **beat)
    if url.startswith("grpc://"):
        from dal_search.storage._proxy import open_grpc

        return open_grpc(url, **beat)
    hint = {"sqlite": "SQLite needs three slashes: sqlite:///relative/path.db or sqlite:////absolute/path.db; ",
            "mysql": "MySQL is not supported; "}.get(scheme.split("+")[0], "")
    raise StorageError(f"unsupported storage {describe_storage(url)!r}; {hint}use one of: {ACCEPTED}")


__all__ = ["open_storage", "describe_storage", "normalise_url", "heartbeat_settings", "StorageError", "DEFAULT_URL",
           "ACCEPTED", "MAX_RETRY"]
