"""Horizontally fused trials (objectives/fused.py, search/fusion.py): K configs of one study trained as one
batched network give each config's one-by-one result (float rounding apart), members end on their own
(non-finite loss, a pruner), a member's checkpoint resumes alone, and a worker with --fuse pops, trains and
tells fused trials within the exact budget."""

from __future__ import annotations

import pytest
import torch

from dal_search.objectives.checkpoint import Checkpointer
from dal_search.objectives.config import TrainConfig
from dal_search.objectives.fused import NotFusable, train_fused, why_not_fusable
from dal_search.objectives.train import train

N_TRAIN = 450  # train_size 500, 10 % held out for validation: batches of 100 and a partial one of 50
BASE = dict(dataset="digits", threads=1, batch_size=100, train_size=500, epochs=3, noise_rate=0.3)


def _members(model: str) -> list[TrainConfig]:
    """Two members with different q schedules, bootstraps and learning rates."""
    return [TrainConfig(model=model, q_start=0.6, q_end=1.5, **BASE),
            TrainConfig(model=model, q_start=0.2, q_end=2.2, schedule="cosine", bootstrap="hard", lr=0.02, **BASE)]


def _assert_same_history(fused: dict, solo: dict) -> None:
    assert fused["status"] == solo["status"] and fused["label_hash"] == solo["label_hash"]
    for key, values in solo["history"].items():
        # accuracies may flip for a sample right on a decision boundary: at most 2 samples' worth
        assert fused["history"][key] == pytest.approx(values, rel=1e-4, abs=2 / 45), key


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fused_members_train_as_they_would_one_by_one(model):
    """The MLP and the small CNN (BatchNorm in training mode: each member keeps its own running statistics)."""
    configs = _members(model)
    fused = train_fused(configs)
    assert [r["fused"] for r in fused] == [2, 2]
    for f, c in zip(fused, configs):
        _assert_same_history(f, train(c))
    assert fused[0]["history"]["q"] != fused[1]["history"]["q"]  # really two schedules


def test_members_end_on_their_own_and_the_others_train_on():
    """A member whose loss blows up ends 'nonfinite' at that epoch; a member whose report raises (a pruner)
    gets that exception as its result; the third trains to the end as it would alone."""
    blows_up = TrainConfig(loss="ce", lr=1e6, **BASE)
    pruned = TrainConfig(q_start=0.3, **BASE)
    survivor = TrainConfig(q_start=0.6, **{**BASE, "epochs": 3})

    class Pruned(Exception):
        pass

    def prune_at_1(epoch, metrics):
        if epoch == 1:
            raise Pruned(f"epoch {epoch}")

    seen = []
    results = train_fused([blows_up, pruned, survivor],
                          reports=[None, prune_at_1, lambda e, m: seen.append(e)])
    alone = train(blows_up)
    assert alone["status"] == results[0]["status"] == "nonfinite" and results[0]["reason"] == alone["reason"]
    assert isinstance(results[1], Pruned)
    assert seen == [0, 1, 2]
    _assert_same_history(results[2], train(survivor))


def test_a_fused_members_checkpoint_resumes_as_a_run_of_its_own(tmp_path):
    configs = _members("cnn")
    saved = Checkpointer(tmp_path / "member1.pt", at_epochs=[2], at_end=False)
    train_fused(configs, checkpoints=[None, saved])
    assert saved.saved_epochs == [1]
    resumed_from = Checkpointer(tmp_path / "member1.pt")
    resumed = train(configs[1], checkpoint=resumed_from)
    assert resumed_from.resumed_at == 2
    _assert_same_history(resumed, train(configs[1]))


def test_what_cannot_be_fused_is_refused_with_the_reason():
    a = TrainConfig(**BASE)
    assert why_not_fusable([a, a.replace(lr=0.1, q_end=2.0, loss="gce", q=0.5)]) == ""
    assert why_not_fusable([a, a.replace(batch_size=64)]) == "their batch_size differs (100 and 64)"
    assert why_not_fusable([a, a.replace(seed=1)]) == "their seed differs (0 and 1)"
    with pytest.raises(NotFusable, match="their model differs"):
        train_fused([a, a.replace(model="cnn")])


def test_emulated_captured_fused_step_trains_as_the_eager_fused_step(monkeypatch):
    """The fused step's capturable form (q and lambda as (K,) tensors through DAL's tensor form) against the
    eager fused step (numbers, exactly train()'s loss calls)."""
    configs = _members("mlp")
    eager = train_fused(configs)
    monkeypatch.setenv("DAL_SEARCH_TEST_GRAPHS", "emulate")
    emulated = train_fused(configs)
    assert emulated[0]["graphs"].startswith("cuda graphs emulated") and eager[0]["graphs"] == \
        "cuda graphs off: device is cpu"
    for e, f in zip(emulated, eager):
        _assert_same_history(e, f)
