"""storage.attrs.write_trial_results: a finished trial's user attrs and checkpoint values in one write, read
back exactly through Optuna on every storage; all or nothing on RDB storages."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from dal_search.storage import open_storage
from dal_search.storage.attrs import write_trial_results


@pytest.fixture(params=["sqlite", "postgres", "journal"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    if request.param == "journal":
        return open_storage(f"journal:{tmp_path / 'a.log'}")
    return open_storage(request.getfixturevalue("pg_url"))


def test_attrs_and_intermediate_values_read_back(storage):
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()
    trial.set_user_attr("worker", "host:1")
    trial.set_user_attr("per_seed", "replaced")
    trial.report(0.1, 0)  # a step written earlier is overwritten, as Optuna's own setter does
    attrs = {"per_seed": [{"seed": 0, "test_acc": 0.5}], "history": {"q": [0.6, 0.9]}, "val_acc": 0.25}
    write_trial_results(storage, trial._trial_id, attrs, {0: 0.2, 9: float("nan"), 19: float("inf"), 29: 0.75})
    study.tell(trial, 0.75)
    t = optuna.load_study(study_name="s", storage=storage).trials[0]
    assert t.user_attrs == {"worker": "host:1", **attrs}
    assert list(t.intermediate_values) == [0, 9, 19, 29]
    assert t.intermediate_values[0] == 0.2 and math.isnan(t.intermediate_values[9])
    assert t.intermediate_values[19] == float("inf") and t.intermediate_values[29] == 0.75


def test_finished_trial_is_refused_and_left_as_it_was(storage):
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.set_user_attr("a", 1)
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        write_trial_results(storage, trial._trial_id, {"a": 2, "b": 3}, {5: 0.5})
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.user_attrs == {"a": 1} and t.intermediate_values == {}
