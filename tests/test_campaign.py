"""Campaign files and search spaces: parsed, validated before anything is written, studies laid out exactly."""

import optuna
import pytest
import yaml

from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.search.campaign import CampaignError, create_studies, load_campaign, parse_campaign, progress
from dal_search.search.space import SpaceError, all_grid_points, grid_size, validate_space

GOOD = {
    "name": "t",
    "datasets": ["digits"],
    "noise": {"symmetric": [0.2, 0.4], "asymmetric": [0.4]},
    "arms": {"dal": {"q_start": {"low": 0.2, "high": 1.0}, "q_end": {"low": 1.0, "high": 2.0},
                     "schedule": ["linear", "cosine"]},
             "ce": {}},
    "budget": {"trials": 3, "seeds": [0, 1]},
    "train": {"epochs": 2},
}


def test_conditions_and_study_names():
    camp = parse_campaign(GOOD)
    names = [c.study_name for c in camp.conditions()]
    assert len(names) == 2 * 3  # arms x (2 symmetric + 1 asymmetric)
    assert "t/dal/digits/symmetric-0.4" in names
    assert "t/ce/digits/asymmetric-0.4" in names
    base = camp.base_config(camp.conditions()[0])
    assert base.epochs == 2 and base.seed == 0 and base.dataset == "digits"


@pytest.mark.parametrize("change, fragment", [
    ({"sampler": "bayes"}, "unknown sampler 'bayes'"),
    ({"pruner": "asha"}, "unknown pruner 'asha'"),
    ({"noise": {"symmetric": [1.2]}}, "must be a number in [0, 1)"),
    ({"noise": {"gaussian": [0.2]}}, "unknown noise kind 'gaussian'"),
    ({"arms": {"focal": {}}}, "unknown arm 'focal'"),
    ({"arms": {"dal": {"q_start": {"low": 0.5, "high": 1.6}, "q_end": {"low": 1.2, "high": 2.0}}}},
     "q_s <= q_e"),
    ({"arms": {"dal": {"q_start": {"low": 0.9, "high": 0.5}}}}, "low 0.9 > high 0.5"),
    ({"arms": {"dal": {"qs": [0.5]}}}, "unknown field 'qs'"),
    ({"arms": {"dal": {"schedule": ["linear", "zigzag"]}}}, "unknown schedule 'zigzag'"),
    ({"train": {"epochs": 0}}, "epochs must be >= 1"),
    ({"train": {"noise_rate": 0.3}}, "set by the campaign's conditions"),
    ({"budget": {"trials": -1}}, "budget.trials must be a positive integer"),
    ({"colour": "red"}, "unknown key 'colour'"),
])
def test_invalid_campaigns_name_the_field(change, fragment):
    with pytest.raises(CampaignError) as e:
        parse_campaign({**GOOD, **change})
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\narms: [dal\n")
    with pytest.raises(CampaignError, match="not valid YAML at line"):
        load_campaign(p)


def test_builtin_campaigns_parse():
    for name in ("quick", "paper"):
        camp = load_campaign(name)
        assert camp.name == name and camp.conditions()


def test_space_rejects_overlapping_q_ranges_and_accepts_touching():
    base = TrainConfig()
    validate_space({"q_start": {"low": 0.1, "high": 1.0}, "q_end": {"low": 1.0, "high": 2.0}}, "x", base)
    with pytest.raises(SpaceError):
        validate_space({"q_start": [0.5, 1.5], "q_end": [1.2]}, "x", base)


def test_grid_points():
    space = {"q_start": {"low": 0.2, "high": 0.6, "step": 0.2}, "q_end": [1.5, 2.0], "lr": 0.05}
    assert grid_size(space) == 6
    pts = all_grid_points(space)
    assert {(p["q_start"], p["q_end"]) for p in pts} == {(a, b) for a in (0.2, 0.4, 0.6) for b in (1.5, 2.0)}


def test_create_studies_lays_exact_slots_and_is_idempotent(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'x.db'}")
    camp = parse_campaign(GOOD)
    names = create_studies(storage, camp)
    assert len(names) == 6
    create_studies(storage, camp)  # a second driver, or a re-run: nothing doubles
    counts = progress(storage, names)
    assert counts["waiting"] == counts["budget"] == 3 * 3 + 3 * 1  # DAL 3 trials; CE has nothing to search: 1
    attrs = optuna.load_study(study_name=names[0], storage=storage).user_attrs
    assert attrs["campaign"] == "t" and attrs["seeds"] == [0, 1] and attrs["budget"] == 3
    TrainConfig.from_dict(attrs["base_config"])


def test_changed_campaign_under_same_name_is_refused_and_nothing_changes(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'x.db'}")
    names = create_studies(storage, parse_campaign(GOOD))
    changed = {**GOOD, "train": {"epochs": 5}}
    with pytest.raises(CampaignError, match="already exists with a different base_config"):
        create_studies(storage, parse_campaign(changed))
    assert progress(storage, names)["waiting"] == 12


def test_grid_campaign_enqueues_each_point(tmp_path):
    spec = {**GOOD, "sampler": "grid", "noise": {"symmetric": [0.4]},
            "arms": {"dal": {"q_start": [0.4, 0.8], "q_end": [1.2, 1.6, 2.0]}}, "budget": {"seeds": [0]}}
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'g.db'}")
    (name,) = create_studies(storage, parse_campaign(spec))
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    points = {(t.system_attrs["fixed_params"]["q_start"], t.system_attrs["fixed_params"]["q_end"]) for t in trials}
    assert len(trials) == 6 and len(points) == 6


def test_config_error_messages():
    with pytest.raises(ConfigError, match="q_end .* must be >= q_start"):
        TrainConfig(q_start=1.5, q_end=1.0)
    with pytest.raises(ConfigError, match="unknown config field 'lr_max'"):
        TrainConfig.from_dict({"lr_max": 1})
    assert TrainConfig.from_dict(yaml.safe_load("epochs: 3\nnoise_rate: 0.2\n")).epochs == 3


# ------------------------------------------------------------------ budgets: no trial repeats a finished one

def _run(tmp_path, spec: dict, name: str = "b"):
    """Create the campaign's studies in a fresh SQLite file and run them with one real worker."""
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / (name + '.db')}")
    camp = parse_campaign(spec)
    names = create_studies(storage, camp)
    run_worker(storage, camp.name, worker_seed=0)
    return storage, camp, {n: optuna.load_study(study_name=n, storage=storage) for n in names}


def test_an_arm_with_nothing_to_search_runs_one_trial_per_study_each_seed_once(tmp_path):
    spec = {"name": "fixed", "datasets": ["digits"], "noise": {"symmetric": [0.4]},
            "arms": {"gce": {"q": 0.7}, "ce": {}}, "budget": {"trials": 5, "seeds": [0, 1]},
            "train": {"epochs": 1, "threads": 1}}
    camp = parse_campaign(spec)
    assert camp.budget("gce") == camp.budget("ce") == 1
    storage, camp, studies = _run(tmp_path, spec)
    for name, study in studies.items():
        trials = study.get_trials()
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE], name
        assert [r["seed"] for r in trials[0].user_attrs["per_seed"]] == [0, 1]  # still trained once per seed
        assert study.user_attrs["budget"] == 1
    assert studies["fixed/gce/digits/symmetric-0.4"].trials[0].user_attrs["train_config"]["q"] == 0.7
    create_studies(storage, camp)  # a re-run lays nothing new
    assert progress(storage, list(studies))["waiting"] == 0


@pytest.mark.parametrize("trials, runs", [(10, 4), (3, 3)])
def test_a_space_of_choices_never_repeats_a_combination(tmp_path, trials, runs):
    spec = {"name": "cat", "datasets": ["digits"], "noise": {"symmetric": [0.4]},
            "arms": {"dal": {"q_start": 0.6, "q_end": 1.5, "schedule": ["linear", "cosine"],
                             "bootstrap": ["soft", "hard"]}},
            "budget": {"trials": trials, "seeds": [0]}, "train": {"epochs": 1, "threads": 1}, "sampler": "tpe"}
    assert parse_campaign(spec).budget("dal") == runs  # at most the 4 combinations
    storage, camp, studies = _run(tmp_path, spec)
    (study,) = studies.values()
    done = [(t.params["schedule"], t.params["bootstrap"]) for t in study.get_trials()
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == runs and len(set(done)) == runs
    # resuming (a second driver, a re-run) neither re-lays nor re-runs a finished combination
    create_studies(storage, camp)
    from dal_search.search.worker import run_worker

    assert run_worker(storage, camp.name, worker_seed=1).total == 0
    assert len(study.get_trials()) == runs


def test_a_rerun_of_a_study_laid_under_the_earlier_budget_rule_resumes_it(tmp_path):
    """Before fixed arms ran once, `ce: {}` with trials 3 laid 3 identical slots. Re-running the same
    campaign file keeps that study's stored budget (nothing rewritten, nothing refused); a campaign that
    asks for another number of trials is still refused."""
    from dal_search.search.campaign import top_up

    spec = {**GOOD, "arms": {"ce": {}}, "noise": {"symmetric": [0.4]}}
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'old.db'}")
    (name,) = create_studies(storage, parse_campaign(spec))
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr("budget", 3)  # what the earlier rule stored and laid
    top_up(study, 3)
    assert len(study.get_trials()) == 3
    assert create_studies(storage, parse_campaign(spec)) == [name]
    assert study.user_attrs["budget"] == 3 and len(study.get_trials()) == 3
    assert progress(storage, [name])["budget"] == 3
    with pytest.raises(CampaignError, match="already exists with a different budget"):
        create_studies(storage, parse_campaign({**spec, "budget": {"trials": 4, "seeds": [0, 1]}}))
    assert len(study.get_trials()) == 3
