"""Shared fixtures: a private PostgreSQL database per test session on the local server, small campaigns."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
PG_HOST = os.environ.get("DAL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DAL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("DAL_TEST_PG_USER", "postgres")


def _admin_connect():
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True,
                           connect_timeout=3)


# Tests that start a Ray cluster run one after another on one xdist worker: two clusters at once on a 2-core
# machine would only slow each other into their timeouts. Every other test is spread over the workers
# (pyproject.toml: -n 2 --dist loadgroup; `-n 0` runs everything in one process).
RAY_TESTS = ("tests/test_pool.py::", "tests/test_tune.py::", "::test_compose_pool_runs_a_campaign",
             "::test_local_pool_listens_on_loopback_only")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(key in item.nodeid for key in RAY_TESTS):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session")
def pg_server():
    try:
        with _admin_connect() as conn:
            conn.execute("select 1")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL on {PG_HOST}:{PG_PORT} is not reachable: {e}")
    return PG_HOST, PG_PORT


@pytest.fixture
def pg_url(pg_server):
    """A fresh database on the local server for one test, dropped afterwards."""
    name = f"dal_test_{uuid.uuid4().hex[:10]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tiny_campaign(name: str = "tiny", trials: int = 4, epochs: int = 3, seeds=(0,), **extra) -> dict:
    """A campaign whose trials take about a second each on one core."""
    spec = {
        "name": name,
        "datasets": ["digits"],
        "noise": {"symmetric": [0.4]},
        "arms": {"dal": {"q_start": {"low": 0.3, "high": 1.0}, "q_end": {"low": 1.0, "high": 2.0}}},
        "budget": {"trials": trials, "seeds": list(seeds)},
        "train": {"epochs": epochs, "threads": 1},
    }
    spec.update(extra)
    return spec


@pytest.fixture
def campaign_file(tmp_path):
    import yaml

    def write(**kw) -> str:
        path = tmp_path / f"{kw.get('name', 'tiny')}.yaml"
        path.write_text(yaml.safe_dump(tiny_campaign(**kw)))
        return str(path)

    return write
