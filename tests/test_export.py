"""Exports of best configs and the studies table, on studies fabricated with the attrs of docs/CONTRACTS.md."""

from __future__ import annotations

import json
import logging
import re

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.storage import StorageError, open_storage
from dal_search.storage.export import _git_state, export_best, load_train_config, study_summaries

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"q_start": FloatDistribution(0.1, 1.0), "q_end": FloatDistribution(1.0, 2.0),
        "schedule": CategoricalDistribution(["linear", "cosine"])}


def _trial(value, q_start, state=TrialState.COMPLETE, seeds=(0, 1)):
    cfg = TrainConfig(q_start=q_start, q_end=1.5, schedule="cosine", epochs=7, seed=seeds[0]).to_dict()
    per_seed = [{"seed": s, "status": "ok", "test_acc": value + 0.05, "best_test_acc": value + 0.06,
                 "val_acc": value, "best_val_acc": value + 0.01, "noisy_fit": 0.1, "clean_fit": 0.95,
                 "realized_rate": 0.36 + 0.01 * s, "label_hash": f"hash{s}", "wall_time": 1.5} for s in seeds]
    attrs = {"train_config": cfg, "seeds": list(seeds), "per_seed": per_seed, "test_acc": value + 0.05,
             "test_acc_std": 0.01, "best_test_acc": value + 0.06, "val_acc": value, "val_acc_std": 0.01,
             "noisy_fit": 0.1, "clean_fit": 0.95, "realized_rate": 0.36, "label_hash": "hash0", "device": "cpu",
             "wall_time": 3.0, "history": {"epoch": list(range(7)), "val_acc": [value] * 7}}
    finished = state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                        params={"q_start": q_start, "q_end": 1.5, "schedule": "cosine"} if finished else None,
                        distributions=DIST if finished else None, user_attrs=attrs if finished else None)


def _study(storage, arm="dal", campaign="c", rate=0.4, values=(0.5, 0.8, 0.7), extra=()):
    name = f"{campaign}/{arm}/digits/symmetric-{rate}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    attrs = {"campaign": campaign, "arm": arm, "dataset": "digits", "noise": "symmetric", "noise_rate": rate,
             "metric": "val_acc", "seeds": [0, 1], "base_config": TrainConfig(epochs=7).to_dict(),
             "space": {"q_start": {"low": 0.1, "high": 1.0}}, "budget": len(values) + len(extra)}
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    for i, v in enumerate(values):
        study.add_trial(_trial(v, q_start=round(0.3 + 0.1 * i, 2)))
    for state in extra:
        study.add_trial(_trial(0.99, q_start=0.9, state=state))
    return study


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path}/x.db")


def test_single_study_export_round_trips_to_the_same_train_config(storage, tmp_path):
    study = _study(storage, extra=(TrialState.PRUNED, TrialState.FAIL))
    out = tmp_path / "best.yaml"
    (doc,) = export_best(study._storage, [study.study_name], None, out)  # the cached wrapper works too
    on_disk = yaml.safe_load(out.read_text())
    assert on_disk == json.loads(json.dumps(doc, default=str))
    prov = doc["provenance"]
    assert (prov["study"], prov["trial_number"], prov["value"]) == ("c/dal/digits/symmetric-0.4", 1, 0.8)
    assert (prov["metric"], prov["direction"], prov["campaign"], prov["arm"]) == ("val_acc", "maximize", "c", "dal")
    assert (prov["dataset"], prov["noise"], prov["noise_rate"], prov["realized_rate"]) == ("digits", "symmetric", 0.4, 0.36)
    assert prov["label_hash"] == "hash0" and prov["seeds"] == [0, 1]
    assert [s["seed"] for s in prov["per_seed"]] == [0, 1] and prov["per_seed"][1]["realized_rate"] == 0.37
    assert (prov["device"], prov["wall_time"]) == ("cpu", 3.0)
    assert prov["params"] == {"q_start": 0.4, "q_end": 1.5, "schedule": "cosine"}
    assert prov["completed"] and prov["retry_of"] is None
    assert prov["dal_search_version"]
    # the code's own commit in a git checkout, "unknown" in a tarball, sdist or wheel (both: see below)
    assert prov["git_sha"] == _git_state()[0] and (prov["git_sha"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", prov["git_sha"]))
    assert set(prov["versions"]) == {"python", "torch", "torchvision", "numpy", "optuna", "scikit-learn"}
    assert prov["versions"]["optuna"] == optuna.__version__
    cfg = load_train_config(out)
    assert cfg == TrainConfig.from_dict(study.trials[1].user_attrs["train_config"])
    assert set(doc["train_config"]) == set(TrainConfig().to_dict())  # every field spelled out
    js = tmp_path / "best.json"
    export_best(storage, [study.study_name], None, js)
    assert isinstance(json.loads(js.read_text()), dict) and load_train_config(js) == cfg


def test_campaign_export_is_one_document_per_study_with_selectors(storage, tmp_path, caplog):
    _study(storage, arm="dal")
    _study(storage, arm="gce", values=(0.6,))
    _study(storage, arm="ce", values=())  # nothing completed yet: left out, with a warning
    _study(storage, arm="dal", campaign="other", values=(0.99,))
    out = tmp_path / "c.yaml"
    with caplog.at_level(logging.WARNING, logger="dal-search.storage"):
        docs = export_best(storage, None, "c", out)
    assert "c/ce/digits/symmetric-0.4 has no completed trial yet" in caplog.text
    assert [d["provenance"]["study"] for d in docs] == ["c/dal/digits/symmetric-0.4", "c/gce/digits/symmetric-0.4"]
    assert len(list(yaml.safe_load_all(out.read_text()))) == 2
    with pytest.raises(ConfigError) as e:
        load_train_config(out)
    assert str(e.value) == (f"{out} holds 2 configs; pick one as {out}#STUDY, STUDY one of: "
                            "c/dal/digits/symmetric-0.4, c/gce/digits/symmetric-0.4")
    assert load_train_config(f"{out}#c/gce/digits/symmetric-0.4").q_start == pytest.approx(0.3)
    assert load_train_config(f"{out}#0").q_start == pytest.approx(0.4)
    with pytest.raises(ConfigError, match=r"has no config 'c/sce/x'; choose one of: .* \(or an index 0..1\)"):
        load_train_config(f"{out}#c/sce/x")
    js = tmp_path / "c.json"
    export_best(storage, None, "c", js)
    assert isinstance(json.loads(js.read_text()), list)
    assert load_train_config(f"{js}#1").q_start == pytest.approx(0.3)


def test_a_retried_trial_exports_which_trial_it_retried(storage, tmp_path):
    study = _study(storage, values=(0.5,))
    retry = _trial(0.9, q_start=0.7)
    retry.system_attrs = {"failed_trial": 0, "retry_history": [0]}
    study.add_trial(retry)
    (doc,) = export_best(storage, [study.study_name], None, tmp_path / "r.yaml")
    assert (doc["provenance"]["trial_number"], doc["provenance"]["retry_of"]) == (1, 0)


def test_export_errors_are_one_line_and_write_nothing(storage, tmp_path):
    _study(storage, arm="ce", values=())
    optuna.create_study(storage=storage, study_name="foreign").add_trial(create_trial(value=1.0))
    out = tmp_path / "o.yaml"
    cases = [
        (["c/ce/digits/symmetric-0.4"], None, out, "study c/ce/digits/symmetric-0.4 has no completed trial yet"),
        (["nope"], None, out, "no study 'nope' in this storage"),
        (None, "nope", out, "no studies of campaign 'nope'"),
        (None, "c", out, "no study of campaign 'c' has a completed trial yet"),
        (["foreign"], None, out, "study foreign trial 0 carries no train_config"),
        (["c/ce/digits/symmetric-0.4"], None, tmp_path / "o.txt", "must end in .yaml, .yml or .json"),
        (None, None, out, "export needs study names or a campaign"),
    ]
    for names, campaign, path, fragment in cases:
        with pytest.raises(StorageError) as e:
            export_best(storage, names, campaign, path)
        assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith("x.db")]


def test_load_train_config_reads_plain_files_and_names_the_problem(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("dataset: digits\nq_start: 0.5\nq_end: 1.2\nepochs: 3\n")
    assert load_train_config(flat) == TrainConfig(q_start=0.5, q_end=1.2, epochs=3)
    (tmp_path / "flat.json").write_text(json.dumps({"loss": "gce", "q": 0.7}))
    assert load_train_config(tmp_path / "flat.json").loss == "gce"
    (tmp_path / "bad.yaml").write_text("q_strat: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config field 'q_strat'"):
        load_train_config(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("q_start: [0.5\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_train_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_train_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="config file .*missing.yaml not found"):
        load_train_config(tmp_path / "missing.yaml")
    odd = tmp_path / "run#1.yaml"  # a '#' in a real file name is not a selector
    odd.write_text("epochs: 4\n")
    assert load_train_config(odd).epochs == 4


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_study_summaries_count_every_state(tmp_path, kind):
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:{tmp_path}/s.log"
    storage = open_storage(url, heartbeat_interval=None)
    study = _study(storage, extra=(TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL))
    study.ask()  # one RUNNING
    study.add_trial(_trial(0.99, q_start=0.9, state=TrialState.WAITING))
    _study(storage, arm="ce", values=())
    _study(storage, arm="gce", campaign="other", values=(0.1,))
    optuna.create_study(storage=storage, study_name="not-dal-search")
    rows = {r["name"]: r for r in study_summaries(storage)}
    assert set(rows) == {"c/dal/digits/symmetric-0.4", "c/ce/digits/symmetric-0.4", "other/gce/digits/symmetric-0.4"}
    dal = rows["c/dal/digits/symmetric-0.4"]
    assert {k: dal[k] for k in ("complete", "running", "pruned", "failed", "waiting")} == \
        {"complete": 3, "running": 1, "pruned": 1, "failed": 2, "waiting": 1}
    assert (dal["best_value"], dal["best_trial"], dal["best_test_acc"]) == (0.8, 1, pytest.approx(0.85))
    assert (dal["campaign"], dal["arm"], dal["dataset"], dal["noise"], dal["noise_rate"], dal["budget"]) == \
        ("c", "dal", "digits", "symmetric", 0.4, 6)
    ce = rows["c/ce/digits/symmetric-0.4"]
    assert (ce["complete"], ce["best_value"], ce["best_trial"]) == (0, None, None)
    assert [r["name"] for r in study_summaries(storage, campaign="other")] == ["other/gce/digits/symmetric-0.4"]


def test_provenance_names_the_commit_in_a_checkout_and_unknown_outside(tmp_path):
    """Both cases whatever this suite runs from: code in a checkout of its own, in a plain folder (a tarball or
    an sdist), and in a sub-folder of some other repository (which is not the code's commit)."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("no git on PATH")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _git_state(plain) == ("unknown", None)

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert _git_state(repo) == (head, False)
    (repo / "code.py").write_text("x = 2\n")
    assert _git_state(repo) == (head, True)
    (repo / "vendored").mkdir()
    assert _git_state(repo / "vendored") == ("unknown", None)
