"""A private PostgreSQL server for tests that must stop, restart or lock down a database on purpose.

    from tests import pgserver

    @pytest.mark.skipif(pgserver.available() is not None, reason=str(pgserver.available()))
    def test_x():
        with pgserver.private_postgres(auth="scram-sha-256", password="pw") as pg:
            storage = open_storage(pg.url)      # postgresql+psycopg://postgres:pw@127.0.0.1:PORT/dal
            pg.restart(downtime=2.0)            # or pg.stop() ... pg.start()
            pg.url_with(password="wrong")       # the same server, another password/user/database

Built with initdb/pg_ctl from /usr/lib/postgresql/*/bin, run as the `postgres` OS user (initdb refuses root),
listening on 127.0.0.1 and a free port only, in a temporary folder that is removed afterwards. `auth` is the
pg_hba method for every connection (scram-sha-256, md5, password or trust). fsync is off: a test server.
Starting one takes about two seconds.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

AUTH_METHODS = ("scram-sha-256", "md5", "password", "trust")


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else shutil.which(name)


def available() -> str | None:
    """None when a private server can be started here, else the reason it cannot (for pytest.skip)."""
    if not _bin("initdb") or not _bin("pg_ctl"):
        return "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql or on PATH"
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            return "running as root without runuser to drop to the postgres user"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres OS user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """One throwaway server. `url` reaches its database `database` as `user` with `password`."""

    def __init__(self, *, auth: str = "scram-sha-256", password: str = "s3cret-pw", user: str = "postgres",
                 database: str = "dal") -> None:
        if auth not in AUTH_METHODS:
            raise ValueError(f"auth must be one of {AUTH_METHODS}, got {auth!r}")
        self.auth, self.password, self.user, self.database = auth, password, user, database
        self.host, self.port = "127.0.0.1", free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dal-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"

    # ------------------------------------------------------------ URLs

    @property
    def url(self) -> str:
        return self.url_with()

    def url_with(self, *, password: str | None = None, user: str | None = None, database: str | None = None,
                 driver: str = "postgresql+psycopg") -> str:
        pw = self.password if password is None else password
        auth = quote(user or self.user, safe="") + (f":{quote(pw, safe='')}" if pw else "")
        return f"{driver}://{auth}@{self.host}:{self.port}/{database or self.database}"

    def __str__(self) -> str:
        return self.url

    def connect(self, database: str | None = None):
        """An autocommit psycopg connection as the superuser, for setup and inspection."""
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=database or self.database, autocommit=True, connect_timeout=5)

    # ------------------------------------------------------------ lifecycle

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")
        return done

    def init(self) -> "PrivatePostgres":
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-U", self.user, f"--auth={self.auth}",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--locale=C")
        pwfile.unlink()
        encryption = "md5" if self.auth == "md5" else "scram-sha-256"
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"\nport = {self.port}\nlisten_addresses = '{self.host}'\n"
                     f"unix_socket_directories = '{self.dir}'\npassword_encryption = '{encryption}'\n"
                     "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                     "shared_buffers = 16MB\nmax_connections = 100\n")
        self.start()
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `mode` is pg_ctl's: smart, fast (disconnects clients) or immediate (a crash)."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, downtime: float = 0.0, mode: str = "fast") -> None:
        """Stop, stay down `downtime` seconds (clients see connection errors meanwhile), start again."""
        self.stop(mode)
        time.sleep(downtime)
        self.start()

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(auth: str = "scram-sha-256", password: str = "s3cret-pw", *, user: str = "postgres",
                     database: str = "dal") -> Iterator[PrivatePostgres]:
    """A started private server (see the module docstring); stopped and deleted on exit, even on failure."""
    server = PrivatePostgres(auth=auth, password=password, user=user, database=database)
    try:
        server.init()
        yield server
    finally:
        server.destroy()
