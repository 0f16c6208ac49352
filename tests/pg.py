"""Scratch databases on the shared local PostgreSQL server, for tests that need a real server but not their own.

    from tests import pg

    reason = pg.unreachable()                 # None, or why the server cannot be used (for pytest.skip)
    with pg.scratch_database() as url:        # postgresql+psycopg://USER@HOST:PORT/dal_test_<random>
        ...                                   # dropped (WITH FORCE) on exit

Server and admin user come from DAL_TEST_PG_HOST / _PORT / _USER (default 127.0.0.1, 5432, postgres), with
the password, if the server wants one, from DAL_TEST_PG_PASSWORD.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator
from urllib.parse import quote

HOST = os.environ.get("DAL_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("DAL_TEST_PG_PORT", "5432"))
USER = os.environ.get("DAL_TEST_PG_USER", "postgres")
PASSWORD = os.environ.get("DAL_TEST_PG_PASSWORD", "")


def admin_connect(database: str = "postgres"):
    import psycopg

    return psycopg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD or None, dbname=database,
                           autocommit=True, connect_timeout=3)


def unreachable() -> str | None:
    try:
        with admin_connect() as conn:
            conn.execute("select 1")
    except Exception as e:  # noqa: BLE001 - any reason is a reason to skip
        return f"PostgreSQL on {HOST}:{PORT} as {USER} is not usable: {str(e).strip().splitlines()[0]}"
    return None


def url_for(database: str) -> str:
    auth = quote(USER, safe="") + (f":{quote(PASSWORD, safe='')}" if PASSWORD else "")
    return f"postgresql+psycopg://{auth}@{HOST}:{PORT}/{database}"


def database_exists(name: str) -> bool:
    with admin_connect() as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def table_count(database: str) -> int:
    with admin_connect(database) as conn:
        return conn.execute("select count(*) from information_schema.tables where table_schema = 'public'"
                            ).fetchone()[0]


@contextlib.contextmanager
def scratch_database(prefix: str = "dal_test") -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_for(name)
    finally:
        with admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
