"""Writing a finished trial's user attributes in one transaction.

A dal-search trial leaves some twenty user attrs (its config, per-seed results, curves, summary numbers).
Optuna writes each in a transaction of its own: twenty commits, a noticeable share of a small trial's cost
(bench/bench_storage.py). For RDB storages this writes them all in one transaction, through the same
per-key routine Optuna uses; other storages get Optuna's public per-key call.
"""

from __future__ import annotations

from typing import Any

import optuna


def set_trial_user_attrs(storage: optuna.storages.BaseStorage, trial_id: int, attrs: dict[str, Any]) -> None:
    from optuna.storages._cached_storage import _CachedStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    if not isinstance(backend, optuna.storages.RDBStorage):
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        return
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)
