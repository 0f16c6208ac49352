"""The worker loop with a stand-in trainer: checkpoint values reach the storage whether or not a pruner runs,
and the median pruner stops trials that fall behind, with the reason in their attrs."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from dal_search.search.campaign import create_studies, parse_campaign
from dal_search.search.worker import REPORTS_PER_TRIAL, pop_slot, run_worker
from dal_search.storage import open_storage

EPOCHS = 20


def fake_train(config, report=None):
    """Accuracy climbs linearly to q_start / 2 (so the sampled q_start decides who is ahead)."""
    curve = [config.q_start / 2 * (e + 1) / EPOCHS for e in range(EPOCHS)]
    for e, acc in enumerate(curve):
        if report is not None:
            report(e, {"val_acc": acc, "test_acc": acc})
    hist = {k: curve for k in ("epoch", "q", "lam", "lr", "train_loss", "train_acc", "val_acc", "test_acc",
                               "noisy_fit", "clean_fit")}
    acc = curve[-1]
    return {"status": "ok", "reason": "", "test_acc": acc, "best_test_acc": acc, "val_acc": acc,
            "best_val_acc": acc, "test_acc_at_best_val": acc, "noisy_fit": 0.1, "clean_fit": 0.9,
            "realized_rate": 0.36, "label_hash": "0" * 16, "wall_time": 0.0, "device": "cpu", "history": hist}


def _campaign(pruner: str, trials: int):
    return parse_campaign({"name": f"w-{pruner}", "datasets": ["digits"], "noise": {"symmetric": [0.4]},
                           "arms": {"dal": {"q_start": {"low": 0.1, "high": 1.0}, "q_end": 1.5}},
                           "budget": {"trials": trials, "seeds": [0]}, "train": {"epochs": EPOCHS},
                           "sampler": "random", "pruner": pruner})


@pytest.mark.parametrize("url", ["sqlite", "journal"])
def test_checkpoints_are_stored_without_a_pruner(tmp_path, url):
    storage = open_storage(f"sqlite:///{tmp_path}/w.db" if url == "sqlite" else f"journal:{tmp_path}/w.log")
    camp = _campaign("none", 3)
    (name,) = create_studies(storage, camp)
    stats = run_worker(storage, camp.name, worker_seed=0, train_fn=fake_train)
    assert stats.complete == 3
    every = EPOCHS // REPORTS_PER_TRIAL
    for t in optuna.load_study(study_name=name, storage=storage).trials:
        assert sorted(t.intermediate_values) == list(range(every - 1, EPOCHS, every))
        qs = t.params["q_start"]
        assert t.intermediate_values[EPOCHS - 1] == pytest.approx(qs / 2)
        assert t.intermediate_values[every - 1] == pytest.approx(qs / 2 * every / EPOCHS)
        assert t.user_attrs["val_acc"] == pytest.approx(qs / 2)


def test_median_pruner_stops_trials_that_fall_behind(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/w.db")
    camp = _campaign("median", 16)
    (name,) = create_studies(storage, camp)
    stats = run_worker(storage, camp.name, worker_seed=3, train_fn=fake_train)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert stats.total == 16 == len(trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert stats.pruned == len(pruned) > 0
    for t in pruned:
        step = max(t.intermediate_values)
        assert t.user_attrs["fail_reason"].startswith(f"pruned at epoch {step}: val_acc")
        earlier = [c for c in trials if c.state == TrialState.COMPLETE and c.number < t.number]
        assert len(earlier) >= 4  # n_startup_trials
        # pruned at a step where it lay below the median of the earlier trials' values at that step
        others = sorted(c.intermediate_values[step] for c in earlier)
        assert t.intermediate_values[step] < others[len(others) // 2] + 1e-9


def test_a_trial_finished_elsewhere_does_not_stop_the_worker(tmp_path):
    """A trial re-queued by another worker (judged stale) while this one still trains: its results are
    refused, the worker counts it failed and goes on to the next slot."""
    storage = open_storage(f"sqlite:///{tmp_path}/w.db")
    camp = _campaign("none", 3)
    (name,) = create_studies(storage, camp)

    def train_whose_trial_goes_stale(config, report=None):
        for t in storage.get_all_trials(storage.get_study_id_from_name(name), states=(TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        return fake_train(config, report)

    stats = run_worker(storage, camp.name, worker_seed=0, train_fn=train_whose_trial_goes_stale)
    assert stats.failed == 3 and stats.complete == 0
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert len(trials) == 3 and all(t.state == TrialState.FAIL for t in trials)


# ---------------------------------------------------------------- re-queueing survives a fault between its two steps

def _fail_then_drop_the_connection(storage, kinds=(TrialState.FAIL,)):
    """Fault injection on the real storage object: the first write that fails a trial is committed, then the
    call raises as if the database connection dropped before the caller heard back."""
    import sqlalchemy.exc

    real, fired = storage.set_trial_state_values, []

    def set_trial_state_values(trial_id, state, values=None):
        done = real(trial_id, state, values)
        if state in kinds and not fired:
            fired.append(trial_id)
            raise sqlalchemy.exc.OperationalError("UPDATE trials", None, Exception("injected: connection lost"))
        return done

    storage.set_trial_state_values = set_trial_state_values
    return fired


def _one_retry_each(trials, failed_numbers):
    for n in failed_numbers:
        retries = [t for t in trials if t.system_attrs.get("retry_history", [None])[-1] == n]
        assert len(retries) == 1, f"trial {n} has {len(retries)} retries"
        assert retries[0].state == TrialState.COMPLETE


@pytest.mark.parametrize("url", ["sqlite", "journal"])
def test_a_stale_trial_whose_requeue_is_cut_off_keeps_its_slot(tmp_path, url):
    """The database drops between "fail the stale trial" and "queue its retry": the next top-up queues it."""
    path = f"sqlite:///{tmp_path}/w.db" if url == "sqlite" else f"journal:{tmp_path}/w.log"
    storage = open_storage(path, heartbeat_interval=1, grace_period=1)
    camp = _campaign("none", 3)
    (name,) = create_studies(storage, camp)
    dead = pop_slot(optuna.load_study(study_name=name, storage=storage))  # a worker that beat once, then died
    storage.record_heartbeat(dead)
    time.sleep(1.5)
    fired = _fail_then_drop_the_connection(storage)
    stats = run_worker(storage, camp.name, worker_seed=0, train_fn=fake_train)
    assert fired == [dead]
    trials = optuna.load_study(study_name=name, storage=open_storage(path)).trials
    assert stats.complete == 3 and sum(t.state == TrialState.COMPLETE for t in trials) == 3
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed._trial_id == dead and failed.user_attrs["fail_reason"].startswith("stale")
    _one_retry_each(trials, [failed.number])
    assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 3  # the budget's slots


def test_an_interrupted_trial_whose_requeue_is_cut_off_keeps_its_slot(tmp_path):
    """Ctrl-C mid-trial, and the database drops between "fail the trial" and "queue its retry": the retried
    re-queue finishes the job, and a re-run completes the budget of 3."""
    storage = open_storage(f"sqlite:///{tmp_path}/w.db")
    camp = _campaign("none", 3)
    (name,) = create_studies(storage, camp)

    def ctrl_c(config, report=None):
        raise KeyboardInterrupt

    fired = _fail_then_drop_the_connection(storage)
    with pytest.raises(KeyboardInterrupt):
        run_worker(storage, camp.name, worker_seed=0, train_fn=ctrl_c)
    assert len(fired) == 1
    stats = run_worker(open_storage(f"sqlite:///{tmp_path}/w.db"), camp.name, worker_seed=1, train_fn=fake_train)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert stats.complete == 3 and sum(t.state == TrialState.COMPLETE for t in trials) == 3
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed._trial_id == fired[0] and "interrupted" in failed.user_attrs["fail_reason"]
    _one_retry_each(trials, [failed.number])


def test_two_workers_judging_the_same_trial_stale_queue_one_retry(tmp_path):
    """Both read the trial RUNNING; the other one fails it first. The second judge neither crashes on the
    finished trial nor queues a second retry."""
    from dal_search.search.slots import requeue

    storage = open_storage(f"sqlite:///{tmp_path}/w.db", heartbeat_interval=1, grace_period=1)
    (name,) = create_studies(storage, _campaign("none", 2))
    study = optuna.load_study(study_name=name, storage=storage)
    tid = pop_slot(study)
    real_get = storage.get_trial

    def get_trial_then_lose_the_race(trial_id):
        frozen = real_get(trial_id)  # RUNNING, as this judge saw it ...
        storage.get_trial = real_get
        requeue(study, trial_id, "stale", "stale")  # ... and the other judge fails it right after
        return frozen

    storage.get_trial = get_trial_then_lose_the_race
    requeue(study, tid, "stale", "stale")
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state for t in trials if t._trial_id == tid] == [TrialState.FAIL]
    assert len([t for t in trials if t.system_attrs.get("failed_trial") is not None]) == 1
