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


# ---------------------------------------------------------------- a worker that fuses (search/fusion.py)

def _trials(url: str, campaign: str):
    import optuna

    from dal_search.storage import open_storage

    storage = open_storage(url)
    (name,) = [n for n in optuna.get_all_study_names(storage)
               if storage.get_study_user_attrs(storage.get_study_id_from_name(n)).get("campaign") == campaign]
    return optuna.load_study(study_name=name, storage=storage).trials


def test_a_fusing_worker_runs_the_exact_budget_and_tells_each_trial_its_own_result(tmp_path, campaign_file, capsys):
    """`dal-search run --fuse 2` on a 4-trial, 2-seed budget: two fused pairs, every trial complete with its
    own params, per-seed rows and checkpoint values, and the value its params give trained alone."""
    pytest.importorskip("optuna")
    from dal_search.search.cli import main

    url = f"sqlite:///{tmp_path}/f.db"
    path = campaign_file(name="fuse", trials=4, seeds=(0, 1), train={"epochs": 3, "threads": 1, "train_size": 400})
    assert main(["run", path, "--storage", url, "--fuse", "2"]) == 0
    trials = _trials(url, "fuse")
    assert len(trials) == 4 and {t.state.name for t in trials} == {"COMPLETE"}
    assert sorted(tuple(t.user_attrs["fused_with"]) for t in trials) == [(0, 1), (0, 1), (2, 3), (2, 3)]
    assert len({t.params["q_start"] for t in trials}) == 4  # each its own sampled params
    for t in trials:
        assert [r["seed"] for r in t.user_attrs["per_seed"]] == [0, 1] and "worker" in t.user_attrs
        assert sorted(t.intermediate_values) == [0, 1, 2]
    t = trials[3]  # retrained alone, seed by seed
    alone = [train(TrainConfig.from_dict({**t.user_attrs["train_config"], "seed": s})) for s in (0, 1)]
    assert t.value == pytest.approx(sum(r["val_acc"] for r in alone) / 2, abs=2 / 40)  # 40 validation images


def test_fuse_is_checked_and_a_stopped_fused_pair_is_requeued_then_finished_within_the_budget(tmp_path, capsys):
    """--fuse 0 is one line and exit 2. A pool's stop (should_stop) mid-epoch re-queues both fused trials; the
    next fusing worker finishes the budget exactly: 4 complete, the 2 interrupted ones failed and retried."""
    pytest.importorskip("optuna")
    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.cli import main
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage
    from tests.conftest import tiny_campaign

    assert main(["worker", "--storage", f"sqlite:///{tmp_path}/x.db", "--fuse", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("dal-search: error: --fuse 0 is not a number of trials to fuse; use 1 "
                                               "(no fusion) to 64")
    url = f"sqlite:///{tmp_path}/s.db"
    storage = open_storage(url)
    create_studies(storage, parse_campaign(tiny_campaign("stop", trials=4, epochs=4)))
    calls = iter(range(100))
    stats = run_worker(storage, "stop", worker_seed=0, fuse=2, should_stop=lambda: next(calls) >= 3)
    assert stats.total == 0
    trials = _trials(url, "stop")
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 2 and all(t.system_attrs["dal:requeue"] == "interrupted" for t in stopped)
    stats = run_worker(storage, "stop", worker_seed=1, fuse=2)
    trials = _trials(url, "stop")
    assert stats.complete == 4 and sum(t.state.name == "COMPLETE" for t in trials) == 4 and len(trials) == 6
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    assert retried == {t.number for t in stopped}


@pytest.mark.slow
def test_a_sigkilled_fusing_workers_trials_go_stale_and_the_budget_still_finishes_exactly(tmp_path):
    """Heartbeats keep beating for each fused trial; SIGKILL the worker mid-pair: the next fusing worker fails
    both as stale, retries them (fused again) and finishes the 2-trial budget exactly."""
    pytest.importorskip("optuna")
    import os
    import signal
    import time

    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage
    from tests.conftest import tiny_campaign
    from tests.test_search import spawn

    env = {"DAL_SEARCH_HEARTBEAT": "1", "DAL_SEARCH_GRACE": "3", "DAL_SEARCH_CHECKPOINT_DIR": "off"}
    url = f"sqlite:///{tmp_path}/k.db"
    storage = open_storage(url, heartbeat_interval=1, grace_period=3)
    create_studies(storage, parse_campaign(tiny_campaign("killfuse", trials=2,
                                                         train={"epochs": 20, "threads": 1, "train_size": 500})))
    victim = spawn("worker", "--storage", url, "--campaign", "killfuse", "--fuse", "2", "--quiet", "--threads", "1",
                   env=env)
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        running = [t for t in _trials(url, "killfuse") if t.state.name == "RUNNING" and "fused_with" in t.user_attrs]
        if len(running) == 2:
            break
        time.sleep(0.2)
    time.sleep(1.2)  # a periodic beat of each (their first is synchronous); the pair is loading or training
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert len(running) == 2, victim.stderr.read()
    stats = run_worker(storage, "killfuse", worker_seed=0, fuse=2)
    trials = _trials(url, "killfuse")
    assert stats.complete == 2 and sum(t.state.name == "COMPLETE" for t in trials) == 2 and len(trials) == 4
    killed = {t.number for t in running}
    assert {t.number for t in trials if t.state.name == "FAIL"} == killed
    assert all(t.user_attrs["fail_reason"].startswith("stale") for t in trials if t.number in killed)
    assert {t.system_attrs.get("failed_trial") for t in trials} - {None} == killed
    assert all(len(t.user_attrs["fused_with"]) == 2 for t in trials if t.state.name == "COMPLETE")  # fused again


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_members_captured_on_a_gpu_match_their_runs_alone():
    """On a GPU the fused step is captured too; each member agrees with its own captured run alone within bf16
    tolerance (bench/gpu_check.sh runs this)."""
    configs = [c.replace(device="cuda", threads=None) for c in _members("cnn")]
    fused = train_fused(configs)
    assert fused[0]["graphs"].startswith("cuda graphs on")
    for f, c in zip(fused, configs):
        alone = train(c)
        assert alone["graphs"].startswith("cuda graphs on")
        assert f["history"]["train_loss"] == pytest.approx(alone["history"]["train_loss"], rel=2e-2)
        for key in ("train_acc", "val_acc", "test_acc"):
            assert f["history"][key] == pytest.approx(alone["history"][key], abs=0.05), key


def test_trials_that_cannot_be_fused_train_one_at_a_time_with_a_warning(tmp_path, caplog):
    """A grid over the network: the popped pair differs in `model`, so the worker says so and trains each alone."""
    pytest.importorskip("optuna")
    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage
    from tests.conftest import tiny_campaign

    storage = open_storage(f"sqlite:///{tmp_path}/n.db")
    create_studies(storage, parse_campaign(tiny_campaign(
        "apart", trials=2, epochs=2, sampler="grid", train={"epochs": 2, "threads": 1, "train_size": 300},
        arms={"dal": {"model": ["mlp", "cnn"], "q_start": 0.6, "q_end": 1.5}})))
    stats = run_worker(storage, "apart", worker_seed=0, fuse=2)
    trials = _trials(f"sqlite:///{tmp_path}/n.db", "apart")
    assert stats.complete == 2 and sorted(t.params["model"] for t in trials) == ["cnn", "mlp"]
    assert not any("fused_with" in t.user_attrs for t in trials)
    warned = [r.getMessage() for r in caplog.records if r.name == "dal-search.fusion"]
    assert warned == ["fuse: trials [0, 1] differ beyond the fusable fields; training 2 groups one after the other"]
