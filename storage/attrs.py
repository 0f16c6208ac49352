"""Writing a finished trial's results in one transaction.

A dal-search trial leaves some twenty user attrs (its config, per-seed results, curves, summary numbers) and
its checkpoint values. Optuna writes each in a transaction of its own, three or four statements apiece: some
hundred round trips, a noticeable share of a small trial's cost (bench/bench_storage.py). For RDB storages
`write_trial_results` writes them all in one transaction: lock the trial row, check it is still running,
replace the given keys and steps with one bulk insert per table. Other storages get Optuna's public calls.
"""

from __future__ import annotations

import json
from typing import Any

import optuna


SYSTEM_PREFIX = "dal:"  # keys written as trial SYSTEM attrs (bulky records Optuna clients need not print)


def write_trial_results(storage: optuna.storages.BaseStorage, trial_id: int, attrs: dict[str, Any],
                        intermediate: dict[int, float] | None = None) -> None:
    """Set user attrs `attrs` and intermediate values `{step: value}` of a RUNNING trial, all or nothing on
    RDB storages. Keys starting with "dal:" (e.g. the per-epoch curves) become system attrs instead. Existing
    keys and steps are overwritten, as Optuna's per-key setters do."""
    from optuna.storages._cached_storage import _CachedStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    intermediate = intermediate or {}
    system = {k: v for k, v in attrs.items() if k.startswith(SYSTEM_PREFIX)}
    attrs = {k: v for k, v in attrs.items() if not k.startswith(SYSTEM_PREFIX)}
    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    if not isinstance(backend, optuna.storages.RDBStorage):
        for step, value in sorted(intermediate.items()):
            storage.set_trial_intermediate_value(trial_id, step, value)
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    value_model = models.TrialIntermediateValueModel
    with _create_scoped_session(backend.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        backend.check_trial_is_updatable(trial_id, trial.state)
        for attr_model, values in ((models.TrialUserAttributeModel, attrs),
                                   (models.TrialSystemAttributeModel, system)):
            if not values:
                continue
            session.query(attr_model).filter(attr_model.trial_id == trial_id, attr_model.key.in_(list(values))) \
                .delete(synchronize_session=False)
            session.add_all([attr_model(trial_id=trial_id, key=k, value_json=json.dumps(v)) for k, v in values.items()])
        if intermediate:
            session.query(value_model).filter(value_model.trial_id == trial_id,
                                              value_model.step.in_(list(intermediate))) \
                .delete(synchronize_session=False)
            rows = []
            for step, value in sorted(intermediate.items()):
                stored, kind = value_model.intermediate_value_to_stored_repr(float(value))
                rows.append(value_model(trial_id=trial_id, step=step, intermediate_value=stored,
                                        intermediate_value_type=kind))
            session.add_all(rows)
