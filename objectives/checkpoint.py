"""Checkpoints of one training run: its whole state at an epoch boundary, in one file, and the run resumed from it.

A checkpoint holds everything the later epochs depend on, so a run resumed from it gives the result of a run
that never stopped (the same history, bit for bit on CPU; on CUDA as deterministic as the run itself):

- the network's weights and buffers (BatchNorm statistics), the optimiser's state (momentum buffers) and the
  learning-rate schedule;
- every random state: Python's, NumPy's, torch's CPU generator (augmentation), every CUDA generator, and the
  trainer's batch-order generator;
- the loss's per-sample state (PRODEN's weights) and a stateful schedule's state (adaptive's first status and
  progress), through their `state_dict()` / `load_state_dict()`;
- the history so far (every per-epoch list) and so the epoch, and the run's config.

The trainer calls two hooks (objectives/train.py): `resume(config, state)` once before the epochs (returns the
first epoch to train: 0 without a usable checkpoint) and `epoch_done(epoch, config, state)` after each epoch
(saves when due: after the last epoch, after the epochs named in `at_epochs`, and whenever `every_seconds`
have passed since the last save). A report callback runs after the save, so a run stopped from its report
(a pruner, a pause, Ctrl-C) has its last epoch saved.

What a checkpoint must agree with. Every config field must equal the checkpoint's except where the run is
read (`data_dir`, `download`), run (`device`, `threads`), and the explicit schedule's future: a resume may
give new q(i) and lambda(i) for the epochs still to come (Population Based Training resumes a member with
perturbed values), while the epochs already trained must be those of the checkpoint's history. A checkpoint
that disagrees, or cannot be read (corrupt, truncated, another format), is skipped with a warning and the
run starts at epoch 0: never wrong, at worst slower.

Files are written to a temporary file and renamed, so a crash mid-save leaves the previous checkpoint whole,
and read with torch.load(weights_only=True): tensors and plain values only, a checkpoint file never runs code.

`train_until(config, epochs_done, path)` trains a config from its checkpoint up to a given number of epochs
and saves it there: how a Tune trial trains several seeds in lockstep (search/tune.py).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

log = logging.getLogger("dal-search.checkpoint")
FORMAT = 1
# Config fields a resume may change: where the data is read and how the run is placed (the device, threads, a
# captured or eager step: the same computation, to float rounding), not what it computes (explicit schedules are
# checked apart: their past must be the checkpoint's history).
MAY_DIFFER = frozenset({"data_dir", "download", "device", "threads", "graphs", "q_schedule", "lam_schedule"})


@dataclass
class RunState:
    """The objects of one run whose state a checkpoint keeps (the trainer's own, shared, not copies)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    loss_state: Any  # PRODEN's SampleWeights, or None
    schedule: Any
    generator: torch.Generator
    history: dict[str, list[float]]


class Checkpointer:
    """Saves a run to `path` at epoch boundaries and resumes it from the first usable file of `resume_from`
    (default: `path` itself).

    `resume_from` lets a retried trial start from the checkpoint of the trial it retries while saving to a
    file of its own. After the run, `resumed_at` is the first epoch it trained (0: from scratch) and
    `resumed_from` the file it resumed from (None), `saved_epochs` the epochs it saved after.
    """

    def __init__(self, path: str | os.PathLike, resume_from: Iterable[str | os.PathLike] | None = None,
                 every_seconds: float | None = None, at_epochs: Iterable[int] = (), at_end: bool = True) -> None:
        self.path = Path(path)
        self.resume_from = [Path(p) for p in resume_from] if resume_from is not None else [self.path]
        self.every_seconds = every_seconds
        self.at_epochs = {int(e) for e in at_epochs}  # epochs done (1-based) after which to save
        self.at_end = at_end
        self.resumed_at = 0
        self.resumed_from: Path | None = None
        self.saved_epochs: list[int] = []
        self.failed = False  # a save failed: no more are tried
        self._last_save = time.monotonic()

    # ------------------------------------------------------------ the trainer's two hooks

    def resume(self, config, state: RunState) -> int:
        """Restore `state` from the first usable checkpoint; the first epoch left to train (0: none usable)."""
        self._last_save = time.monotonic()
        for path in self.resume_from:
            if not path.is_file():
                continue
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                why = _disagreement(saved, config)
            except Exception as e:  # noqa: BLE001 - corrupt, truncated, or not a checkpoint: never fatal
                why = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
            if why:
                log.warning("checkpoint %s not used, %s; this run starts at epoch 0", path, why)
                continue
            _restore(saved, state)
            self.resumed_at, self.resumed_from = int(saved["epoch"]) + 1, path
            return self.resumed_at
        return 0

    def epoch_done(self, epoch: int, config, state: RunState) -> None:
        """Save after `epoch` (0-based) when due."""
        due = ((self.at_end and epoch == config.epochs - 1) or epoch + 1 in self.at_epochs
               or (self.every_seconds is not None and time.monotonic() - self._last_save >= self.every_seconds))
        if due:
            self.save(epoch, config, state)

    # ------------------------------------------------------------ files

    def save(self, epoch: int, config, state: RunState) -> None:
        """Write the checkpoint after `epoch`. A folder that cannot be written (permissions, a full disk) costs
        the checkpoints, not the run: one warning, and this Checkpointer saves nothing more."""
        if self.failed:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(_capture(epoch, config, state), tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            self.failed = True
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            log.warning("cannot save the checkpoint %s (%s); this run goes on without checkpoints",
                        self.path, e.strerror or e)
            return
        self.saved_epochs.append(epoch)
        self._last_save = time.monotonic()


def saved_epoch(path: str | os.PathLike) -> int | None:
    """The last epoch (0-based) the checkpoint at `path` holds, or None when there is none or it is unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- what is saved and restored

def _capture(epoch: int, config, state: RunState) -> dict[str, Any]:
    np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "format": FORMAT,
        "epoch": epoch,
        "config": config.to_dict(),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "lr_schedule": state.lr_schedule.state_dict(),
        "loss_state": state.loss_state.state_dict() if _has_state(state.loss_state) else None,
        "schedule": state.schedule.state_dict() if _has_state(state.schedule) else None,
        "history": {k: list(v) for k, v in state.history.items()},
        "rng": {
            "python": random.getstate(),
            # NumPy's MT19937 state, its key array as a tensor (weights_only loads no NumPy arrays)
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "torch": torch.get_rng_state(),
            "cuda": list(cuda),
            "batch_order": state.generator.get_state(),
        },
    }


def _restore(saved: dict[str, Any], state: RunState) -> None:
    device = next(iter(state.model.parameters()), torch.empty(0)).device
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])  # moves the momentum buffers to the parameters' device
    state.lr_schedule.load_state_dict(saved["lr_schedule"])
    if saved["loss_state"] is not None and _has_state(state.loss_state):
        state.loss_state.load_state_dict({k: None if v is None else v.to(device)
                                          for k, v in saved["loss_state"].items()})
    if saved["schedule"] is not None and _has_state(state.schedule):
        state.schedule.load_state_dict(saved["schedule"])
    for k in state.history:
        state.history[k][:] = saved["history"][k]
    rng = saved["rng"]
    random.setstate(_tuples(rng["python"]))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state.generator.set_state(rng["batch_order"])


def _disagreement(saved: dict[str, Any], config) -> str:
    """Why the checkpoint `saved` cannot resume a run of `config` ("" when it can)."""
    if saved.get("format") != FORMAT:
        return f"its format is {saved.get('format')!r}, this code reads {FORMAT}"
    then, now = saved["config"], config.to_dict()
    differ = sorted(k for k in set(then) | set(now) if k not in MAY_DIFFER and then.get(k) != now.get(k))
    if differ:
        return f"it is of another run ({differ[0]}: {then.get(differ[0])!r} there, {now.get(differ[0])!r} here)"
    done = int(saved["epoch"]) + 1
    if done > config.epochs:
        return f"it holds {done} epochs, more than this run's {config.epochs}"
    history = saved["history"]
    for name, key in (("q_schedule", "q"), ("lam_schedule", "lam")):
        values = now.get(name)
        if values is not None and [float(v) for v in values[:done]] != history[key][:done]:
            return f"its {key} over the {done} epochs it trained differs from this run's {name}"
    return ""


def _has_state(obj: Any) -> bool:
    return obj is not None and callable(getattr(obj, "state_dict", None)) \
        and callable(getattr(obj, "load_state_dict", None))


def _tuples(x: Any) -> Any:
    """random.setstate wants the nested tuples that torch.load may give back as lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------- training in steps

class _Pause(Exception):
    pass


def train_until(config, epochs_done: int, path: str | os.PathLike,
                report: Callable[[int, dict[str, float]], None] | None = None
                ) -> tuple[dict[str, float], dict[str, Any] | None]:
    """Train `config` from its checkpoint at `path` (from scratch when there is none) until `epochs_done`
    epochs are done, saving the checkpoint there. Returns (the metrics of the last epoch done, the run's
    result or None): the result when the run is over, because `epochs_done` reached `config.epochs` or the
    loss became non-finite (result status "nonfinite"). A checkpoint already past `epochs_done` is not
    rewound: the run goes on from it. `report` sees every epoch trained, as train's does.
    """
    from dal_search.objectives.train import train

    if not 1 <= epochs_done <= config.epochs:
        raise ValueError(f"epochs_done must be in 1..{config.epochs}, got {epochs_done}")
    last: dict[str, float] = {}

    def pause_when_done(epoch: int, metrics: dict[str, float]) -> None:
        last.clear()
        last.update(metrics)
        if report is not None:
            report(epoch, metrics)
        if epoch + 1 >= epochs_done and epoch + 1 < config.epochs:
            raise _Pause

    try:
        result = train(config, pause_when_done, checkpoint=Checkpointer(path, at_epochs=[epochs_done]))
    except _Pause:
        return dict(last), None
    if not last:  # nothing was left to train: the checkpoint's last epoch
        h = result["history"]
        last = {k: v[-1] for k, v in h.items()} if h["epoch"] else {}
    return dict(last), result



__all__ = ["Checkpointer", "RunState", "train_until", "saved_epoch", "MAY_DIFFER"]
