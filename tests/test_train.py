"""The trainer: real, small, seeded runs on digits."""

import json
import math

import pytest

from dal_search.objectives.config import TrainConfig
from dal_search.objectives.train import _crop_flip, train


def test_ce_memorises_noisy_labels_while_dal_does_not():
    base = dict(dataset="digits", noise="symmetric", noise_rate=0.4, epochs=100, seed=0, threads=1)
    ce = train(TrainConfig(loss="ce", **base))
    dal = train(TrainConfig(loss="dal", q_start=0.6, q_end=1.5, **base))
    ce_curve, dal_curve = ce["history"]["noisy_fit"], dal["history"]["noisy_fit"]
    # CE's fit of the wrong labels rises (memorisation) ...
    assert ce_curve[-1] > 0.8 and ce_curve[-1] > ce_curve[10] + 0.5
    # ... DAL's stays low, and it keeps the clean part fitted
    assert dal_curve[-1] < 0.25 and dal["clean_fit"] > 0.95
    assert dal["test_acc"] > ce["test_acc"] + 0.1
    # the realised rate follows the paper's convention r (K-1) / K
    assert ce["realized_rate"] == pytest.approx(0.36, abs=0.03)
    assert ce["label_hash"] == dal["label_hash"]  # same seed, same noisy labels


def test_deterministic_on_cpu_for_a_fixed_seed():
    cfg = TrainConfig(epochs=5, seed=3, threads=1)
    a, b = train(cfg), train(cfg)
    assert a["history"] == b["history"]
    c = train(cfg.replace(seed=4))
    assert c["history"]["test_acc"] != a["history"]["test_acc"]


def test_history_and_report_carry_the_schedule():
    seen = []
    r = train(TrainConfig(epochs=10, q_start=0.6, q_end=1.5, threads=1), report=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == list(range(10))
    t0 = (1 - 0.6) * 10 / 0.9
    for i, (_, m) in enumerate(seen):
        assert m["q"] == pytest.approx(0.6 + 0.9 * i / 10)
        assert m["lam"] == pytest.approx(max(0, (i - t0) / (10 - t0)))
    assert r["history"]["q"] == [m["q"] for _, m in seen]
    assert set(r) >= {"status", "test_acc", "best_test_acc", "best_epoch", "val_acc", "noisy_fit", "clean_fit",
                      "realized_rate", "label_hash", "wall_time", "device", "epochs_run", "history", "config"}


def test_non_finite_loss_ends_the_run_with_a_status():
    r = train(TrainConfig(loss="ce", lr=1e6, epochs=5, threads=1))
    assert r["status"] == "nonfinite" and "loss became" in r["reason"]
    assert r["epochs_run"] < 5


def test_exceptions_from_report_propagate():
    class Stop(Exception):
        pass

    def report(epoch, m):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(TrainConfig(epochs=5, threads=1), report=report)


def test_adaptive_schedule_is_fed_the_learning_status():
    r = train(TrainConfig(epochs=12, schedule="adaptive", q_start=0.5, q_end=1.5, threads=1))
    q = r["history"]["q"]
    assert q[0] == 0.5 and all(b >= a for a, b in zip(q, q[1:]))
    assert q[-1] > 0.5 + 0.5 * 11 / 12  # the net's rising agreement drives q past the pace floor


def test_crop_flip_keeps_shape_and_content_statistics():
    import torch

    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = _crop_flip(x, pad=0)
    assert y.shape == x.shape
    for i in range(2):  # with no padding, each image is itself or its mirror
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))


def test_resnet_trains_on_image_tensors(tmp_path):
    """The CIFAR path end to end (ResNet-18, crop+flip) on a small CIFAR-10 folder written here."""
    from tests.test_data import _write_cifar

    _write_cifar(tmp_path, "cifar10", n_train=8)
    r = train(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), epochs=1, batch_size=16, threads=1))
    assert r["status"] == "ok" and r["config"]["model"] == "auto" and math.isfinite(r["history"]["train_loss"][0])


def test_cli_train_prints_a_json_summary(tmp_path, capsys):
    from dal_search.search.cli import main

    out = tmp_path / "r.json"
    assert main(["train", "--epochs", "3", "--quiet", "--threads", "1", "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "ok" and "history" not in summary
    assert len(json.loads(out.read_text())["history"]["epoch"]) == 3
