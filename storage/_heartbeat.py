"""Heartbeats for the storages Optuna 5 gives none: the journal (file, Redis) and the gRPC proxy client.

Optuna's heartbeat lives in RDBStorage alone (a `trial_heartbeats` table stamped with the database's clock).
Without one, a worker killed mid-trial leaves its trial RUNNING for ever and the study never reaches its
budget. `AttrHeartbeat` gives those storages the same contract through Optuna's own machinery
(`BaseHeartbeat`, so `study.optimize`, `fail_stale_trials` and the search worker's heartbeat thread use it
unchanged): a beat is the trial system attr `dal:heartbeat` = the worker's wall clock (Unix seconds).

A RUNNING trial is stale when `now - max(last beat, datetime_start) > grace_period` (default twice the
interval). A trial that never beat counts from its start: its worker died between claiming it and its first
beat, and would otherwise hold the study RUNNING for ever (so on a storage with heartbeats every worker must
beat; dal-search's do, before anything else). Clocks: each worker stamps its own time, so hosts sharing a journal or a proxy need clocks that agree
to well within the grace period (NTP does); RDBStorage does not need this.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import optuna
from optuna.storages import GrpcStorageProxy, JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "dal:heartbeat"
StaleCallback = Callable[["optuna.Study", FrozenTrial], None]


class AttrHeartbeat(BaseHeartbeat):
    """Mixin: heartbeats stored as a trial system attr. Call `_init_heartbeat` from the subclass's __init__."""

    _heartbeat_interval: int | None = None
    _grace_period: int | None = None
    _stale_callback: StaleCallback | None = None

    def _init_heartbeat(self, interval: int | None, grace_period: int | None,
                        callback: StaleCallback | None) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("heartbeat_interval must be a positive number of seconds")
        if grace_period is not None and grace_period <= 0:
            raise ValueError("grace_period must be a positive number of seconds")
        self._heartbeat_interval = interval
        self._grace_period = grace_period
        self._stale_callback = _ForgetBeat(callback) if callback is not None else None

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())  # type: ignore[attr-defined]
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the trial ended (or another worker failed it as stale) between two beats: as RDBStorage does

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self._heartbeat_interval is not None
        grace = self._grace_period or 2 * self._heartbeat_interval
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):  # type: ignore[attr-defined]
            # A retry may inherit the system attrs of the trial it retries; its own start time counts as a beat.
            marks = [float(m) for m in (t.system_attrs.get(HEARTBEAT_ATTR),
                                        t.datetime_start.timestamp() if t.datetime_start is not None else None)
                     if m is not None]
            if marks and now - max(marks) > grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self._stale_callback


class _ForgetBeat:
    """Hands the stale trial to the retry callback without its last beat, so the queued retry starts clean."""

    def __init__(self, callback: StaleCallback) -> None:
        self.callback = callback

    def __call__(self, study: "optuna.Study", trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR}
        self.callback(study, trial)


class HeartbeatJournalStorage(AttrHeartbeat, JournalStorage):
    """`optuna.storages.JournalStorage` (file or Redis backend) with heartbeats and a stale-trial callback."""

    def __init__(self, backend: Any, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 heartbeat_stale_trial_callback: StaleCallback | None = None) -> None:
        self._init_heartbeat(heartbeat_interval, grace_period, heartbeat_stale_trial_callback)
        super().__init__(backend)


class HeartbeatGrpcStorageProxy(AttrHeartbeat, GrpcStorageProxy):
    """`optuna.storages.GrpcStorageProxy` with heartbeats recorded through the proxy."""

    def __init__(self, *, host: str, port: int, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 heartbeat_stale_trial_callback: StaleCallback | None = None) -> None:
        self._init_heartbeat(heartbeat_interval, grace_period, heartbeat_stale_trial_callback)
        super().__init__(host=host, port=port)


__all__ = ["AttrHeartbeat", "HeartbeatJournalStorage", "HeartbeatGrpcStorageProxy", "HEARTBEAT_ATTR"]
