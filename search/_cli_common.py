"""What every `dal-search` command module shares: the user-error type, the --storage option and how a
command opens it, and the checks made before any work starts (a writable output, a valid port).

It imports nothing else of `search` at import time (a helper may import inside itself), so `cli` (the parser and `main`), `commands` (the campaign commands)
and `pool` (the Ray pool) all import it and none of them imports another for a helper: cli -> commands ->
pool -> _cli_common, no cycle.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

DEFAULT_STORAGE = "sqlite:///runs/dal-search.db"

# Commands that only read a storage: they never create one (a mistyped SQLite or journal path is an error
# naming it, not a new empty database) and run no heartbeats.
READERS = frozenset({"studies", "export", "report", "dashboard"})


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def default_storage() -> str:
    return os.environ.get("DAL_SEARCH_STORAGE", DEFAULT_STORAGE)


def storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None, metavar="URL",
                   help="sqlite:///runs/x.db, postgresql+psycopg://user:pw@host/db, journal:./runs/x.log, "
                        "redis://host:6379/0 or grpc://host:13000 "
                        "(default: $DAL_SEARCH_STORAGE or sqlite:///runs/dal-search.db)")


def open_from_args(args: argparse.Namespace):
    """The storage of --storage. Workers (run, worker, pool) take the heartbeat settings every process of a pool
    shares from DAL_SEARCH_HEARTBEAT / DAL_SEARCH_GRACE (see storage.heartbeat_settings); readers (READERS)
    open an existing storage only, without heartbeats."""
    from dal_search.storage import open_storage

    url = args.storage or default_storage()
    if getattr(args, "command", None) in READERS:
        return open_storage(url, heartbeat_interval=None, for_workers=False)
    return open_storage(url)


def ray_campaign(args: argparse.Namespace) -> tuple[str, str | None]:
    """The storage URL and the campaign of a command that runs a campaign on Ray (pool, tune): a campaign file
    given has its studies created first, else --campaign names studies already there. Then --workers and the
    per-worker --num-gpus / --num-cpus are checked, before any Ray work."""
    from dal_search.search.campaign import create_studies, load_campaign
    from dal_search.storage import open_storage

    url = args.storage or default_storage()
    campaign = args.campaign
    if args.campaign_file:
        camp = load_campaign(args.campaign_file)
        create_studies(open_storage(url), camp)
        campaign = camp.name
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    if args.num_gpus < 0 or args.num_cpus <= 0:
        raise UserError("--num-gpus must be >= 0 and --num-cpus > 0")
    return url, campaign


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Make sure `path` can be written (its folder created if missing) BEFORE the work whose result goes there;
    UserError naming the path otherwise. An existing file is opened for appending (its content untouched); a
    new one is tried as a scratch file beside it, removed at once. Root passes permission checks on a
    read-only folder but not a read-only mount, so the check writes rather than asking os.access."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{what} {out} is a folder; name a file inside it, e.g. {out / 'out.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            with open(out, "a"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".check"):
                pass
    except OSError as e:
        raise UserError(f"cannot write {what} {out}: {e.strerror or e}; choose a folder you can write to") from None
    return out


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """As check_writable, for a folder that files will be written into (created if missing)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file; name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dal-search.", suffix=".check"):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} {folder}: {e.strerror or e}; choose a folder you can write to") from None
    return folder


def check_port(args: argparse.Namespace) -> None:
    """Every command's --port is a TCP port number: one line, not a traceback from the server's bind."""
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port; use a number from 1 to 65535 (e.g. 8080)")
