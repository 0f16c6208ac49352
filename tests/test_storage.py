"""Storage URLs against the real servers: SQLite, journal, PostgreSQL (shared and private), Redis, gRPC proxy."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial
from optuna.distributions import FloatDistribution

from objectives.config import ConfigError, TrainConfig
from storage import StorageError, describe_storage, normalise_url, open_storage
from storage.export import export_best, load_train_config, study_summaries
from tests import pgserver

ROOT = Path(__file__).resolve().parents[1]


def test_url_forms(tmp_path):
    assert normalise_url(None) == "sqlite:///runs/dal-search.db"
    assert normalise_url("x/y.db") == "sqlite:///x/y.db"
    assert normalise_url("x/y.log") == "journal:x/y.log"
    assert normalise_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert describe_storage("postgresql+psycopg://u:hunter2@h/db") == "postgresql+psycopg://u:***@h/db"
    assert isinstance(open_storage(str(tmp_path / "a.db")), optuna.storages.RDBStorage)
    assert isinstance(open_storage(f"journal:{tmp_path}/a.log"), optuna.storages.JournalStorage)


@pytest.mark.parametrize("url, fragment", [
    ("mysql://u@h/db", "unsupported storage"),
    ("ftp://x", "unsupported storage"),
    ("sqlite:///", "names no file"),
    ("postgresql+psycopg://postgres@127.0.0.1:1/x", "cannot reach PostgreSQL at 127.0.0.1:1"),
    ("redis://127.0.0.1:1/0", "cannot reach Redis at 127.0.0.1:1"),
    ("grpc://127.0.0.1:1", "no storage proxy listens on 127.0.0.1:1"),
    ("grpc://nohostport", "needs a host and port"),
])
def test_bad_urls_are_one_line(url, fragment):
    with pytest.raises(StorageError) as e:
        open_storage(url)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_sqlite_folder_is_refused_and_nothing_is_created(tmp_path):
    with pytest.raises(StorageError, match="is a folder"):
        open_storage(f"sqlite:///{tmp_path}")
    assert list(tmp_path.iterdir()) == []


def test_missing_postgres_database_suggests_createdb(pg_server):
    with pytest.raises(StorageError, match="createdb"):
        open_storage(f"postgresql+psycopg://postgres@127.0.0.1:5432/nope_{uuid.uuid4().hex[:8]}")


@pytest.mark.skipif(pgserver.available() is not None, reason=str(pgserver.available()))
def test_wrong_password_is_one_line_and_writes_nothing():
    import psycopg

    with pgserver.private_postgres() as server:
        with pytest.raises(StorageError, match="authentication failed for user 'postgres'.*check the password"):
            open_storage(server.url_with("wrong"))
        with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", password=server.password,
                             dbname=server.database) as conn:
            tables = conn.execute("select count(*) from information_schema.tables "
                                  "where table_schema = 'public'").fetchone()[0]
        assert tables == 0
        storage = open_storage(server.url)  # the right password: schema created on first use
        optuna.create_study(storage=storage, study_name="ok")
        assert optuna.get_all_study_names(storage) == ["ok"]


def _hammer(url: str, n: int) -> None:
    storage = open_storage(url)
    study = optuna.load_study(study_name="h", storage=storage)
    for _ in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("payload", "x" * 200)
        study.tell(trial, 0.5)


def test_sqlite_survives_concurrent_writers_without_database_is_locked(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    optuna.create_study(storage=open_storage(url), study_name="h")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(url, 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    trials = optuna.load_study(study_name="h", storage=open_storage(url)).get_trials()
    assert len(trials) == 100 and sorted(t.number for t in trials) == list(range(100))


def test_redis_journal(tmp_path):
    try:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Redis on 127.0.0.1:6379 is not reachable: {e}")
    url = "redis://127.0.0.1:6379/0"
    name = f"dal-test-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=name)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert len(optuna.load_study(study_name=name, storage=open_storage(url)).trials) == 3
    optuna.delete_study(study_name=name, storage=storage)


def test_grpc_proxy_in_front_of_sqlite(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = subprocess.Popen([sys.executable, "-m", "search", "storage-proxy", "--storage",
                              f"sqlite:///{tmp_path}/p.db", "--port", str(port)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                storage = open_storage(f"grpc://127.0.0.1:{port}")
                break
            except StorageError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        study = optuna.create_study(storage=storage, study_name="g")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        direct = optuna.load_study(study_name="g", storage=open_storage(f"sqlite:///{tmp_path}/p.db"))
        assert len(direct.trials) == 3
    finally:
        proxy.terminate()
        proxy.wait(30)


def _fabricated_study(storage, name="c/dal/digits/symmetric-0.4", values=(0.5, 0.8, 0.7)):
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    for k, v in {"campaign": "c", "arm": "dal", "dataset": "digits", "noise": "symmetric", "noise_rate": 0.4,
                 "metric": "val_acc", "budget": 3}.items():
        study.set_user_attr(k, v)
    for i, v in enumerate(values):
        cfg = TrainConfig(q_start=0.3 + 0.1 * i, epochs=7).to_dict()
        study.add_trial(create_trial(value=v, params={"q_start": cfg["q_start"]},
                                     distributions={"q_start": FloatDistribution(0.1, 1.0)},
                                     user_attrs={"train_config": cfg, "realized_rate": 0.36, "label_hash": "ab",
                                                 "seeds": [0], "test_acc": v + 0.1}))
    return study


def test_export_single_and_campaign_and_load_back(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/x.db")
    _fabricated_study(storage)
    _fabricated_study(storage, name="c/ce/digits/symmetric-0.4", values=(0.6,))
    out = tmp_path / "one.yaml"
    (doc,) = export_best(storage, ["c/dal/digits/symmetric-0.4"], None, out)
    assert doc["provenance"]["trial_number"] == 1 and doc["provenance"]["value"] == 0.8
    assert doc["provenance"]["realized_rate"] == 0.36 and doc["provenance"]["versions"]["torch"]
    assert load_train_config(out).q_start == pytest.approx(0.4)
    both = tmp_path / "both.yaml"
    docs = export_best(storage, None, "c", both)
    assert len(docs) == 2 and len(list(yaml.safe_load_all(both.read_text()))) == 2
    with pytest.raises(ConfigError, match="pick one as"):
        load_train_config(both)
    assert load_train_config(f"{both}#c/ce/digits/symmetric-0.4").q_start == pytest.approx(0.3)
    js = tmp_path / "both.json"
    export_best(storage, None, "c", js)
    assert load_train_config(f"{js}#1").q_start == pytest.approx(0.3)
    rows = {r["name"]: r for r in study_summaries(storage)}
    assert rows["c/dal/digits/symmetric-0.4"]["complete"] == 3 and rows["c/dal/digits/symmetric-0.4"]["best_trial"] == 1


def test_export_errors(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/x.db")
    optuna.create_study(storage=storage, study_name="empty").set_user_attr("campaign", "e")
    with pytest.raises(StorageError, match="has no completed trial yet"):
        export_best(storage, ["empty"], None, tmp_path / "o.yaml")
    with pytest.raises(StorageError, match="no study 'nope'"):
        export_best(storage, ["nope"], None, tmp_path / "o.yaml")
    with pytest.raises(StorageError, match=r"must end in .yaml, .yml or .json"):
        export_best(storage, ["empty"], None, tmp_path / "o.txt")
    assert not (tmp_path / "o.yaml").exists()
