"""Checkpoints: a run stopped at an epoch boundary and resumed gives the history of a run that never stopped
(real, small, seeded runs on digits, CPU); a checkpoint of another run, or a broken file, is never used."""

from __future__ import annotations

import pytest

from dal_search.objectives.checkpoint import Checkpointer, saved_epoch, train_until
from dal_search.objectives.config import TrainConfig
from dal_search.objectives.train import train


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
