"""A WAITING trial slot is claimed by exactly one worker, however many race for it (the budget is exact and no
trial trains twice), on the storages where local workers share a file."""

from __future__ import annotations

import multiprocessing as mp

import optuna
import pytest

from dal_search.search.worker import pop_slot
from dal_search.storage import open_storage

SLOTS = 60


def _claim_all(url: str, start, out) -> None:
    storage = open_storage(url, heartbeat_interval=None)
    study = optuna.load_study(study_name="race", storage=storage)
    start.wait()
    mine = []
    while (tid := pop_slot(study)) is not None:
        mine.append(tid)
    out.put(mine)


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_racing_workers_never_claim_the_same_slot(kind, tmp_path, request):
    url = {"sqlite": f"sqlite:///{tmp_path / 'r.db'}", "journal": f"journal:{tmp_path / 'r.log'}"}.get(kind) \
        or request.getfixturevalue("pg_url")
    study = optuna.create_study(storage=open_storage(url), study_name="race")
    for i in range(SLOTS):
        study.enqueue_trial({"x": float(i)}, skip_if_exists=False)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(url, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    claims = [tid for _ in procs for tid in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert len(claims) == SLOTS and len(set(claims)) == SLOTS, \
        f"{len(claims) - len(set(claims))} slot(s) claimed twice"
