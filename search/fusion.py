"""A worker's fused trials (`dal-search worker --fuse K`, `run --fuse K`): up to K slots of one study popped
together and trained as one batched network (objectives/fused.py, HFTA), each told its own result.

Popping: the worker pops its first slot as always, then up to K - 1 more WAITING slots of the same study,
topping the study's slots up as a worker does; only laid slots are ever popped, so the study's budget holds
exactly (and a worker's --max-trials counts each fused trial).

Running: each popped trial runs in a thread of its own exactly the code a trial run one at a time runs
(worker._run_slot: its heartbeat, the sampler, its seeds, pruning, its checkpoints, its results, the tell, a
re-queue when interrupted); only its training is handed to the worker's main thread. The main thread waits
until every trial still running has asked for its next training (the same seed: trials of one study train
the study's seeds in order), then trains what was asked:

- configs equal but for the fusable fields (objectives.fused.FUSABLE: the loss's and the optimiser's knobs) as
  one fused run, recording the trial numbers trained together in each trial's user attr `fused_with`;
- anything else one at a time, with one log line saying why: configs that differ elsewhere (a space over
  model or batch_size, say), a user's `py:` network, or a trial retried with a checkpoint to resume (a fused
  run never resumes; its members' checkpoints are saved as usual and resume alone).

A member's report (intermediate values, the pruner) runs in the main thread while its own thread waits; an
exception it raises (TrialPruned) ends that member alone and is raised in its thread, so the trial is told
PRUNED as usual. Ctrl-C or SIGTERM (or a pool's stop) ends the fused run: every trial of it is re-queued by its
own thread, then the worker stops as it does after one trial. A trial thread's StorageUnavailable stops the
worker after the others have finished.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import signal
import threading
from typing import Any, Callable

import optuna

from dal_search.search import worker as _worker

log = logging.getLogger("dal-search.fusion")


def pop_more(study: optuna.Study, n: int) -> list[int]:
    """Up to `n` more WAITING slots of `study`, taken as a worker takes one (topping the slots up when none
    waits); fewer when the study has no more."""
    ids: list[int] = []
    while len(ids) < n:
        trial_id = _worker.retrying(_worker.pop_slot, study)
        if trial_id is None and _worker.retrying(_worker._top_up, study):
            trial_id = _worker.retrying(_worker.pop_slot, study)
        if trial_id is None:
            break
        ids.append(trial_id)
    return ids


def run_fused_slots(study: optuna.Study, trial_ids: list[int], train_fn: Callable | None,
                    stats: "_worker.WorkerStats", should_stop: Callable[[], bool] | None = None
                    ) -> list[optuna.trial.FrozenTrial]:
    """Run the popped slots `trial_ids` of `study` together (see the module docstring); returns the frozen
    trials that ended (complete, pruned or failed), adding them to `stats`. Raises KeyboardInterrupt after
    every trial was re-queued when interrupted, StorageUnavailable when a trial lost the storage."""
    can_fuse = train_fn is None  # a stand-in trainer (a test's, a benchmark's) trains each trial alone
    if train_fn is None:
        from dal_search.objectives.train import train as train_fn
    else:
        log.warning("fuse: a stand-in trainer cannot be fused; trials %s train one at a time", trial_ids)
    numbers = {tid: _worker.retrying(study._storage.get_trial_number_from_id, tid) for tid in trial_ids}
    meeting = _Meeting(len(trial_ids), study, numbers, train_fn, can_fuse)
    frozen: dict[int, optuna.trial.FrozenTrial] = {}
    problems: list[BaseException] = []
    lock = threading.Lock()

    def run(trial_id: int) -> None:
        own = _worker.WorkerStats()
        try:
            frozen[trial_id] = _worker._run_slot(study, trial_id, meeting.trainer(trial_id), own, should_stop)
        except KeyboardInterrupt:
            _worker._requeue_shielded(study, trial_id)
        except BaseException as e:  # noqa: BLE001 - StorageUnavailable and the like: the worker stops after
            problems.append(e)
        finally:
            meeting.leave()
            with lock:
                stats.complete, stats.pruned, stats.failed = (stats.complete + own.complete,
                                                              stats.pruned + own.pruned, stats.failed + own.failed)

    threads = [threading.Thread(target=run, args=(tid,), name=f"trial-{numbers[tid]}", daemon=True)
               for tid in trial_ids]
    for t in threads:
        t.start()
    interrupted = meeting.serve()
    _join_shielded(threads)
    if interrupted:
        raise KeyboardInterrupt
    if problems:
        raise problems[0]
    return [frozen[tid] for tid in trial_ids if tid in frozen]


class _Meeting:
    """Where the trial threads hand their training to the main thread and wait for its answer."""

    def __init__(self, n: int, study: optuna.Study, numbers: dict[int, int], train_fn: Callable,
                 can_fuse: bool) -> None:
        self.cond = threading.Condition()
        self.live = n
        self.asks: dict[int, tuple] = {}  # ticket -> (trial id, config, report, checkpoint)
        self.answers: dict[int, Any] = {}
        self.stopped = False
        self.tickets = itertools.count()
        self.study, self.numbers, self.train_fn, self.can_fuse = study, numbers, train_fn, can_fuse
        self.takes_checkpoint = "checkpoint" in inspect.signature(train_fn).parameters

    def trainer(self, trial_id: int) -> Callable:
        """The trial's train_fn: ask the main thread, wait for the answer (a result, or an exception raised
        here). It takes a checkpoint when the trainer does (so the trial saves checkpoints as it would)."""
        def train(config, report=None, checkpoint=None):
            with self.cond:
                if self.stopped:
                    raise KeyboardInterrupt
                ticket = next(self.tickets)
                self.asks[ticket] = (trial_id, config, report, checkpoint)
                self.cond.notify_all()
                while ticket not in self.answers:
                    self.cond.wait()
                answer = self.answers.pop(ticket)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        if not self.takes_checkpoint:
            return lambda config, report=None: train(config, report)
        return train

    def leave(self) -> None:
        with self.cond:
            self.live -= 1
            self.cond.notify_all()

    def serve(self) -> bool:
        """Train what the trial threads ask until all have left; True when interrupted (every ask then and
        after is answered with KeyboardInterrupt, so each thread re-queues its trial)."""
        pending: dict[int, tuple] = {}
        try:
            while True:
                with self.cond:
                    while self.live > 0 and len(self.asks) < self.live:
                        self.cond.wait()
                    if self.live == 0:
                        return False
                    pending, self.asks = self.asks, {}
                self._train(pending)
                pending = {}
        except KeyboardInterrupt:
            with self.cond:
                self.stopped = True
                for ticket in [*pending, *self.asks]:
                    self.answers.setdefault(ticket, KeyboardInterrupt())
                self.asks = {}
                self.cond.notify_all()
            return True

    def _answer(self, ticket: int, answer: Any) -> None:
        with self.cond:
            self.answers[ticket] = answer
            self.cond.notify_all()

    def _train(self, asks: dict[int, tuple]) -> None:
        """Fused where the asks can be, else one at a time; every ticket gets its answer."""
        from dal_search.objectives.fused import fusion_key, train_fused, why_not_fusable

        alone: list[int] = []
        groups: dict[tuple, list[int]] = {}
        for ticket, (trial_id, config, _, checkpoint) in asks.items():
            if not self.can_fuse:
                alone.append(ticket)
            elif checkpoint is not None and any(p.is_file() for p in checkpoint.resume_from):
                log.info("fuse: trial %d resumes from a checkpoint; it trains alone", self.numbers[trial_id])
                alone.append(ticket)
            else:
                groups.setdefault(fusion_key(config), []).append(ticket)
        if len(groups) > 1:
            log.warning("fuse: trials %s differ beyond the fusable fields; training %d groups one after the other",
                     sorted(self.numbers[asks[t][0]] for t in asks), len(groups))
        for tickets in groups.values():
            configs = [asks[t][1] for t in tickets]
            why = why_not_fusable(configs) if len(tickets) > 1 else "one trial"
            if why:
                if len(tickets) > 1:
                    log.warning("fuse: trials %s cannot be fused (%s); training them one at a time",
                             [self.numbers[asks[t][0]] for t in tickets], why)
                alone.extend(tickets)
                continue
            self._fused(tickets, asks, train_fused)
        for ticket in alone:
            _, config, report, checkpoint = asks[ticket]
            try:
                kwargs = {"checkpoint": checkpoint} if checkpoint is not None else {}
                answer = self.train_fn(config, report, **kwargs)
            except Exception as e:  # noqa: BLE001 - the trial's thread raises it, as its own train would
                answer = e
            self._answer(ticket, answer)

    def _fused(self, tickets: list[int], asks: dict[int, tuple], train_fused: Callable) -> None:
        members = [asks[t] for t in tickets]
        together = sorted(self.numbers[m[0]] for m in members)
        for trial_id, *_ in members:
            _worker.retrying(self.study._storage.set_trial_user_attr, trial_id, "fused_with", together)
        try:
            results = train_fused([m[1] for m in members], reports=[m[2] for m in members],
                                  checkpoints=[m[3] for m in members])
        except Exception as e:  # noqa: BLE001 - a bug or a bad config fails every member, as it would alone
            results = [e] * len(members)
        for ticket, result in zip(tickets, results):
            self._answer(ticket, result)


def _join_shielded(threads: list[threading.Thread]) -> None:
    """Wait for the trial threads with SIGINT/SIGTERM held off: they are re-queueing or telling their trials,
    and a second Ctrl-C must not leave one of them half done."""
    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        for t in threads:
            t.join()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


__all__ = ["pop_more", "run_fused_slots"]
