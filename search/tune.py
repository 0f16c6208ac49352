"""`dal-search tune`: a campaign's DAL studies through Ray Tune, with ASHA early stopping or DAL's schedule
learned by Population Based Training (PBT).

ASHA (`--scheduler asha`). The search algorithm is Tune's OptunaSearch on the campaign's own study and
storage, with the study's own sampler (TPE, random or grid slots): every Tune trial is an Optuna trial of
that study, popped from its WAITING slots like a worker's, so `studies`, the dashboard, `report` and `export`
see it like any other. ASHA (one bracket, reduction factor `--reduction-factor`, first rung at
`--grace-period` epochs, max_t the epochs) stops a trial at a rung when its value there is below the rung's
top 1/rf; a stopped trial is PRUNED in Optuna, its reason and the epochs it trained in its user attrs. A trial
trains every seed of the campaign in lockstep, rung by rung (objectives/checkpoint.py's train_until: each seed
is checkpointed at the rung and resumed from it, so the result equals an unbroken run): ASHA compares the
mean over seeds of the per-epoch selection metric (val_acc: the noisy validation split) at the rung, and a
trial that reaches the last epoch gets the trial value and user attrs of a worker's trial.

PBT (`--scheduler pbt`). The study's remaining slots are the population: each member is one slot, trains
every seed in lockstep and reports the mean over seeds of the per-epoch selection metric every
`--perturbation-interval` epochs. q and the bootstrap weight lambda are its hyperparameters, constant within an
interval: q within [the low of the arm's q_start range, the high of its q_end range] (the fixed values when not
searched), lambda within [0, 1] (multiplied by bootstrap_scale, as any schedule's lambda). At each interval the
bottom quarter of the population (at least one member) copies the checkpoints of the top quarter (exploit) and
perturbs their q and lambda by x0.8 or x1.2, or resamples them with probability 0.25 (explore), clipped to the
bounds; synchronous PBT, so every member reaches an interval before any exploits. A member's per-epoch q(t)
and lambda(t), through every copy of its lineage, ARE a learned schedule: its trial carries it as
`schedule: explicit` with `q_schedule` / `lam_schedule` in train_config, so `export` writes it and `dal-search
train --config` re-runs it exactly (the checkpoints make a lineage's copies and restarts invisible). The arm's
fixed values apply; its other searched knobs (e.g. bootstrap: [soft, hard]) stay at the base config's values.

Where Tune's semantics differ from the worker pool (README, "Ray Tune"):
- budget: ASHA runs exactly the study's remaining slots (stopped trials count, as pruned ones do); PBT's
  population is the study's remaining slots, all run at once. `run`, `worker` and `pool` skip a study once PBT
  has run on it; ASHA studies are shared with them safely.
- nothing lost: a trial whose Ray actor dies is restarted by Tune up to twice from its last Tune checkpoint
  (every rung or interval), then FAILS with the reason. Ctrl-C (or SIGTERM) of the driver re-queues every
  running Optuna trial, as the pool does; a re-run resumes the study, but a PBT population is not resumable: its
  re-queued members are run again from epoch 0 as a new population. The driver beats every running trial's
  heartbeat, so if the driver itself dies its trials go stale and are re-queued by the next worker or tune.
- the campaign's `pruner` is not used (ASHA is the pruner); Tune's files (results, PBT's checkpoints) go to
  ROOT/tune/ (search/checkpoints.py's ROOT, else a temporary folder) and are removed when the study is done.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("dal-search.tune")
SCHEDULERS = ("asha", "pbt")
# Every Ray worker of a tune run: trials keep the working folder (data paths are relative to it), and Tune writes
# no result files of its own (the storage holds the results)
WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
LAMBDA_BOUNDS = (0.0, 1.0)


# ---------------------------------------------------------------- one Tune trial (runs in a Ray actor)

def _trainable(config: dict[str, Any], job: dict[str, Any]) -> None:
    """Train one Tune trial: the campaign's seeds in lockstep, stopping at each of `job["stops"]` (epochs done)
    to report the mean over seeds of the per-epoch metric, with a Tune checkpoint of every seed's run.

    ASHA: `config` holds the trial's params (search space values). PBT: `config` is {"q", "lam"}, the values
    for the epochs from here to the next stop; the schedule so far comes with the checkpoint (lineage.json)."""
    import torch
    from ray import tune

    from dal_search.objectives.checkpoint import train_until
    from dal_search.objectives.config import ConfigError, TrainConfig
    from dal_search.search.worker import seed_row, trial_attrs

    torch.set_num_threads(job["threads"])
    for name in ("ray.train", "ray.tune"):  # not a line per checkpoint saved or restored
        logging.getLogger(name).setLevel(logging.WARNING)
    epochs, metric = job["epochs"], job["metric"]
    per_epoch = metric.replace("best_", "")
    folder = Path(tempfile.mkdtemp(prefix="dal-tune-"))
    me = tune.get_context().get_trial_id()
    lineage: dict[str, Any] = {"q": [], "lam": [], "member": me, "exploits": [], "initial": None}
    t0 = time.perf_counter()
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                for f in Path(d).iterdir():
                    shutil.copy2(f, folder / f.name)
            if (folder / "lineage.json").is_file():
                lineage = json.loads((folder / "lineage.json").read_text())
        done = int(json.loads((folder / "done.json").read_text())) if (folder / "done.json").is_file() else 0
        if job["scheduler"] == "pbt":
            if lineage["initial"] is None:
                lineage["initial"] = {"q": config["q"], "lam": config["lam"]}
            if lineage["member"] != me:  # PBT copied another member's checkpoints into this one (exploit)
                lineage["exploits"].append({"epoch": done, "from": lineage["member"], "q": config["q"],
                                            "lam": config["lam"]})
                lineage["member"] = me
        base = TrainConfig.from_dict(job["base_config"])
        last_perturbation = max([s for s in job["stops"] if s < epochs], default=0)
        # a member PBT restarted from a finished checkpoint has nothing left to train: it reports that run
        for stop in [s for s in job["stops"] if s > done] or [epochs]:
            if job["scheduler"] == "pbt":
                more = epochs - done
                params = {"schedule": "explicit", "q_schedule": lineage["q"] + [float(config["q"])] * more,
                          "lam_schedule": lineage["lam"] + [float(config["lam"])] * more}
            else:
                params = dict(config)
            try:
                configs = [base.replace(**params, seed=s) for s in job["seeds"]]
            except ConfigError as e:
                return _report_failed(done, f"invalid config: {e}", {})
            metrics, results = [], []
            for cfg in configs:
                m, result = train_until(cfg, stop, folder / f"seed-{cfg.seed}.pt")
                if result is not None and result["status"] != "ok":
                    rows = [seed_row(cfg, result)]
                    return _report_failed(len(result["history"]["epoch"]), f"seed {cfg.seed}: {result['reason']}",
                                          {"per_seed": rows, "epochs_trained": stop * len(configs)})
                metrics.append(m[per_epoch])
                results.append(result)
            if job["scheduler"] == "pbt":
                lineage["q"] += [float(config["q"])] * (stop - done)
                lineage["lam"] += [float(config["lam"])] * (stop - done)
            (folder / "lineage.json").write_text(json.dumps(lineage))
            (folder / "done.json").write_text(json.dumps(stop))
            # PBT perturbs at "pbt_epoch": the last report keeps the last perturbation's, so no member is
            # replaced by a copy of another once training is over
            report: dict[str, Any] = {"objective": _mean(metrics), "epoch": stop, "failed": "",
                                      "pbt_epoch": stop if stop < epochs else last_perturbation}
            if stop == epochs:
                per_seed = [seed_row(c, r) for c, r in zip(configs, results)]
                attrs = trial_attrs(configs, per_seed, results[0], time.perf_counter() - t0)
                attrs["epochs_trained"] = epochs * len(configs)
                if job["scheduler"] == "pbt":
                    attrs["pbt"] = {k: lineage[k] for k in ("initial", "exploits")}
                report.update(objective=attrs[metric], attrs=json.dumps(attrs))  # one value: Tune flattens dicts
            done = stop
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _report_failed(epoch: int, reason: str, attrs: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"objective": math.nan, "epoch": epoch, "pbt_epoch": epoch, "failed": reason,
                 "attrs": json.dumps({**attrs, "fail_reason": reason})})


def _mean(values: list[float]) -> float:
    ok = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(ok) if ok else math.nan


# ---------------------------------------------------------------- the driver's bookkeeping

class _Beats:
    """Beats the heartbeat of every Optuna trial this driver runs, so that its trials go stale (and are
    re-queued by the next worker or tune) only if the driver itself dies."""

    def __init__(self, storage) -> None:
        from optuna.storages._heartbeat import BaseHeartbeat

        self.storage = storage
        self.interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
        self.ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dal-tune-heartbeats", daemon=True)

    def add(self, trial_id: int) -> None:
        if self.interval is not None:
            self.storage.record_heartbeat(trial_id)  # at once: from here on it can go stale
        with self._lock:
            self.ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.ids.discard(trial_id)

    def running(self) -> list[int]:
        with self._lock:
            return sorted(self.ids)

    def __enter__(self) -> "_Beats":
        if self.interval is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.running():
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - keep beating once the storage is back
                    log.warning("heartbeat of trial id %d failed (%s); will retry", trial_id, type(e).__name__)


def _finish(study, trial_id: int, result: dict[str, Any] | None, epochs: int, stopped_by: str) -> str:
    """Write a finished Tune trial into its Optuna trial and tell its state: COMPLETE with the trial's value
    and attrs, FAIL with the reason the trainable gave, PRUNED when the scheduler stopped it early. Returns
    the state's name."""
    import optuna
    from optuna.trial import TrialState

    from dal_search.search.worker import retrying
    from dal_search.storage.attrs import write_trial_results

    storage = study._storage
    result = result or {}
    attrs = json.loads(result["attrs"]) if result.get("attrs") else None
    try:
        if attrs and not result.get("failed"):
            retrying(write_trial_results, storage, trial_id, attrs)
            state, value = TrialState.COMPLETE, result["objective"]
        elif result.get("failed"):
            retrying(write_trial_results, storage, trial_id, attrs or {"fail_reason": result["failed"]})
            state, value = TrialState.FAIL, None
        elif result.get("epoch", 0) < epochs and "objective" in result:
            reason = (f"stopped by {stopped_by} after {result['epoch']} epochs: {result['objective']:.4f} (mean "
                      f"over seeds) below the cutoff of its rung")
            retrying(write_trial_results, storage, trial_id,
                     {"fail_reason": reason, "epochs_trained": result.get("epoch", 0) * result.get("seeds", 1)})
            state, value = TrialState.PRUNED, None
        else:
            retrying(write_trial_results, storage, trial_id,
                     {"fail_reason": "the Tune trial ended without a result (it raised; see Tune's error above)"})
            state, value = TrialState.FAIL, None
        retrying(storage.set_trial_state_values, trial_id, state, None if value is None else [float(value)])
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("trial id %d was finished elsewhere (stale); its Tune result is not recorded", trial_id)
        return "FAIL"
    return state.name


def _requeue_running(study, beats: _Beats) -> int:
    """Re-queue every Optuna trial the driver still runs (an interruption); how many."""
    from dal_search.search.slots import requeue
    from dal_search.search.worker import retrying

    ids = beats.running()
    for trial_id in ids:
        retrying(requeue, study, trial_id, "interrupted", "interrupted (Ctrl-C or SIGTERM of dal-search tune); re-queued")
        beats.discard(trial_id)
    return len(ids)


def _searcher_class():
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """Tune's OptunaSearch on an existing campaign study: each suggestion pops one of its slots (topped up
        as a worker does, so grid points and retries keep their params), its heartbeat is beaten by the driver,
        and its result is written like a worker's (user attrs in one transaction, PRUNED when ASHA stops it)."""

        def __init__(self, study_name, storage, sampler, space, epochs, seeds, beats, on_done) -> None:
            from dal_search.search.space import suggest

            self._study_space, self._epochs, self._seeds, self._beats = space, epochs, seeds, beats
            self._on_done = on_done
            super().__init__(space=lambda trial: suggest(trial, self._study_space), metric="objective",
                             mode="max", sampler=sampler, study_name=study_name, storage=storage)

        def suggest(self, trial_id: str):
            from dal_search.search.worker import _top_up, retrying

            if trial_id not in self._ot_trials:
                self._ot_study._thread_local.cached_all_trials = None
                retrying(_top_up, self._ot_study)
            params = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            self._beats.add(ot_trial._trial_id)
            retrying(self._ot_study._storage.set_trial_user_attr, ot_trial._trial_id, "tune_trial", trial_id)
            return params

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            from dal_search.search.worker import retrying

            value = result.get("objective")
            if trial_id in self._completed_trials or value is None or not math.isfinite(value):
                return
            retrying(self._ot_trials[trial_id].report, float(value), int(result["epoch"]) - 1)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            self.on_trial_result(trial_id, result or {})  # Tune hands the last result here only
            self._completed_trials.add(trial_id)
            ot_id = self._ot_trials[trial_id]._trial_id
            if error:  # the trainable raised or its actor died, after Tune's restarts: not an ASHA stop
                result = {"failed": "the Tune trial raised or its Ray actor died, also after Tune's restarts (see "
                                    "the error Tune printed)"}
            elif result is not None:
                result = {**result, "seeds": len(self._seeds)}
            state = _finish(self._ot_study, ot_id, result, self._epochs, "ASHA")
            self._beats.discard(ot_id)
            self._on_done(state)

        def save(self, checkpoint_path: str) -> None:  # the storage holds the state
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

        def __reduce__(self):  # Tune pickles its config into tuner.pkl; the study is in the storage already
            return (_Placeholder, ("StudySearch",))

    return StudySearch


class _Placeholder:
    def __init__(self, what: str) -> None:
        self.what = what


def _members_callback(study, slots: list[int], beats: _Beats, epochs: int, on_done):
    """A Tune callback binding PBT members to the study's slots (in start order) and writing each member's
    result into its slot when it finishes or fails."""
    from ray.tune import Callback

    class Members(Callback):
        def __init__(self) -> None:
            self.free = list(slots)
            self.of: dict[str, int] = {}

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            from dal_search.search.worker import retrying

            if trial.trial_id not in self.of:
                self.of[trial.trial_id] = self.free.pop(0)
                retrying(study._storage.set_trial_user_attr, self.of[trial.trial_id], "tune_trial", trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._done(trial, trial.last_result)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._done(trial, None)

        def _done(self, trial, result) -> None:
            slot = self.of.get(trial.trial_id)
            if slot is None or slot not in beats.running():
                return
            state = _finish(study, slot, result, epochs, "PBT")
            beats.discard(slot)
            on_done(state)

        def __reduce__(self):
            return (_Placeholder, ("Members",))

    return Members()


class _Clip:
    """PBT's explore step may push q or lambda outside their bounds (x1.2, x0.8): clip them back."""

    def __init__(self, q_bounds: tuple[float, float]) -> None:
        self.q_bounds = q_bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "q": min(max(config["q"], self.q_bounds[0]), self.q_bounds[1]),
                "lam": min(max(config["lam"], LAMBDA_BOUNDS[0]), LAMBDA_BOUNDS[1])}


def q_bounds(space: dict[str, Any], base) -> tuple[float, float]:
    """PBT's bounds for q: from the low of q_start's range to the high of q_end's (fixed values count as both
    ends; unset ones are the base config's)."""
    def ends(spec, default):
        if isinstance(spec, dict):
            return float(spec["low"]), float(spec["high"])
        if isinstance(spec, list):
            return float(min(spec)), float(max(spec))
        return (float(spec),) * 2 if spec is not None else (float(default),) * 2
    return ends(space.get("q_start"), base.q_start)[0], ends(space.get("q_end"), base.q_end)[1]


def asha_stops(epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA's one bracket decides (its rungs, as Ray computes them), then the last epoch."""
    rungs = int(math.log(epochs / grace_period) / math.log(reduction_factor) + 1)
    stops = sorted({int(grace_period * reduction_factor ** k) for k in range(rungs)} | {epochs})
    return [s for s in stops if 1 <= s <= epochs]


# ---------------------------------------------------------------- one study, one Tuner

def _remaining_slots(study) -> int:
    """Slots the study still has to run: WAITING ones plus those not laid yet (its budget less the slots it
    has), read under its slot lock."""
    from optuna.trial import TrialState

    from dal_search.search.slots import slot_lock

    with slot_lock(study):
        trials = study.get_trials(deepcopy=False)
        slots = [t for t in trials if "failed_trial" not in t.system_attrs]
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        return waiting + max(0, int(study.user_attrs.get("budget", 0)) - len(slots))


def tune_study(study, scheduler: str, *, workers: int, num_cpus: float, num_gpus: float, seed: int,
               folder: Path, grace_period: int | None = None, reduction_factor: float = 3.0,
               perturbation_interval: int | None = None, bar=None) -> dict[str, Any]:
    """Run what is left of one DAL study through a Tuner; returns {study, scheduler, complete, pruned, failed}."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from dal_search.objectives.config import TrainConfig
    from dal_search.search.space import fixed_values
    from dal_search.search.worker import fail_stale, make_sampler, pop_slot, retrying, _top_up

    attrs = study.user_attrs
    space = attrs.get("space") or {}
    base = TrainConfig.from_dict(attrs["base_config"])
    epochs, seeds = base.epochs, list(attrs.get("seeds") or [base.seed])
    counts = {"study": study.study_name, "scheduler": scheduler, "COMPLETE": 0, "PRUNED": 0, "FAIL": 0}

    def on_done(state: str) -> None:
        counts[state] = counts.get(state, 0) + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(stopped=counts["PRUNED"], failed=counts["FAIL"], refresh=False)

    retrying(fail_stale, study)
    n = retrying(_remaining_slots, study)
    if n == 0:
        return _summary(counts)
    job = {"scheduler": scheduler, "epochs": epochs, "seeds": seeds, "metric": attrs.get("metric", "val_acc"),
           "threads": int(max(1, num_cpus)), "base_config": base.to_dict()}
    beats = _Beats(study._storage)
    run_config = tune.RunConfig(
        storage_path=str(folder.resolve()), name=f"{_slug(study.study_name)}-{scheduler}-{os.getpid()}",
        verbose=0, failure_config=tune.FailureConfig(max_failures=2),
        # PBT restores a member from another's checkpoint of some while ago (async: the donor goes on): keep all
        # (removed with the study's Tune folder); ASHA needs only the last, to restart a trial whose actor died
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if scheduler == "pbt" else 1))
    if scheduler == "asha":
        grace = grace_period or max(1, epochs // 10)
        job["stops"] = asha_stops(epochs, min(grace, epochs), reduction_factor)
        resources = _resources(job, num_cpus, num_gpus)
        searcher = _searcher_class()(study.study_name, study._storage, make_sampler(attrs.get("sampler", "tpe"), seed),
                                     space, epochs, seeds, beats, on_done)
        tuner = tune.Tuner(resources, tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=n, max_concurrent_trials=workers, reuse_actors=True,
            scheduler=ASHAScheduler(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                                    grace_period=min(grace, epochs), reduction_factor=reduction_factor)),
            run_config=run_config)
    else:
        if attrs.get("scheduler") != "pbt":
            study.set_user_attr("scheduler", "pbt")  # workers leave this study to tune from now on
        interval = perturbation_interval or max(1, epochs // 10)
        job["stops"] = sorted({*range(interval, epochs, interval), epochs})
        job["base_config"] = base.replace(**fixed_values(space)).to_dict()
        low, high = q_bounds(space, base)
        slots = []
        while len(slots) < n:  # the population: every remaining slot, popped now
            study._thread_local.cached_all_trials = None
            trial_id = retrying(pop_slot, study)
            if trial_id is None and retrying(_top_up, study):
                continue
            if trial_id is None:
                break
            slots.append(trial_id)
            beats.add(trial_id)
        if not slots:  # another process took the remaining slots meanwhile
            return _summary(counts)
        resources = _resources(job, num_cpus, num_gpus)
        random.seed(seed)  # PBT's explore/exploit draws
        run_config.callbacks = [_members_callback(study, slots, beats, epochs, on_done)]
        tuner = tune.Tuner(resources, param_space={"q": tune.uniform(low, high), "lam": tune.uniform(*LAMBDA_BOUNDS)},
                           tune_config=tune.TuneConfig(
                               num_samples=len(slots), reuse_actors=True,
                               search_alg=BasicVariantGenerator(random_state=seed),
                               scheduler=PopulationBasedTraining(
                                   time_attr="pbt_epoch", metric="objective", mode="max", perturbation_interval=interval,
                                   hyperparam_mutations={"q": tune.uniform(low, high),
                                                         "lam": tune.uniform(*LAMBDA_BOUNDS)},
                                   quantile_fraction=0.25, resample_probability=0.25, synch=False,
                                   custom_explore_fn=_Clip((low, high)))),
                           run_config=run_config)
    with beats, warnings.catch_warnings():
        # the driver beats its trials' heartbeats itself (_Beats), not through Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        # the suggestion includes TPE's sampling and the storage's round trips, not only the space's definition
        warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument")
        try:
            tuner.fit()
        finally:
            requeued = _requeue_running(study, beats)
            shutil.rmtree(folder / run_config.name, ignore_errors=True)
            if requeued:
                log.warning("%s: %d running trial(s) re-queued", study.study_name, requeued)
    return _summary(counts)


def _resources(job: dict[str, Any], num_cpus: float, num_gpus: float):
    from ray import tune

    return tune.with_resources(tune.with_parameters(_trainable, job=job), {"cpu": num_cpus, "gpu": num_gpus})


def _summary(counts: dict[str, Any]) -> dict[str, Any]:
    return {"study": counts["study"], "scheduler": counts["scheduler"], "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"], "failed": counts["FAIL"]}


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-")[:80]


# ---------------------------------------------------------------- the command

def tune_studies(storage, campaign: str | None) -> list[str]:
    """The DAL studies of `campaign` (PBT learns DAL's schedule; ASHA runs DAL's search space)."""
    from dal_search.search.campaign import campaign_study_names

    return [n for n in campaign_study_names(storage, campaign)
            if storage.get_study_user_attrs(storage.get_study_id_from_name(n)).get("arm") == "dal"]


def run_tune(storage_url: str, campaign: str | None, scheduler: str, *, workers: int = 2, num_gpus: float = 0.0,
             num_cpus: float = 1.0, address: str | None = None, seed: int = 0, grace_period: int | None = None,
             reduction_factor: float = 3.0, perturbation_interval: int | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run the campaign's DAL studies through Ray Tune (`scheduler` asha or pbt), one Tuner per study; returns
    one summary per study. Ray as the pool starts it (search/pool.py's ray_cluster)."""
    import optuna

    from dal_search.search.campaign import progress as count
    from dal_search.search.checkpoints import checkpoint_root
    from dal_search.search.pool import ray_cluster
    from dal_search.storage import open_storage

    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    names = tune_studies(storage, campaign)
    if not names:
        from dal_search.search.campaign import CampaignError

        raise CampaignError(f"campaign {campaign!r} has no DAL study in this storage; tune runs DAL arms (create "
                            f"the studies with 'dal-search run CAMPAIGN.yaml --create-only', or give the file)")
    root = checkpoint_root(storage)
    folder = Path(tempfile.mkdtemp(prefix="dal-tune-")) if root is None else root / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    # Tune's own console tables and SIGINT handling are replaced by dal-search's: a progress bar, and Ctrl-C
    # re-queues the running trials
    os.environ.update({**WORKER_ENV, "TUNE_DISABLE_SIGINT_HANDLER": "1", "RAY_AIR_NEW_OUTPUT": "0",
                       "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"})
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # no result files: by design
    bar = None
    if progress:
        from tqdm import tqdm

        c = count(storage, names)
        bar = tqdm(total=c["budget"], initial=c["done"], desc=f"trials ({scheduler})", unit="trial",
                   file=sys.stderr, dynamic_ncols=True)
    out = []
    try:
        with ray_cluster(address, env_vars=WORKER_ENV, num_cpus=None if address else workers * num_cpus):
            for name in names:
                study = optuna.load_study(study_name=name, storage=storage)
                out.append(tune_study(study, scheduler, workers=workers, num_cpus=num_cpus, num_gpus=num_gpus,
                                      seed=seed, folder=folder, grace_period=grace_period,
                                      reduction_factor=reduction_factor, perturbation_interval=perturbation_interval,
                                      bar=bar))
    finally:
        if bar is not None:
            bar.close()
        if root is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for empty in (folder, folder.parent):
                try:
                    empty.rmdir()
                except OSError:
                    break
    return out


def cmd_tune(args) -> int:
    from dal_search.search._cli_common import UserError, ray_campaign

    url, campaign = ray_campaign(args)
    for flag, value in (("--grace-period", args.grace_period), ("--perturbation-interval", args.perturbation_interval)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a number of epochs >= 1")
    if args.reduction_factor <= 1:
        raise UserError("--reduction-factor must be > 1 (3 keeps the top third at each rung)")
    t0 = time.perf_counter()
    rows = run_tune(url, campaign, args.scheduler, workers=args.workers, num_gpus=args.num_gpus,
                    num_cpus=args.num_cpus, address=args.address, seed=args.seed, grace_period=args.grace_period,
                    reduction_factor=args.reduction_factor, perturbation_interval=args.perturbation_interval,
                    progress=not args.quiet)
    total = {k: sum(r[k] for r in rows) for k in ("complete", "pruned", "failed")}
    print(f"tune done ({args.scheduler}): {len(rows)} DAL studies, {total['complete']} complete, {total['pruned']} "
          f"stopped early, {total['failed']} failed in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def register(sub) -> None:
    from dal_search.search._cli_common import storage_arg

    p = sub.add_parser("tune", help="run a campaign's DAL studies through Ray Tune: ASHA early stopping, or DAL's "
                                    "schedule learned by Population Based Training",
                       description="Run the DAL studies of a campaign through ray.tune.Tuner. --scheduler asha: "
                                   "Tune's OptunaSearch on the study itself (its sampler), ASHA stopping trials that "
                                   "fall behind at a rung (PRUNED). --scheduler pbt: the study's remaining slots are "
                                   "a population whose q and lambda are perturbed every --perturbation-interval "
                                   "epochs; each member's per-epoch q(t), lambda(t) is stored as an explicit "
                                   "schedule that 'export' writes and 'train --config' re-runs exactly.")
    p.add_argument("campaign_file", nargs="?", metavar="CAMPAIGN.yaml", help="campaign file or built-in name")
    storage_arg(p)
    p.add_argument("--campaign", default=None, help="name of a campaign already in the storage")
    p.add_argument("--scheduler", required=True, choices=SCHEDULERS, help="asha (early stopping) or pbt")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (as for 'pool'; it must use token auth). Default: a private cluster on "
                        "127.0.0.1 with a fresh token")
    p.add_argument("--workers", type=int, default=2, help="trials at once (default 2)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per trial; 0.25 = four trials per GPU")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per trial (also its torch threads)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (ASHA) or of PBT's draws")
    p.add_argument("--grace-period", type=int, default=None,
                   help="ASHA: epochs before the first rung (default: a tenth of the epochs)")
    p.add_argument("--reduction-factor", type=float, default=3.0,
                   help="ASHA: keep the top 1/F of the trials at each rung (default 3)")
    p.add_argument("--perturbation-interval", type=int, default=None,
                   help="PBT: epochs between exploit/explore steps (default: a tenth of the epochs)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tune)
