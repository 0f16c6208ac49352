"""A SQLite path this user may not write says so (which folder or file, which uid, the fix), as a real non-root
user: the Docker image runs as uid 1000 and a folder mounted from the host is often root's.

The tests run as root here, and root writes anywhere, so the CLI runs under `setpriv` as `nobody` (uid 65534).
A corrupt file in a writable folder still gets "not a usable SQLite database".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

NOBODY = 65534


def _as_nobody(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DAL_SEARCH_STORAGE"}
    env["HOME"] = str(cwd)
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def shared_dir():
    """A root-owned folder that `nobody` can enter (pytest's tmp_path is root-only); removed afterwards."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as a non-root user")
    d = Path(tempfile.mkdtemp(prefix="dal-perm-", dir="/tmp"))
    d.chmod(0o755)
    probe = _as_nobody([sys.executable, "-c", "import dal_search.storage"], d)
    if probe.returncode != 0:
        shutil.rmtree(d)
        pytest.skip(f"uid {NOBODY} cannot import dal_search from this checkout: {probe.stderr.strip()[-200:]}")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_folder_the_user_cannot_write_is_named_with_the_uid_and_the_fix(shared_dir):
    runs = shared_dir / "runs"
    runs.mkdir(mode=0o755)  # root's, as a host folder mounted into the container
    r = _as_nobody([sys.executable, "-m", "dal_search", "run", "quick", "--create-only"], shared_dir)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "not a usable SQLite database" not in line
    assert f"the folder runs is not writable by this user (uid {NOBODY})" in line
    assert f"chown {NOBODY}:{NOBODY} runs" in line and '--user "$(id -u):$(id -g)"' in line
    assert list(runs.iterdir()) == []


def test_unwritable_files_are_named_and_a_corrupt_file_is_still_corrupt(shared_dir):
    """Through the storage API in one non-root process (the CLI prints the same message, above)."""
    import sqlite3

    locked = shared_dir / "locked"  # a database of root's in a folder anyone may write
    locked.mkdir(mode=0o777)
    locked.chmod(0o777)
    with sqlite3.connect(locked / "root.db") as conn:
        conn.execute("create table t(x)")
    (locked / "root.db").chmod(0o644)
    readonly = shared_dir / "readonly"  # a writable database in root's folder: WAL cannot add its side files
    readonly.mkdir(mode=0o755)
    with sqlite3.connect(readonly / "shared.db") as conn:
        conn.execute("create table t(x)")
    (readonly / "shared.db").chmod(0o666)
    mine = shared_dir / "mine"  # nobody's folder, a corrupt file in it
    mine.mkdir()
    (mine / "notes.db").write_text("not a database\n" * 100)
    os.chown(mine, NOBODY, NOBODY)
    os.chown(mine / "notes.db", NOBODY, NOBODY)
    before = {p: p.read_bytes() for p in (locked / "root.db", readonly / "shared.db", mine / "notes.db")}

    script = textwrap.dedent("""
        import json, sys
        from dal_search.storage import StorageError, open_storage
        out = {}
        for path in sys.argv[1:]:
            try:
                open_storage("sqlite:///" + path)
                out[path] = "opened"
            except StorageError as e:
                out[path] = str(e)
        print(json.dumps(out))
    """)
    paths = ["locked/root.db", "readonly/shared.db", "mine/notes.db"]
    r = _as_nobody([sys.executable, "-c", script, *paths], shared_dir)
    assert r.returncode == 0, r.stderr
    msg = json.loads(r.stdout)
    assert f"locked/root.db is not writable by this user (uid {NOBODY})" in msg["locked/root.db"]
    assert f"chown {NOBODY}:{NOBODY} locked/root.db" in msg["locked/root.db"]
    assert f"the folder readonly is not writable by this user (uid {NOBODY})" in msg["readonly/shared.db"]
    assert msg["mine/notes.db"].startswith("mine/notes.db is not a usable SQLite database (file is not a database)")
    assert all("\n" not in m for m in msg.values())
    assert {p: p.read_bytes() for p in before} == before  # nothing touched
    assert sorted(p.name for p in readonly.iterdir()) == ["shared.db"]
