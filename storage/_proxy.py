"""Optuna's gRPC storage proxy, both ends.

For pools too large for direct database connections: thousands of workers talk gRPC to a few proxies, each
holding one small connection pool and Optuna's trial cache. `run_storage_proxy` serves any storage URL;
`open_grpc` is what `open_storage("grpc://HOST:PORT")` returns, with heartbeats recorded through the proxy
(as trial system attrs: Optuna's gRPC protocol carries no heartbeat of its own).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

import optuna

from dal_search.storage._errors import StorageError
from dal_search.storage._heartbeat import HeartbeatGrpcStorageProxy

CONNECT_TIMEOUT_S = 5
READY_TIMEOUT_S = 3  # a gRPC handshake; something else on the port never completes it
LOCK_PREFIX = "dal-search:lock:"
log = logging.getLogger("dal-search.storage")


def open_grpc(url: str, **heartbeat: Any) -> HeartbeatGrpcStorageProxy:
    try:
        parts = urlsplit(url)
        host, port, path = parts.hostname, parts.port, parts.path
    except ValueError:  # a port that is not a number
        host, port, path = None, None, ""
    if not host or not port or path not in ("", "/"):
        raise StorageError(f"gRPC storage URL {url!r} needs a host and a port only: grpc://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        raise StorageError(f"no storage proxy listens on {host}:{port}; start one with: "
                           f"dal-search storage-proxy --storage URL --host {host} --port {port}") from None
    storage = HeartbeatGrpcStorageProxy(host=host, port=port, heartbeat_interval=heartbeat["heartbeat_interval"],
                                        grace_period=heartbeat["grace_period"],
                                        heartbeat_stale_trial_callback=heartbeat["callback"])
    try:
        storage.wait_server_ready(timeout=READY_TIMEOUT_S)
    except ConnectionError:
        storage.close()
        raise StorageError(f"{host}:{port} answers but is not a gRPC storage proxy; check the port "
                           f"(dal-search storage-proxy listens on 13000 by default)") from None
    return storage


def run_storage_proxy(url: str | None, host: str = "127.0.0.1", port: int = 13000) -> None:
    """Serve the storage of `url` on host:port until interrupted; workers then use grpc://host:port.

    Bad URLs and a port already taken raise StorageError before anything is served. Stale trials are
    judged by the workers through the proxy, so the proxy's own storage runs no heartbeat.
    """
    from optuna.storages import run_grpc_proxy_server

    from dal_search.storage._url import open_storage

    _check_port_free(host, port)
    storage = open_storage(url, heartbeat_interval=None)
    # Optuna's advice: serve RDBStorage through its trial cache, as create_study/load_study would.
    run_grpc_proxy_server(optuna.storages.get_storage(storage), host=host, port=port)


def _check_port_free(host: str, port: int) -> None:
    """gRPC binds with SO_REUSEPORT, so a second proxy on a taken port would start silently; a plain bind
    tells the truth."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise StorageError(f"cannot resolve the proxy host {host!r}; use an address of this machine, "
                           f"e.g. 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StorageError(f"port {port} on {host} is already in use; choose another with --port"
                                   ) from None
            raise StorageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


@contextlib.contextmanager
def proxy_lock(storage: optuna.storages.BaseStorage, name: str, timeout: float = 60.0,
               poll: float = 0.05) -> Iterator[None]:
    """A lock shared by every client of a gRPC storage proxy, which offers none of its own: holding it is having
    created the study `dal-search:lock:NAME`, which the storage behind the proxy lets exactly one caller create.

    The study exists only while the lock is held (other tools listing studies may glimpse it). A holder that
    died leaves it behind: a waiter that has seen the same lock study for `timeout` seconds deletes it, by id,
    so two waiters cannot delete each other's fresh lock, and takes its turn. Hold it for short steps only.
    """
    from optuna.exceptions import DuplicatedStudyError
    from optuna.study import StudyDirection

    study_name = LOCK_PREFIX + name
    seen: tuple[int, float] | None = None
    while True:
        try:
            lock_id = storage.create_new_study([StudyDirection.MINIMIZE], study_name)
            break
        except DuplicatedStudyError:
            pass
        try:
            held = storage.get_study_id_from_name(study_name)
        except KeyError:
            continue  # released meanwhile
        now = time.monotonic()
        if seen is None or seen[0] != held:
            seen = (held, now)
        elif now - seen[1] > timeout:
            log.warning("lock %s held for over %.0f s (its holder died?); breaking it", name, timeout)
            with contextlib.suppress(KeyError):
                storage.delete_study(held)
            continue
        time.sleep(poll)
    try:
        yield
    finally:
        try:
            storage.delete_study(lock_id)
        except Exception as e:  # noqa: BLE001 - an outage: the lock is broken after `timeout` by a waiter
            log.warning("could not release lock %s (%s); it expires in %.0f s", name, type(e).__name__, timeout)
