"""Trial slots kept whole: the lock under which a study's slots are counted and laid, and the re-queueing of
trials that were failed through no fault of their config (their worker died or was interrupted).

Re-queueing is two writes, "fail the trial" and "queue its retry", and a process can die or a database drop
between them. So it is made idempotent: before failing, the trial is marked (system attr `dal:requeue` =
"stale" | "interrupted"); `queue_retries` gives every marked FAIL trial that has no retry yet its retry, and
runs whenever a worker tops a study up (and after each re-queue), always under the study's slot lock. A
trial is never retried twice, and a mark without a retry never outlives the next top-up.

A retry is a WAITING trial carrying the failed one's params as fixed params, with system attrs `failed_trial`
(the trial it re-runs) and `retry_history` (the chain, oldest first; its last entry is `failed_trial`). A
trial that went stale is retried at most MAX_RETRY times along its chain (Optuna's rule: a config that kills
its worker must not loop for ever); an interrupted one (Ctrl-C, SIGTERM, a pool stop) always is.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

REQUEUE_ATTR = "dal:requeue"
STALE_RETRIES_ATTR = "dal:stale_retries"


@contextlib.contextmanager
def slot_lock(study: optuna.Study) -> Iterator[None]:
    """The study's storage-wide lock for read-then-write steps on its slots: PostgreSQL advisory lock, a file
    lock beside SQLite or a journal, a Redis lock, a lock study through a gRPC proxy; none in memory (one
    process)."""
    from dal_search.storage.locks import storage_lock, supports_lock

    storage, name = study._storage, f"slots:{study.study_name}"
    if supports_lock(storage):
        with storage_lock(storage, name):
            yield
    elif isinstance(storage, optuna.storages.GrpcStorageProxy):
        from dal_search.storage._proxy import proxy_lock

        with proxy_lock(storage, name):
            yield
    else:
        yield


def mark_for_requeue(storage: optuna.storages.BaseStorage, trial_id: int, why: str) -> None:
    """Mark a RUNNING trial as one to retry once it is failed (`why`: "stale" or "interrupted")."""
    storage.set_trial_system_attr(trial_id, REQUEUE_ATTR, why)


def queue_retries(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> int:
    """Queue the retry of every marked FAIL trial of `study` that has none yet; returns how many were queued.
    The caller holds `slot_lock(study)`; `trials` are the study's trials read under it (read here if None)."""
    if trials is None:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    retried = {_retries(t) for t in trials}
    queued = 0
    for t in trials:
        why = t.system_attrs.get(REQUEUE_ATTR)
        if t.state != TrialState.FAIL or why is None or t.number in retried:
            continue
        stale_retries = int(t.system_attrs.get(STALE_RETRIES_ATTR, 0)) + (why == "stale")
        if why == "stale" and stale_retries > _max_retry():
            continue
        fixed = t.system_attrs.get("fixed_params", {})
        system_attrs = {"failed_trial": t.number,
                        "retry_history": list(t.system_attrs.get("retry_history", [])) + [t.number],
                        "fixed_params": {**t.params, **fixed}, STALE_RETRIES_ATTR: stale_retries}
        user_attrs = {"slot": t.user_attrs["slot"]} if "slot" in t.user_attrs else None
        study.add_trial(create_trial(state=TrialState.WAITING, params=None, distributions=None,
                                     user_attrs=user_attrs, system_attrs=system_attrs))
        queued += 1
    return queued


def requeue(study: optuna.Study, trial_id: int, why: str, reason: str | None = None) -> None:
    """Fail trial `trial_id` (if still RUNNING) as `why` ("stale" or "interrupted") and queue its retry.

    Safe to call again after any error: the mark goes first, and a trial already failed with it only gets
    the retry it may lack. `reason` is stored as the trial's fail_reason."""
    storage = study._storage
    if storage.get_trial(trial_id).state == TrialState.RUNNING:
        try:
            if reason is not None:
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            mark_for_requeue(storage, trial_id, why)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile (another worker judged it stale too, or it completed): its state decides
    with slot_lock(study):
        queue_retries(study)


def _retries(t: FrozenTrial) -> int | None:
    """The number of the trial that `t` re-runs, or None for a slot of the budget."""
    history = t.system_attrs.get("retry_history")
    return history[-1] if history else t.system_attrs.get("failed_trial")


def _max_retry() -> int:
    from dal_search.storage import MAX_RETRY

    return MAX_RETRY
