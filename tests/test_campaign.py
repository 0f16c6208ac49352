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
    assert counts["waiting"] == counts["budget"] == 6 * 3
    attrs = optuna.load_study(study_name=names[0], storage=storage).user_attrs
    assert attrs["campaign"] == "t" and attrs["seeds"] == [0, 1] and attrs["budget"] == 3
    TrainConfig.from_dict(attrs["base_config"])


def test_changed_campaign_under_same_name_is_refused_and_nothing_changes(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'x.db'}")
    names = create_studies(storage, parse_campaign(GOOD))
    changed = {**GOOD, "train": {"epochs": 5}}
    with pytest.raises(CampaignError, match="already exists with a different base_config"):
        create_studies(storage, parse_campaign(changed))
    assert progress(storage, names)["waiting"] == 18


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
