"""storage.locks: one lock shared by every process of a storage (the slot top-up relies on it), on every storage
that has one; and holding it never blocks the storage's own writes."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest

from dal_search.storage import open_storage
from dal_search.storage.locks import storage_lock, supports_lock


def _url(kind: str, tmp_path: Path, request) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'l.db'}"
    if kind == "journal":
        return f"journal:{tmp_path / 'l.log'}"
    if kind == "redis":
        redis = pytest.importorskip("redis")
        try:
            redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"no Redis on 127.0.0.1:6379: {e}")
        return "redis://127.0.0.1:6379/0"
    return request.getfixturevalue("pg_url")


def _hold(url: str, name: str, log: str, start) -> None:
    storage = open_storage(url, heartbeat_interval=None)
    start.wait()
    for _ in range(3):
        with storage_lock(storage, name):
            with open(log, "a") as fh:
                fh.write(f"in {time.monotonic()}\n")
            time.sleep(0.05)
            with open(log, "a") as fh:
                fh.write(f"out {time.monotonic()}\n")


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres", "redis"])
def test_lock_excludes_other_processes(kind, tmp_path, request):
    url = _url(kind, tmp_path, request)
    assert supports_lock(open_storage(url, heartbeat_interval=None))
    log = str(tmp_path / "order.txt")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    name = f"t-{uuid.uuid4().hex[:8]}"
    procs = [ctx.Process(target=_hold, args=(url, name, log, start)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    events = [line.split()[0] for line in Path(log).read_text().splitlines()]
    assert len(events) == 18
    assert events == ["in", "out"] * 9  # never two holders at once


def test_holding_the_lock_leaves_the_journal_writable(tmp_path):
    """Regression: the lock file was once `<journal>.lock`, the name of Optuna's own journal lock, so every
    journal write made while holding it waited for Optuna's stale-lock breaker."""
    path = tmp_path / "j.log"
    storage = open_storage(f"journal:{path}")
    study = optuna.create_study(storage=storage, study_name="s")
    done = threading.Event()

    def write():
        study.enqueue_trial({"x": 1.0}, skip_if_exists=False)
        done.set()

    with storage_lock(storage, "slots:s"):
        t = threading.Thread(target=write, daemon=True)
        t.start()
        t.join(timeout=20)  # one append takes milliseconds; the old collision took >= 30 s
        assert done.is_set(), "a journal write blocked while dal-search held its storage lock"
    assert len(study.trials) == 1
