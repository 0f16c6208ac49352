"""`dal-search tune` end to end on CPU, through the CLI in-process, on one private Ray cluster for the module
(shut down at its end): ASHA stops the trials that fall behind and every Tune trial is a trial of the
campaign's study; PBT learns a schedule that `export` writes and `train --config` re-runs exactly."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dal_search.search.analysis import trial_history
from dal_search.search.cli import main
from dal_search.search.worker import compact_curves
from tests.conftest import tiny_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_here():
    """The private cluster `dal-search tune` starts (loopback, token auth), started once for both tests."""
    from dal_search.search.pool import ray_cluster
    from dal_search.search.tune import WORKER_ENV

    with ray_cluster(None, env_vars=WORKER_ENV, num_cpus=3):
        yield


def _campaign(tmp_path, **kw) -> str:
    path = tmp_path / f"{kw['name']}.yaml"
    path.write_text(yaml.safe_dump(tiny_campaign(**kw)))
    return str(path)


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_asha_stops_trials_that_fall_behind_and_each_is_a_trial_of_the_study(tmp_path, ray_here, capsys):
    url = f"sqlite:///{tmp_path}/t.db"
    # a grid runs its points in order, one at a time: the good learning rate first, then two that barely learn
    path = _campaign(tmp_path, name="asha", epochs=6, seeds=(0, 1), sampler="grid",
                     arms={"dal": {"lr": [0.05, 0.00001, 0.00002], "q_start": 0.6, "q_end": 1.5}})
    assert main(["tune", path, "--storage", url, "--scheduler", "asha", "--workers", "1", "--grace-period", "2",
                 "--quiet"]) == 0
    assert "tune done (asha): 1 DAL studies, 1 complete, 2 stopped early, 0 failed" in capsys.readouterr().err
    trials = _trials(url, "asha/dal/digits/symmetric-0.4")
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    done, stopped = trials[0], trials[1:]
    assert done.params["lr"] == 0.05 and len(trial_history(done)["epoch"]) == 6
    assert [r["seed"] for r in done.user_attrs["per_seed"]] == [0, 1] and done.user_attrs["epochs_trained"] == 12
    assert done.value == pytest.approx(sum(r["val_acc"] for r in done.user_attrs["per_seed"]) / 2)
    assert sorted(done.intermediate_values) == [1, 5]  # the rung at 2 epochs, then the end
    for t in stopped:
        assert t.user_attrs["fail_reason"].startswith("stopped by ASHA after 2 epochs")
        assert t.user_attrs["epochs_trained"] == 4 and t.intermediate_values[1] < done.intermediate_values[1]

    assert main(["studies", "--storage", url, "--campaign", "asha", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["complete"], row["pruned"], row["waiting"], row["running"], row["best_trial"]) == (1, 2, 0, 0, 0)
    out = tmp_path / "best.yaml"
    assert main(["export", "--storage", url, "--campaign", "asha", "--out", str(out)]) == 0
    assert main(["train", "--config", str(out), "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    assert compact_curves(json.loads((tmp_path / "r.json").read_text())["history"]) == trial_history(done)


def test_pbt_learns_a_schedule_that_export_and_train_rerun_exactly(tmp_path, ray_here, capsys):
    url = f"sqlite:///{tmp_path}/t.db"
    path = _campaign(tmp_path, name="pbt", trials=3, epochs=6, seeds=(0,))  # q in [0.3, 2.0], population 3
    assert main(["tune", path, "--storage", url, "--scheduler", "pbt", "--workers", "3",
                 "--perturbation-interval", "2", "--quiet"]) == 0
    assert "tune done (pbt): 1 DAL studies, 3 complete, 0 stopped early, 0 failed" in capsys.readouterr().err
    study = optuna.load_study(study_name="pbt/dal/digits/symmetric-0.4", storage=url)
    assert study.user_attrs["scheduler"] == "pbt"
    members = study.get_trials()
    assert len(members) == 3 and all(t.state == TrialState.COMPLETE for t in members)
    for t in members:
        cfg, h = t.user_attrs["train_config"], trial_history(t)
        assert cfg["schedule"] == "explicit" and h["q"] == cfg["q_schedule"] and h["lam"] == cfg["lam_schedule"]
        assert all(0.3 <= q <= 2.0 for q in cfg["q_schedule"]) and all(0 <= v <= 1 for v in cfg["lam_schedule"])
        # constant within each perturbation interval of 2 epochs
        assert all(cfg["q_schedule"][i] == cfg["q_schedule"][i + 1] for i in (0, 2, 4))
        assert set(t.user_attrs["pbt"]) == {"initial", "exploits"}
    best = max(members, key=lambda t: t.value)

    out = tmp_path / "best.yaml"
    assert main(["export", "--storage", url, "--campaign", "pbt", "--out", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["train_config"]["q_schedule"] == best.user_attrs["train_config"]["q_schedule"]
    assert main(["train", "--config", str(out), "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    rerun = json.loads((tmp_path / "r.json").read_text())
    assert compact_curves(rerun["history"]) == trial_history(best) and rerun["val_acc"] == best.value  # bit for bit
    copied = [t for t in members if t.user_attrs["pbt"]["exploits"]]  # a lineage that copied another member
    if copied:  # (nearly always, with 3 members and 2 intervals; PBT's timing decides)
        from dal_search.objectives.config import TrainConfig
        from dal_search.objectives.train import train

        again = train(TrainConfig.from_dict(copied[0].user_attrs["train_config"]))
        assert compact_curves(again["history"]) == trial_history(copied[0])

    assert main(["report", "--storage", url, "--campaign", "pbt", "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Learned schedules (PBT, open question 1)" in page and "the schedule learned by PBT" in page
    # the population's slots are tune's: a worker on the campaign leaves them alone
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage

    assert run_worker(open_storage(url), "pbt", worker_seed=0).total == 0


def test_tune_mistakes_are_one_line_and_start_nothing(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path}/t.db"
    path = _campaign(tmp_path, name="nodal", arms={"gce": {"q": 0.7}})
    assert main(["tune", path, "--storage", url, "--scheduler", "pbt", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no DAL study" in err
    assert main(["tune", path, "--storage", url, "--scheduler", "asha", "--reduction-factor", "1"]) == 2
    assert "--reduction-factor must be > 1" in capsys.readouterr().err
    monkeypatch.setenv("DAL_SEARCH_CHECKPOINT_SECONDS", "soon")
    assert main(["worker", "--storage", url, "--campaign", "nodal", "--quiet"]) == 2
    assert "DAL_SEARCH_CHECKPOINT_SECONDS='soon' is not a number" in capsys.readouterr().err
