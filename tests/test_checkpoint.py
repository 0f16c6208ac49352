"""Checkpoints: a run stopped at an epoch boundary and resumed gives the history of a run that never stopped
(real, small, seeded runs on digits, CPU); a checkpoint of another run, or a broken file, is never used."""

from __future__ import annotations

import pytest

from dal_search.objectives.checkpoint import Checkpointer, saved_epoch, train_until
from dal_search.objectives.config import TrainConfig
from dal_search.objectives.train import train
from dal_search.search.analysis import trial_history
from dal_search.search.worker import compact_curves


class Stop(Exception):
    pass


def _stop_after(n):
    def report(epoch, metrics):
        if epoch + 1 == n:
            raise Stop
    return report


@pytest.mark.parametrize("kw", [
    {},                                                                  # DAL, linear: bootstrapping from epoch 5
    {"schedule": "adaptive", "q_start": 0.5},                            # a schedule with state of its own
    {"noise": "partial", "noise_rate": 0.3, "loss": "proden"},          # a loss with per-sample state
], ids=["dal-linear", "dal-adaptive", "proden-partial"])
def test_ten_epochs_straight_equal_five_then_five_resumed(tmp_path, kw):
    config = TrainConfig(epochs=10, seed=1, threads=1, q_end=2.0, **kw)
    straight = train(config)
    path = tmp_path / "run.pt"
    with pytest.raises(Stop):
        train(config, _stop_after(5), checkpoint=Checkpointer(path, at_epochs=[5]))
    assert saved_epoch(path) == 4
    resumed_ck = Checkpointer(path)
    resumed = train(config, checkpoint=resumed_ck)
    assert resumed_ck.resumed_at == 5
    assert resumed["history"] == straight["history"]  # every per-epoch value, bit for bit
    for key in ("test_acc", "best_test_acc", "best_epoch", "val_acc", "noisy_fit", "clean_fit", "label_hash"):
        assert resumed[key] == straight[key]


def test_a_checkpoint_of_another_run_or_a_broken_file_is_not_used(tmp_path, caplog):
    config = TrainConfig(epochs=4, seed=0, threads=1)
    path = tmp_path / "run.pt"
    train(config, checkpoint=Checkpointer(path))  # saved after its last epoch
    other = Checkpointer(path)
    fresh = train(config.replace(seed=2), checkpoint=other)  # another seed: another run
    assert other.resumed_at == 0 and "another run (seed: 0 there, 2 here)" in caplog.text
    assert fresh["history"] == train(config.replace(seed=2))["history"]
    path.write_bytes(b"not a checkpoint")
    broken = Checkpointer(path)
    assert train(config, checkpoint=broken)["history"]["epoch"] == [0, 1, 2, 3]
    assert broken.resumed_at == 0 and "unreadable" in caplog.text


def test_a_folder_that_cannot_be_written_costs_the_checkpoints_not_the_run(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the checkpoint folder would be")
    ck = Checkpointer(blocked / "run.pt", every_seconds=0)
    result = train(TrainConfig(epochs=3, seed=0, threads=1), checkpoint=ck)
    assert result["status"] == "ok" and ck.failed and ck.saved_epochs == []
    assert caplog.text.count("cannot save the checkpoint") == 1


def test_an_explicit_schedule_may_change_its_future_not_its_past(tmp_path, caplog):
    """How PBT resumes a member: the same run with new q and lambda for the epochs still to come."""
    q, lam = [0.6, 0.8, 1.0, 1.2], [0.0, 0.0, 0.2, 0.4]
    config = TrainConfig(epochs=4, seed=0, threads=1, schedule="explicit", q_schedule=q, lam_schedule=lam)
    path = tmp_path / "run.pt"
    metrics, result = train_until(config, 2, path)
    assert result is None and metrics["epoch"] == 1 and saved_epoch(path) == 1
    new_future = config.replace(q_schedule=q[:2] + [1.5, 1.5], lam_schedule=lam[:2] + [0.9, 0.9])
    _, result = train_until(new_future, 4, path)
    assert result["history"]["q"] == q[:2] + [1.5, 1.5]
    assert result["history"] == train(new_future)["history"]  # == training the spliced schedule from scratch
    changed_past = config.replace(q_schedule=[0.7] + q[1:])
    ck = Checkpointer(path)
    train(changed_past, checkpoint=ck)
    assert ck.resumed_at == 0 and "differs from this run's q_schedule" in caplog.text


# ---------------------------------------------------------------- a worker's trial resumes after its worker died

@pytest.mark.slow
def test_a_sigkilled_workers_trial_resumes_from_its_checkpoint_and_equals_an_unbroken_run(tmp_path, monkeypatch):
    """`dal-search worker` SIGKILLed mid-trial (checkpoints every epoch): the next worker re-queues the trial,
    its retry starts at the epoch after the last one saved, and ends with the history of an unbroken run."""
    import os
    import signal
    import time

    import optuna

    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.checkpoints import trial_folder
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage
    from tests.conftest import tiny_campaign
    from tests.test_search import _wait_for_running, spawn

    env = {"DAL_SEARCH_HEARTBEAT": "1", "DAL_SEARCH_GRACE": "2", "DAL_SEARCH_CHECKPOINT_SECONDS": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    url = f"sqlite:///{tmp_path}/k.db"
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    (name,) = create_studies(storage, parse_campaign(tiny_campaign("resume", trials=1, epochs=30)))
    victim = spawn("worker", "--storage", url, "--campaign", "resume", "--quiet", "--threads", "1", env=env)
    running = _wait_for_running(url, "resume")
    ckpt = trial_folder(tmp_path / "k.db.checkpoints", name, running.number) / "seed-0.pt"
    deadline = time.time() + 120
    while (saved_epoch(ckpt) or 0) < 3 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    at_kill = saved_epoch(ckpt)
    assert at_kill is not None and 3 <= at_kill < 29, at_kill  # killed mid-trial, after some saves
    stats = run_worker(storage, "resume", worker_seed=0)  # re-queues the stale trial and runs its retry

    trials = optuna.load_study(study_name=name, storage=storage).trials
    killed = next(t for t in trials if t.number == running.number)
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert stats.complete == 1 and killed.state.name == "FAIL" and retry.params == killed.params
    assert retry.user_attrs["per_seed"][0]["resumed_at_epoch"] == at_kill + 1  # not epoch 0
    unbroken = train(TrainConfig.from_dict(retry.user_attrs["train_config"]))
    assert trial_history(retry) == compact_curves(unbroken["history"]) and retry.value == unbroken["val_acc"]
    assert not (tmp_path / "k.db.checkpoints").exists()  # the chain's checkpoints go once it completed
