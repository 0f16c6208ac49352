"""A worker: pops trial slots from a campaign's studies and trains them until none are left.

The loop per trial: fail stale trials and queue their retries (search.slots), pop a WAITING slot atomically
(never create a trial: the budget was laid down as slots), beat once at once, sample the open params with
the study's sampler, train once per seed while a heartbeat thread keeps the trial alive, tell the result.
A trial that cannot finish (non-finite loss, a config the trainer rejects) ends FAILED with its reason in
user_attrs and the worker goes on. Ctrl-C / SIGTERM mid-trial marks the trial FAILED and re-queues its params
as a retry slot, so the study stays consistent and its budget intact.

Each seed of a running trial is checkpointed as it trains (search/checkpoints.py: where, how often, cleanup);
the retry of a trial whose worker died or was interrupted resumes from the last saved epoch, not epoch 0.

Storage outages are waited out for DAL_SEARCH_STORAGE_PATIENCE seconds (default 300) per call; after that
the worker stops with `StorageUnavailable` (one line from the CLI, exit status 75), its running trial left
RUNNING so that it goes stale and is re-queued once the storage is back.

Test-only fault injection (never set it in production): DAL_SEARCH_TEST_FAULT=kill-after-claim makes the
worker SIGKILL itself right after claiming a slot, before its first heartbeat: the window tests need to
show that such a trial still goes stale.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import TrialState

from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.search.slots import requeue
from dal_search.search.space import suggest
from dal_search.storage.attrs import write_trial_results

log = logging.getLogger("dal-search.worker")
REPORTS_PER_TRIAL = 10
# A trial's per-epoch curves (the trainer's history, its first seed) live in one trial SYSTEM attr, so that
# `optuna best-trial` and the dashboard's attribute tables show a record that fits a screen; write_trial_results
# stores every "dal:" key as a system attr. analysis.trial_history reads it (and the older user attr `history`).
CURVES_ATTR = "dal:curves"


EXACT_CURVES = ("epoch", "q", "lam", "lr")  # the schedule itself stays exact (a learned schedule is re-run from it)


def compact_curves(history: dict[str, list[float]]) -> dict[str, list[float]]:
    """The history with each measured value (accuracies, fits, the loss) to 6 significant digits, what a plot
    or a table can show; the epoch and the schedule's q, lambda and lr stay exact."""
    return {k: list(vals) if k in EXACT_CURVES else [float(f"{v:.6g}") for v in vals] for k, vals in history.items()}


# What the data was, from the trainer's result (NaN metrics mean "unknown": no clean labels to measure with).
DATA_FACTS = ("has_test_labels", "has_clean_labels", "train_size", "data_source")
SEED_EXTRAS = ("candidate_set_size",)  # per seed, where it says something (partial labels: sets of more than one)
SUMMARY_KEYS = ("test_acc", "best_test_acc", "val_acc", "best_val_acc", "test_acc_at_best_val", "noisy_fit",
                "clean_fit")


WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
STORAGE_PATIENCE = float(os.environ.get("DAL_SEARCH_STORAGE_PATIENCE", "300"))


class StorageUnavailable(Exception):
    """The storage stayed unreachable for the whole patience; one line naming what to do."""


def _storage_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    kinds: list[type[BaseException]] = [sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                                         optuna.exceptions.StorageInternalError, ConnectionError]
    try:
        import grpc

        kinds.append(grpc.RpcError)
    except ImportError:
        pass
    return tuple(kinds)


def retrying(fn: Callable, *args: Any, patience: float | None = None,
             retry_on: tuple[type[BaseException], ...] = (), **kwargs: Any) -> Any:
    """Call `fn`, retrying with backoff while the storage is unreachable (a database restart, a network
    blip), for up to `patience` seconds; then StorageUnavailable, from the last error. `retry_on` adds error
    types."""
    wait = STORAGE_PATIENCE if patience is None else patience
    deadline = time.monotonic() + wait
    delay = 0.5
    while True:
        try:
            return fn(*args, **kwargs)
        except (*_storage_errors(), *retry_on) as e:
            if time.monotonic() + delay > deadline:
                root = e
                while root.__cause__ is not None:  # Optuna wraps the driver's error in a vaguer one
                    root = root.__cause__
                root = getattr(root, "orig", None) or root
                detail = (str(root).strip().splitlines() or [""])[0][:200] or type(root).__name__
                raise StorageUnavailable(
                    f"the storage stayed unreachable for {wait:.0f} s ({detail}); this worker "
                    f"stops and its running trial, if any, is re-queued once the storage is back: start the "
                    f"worker again then (DAL_SEARCH_STORAGE_PATIENCE sets how long to wait)") from e
            log.warning("storage unavailable (%s); retrying in %.1f s", type(e).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class Heartbeat:
    """Records the trial's heartbeat every interval while the trial trains. Unlike Optuna's own thread it
    survives a storage outage: a database restart mid-trial costs some missed beats, not the trial."""

    def __init__(self, trial_id: int, storage: optuna.storages.BaseStorage) -> None:
        self.trial_id, self.storage = trial_id, storage
        interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
        if self.interval is not None:
            # The first beat is synchronous: from here on the trial has a heartbeat row, so if this process
            # dies (or gives up on a storage outage) at any later point the trial goes stale and is retried.
            retrying(self.storage.record_heartbeat, self.trial_id)
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - keep beating once the storage is back
                log.warning("heartbeat of trial id %d failed (%s); will retry", self.trial_id, type(e).__name__)
            if self._stop.wait(timeout=self.interval):
                return


class TrialFailed(Exception):
    """The trial cannot produce a value (non-finite loss, invalid config); the reason is in user_attrs."""


@dataclass
class WorkerStats:
    complete: int = 0
    pruned: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.complete + self.pruned + self.failed


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed, n_startup_trials=5)
    # grid slots carry their point as fixed params; anything left open is drawn at random.
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=5)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def run_trial(study: optuna.Study, trial: optuna.Trial, train_fn: Callable | None = None,
              should_stop: Callable[[], bool] | None = None) -> float:
    """The objective: train the trial's config once per seed; the value is the mean of the study's metric."""
    if train_fn is None:
        from dal_search.objectives.train import train as train_fn
    attrs = retrying(lambda: study.user_attrs)
    metric = attrs.get("metric", "val_acc")
    per_epoch_metric = metric.replace("best_", "")
    params = suggest(trial, attrs.get("space", {}))
    try:
        base = TrainConfig.from_dict(attrs["base_config"])
        configs = [base.replace(**params, seed=s) for s in attrs.get("seeds", [base.seed])]
    except ConfigError as e:
        retrying(trial.set_user_attr, "fail_reason", f"invalid config: {e}")
        raise TrialFailed(str(e)) from None

    # Intermediate values are kept at ~REPORTS_PER_TRIAL checkpoints, not every epoch. With a pruner each goes
    # to the storage at once (the pruner compares them with other trials'); without one they are written
    # with the trial's results, in the same single transaction.
    every = max(1, configs[0].epochs // REPORTS_PER_TRIAL)
    prunes = attrs.get("pruner", "none") != "none"
    pending: dict[int, float] = {}

    def report(epoch: int, m: dict[str, float]) -> None:
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt  # a pool stop: re-queued like Ctrl-C
        if (epoch + 1) % every and epoch + 1 != configs[0].epochs:
            return
        if not prunes:
            pending[epoch] = m[per_epoch_metric]
            return
        retrying(trial.report, m[per_epoch_metric], epoch)
        if retrying(trial.should_prune):
            retrying(trial.set_user_attr, "fail_reason", f"pruned at epoch {epoch}: {per_epoch_metric} {m[per_epoch_metric]:.4f}")
            raise optuna.TrialPruned(f"epoch {epoch}")

    # Each seed saves checkpoints as it trains; a retry of a trial whose worker died resumes from them
    # (search/checkpoints.py). A stand-in trainer that takes no `checkpoint` trains without.
    saved = _trial_checkpoints(study, trial, train_fn)
    per_seed, first = [], None
    t0 = time.perf_counter()
    for k, cfg in enumerate(configs):
        ckpt = {"checkpoint": saved.for_seed(cfg.seed)} if saved is not None else {}
        result = train_fn(cfg, report if k == 0 else _stop_check(should_stop), **ckpt)
        row = seed_row(cfg, result, ckpt.get("checkpoint"))
        per_seed.append(row)
        if first is None:
            first = result
        if result["status"] != "ok":
            retrying(write_trial_results, study._storage, trial._trial_id,
                     {"per_seed": per_seed, "fail_reason": f"seed {cfg.seed}: {result['reason']}"}, pending)
            raise TrialFailed(result["reason"])
    assert first is not None
    if not prunes:  # the checkpoint values of epochs a resumed first seed did not train again
        for epoch in {*range(every - 1, configs[0].epochs, every), configs[0].epochs - 1}:
            pending.setdefault(epoch, first["history"][per_epoch_metric][epoch])
    attrs_out = trial_attrs(configs, per_seed, first, time.perf_counter() - t0)
    retrying(write_trial_results, study._storage, trial._trial_id, attrs_out, pending)
    return attrs_out[metric]


def seed_row(cfg: TrainConfig, result: dict[str, Any], checkpoint=None) -> dict[str, Any]:
    """A trial's per_seed row for one trained seed; `resumed_at_epoch` is the first epoch this run trained
    (0 unless it resumed from a checkpoint)."""
    return {"seed": cfg.seed, "status": result["status"], "realized_rate": result["realized_rate"],
            "label_hash": result["label_hash"], "wall_time": result["wall_time"],
            "resumed_at_epoch": checkpoint.resumed_at if checkpoint is not None else 0,
            **{key: result[key] for key in SUMMARY_KEYS},
            **{key: result[key] for key in SEED_EXTRAS if result.get(key, 1.0) != 1.0}}


def trial_attrs(configs: list[TrainConfig], per_seed: list[dict[str, Any]], first: dict[str, Any],
                wall_time: float) -> dict[str, Any]:
    """A completed trial's user attrs (docs/CONTRACTS.md): its config, per-seed rows, their means and spreads,
    and the first seed's per-epoch curves (as the system attr CURVES_ATTR, out of what Optuna clients print)."""
    attrs_out: dict[str, Any] = {
        "train_config": configs[0].to_dict(), "seeds": [c.seed for c in configs], "per_seed": per_seed,
        "realized_rate": first["realized_rate"], "label_hash": first["label_hash"], "device": first["device"],
        "wall_time": wall_time, CURVES_ATTR: compact_curves(first["history"]),
    }
    attrs_out.update({key: first[key] for key in DATA_FACTS if key in first})
    for key in SUMMARY_KEYS:
        attrs_out[key], attrs_out[f"{key}_std"] = _mean_std([r[key] for r in per_seed])
    return attrs_out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std over seeds; NaN for both when any seed's value is unknown (NaN: e.g. test
    accuracy of data without clean test labels), so an unknown never turns into a number."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _trial_checkpoints(study: optuna.Study, trial: optuna.Trial, train_fn: Callable):
    """The trial's checkpoints (search/checkpoints.py), or None when they are off or `train_fn` takes none."""
    import inspect

    from dal_search.search import checkpoints

    if "checkpoint" not in inspect.signature(train_fn).parameters:
        return None
    return retrying(checkpoints.for_trial, study, trial)


def _stop_check(should_stop: Callable[[], bool] | None):
    if should_stop is None:
        return None

    def check(epoch: int, m: dict[str, float]) -> None:
        if should_stop():
            raise KeyboardInterrupt
    return check


def fail_stale(study: optuna.Study) -> int:
    """Fail the study's stale trials (RUNNING, no beat within the grace period, or none since they started)
    and queue their retries; returns how many this worker failed. A no-op without heartbeats."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return 0
    stale = storage._get_stale_trial_ids(study._study_id)
    for trial_id in stale:
        requeue(study, trial_id, "stale", "stale: its worker stopped beating (died, hung or lost the storage "
                                          "for longer than the grace period); re-queued")
    return len(stale)


def pop_slot(study: optuna.Study) -> int | None:
    """Atomically take one WAITING trial of `study` (as Study.ask does), or None. Never creates a trial."""
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class _Stop(Exception):
    pass


def run_worker(storage: optuna.storages.BaseStorage, campaign: str | None = None, *, max_trials: int | None = None,
               worker_seed: int | None = None, poll: float = 2.0, on_trial: Callable[[str, optuna.trial.FrozenTrial], None] | None = None,
               train_fn: Callable | None = None, should_stop: Callable[[], bool] | None = None,
               fuse: int = 1) -> WorkerStats:
    """Run trial slots of `campaign` (every dal-search study when None) until none is left or running.

    Waits while other workers hold running trials, since one of them may die and its slot be re-queued.
    `fuse` K > 1 pops up to K slots of one study at a time and trains them as one batched network where their
    configs allow (search/fusion.py).
    """
    from dal_search.search.campaign import campaign_study_names

    from dal_search.search.checkpoints import checkpoint_every

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoint_every()  # a bad DAL_SEARCH_CHECKPOINT_SECONDS is one line now, not a failed trial later
    names = retrying(campaign_study_names, storage, campaign)  # a worker may start while the database restarts
    if not names:
        from dal_search.search.campaign import CampaignError

        raise CampaignError(f"no studies of campaign {campaign!r} in this storage; create them with "
                            f"'dal-search run CAMPAIGN.yaml' (or 'dal-search studies' to list what is there)")
    seed = worker_seed if worker_seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    studies: dict[str, optuna.Study] = {}
    for name in names:
        attrs = retrying(lambda: storage.get_study_user_attrs(storage.get_study_id_from_name(name)))
        if attrs.get("scheduler") == "pbt":  # a PBT population's slots: only `dal-search tune` runs them
            continue
        studies[name] = retrying(optuna.load_study, study_name=name, storage=storage,
                                 sampler=make_sampler(attrs.get("sampler", "tpe"), rng.randrange(2**31)),
                                 pruner=make_pruner(attrs.get("pruner", "none")))
    stats = WorkerStats()
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum, frame):  # a pool or compose stop: leave like Ctrl-C
        raise KeyboardInterrupt

    if _in_main_thread():
        signal.signal(signal.SIGTERM, _on_term)
    try:
        while (max_trials is None or stats.total < max_trials) and not (should_stop and should_stop()):
            order = list(studies.values())
            rng.shuffle(order)
            ran = False
            for study in order:
                retrying(fail_stale, study)
                trial_id = retrying(pop_slot, study)
                if trial_id is None and retrying(_top_up, study):
                    trial_id = retrying(pop_slot, study)
                if trial_id is None:
                    continue
                if _FAULT == "kill-after-claim":
                    os.kill(os.getpid(), signal.SIGKILL)
                room = fuse if max_trials is None else min(fuse, max_trials - stats.total)
                if room > 1 and (more := _fusion().pop_more(study, room - 1)):
                    try:
                        frozens = _fusion().run_fused_slots(study, [trial_id, *more], train_fn, stats, should_stop)
                    except KeyboardInterrupt:  # every fused trial was re-queued
                        if should_stop is not None and should_stop():
                            return stats
                        raise
                    for frozen in frozens:
                        if on_trial is not None:
                            on_trial(study.study_name, frozen)
                    ran = True
                    break
                try:
                    frozen = _run_slot(study, trial_id, train_fn, stats, should_stop)
                except KeyboardInterrupt:
                    _requeue_shielded(study, trial_id)
                    if should_stop is not None and should_stop():
                        return stats  # a pool asked us to stop: a clean exit, not an interruption
                    raise
                if on_trial is not None:
                    on_trial(study.study_name, frozen)
                ran = True
                break
            if ran:
                continue
            if not any(retrying(_has_running, s) for s in studies.values()):
                return stats
            time.sleep(poll)
    finally:
        if _in_main_thread():
            signal.signal(signal.SIGTERM, previous)
    return stats


def _fusion():
    from dal_search.search import fusion

    return fusion


def _run_slot(study: optuna.Study, trial_id: int, train_fn, stats: WorkerStats,
              should_stop: Callable[[], bool] | None = None) -> optuna.trial.FrozenTrial:
    study._thread_local.cached_all_trials = None  # let the sampler see the newest trials
    state, value, finished_elsewhere = TrialState.FAIL, None, False
    with Heartbeat(trial_id, study._storage):  # beats before anything else: from here on it can go stale
        retrying(study._storage.set_trial_user_attr, trial_id, "worker", WORKER_ID)
        trial = retrying(optuna.Trial, study, trial_id)
        try:
            value = run_trial(study, trial, train_fn, should_stop)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialFailed:
            state = TrialState.FAIL
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker judged this trial stale (its heartbeats missed the grace period through a long
            # outage) and re-queued it: its result has nowhere to go, and nothing is left to record.
            log.warning("trial %d of %s was finished elsewhere (stale); moving on", trial.number, study.study_name)
            state = TrialState.FAIL
            finished_elsewhere = True  # its retry may be resuming from its checkpoints: keep them
        except StorageUnavailable:
            raise  # the trial stays RUNNING and goes stale: re-queued once the storage is back
        except Exception as e:  # a bug or an environment problem: record it, keep the worker alive
            log.exception("trial %d of %s raised", trial.number, study.study_name)
            retrying(trial.set_user_attr, "fail_reason", f"{type(e).__name__}: {e}"[:2000])
            state = TrialState.FAIL
    if state == TrialState.COMPLETE:
        frozen = retrying(study.tell, trial, value, skip_if_finished=True)
        stats.complete += 1
    else:
        frozen = retrying(study.tell, trial, state=state, skip_if_finished=True)
        if state == TrialState.PRUNED:
            stats.pruned += 1
        else:
            stats.failed += 1
    if not finished_elsewhere:  # it ended for good: nothing will resume it (an interruption never gets here)
        _remove_checkpoints(study, frozen)
    return frozen


def _remove_checkpoints(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
    from dal_search.search import checkpoints

    saved = checkpoints.for_trial(study, frozen)
    if saved is not None:
        saved.remove()


def _top_up(study: optuna.Study) -> int:
    """Queue the retries a failed re-queue left missing, then lay the next window of slots; how many trials
    were added. Both happen under the study's slot lock inside `top_up`."""
    from dal_search.search.campaign import top_up
    from dal_search.search.space import all_grid_points

    attrs = study.user_attrs
    grid = all_grid_points(attrs.get("space", {})) if attrs.get("sampler") == "grid" else None
    return top_up(study, int(attrs.get("budget", 0)), grid)


def _requeue_shielded(study: optuna.Study, trial_id: int) -> None:
    """Re-queue an interrupted trial with SIGINT/SIGTERM held off, so a second Ctrl-C (or the driver's
    forwarded signal) cannot leave it half-done and RUNNING."""
    main = _in_main_thread()
    old = {}
    if main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        retrying(requeue, study, trial_id, "interrupted", "interrupted (Ctrl-C, SIGTERM or a pool stop); re-queued")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _has_running(study: optuna.Study) -> bool:
    return bool(study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)))


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_FAULT = os.environ.get("DAL_SEARCH_TEST_FAULT", "")


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))
