"""Optuna's journal storages: an append-only log in a file (no server at all) or in Redis.

Both get heartbeats through `storage._heartbeat` (Optuna 5 has none for journals). The Redis URL may carry
`?prefix=NAME` (a dal-search extension, stripped before redis-py sees the URL) so several projects or test
runs share one Redis database without seeing each other's studies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dal_search.storage._errors import StorageError, first_line
from dal_search.storage._heartbeat import HeartbeatJournalStorage

REDIS_PROBE_TIMEOUT_S = 3


def open_journal_file(path: str, *, must_exist: bool, **heartbeat: Any) -> HeartbeatJournalStorage:
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if not path:
        raise StorageError("journal storage needs a file: journal:./runs/dal-search.log")
    p = Path(path)
    if p.is_dir():
        raise StorageError(f"journal path {p} is a folder; name a file such as {p / 'dal-search.log'}")
    if must_exist and not p.is_file():
        raise StorageError(f"no journal storage at {p}; check the path, or run a campaign to create it")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the folder {p.parent} for the journal: {e.strerror}") from None
    try:
        backend = JournalFileBackend(str(p), lock_obj=JournalFileOpenLock(str(p)))
        return HeartbeatJournalStorage(backend, **_journal_kwargs(heartbeat))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise StorageError(f"{p} is not an Optuna journal ({first_line(e)}); point the storage at a journal "
                           f"written by dal-search or at a new file") from None
    except OSError as e:
        raise StorageError(f"cannot open the journal {p}: {e.strerror or first_line(e)}") from None


def split_redis_url(url: str) -> tuple[str, str]:
    """(the URL redis-py understands, the key prefix) from redis://HOST:PORT/DB[?prefix=NAME]."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "".join(v for k, v in query if k == "prefix")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), prefix


def open_redis(url: str, **heartbeat: Any) -> HeartbeatJournalStorage:
    import redis
    from optuna.storages.journal import JournalRedisBackend

    plain, prefix = split_redis_url(url)
    try:
        parts = urlsplit(plain)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        client = redis.Redis.from_url(plain, socket_connect_timeout=REDIS_PROBE_TIMEOUT_S,
                                      socket_timeout=REDIS_PROBE_TIMEOUT_S)
    except ValueError as e:
        raise StorageError(f"malformed Redis URL ({first_line(e)}); use redis://HOST:PORT/DB") from None
    try:
        client.ping()
    except redis.AuthenticationError:
        raise StorageError(f"Redis at {where} refused the login: check the password in the URL "
                           f"(redis://:PASSWORD@HOST:PORT/DB)") from None
    except redis.ResponseError as e:  # e.g. a database index the server does not have
        raise StorageError(f"Redis at {where} refused the storage URL: {first_line(e)}") from None
    except (redis.RedisError, OSError) as e:
        raise StorageError(f"cannot reach Redis at {where} ({first_line(e)}); is Redis running, and are the "
                           f"host and port in the storage URL right?") from None
    finally:
        client.close()
    return HeartbeatJournalStorage(JournalRedisBackend(plain, prefix=prefix), **_journal_kwargs(heartbeat))


def _journal_kwargs(heartbeat: dict[str, Any]) -> dict[str, Any]:
    return {"heartbeat_interval": heartbeat["heartbeat_interval"], "grace_period": heartbeat["grace_period"],
            "heartbeat_stale_trial_callback": heartbeat["callback"]}
