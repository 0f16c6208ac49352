"""Where a campaign's trials keep their training checkpoints, which one a retried trial resumes from, and when
they are removed.

A worker (`dal-search run`, `worker`, a pool actor) saves each seed of its running trial at epoch boundaries
(objectives/checkpoint.py), at most every DAL_SEARCH_CHECKPOINT_SECONDS seconds (default 60) and after the
seed's last epoch, to

    ROOT/STUDY/trial-N/seed-S.pt          STUDY the study name with '/' and other unsafe characters %-quoted

ROOT is DAL_SEARCH_CHECKPOINT_DIR when set; else beside a file storage (`runs/x.db` -> `runs/x.db.checkpoints/`,
a journal file likewise); else, for server storages, `runs/checkpoints/` in the worker's working folder (for
PostgreSQL a folder per database in it, `postgresql-HOST-PORT-DATABASE`). DAL_SEARCH_CHECKPOINT_DIR=off
turns checkpoints off.

A trial re-queued after its worker died (stale) or was interrupted is retried with the same params; the retry
resumes each seed from the newest checkpoint along its chain (itself, then the trial it retries, then that
one's, ...), so it starts at the last saved epoch instead of epoch 0 and ends with the result of an unbroken
run. A seed whose last epoch was saved costs only its data loading. A checkpoint of another config, or a file
that cannot be read, is skipped with a warning (the seed starts at epoch 0).

Removal: when a trial ends for good (complete, pruned, or failed for a reason of its own), its folder and those
of the trials it retried are deleted. An interrupted or stale trial keeps its folder for its retry. A chain that
is never retried (stale more than MAX_RETRY times) leaves its folder behind; ROOT may be deleted whenever no
campaign of that storage runs (retries then start at epoch 0).

Across machines: a retry finds a checkpoint only where ROOT is a folder it can read. Without a shared folder
(PostgreSQL, workers on several boxes) a retry on another machine starts at epoch 0, as it did before
checkpoints existed; point DAL_SEARCH_CHECKPOINT_DIR at a shared folder (NFS) to resume across machines.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import optuna

from dal_search.objectives.checkpoint import Checkpointer
from dal_search.objectives.config import ConfigError

log = logging.getLogger("dal-search.checkpoints")
OFF = ("off", "none", "0", "false", "no")


def checkpoint_every() -> float:
    """Seconds between a running seed's saves (DAL_SEARCH_CHECKPOINT_SECONDS, default 60; 0: every epoch). A value
    that is not a number >= 0 is a ConfigError naming the variable."""
    raw = os.environ.get("DAL_SEARCH_CHECKPOINT_SECONDS", "60")
    try:
        value = float(raw)
        if value < 0 or value != value:
            raise ValueError
    except ValueError:
        raise ConfigError(f"DAL_SEARCH_CHECKPOINT_SECONDS={raw!r} is not a number of seconds >= 0 "
                         f"(e.g. 60; 0 saves after every epoch)") from None
    return value


def checkpoint_root(storage: optuna.storages.BaseStorage) -> Path | None:
    """The folder of a storage's trial checkpoints (see the module docstring), or None when they are off or
    the storage lives in memory."""
    from optuna.storages._cached_storage import _CachedStorage

    chosen = os.environ.get("DAL_SEARCH_CHECKPOINT_DIR", "").strip()
    if chosen.lower() in OFF:
        return None
    if chosen:
        return Path(chosen)
    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    if isinstance(backend, optuna.storages.InMemoryStorage):
        return None
    if isinstance(backend, optuna.storages.RDBStorage) and backend.engine.dialect.name == "sqlite":
        database = backend.engine.url.database
        if database and database != ":memory:":
            return Path(database).with_name(Path(database).name + ".checkpoints")
        return None
    if isinstance(backend, optuna.storages.JournalStorage) and \
            isinstance(backend._backend, optuna.storages.journal.JournalFileBackend):
        path = Path(backend._backend._file_path)
        return path.with_name(path.name + ".checkpoints")
    if isinstance(backend, optuna.storages.RDBStorage):  # one folder per database: studies share names across them
        url = backend.engine.url
        return Path("runs") / "checkpoints" / quote(f"{url.get_backend_name()}-{url.host}-{url.port}-{url.database}",
                                                    safe="")
    return Path("runs") / "checkpoints"


def trial_folder(root: Path, study_name: str, number: int) -> Path:
    return root / quote(study_name, safe="") / f"trial-{number}"


class TrialCheckpoints:
    """The checkpoint files of one trial: `for_seed(seed)` gives the Checkpointer a seed trains with (saving
    to this trial's folder, resuming from the newest of its chain); `remove()` deletes the chain's folders."""

    def __init__(self, root: Path, study_name: str, number: int, retry_history: list[int],
                 every_seconds: float) -> None:
        self.own = trial_folder(root, study_name, number)
        self.chain = [self.own] + [trial_folder(root, study_name, n) for n in reversed(retry_history)]
        self.every_seconds = every_seconds

    def for_seed(self, seed: int) -> Checkpointer:
        name = f"seed-{seed}.pt"
        return Checkpointer(self.own / name, resume_from=[folder / name for folder in self.chain],
                            every_seconds=self.every_seconds)

    def remove(self) -> None:
        for folder in self.chain:
            shutil.rmtree(folder, ignore_errors=True)
        for empty in (self.own.parent, self.own.parent.parent):  # the study's folder, then ROOT, once empty
            try:
                empty.rmdir()
            except OSError:
                break


def for_trial(study: optuna.Study, trial: optuna.trial.BaseTrial) -> TrialCheckpoints | None:
    """The checkpoints of a running trial of `study`, or None when checkpoints are off."""
    root = checkpoint_root(study._storage)
    if root is None:
        return None
    attrs = trial.system_attrs if isinstance(trial, optuna.trial.FrozenTrial) \
        else study._storage.get_trial_system_attrs(trial._trial_id)
    history = list(attrs.get("retry_history") or [])
    if not history and "failed_trial" in attrs:
        history = [int(attrs["failed_trial"])]
    return TrialCheckpoints(root, study.study_name, trial.number, [int(n) for n in history], checkpoint_every())


__all__ = ["checkpoint_root", "checkpoint_every", "trial_folder", "TrialCheckpoints", "for_trial"]
