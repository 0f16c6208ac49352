"""Storage URLs against real servers: SQLite, journal file, PostgreSQL (shared and private), Redis, gRPC proxy.

What a user would notice: every form of URL opens a working storage; every bad one is one line naming the fix
and leaves nothing behind; local workers share SQLite without "database is locked"; a worker killed mid-trial
has its trial failed and re-queued with the same params, on every kind of storage.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from dal_search.storage import DEFAULT_URL, StorageError, describe_storage, normalise_url, open_storage, run_storage_proxy
from tests import pg, pgserver

ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed:UserWarning")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder with no storage override, so we can see every file a call leaves."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAL_SEARCH_STORAGE", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def pg_db():
    reason = pg.unreachable()
    if reason:
        pytest.skip(reason)
    with pg.scratch_database() as url:
        yield url


# ---------------------------------------------------------------- URL forms

def test_url_forms_and_masking(in_tmp, monkeypatch):
    assert normalise_url(None) == normalise_url("  ") == DEFAULT_URL == "sqlite:///runs/dal-search.db"
    assert normalise_url("x/y.db") == "sqlite:///x/y.db" and normalise_url("y.sqlite") == "sqlite:///y.sqlite"
    assert normalise_url("x/y.log") == "journal:x/y.log" and normalise_url("y.journal") == "journal:y.journal"
    for alias in ("postgres://u:p@h/db", "postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"):
        assert normalise_url(alias) == "postgresql+psycopg://u:p@h/db"
    assert describe_storage("postgres://u:hunter2@h:5/db") == "postgresql+psycopg://u:***@h:5/db"
    assert describe_storage("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert "hunter2" not in describe_storage("postgresql://u@h/db?password=hunter2")
    assert describe_storage("grpc://h:13000") == "grpc://h:13000"
    monkeypatch.setenv("DAL_SEARCH_STORAGE", "journal:elsewhere.log")
    assert normalise_url(None) == "journal:elsewhere.log" and normalise_url("a.db") == "sqlite:///a.db"


def test_default_storage_is_sqlite_in_wal_mode_under_runs(in_tmp):
    storage = open_storage(None)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.get_heartbeat_interval() == 60
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), RetryHeartbeatStaleTrialCallback)
    optuna.create_study(storage=storage, study_name="s")
    with sqlite3.connect(in_tmp / "runs" / "dal-search.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with storage.engine.connect() as conn:  # Optuna's own connections wait for locks instead of failing
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    assert open_storage("runs/dal-search.db", heartbeat_interval=None).get_heartbeat_interval() is None


@pytest.mark.parametrize("url, fragments", [
    ("foo", ["unsupported storage 'foo'", "use one of: sqlite:///PATH.db"]),
    ("mysql://u@h/db", ["MySQL is not supported", "postgresql+psycopg://"]),
    ("sqlite://x.db", ["three slashes"]),
    ("sqlite:///", ["names no file"]),
    ("ftp://x/y", ["unsupported storage"]),
    ("postgresql://u@127.0.0.1:notaport/db", ["malformed PostgreSQL URL"]),
    ("postgresql://u@127.0.0.1:5432", ["names no database"]),
    ("postgresql+psycopg://postgres@127.0.0.1:1/x", ["cannot reach PostgreSQL at 127.0.0.1:1", "is PostgreSQL running"]),
    ("postgres://postgres@no-such-host.invalid/x", ["cannot resolve the PostgreSQL host 'no-such-host.invalid'"]),
    ("redis://127.0.0.1:1/0", ["cannot reach Redis at 127.0.0.1:1", "is Redis running"]),
    ("grpc://127.0.0.1:1", ["no storage proxy listens on 127.0.0.1:1", "dal-search storage-proxy"]),
    ("grpc://nohostport", ["needs a host and a port"]),
])
def test_bad_urls_are_one_line_naming_the_fix_and_write_nothing(in_tmp, url, fragments):
    with pytest.raises(StorageError) as e:
        open_storage(url)
    msg = str(e.value)
    assert all(f in msg for f in fragments), msg
    assert "\n" not in msg
    assert list(in_tmp.iterdir()) == []


def test_grpc_url_on_a_port_that_is_not_a_proxy(pg_db):
    with pytest.raises(StorageError, match=f"127.0.0.1:{pg.PORT} answers but is not a gRPC storage proxy"):
        open_storage(f"grpc://127.0.0.1:{pg.PORT}")


def test_unusable_files_are_refused(in_tmp):
    with pytest.raises(StorageError, match="is a folder"):
        open_storage(f"sqlite:///{in_tmp}")
    with pytest.raises(StorageError, match="is a folder"):
        open_storage(f"journal:{in_tmp}")
    (in_tmp / "notes.db").write_text("not a database\n" * 100)
    with pytest.raises(StorageError, match="notes.db is not a usable SQLite database"):
        open_storage("notes.db")
    (in_tmp / "notes.log").write_text("{not json\n{nor this\n")
    with pytest.raises(StorageError, match="notes.log is not an Optuna journal"):
        open_storage("notes.log")


def test_readers_never_create_an_empty_storage(in_tmp):
    with pytest.raises(StorageError, match="no SQLite storage at typo.db"):
        open_storage("typo.db", for_workers=False)
    with pytest.raises(StorageError, match="no journal storage at typo.log"):
        open_storage("typo.log", for_workers=False)
    assert list(in_tmp.iterdir()) == []
    open_storage("real.db")
    reader = open_storage("real.db", for_workers=False)
    assert reader.get_heartbeat_interval() is None


# ---------------------------------------------------------------- several worker processes

def _hammer(url: str, n: int, barrier) -> None:
    barrier.wait()  # all open the storage at once
    study = optuna.create_study(storage=open_storage(url), study_name="h", load_if_exists=True)
    for _ in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("payload", "x" * 500)
        study.tell(trial, 0.5)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_worker_processes_share_a_fresh_storage(in_tmp, kind):
    """Three processes open a storage that does not exist yet (racing to create the schema and the study),
    then write trials at the same time: no "database is locked", no lost or duplicated trial."""
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{in_tmp}/c.db"
        else:
            if pg.unreachable():
                pytest.skip(pg.unreachable())
            url = stack.enter_context(pg.scratch_database())
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_hammer, args=(url, 15, barrier)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        trials = optuna.load_study(study_name="h", storage=open_storage(url)).get_trials()
        assert sorted(t.number for t in trials) == list(range(45))
        assert all(t.state == TrialState.COMPLETE for t in trials)


# ---------------------------------------------------------------- PostgreSQL

def test_postgres_url_aliases_pool_and_schema_on_first_use(pg_db):
    assert pg.table_count(pg_db.rsplit("/", 1)[1]) == 0
    for form in ("postgres://", "postgresql://", "postgresql+psycopg://"):
        storage = open_storage(form + pg_db.split("://", 1)[1], heartbeat_interval=5)
        assert storage.engine.url.drivername == "postgresql+psycopg"
        pool = storage.engine.pool
        assert (pool.size(), pool._max_overflow, pool._pre_ping) == (2, 2, True)
        study = optuna.create_study(storage=storage, study_name=f"s-{form}", direction="maximize")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        assert len(study.trials) == 3
    assert pg.table_count(pg_db.rsplit("/", 1)[1]) > 5


def test_missing_postgres_database_suggests_createdb_and_creates_nothing(pg_db):
    name = f"dal_missing_{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError, match=rf"database '{name}' does not exist on 127.0.0.1:{pg.PORT}; "
                                           rf"create it with: createdb .*{name}$"):
        open_storage(pg.url_for(name))
    assert not pg.database_exists(name)


def test_unknown_postgres_user_is_named(pg_db):
    with pytest.raises(StorageError, match="PostgreSQL user 'no_such_user_x' does not exist"):
        open_storage(pg_db.replace(f"//{pg.USER}@", "//no_such_user_x@"))


@pytest.mark.skipif(pgserver.available() is not None, reason=str(pgserver.available()))
def test_private_server_wrong_password_writes_nothing_and_restart_is_survived():
    with pgserver.private_postgres(auth="scram-sha-256", password="right-pw") as server:
        with pytest.raises(StorageError) as e:
            open_storage(server.url_with(password="wrong"))
        assert str(e.value) == (f"authentication failed for user 'postgres' on 127.0.0.1:{server.port}: "
                                "check the password in the storage URL / .env (POSTGRES_PASSWORD)")
        with pytest.raises(StorageError, match="authentication failed for user 'postgres'"):
            open_storage(server.url_with(password=""))
        with server.connect() as conn:
            assert conn.execute("select count(*) from information_schema.tables "
                                "where table_schema = 'public'").fetchone()[0] == 0
        storage = open_storage(server.url)  # the right password: the schema is created on first use
        study = optuna.create_study(storage=storage, study_name="ok")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        server.restart(downtime=0.5)  # pre-ping replaces the pool's dead connections: no error surfaces
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert [t.state for t in optuna.load_study(study_name="ok", storage=storage).trials] == [TrialState.COMPLETE] * 4
        server.stop()
        with pytest.raises(StorageError, match=f"cannot reach PostgreSQL at 127.0.0.1:{server.port}"):
            open_storage(server.url)


# ---------------------------------------------------------------- stale trials: failed, then retried

KILLED_WORKER = textwrap.dedent("""
    import sys, time, optuna
    from dal_search.storage import open_storage
    url, ready = sys.argv[1], sys.argv[2]
    study = optuna.load_study(study_name="stale", storage=open_storage(url, heartbeat_interval=1, grace_period=2))
    def objective(trial):
        trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("schedule", ["linear", "cosine"])
        open(ready, "w").write(str(trial.number))
        time.sleep(120)
    study.optimize(objective, n_trials=1)
""")


def _assert_retried(study: optuna.Study, stale_number: int, stale_params: dict) -> None:
    trials = {t.number: t for t in study.get_trials()}
    assert trials[stale_number].state == TrialState.FAIL
    retries = [t for t in trials.values() if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == stale_number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == stale_params
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [stale_number]


def test_killed_worker_trial_is_failed_and_retried_with_same_params_postgres(pg_db, tmp_path):
    storage = open_storage(pg_db, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="stale", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # a finished trial is never touched
    ready = tmp_path / "ready"
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, pg_db, str(ready)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never started its trial"
            time.sleep(0.1)
        time.sleep(1.2)  # at least one heartbeat recorded
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait(30)
    stale_number = int(ready.read_text())
    stale = study.trials[stale_number]
    assert stale.state == TrialState.RUNNING
    time.sleep(3.0)  # the grace period passes without a beat
    seen: dict = {}

    def objective(trial):
        seen.update(x=trial.suggest_float("x", 0, 1), schedule=trial.suggest_categorical("schedule", ["linear", "cosine"]))
        return 1.0

    study.optimize(objective, n_trials=1)  # its stale check fails the trial and queues the retry it then runs
    assert seen == stale.params
    _assert_retried(study, stale_number, stale.params)
    assert study.trials[0].state == TrialState.COMPLETE and len(study.trials) == 3


def _stale_in_process(storage) -> None:
    """A trial that beat once and stopped (its worker died), one that never beat (its worker died between
    claiming it and its first beat), beside one still beating: the first two are failed and retried, once
    each; the third runs on. Used for every storage with heartbeats (grace period 1 s)."""
    study = optuna.create_study(storage=storage, study_name=f"stale-{uuid.uuid4().hex[:6]}", direction="maximize")
    dead = study.ask()
    dead.suggest_float("x", 0, 1)
    storage.record_heartbeat(dead._trial_id)
    never = study.ask()
    never.suggest_float("x", 0, 1)
    alive = study.ask()
    alive.suggest_float("x", 0, 1)
    time.sleep(2.2)
    storage.record_heartbeat(alive._trial_id)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    _assert_retried(study, dead.number, {"x": dead.params["x"]})
    _assert_retried(study, never.number, {"x": never.params["x"]})
    assert study.trials[alive.number].state == TrialState.RUNNING
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number][0]
    assert retry.datetime_complete is not None


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sql_heartbeats_fail_trials_that_never_beat(tmp_path, kind, request):
    url = f"sqlite:///{tmp_path}/n.db" if kind == "sqlite" else request.getfixturevalue("pg_db")
    _stale_in_process(open_storage(url, heartbeat_interval=1, grace_period=1))


def test_journal_file_heartbeats_fail_and_retry_stale_trials(tmp_path):
    storage = open_storage(f"journal:{tmp_path}/j.log", heartbeat_interval=1, grace_period=1)
    assert storage.get_heartbeat_interval() == 1
    _stale_in_process(storage)


# ---------------------------------------------------------------- Redis journal

def test_redis_journal_with_a_private_prefix():
    import redis

    try:
        client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis on 127.0.0.1:6379 is not reachable: {e}")
    prefix = f"dal-test-{uuid.uuid4().hex[:8]}"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    try:
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name="r")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        assert len(optuna.load_study(study_name="r", storage=open_storage(url)).trials) == 3
        assert client.keys(f"{prefix}:*")
        other = open_storage(f"redis://127.0.0.1:6379/0?prefix={prefix}-other")
        assert optuna.get_all_study_names(other) == []  # the prefix keeps runs apart
    finally:
        keys = client.keys(f"{prefix}*")
        if keys:
            client.delete(*keys)
    assert client.keys(f"{prefix}*") == []


# ---------------------------------------------------------------- gRPC proxy

def test_proxy_refuses_a_bad_storage_before_serving(in_tmp):
    with pytest.raises(StorageError, match="MySQL is not supported"):
        run_storage_proxy("mysql://u@h/db", port=pgserver.free_port())
    assert list(in_tmp.iterdir()) == []


@contextlib.contextmanager
def _serving(db: str):
    """A `dal-search storage-proxy` process for `db`; yields its grpc:// URL once it answers."""
    port = pgserver.free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "dal_search", "storage-proxy", "--storage", db, "--port", str(port)],
                             cwd=ROOT, stderr=subprocess.PIPE)
    url = f"grpc://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                open_storage(url, heartbeat_interval=None)
                break
            except StorageError:
                assert proxy.poll() is None, proxy.stderr.read().decode()
                assert time.monotonic() < deadline, "the proxy never came up"
                time.sleep(0.2)
        yield url
    finally:
        proxy.terminate()
        proxy.wait(30)


def test_slots_through_a_grpc_proxy_are_laid_a_window_at_a_time_and_claimed_once(tmp_path):
    """The proxy has no lock of its own; slots are still laid a window at a time (not the whole budget as
    junk WAITING rows) and four clients racing to pop and top up spend the budget exactly."""
    from concurrent.futures import ThreadPoolExecutor

    from dal_search.search.campaign import SLOT_WINDOW, create_studies, parse_campaign, top_up
    from dal_search.search.worker import pop_slot

    budget = 40
    camp = parse_campaign({"name": "g", "arms": {"dal": {"q_start": {"low": 0.1, "high": 1.0}, "q_end": 1.5}},
                           "budget": {"trials": budget}, "sampler": "random"})
    with _serving(f"sqlite:///{tmp_path}/p.db") as url:
        (name,) = create_studies(open_storage(url, heartbeat_interval=None), camp)
        assert len(optuna.load_study(study_name=name, storage=open_storage(url)).trials) == SLOT_WINDOW

        def drain(_):
            storage = open_storage(url, heartbeat_interval=None)  # a client (connection) of its own
            study = optuna.load_study(study_name=name, storage=storage)
            mine = []
            while (tid := pop_slot(study)) is not None or (top_up(study, budget) and (tid := pop_slot(study))):
                storage.set_trial_state_values(tid, TrialState.COMPLETE, [1.0])
                mine.append(tid)
            return mine

        with ThreadPoolExecutor(4) as pool:
            claims = [tid for mine in pool.map(drain, range(4)) for tid in mine]
        trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
        assert sorted(claims) == sorted(set(claims)) and len(claims) == budget
        assert sorted(t.user_attrs["slot"] for t in trials) == list(range(budget))
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert optuna.get_all_study_names(open_storage(url)) == [name]  # no lock left behind


def test_grpc_proxy_in_front_of_sqlite(tmp_path):
    port = pgserver.free_port()
    db = f"sqlite:///{tmp_path}/p.db"
    code = "import sys; from storage import run_storage_proxy; run_storage_proxy(sys.argv[1], port=int(sys.argv[2]))"
    proxy = subprocess.Popen([sys.executable, "-c", code, db, str(port)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                storage = open_storage(f"grpc://127.0.0.1:{port}", heartbeat_interval=1, grace_period=1)
                break
            except StorageError:
                assert proxy.poll() is None, proxy.stderr.read().decode()
                assert time.monotonic() < deadline, "the proxy never came up"
                time.sleep(0.2)
        study = optuna.create_study(storage=storage, study_name="g")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        direct = optuna.load_study(study_name="g", storage=open_storage(db))
        assert [t.state for t in direct.trials] == [TrialState.COMPLETE] * 3
        _stale_in_process(storage)  # heartbeats travel through the proxy
        with pytest.raises(StorageError, match=f"port {port} on 127.0.0.1 is already in use"):
            run_storage_proxy(db, port=port)
    finally:
        proxy.terminate()
        proxy.wait(30)
