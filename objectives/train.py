"""One training run: `train(config, report=None) -> result`.

Reads top to bottom like the run itself: seed, device, data and label noise, network and optimiser, the loss
and its schedule, the epochs, the result. The data stays on the training device as tensors and augmentation
is tensor ops, so a step costs its forward and backward pass and nothing else; the host reads from the device
once per epoch (the epoch's loss and accuracies), never per step.

Memorisation is measured on the training pass itself: every sample's prediction in the step that used it
is kept on the device. `noisy_fit` is the fraction of wrongly-labelled training samples predicted AS their
wrong label (memorised noise), `clean_fit` the fraction of correctly-labelled ones predicted correctly. These
cost nothing extra, and lag the weights by at most one epoch.

Partial labels (noise `partial`): the training and validation labels are candidate sets, an (N, K) boolean
mask holding the true class and some false ones, and the test labels stay clean. The same definitions then
read: a prediction fits its given labels when it falls in the candidate set, so `train_acc` and `val_acc` are
covering accuracies (the prediction is in S); `noisy_fit` is the fraction of the training samples with at
least one false candidate that the net predicts as a FALSE candidate (it settled on a wrong member of S), and
`clean_fit` the fraction of the training samples (every one holds its true class) predicted as the true
class, i.e. how often the net picks the true label out of S. For class labels these are exactly the
definitions above. `test_acc` is plain accuracy on the clean test labels, as always.

A non-finite loss ends the run early with `status="nonfinite"` and a reason, never an exception: a search
worker records it as a failed trial and goes on. An exception raised by `report` (a pruner's TrialPruned, a
Ctrl-C) propagates to the caller.

A `checkpoint` (objectives/checkpoint.py) saves the run's whole state at epoch boundaries and resumes it from
a saved one: a resumed run gives the history of a run that never stopped.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from dal_search.objectives.checkpoint import Checkpointer, RunState
from dal_search.objectives.config import TrainConfig
from dal_search.objectives.data import load_dataset, split_train_val, subset_indices
from dal_search.objectives.graphs import capture_step
from dal_search.objectives.losses import make_loss
from dal_search.objectives.models import build_model, check_output
from dal_search.objectives.noise import NOISE_KINDS, candidate_set_size, corrupt_labels, label_hash, realized_rate
from dal_search.objectives.schedules import make_schedule, schedule_options

Report = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 2048


def train(config: TrainConfig, report: Report | None = None, checkpoint: Checkpointer | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)

    # --- setup: seeds, threads, device; the data and its label noise; the network (prepare(), below: the same
    # for a fused run of several configs, so every run sees the batches, labels and initial weights it would alone)
    run = prepare(config)
    device, use_amp, model = run.device, run.use_amp, run.model
    x_train, y_train, x_val, y_val = run.x_train, run.y_train, run.x_val, run.y_val
    x_test, y_test, n_train = run.x_test, run.y_test, run.n_train

    # --- optimiser, learning-rate schedule (the paper's: SGD + cosine annealing over the epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.resolved_lr(), momentum=config.momentum,
                                weight_decay=config.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)

    # --- the loss and its per-epoch (q, lambda); a loss with per-sample state (PRODEN's weights) keeps it over
    # the training labels, on the device, and moves it on at each epoch's end
    loss_fn = make_loss(config, labels=y_train)
    schedule = run_schedule(config)
    augment = config.resolved_augment() and x_train.dim() == 4

    history: dict[str, list[float]] = {k: [] for k in (
        "epoch", "q", "lam", "lr", "train_loss", "train_acc", "val_acc", "test_acc", "noisy_fit", "clean_fit")}
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    # --- resume: a checkpoint holds every state the later epochs depend on (objectives/checkpoint.py), so a run
    # resumed after epoch k trains epochs k+1.. exactly as one that never stopped
    run_state = RunState(model, optimizer, lr_schedule, loss_fn.state, schedule, generator, history)
    first_epoch = checkpoint.resume(config, run_state) if checkpoint is not None else 0
    status_signal = history["train_acc"][-1] if history["train_acc"] else None  # the previous epoch's
    status, reason = "ok", ""
    # --- on CUDA the step is captured once as a CUDA graph and replayed (objectives/graphs.py): the same step
    # from static buffers, q, lambda and the learning rate in device tensors; eager elsewhere, and one log
    # line (the result's `graphs`) says which and why
    captured, graphs_line = capture_step(config, device, model, optimizer, loss_fn, x_train, y_train,
                                         _crop_flip if augment else None, use_amp)

    # --- the epochs
    for epoch in range(first_epoch, config.epochs):
        q, lam = schedule(epoch, status_signal)
        lr_now = optimizer.param_groups[0]["lr"]
        model.train()
        order = torch.randperm(n_train, generator=generator).to(device)
        if captured is not None:
            captured.epoch(order, q, lam, lr_now)
            preds, loss_sum = captured.step.preds, captured.step.loss_sum
        else:
            preds = torch.empty(n_train, dtype=torch.long, device=device)
            loss_sum = torch.zeros((), device=device)
            for start in range(0, n_train, config.batch_size):
                idx = order[start:start + config.batch_size]
                xb = x_train[idx]
                if augment:
                    xb = _crop_flip(xb)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(xb)
                loss = loss_fn(logits, y_train[idx], q, lam, idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(idx)
                preds[idx] = logits.detach().argmax(1)
        lr_schedule.step()
        loss_fn.end_epoch()

        train_loss = float(loss_sum) / n_train  # the one host read of the training pass
        if not np.isfinite(train_loss):
            status, reason = "nonfinite", nonfinite_reason(config, train_loss, epoch)
            break
        train_acc, noisy_fit, clean_fit = run.fit_metrics(preds)
        val_acc = _accuracy(model, x_val, y_val, use_amp, device)
        test_acc = _accuracy(model, x_test, y_test, use_amp, device) if y_test is not None else float("nan")
        status_signal = train_acc
        metrics = {"epoch": epoch, "q": float(q), "lam": float(lam), "lr": lr_now, "train_loss": train_loss,
                   "train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc,
                   "noisy_fit": noisy_fit, "clean_fit": clean_fit}
        for k, v in metrics.items():
            history[k].append(v)
        if checkpoint is not None:  # before the report, which may stop the run (a pruner, a pause)
            checkpoint.epoch_done(epoch, config, run_state)
        if report is not None:
            report(epoch, metrics)

    # --- the result
    return _result(config, history, status, reason, run.noisy_pool, run.clean_pool, device, t_start,
                   run.facts(graphs_line))


@dataclass
class Prepared:
    """What a run sets up before its optimiser: the device, the data on it with its label noise and split, the
    counts behind the memorisation metrics, and the network (initialised from the config's seed)."""

    device: torch.device
    use_amp: bool
    data: Any
    noisy_pool: np.ndarray
    clean_pool: np.ndarray | None
    x_train: torch.Tensor
    y_train: torch.Tensor
    is_noisy: torch.Tensor | None
    holds_true: torch.Tensor | None
    y_train_clean: torch.Tensor | None
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    n_train: int
    n_noisy: int
    n_holds_true: int
    model: torch.nn.Module

    def fit_metrics(self, preds: torch.Tensor) -> tuple[float, float, float]:
        """One epoch's (train_acc, noisy_fit, clean_fit) from its training predictions (the module docstring's
        definitions; NaN fits where which given labels are wrong is unknown: never invented)."""
        fits_given = _covers(preds, self.y_train)  # the given label, or a member of the candidate set
        train_acc = float(fits_given.float().mean())
        if self.is_noisy is None:
            return train_acc, float("nan"), float("nan")
        fits_clean = preds == self.y_train_clean
        noisy_fit = float((fits_given & ~fits_clean).sum()) / self.n_noisy if self.n_noisy else 0.0
        clean_fit = float((fits_clean & self.holds_true).sum()) / max(1, self.n_holds_true)
        return train_acc, noisy_fit, clean_fit

    def facts(self, graphs_line: str) -> dict[str, Any]:
        """What a result says about the data it ran on (and how its step ran)."""
        return {"train_size": len(self.noisy_pool), "has_test_labels": self.y_test is not None,
                "has_clean_labels": self.clean_pool is not None, "data_source": self.data.source,
                "graphs": graphs_line}


def run_schedule(config: TrainConfig):
    """A run's per-epoch (q, lambda) schedule, as train() and each member of a fused run build it. A shape that
    reads the learning status (adaptive) under candidate sets warns: there the status is the covering accuracy,
    high from the first epoch, so it bootstraps too early (it collapsed in docs/RESULTS.md section 7)."""
    schedule = make_schedule(config.q_start, config.q_end, config.epochs, config.schedule, **schedule_options(config))
    if getattr(schedule, "needs_status", False) and NOISE_KINDS[config.noise].get("candidate_sets") \
            and config.loss == "dal":
        warnings.warn(f"schedule {config.schedule!r} reads the share of training samples that fit their given "
                      f"labels, which under {config.noise!r} labels is the covering accuracy (high from the first "
                      f"epoch): it bootstraps too early and collapsed in docs/RESULTS.md section 7; use a static "
                      f"shape (linear, cosine, exponential, step)", stacklevel=3)
    return schedule


def nonfinite_reason(config: TrainConfig, train_loss: float, epoch: int) -> str:
    """Why a run whose training loss stopped being finite ended early (its result's `reason`)."""
    return (f"loss became {train_loss} at epoch {epoch} "
            f"(lr {config.resolved_lr()} may be too high for loss {config.loss!r})")


def prepare(config: TrainConfig) -> Prepared:
    """Seeds, threads and device; the data and its label noise; the validation split; the network. Everything
    a run does before its optimiser, in the order that fixes every random draw, so that train() and a fused
    run of several configs (objectives/fused.py) start from the same state."""
    # --- setup: seeds, threads, device
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = _pick_device(config.device)
    use_amp = (device.type == "cuda") if config.amp is None else (config.amp and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- data and label noise: a train_size subset of the training pool is taken first (the same images for
    # every seed), the noise is drawn on that pool, then a stratified validation split is carved out. The test
    # labels stay clean. A user's data may have no clean test labels (test metrics are then NaN) or unknown
    # clean training labels (memorisation metrics NaN): see Dataset.clean_train_labels / clean_test_labels.
    data = load_dataset(config.dataset, root=config.data_dir, download=config.download, image_size=config.image_size)
    pool = subset_indices(data.train_y.numpy(), config.train_size)
    x_pool = data.train_x if pool is None else data.train_x[pool]
    noisy_pool = _noisy_labels(config, data, pool, x_pool)
    clean = data.clean_train_labels(config.noise)
    clean_pool = None if clean is None else clean.numpy() if pool is None else clean.numpy()[pool]
    train_idx, val_idx = split_train_val(_strata(noisy_pool, clean_pool), config.val_fraction, config.seed)
    x_train = x_pool[train_idx].to(device)
    y_train = torch.as_tensor(noisy_pool[train_idx], device=device)
    is_noisy = holds_true = y_train_clean = None
    if clean_pool is not None:
        # wrongly labelled: a wrong label, or a candidate set with a false class; holds_true: the labels hold
        # the true class (a right label; every candidate set)
        holds_true, is_noisy = (torch.as_tensor(a, device=device)
                                for a in _label_truth(noisy_pool[train_idx], clean_pool[train_idx]))
        y_train_clean = torch.as_tensor(clean_pool[train_idx], device=device)
    x_val = x_pool[val_idx].to(device)
    y_val = torch.as_tensor(noisy_pool[val_idx], device=device)
    test_labels = data.clean_test_labels(config.noise)
    x_test = (data.test_x if test_labels is not None else data.test_x[:0]).to(device)
    y_test = None if test_labels is None else test_labels.to(device)
    if device.type == "cuda" and x_train.dim() == 4:
        x_train, x_val, x_test = (t.contiguous(memory_format=torch.channels_last) for t in (x_train, x_val, x_test))
    n_train = len(train_idx)
    n_noisy = int(is_noisy.sum()) if is_noisy is not None else 0
    n_holds_true = int(holds_true.sum()) if holds_true is not None else 0

    # --- the network
    model_name = config.resolved_model(data.input_shape)
    model = build_model(model_name, data.input_shape, data.num_classes).to(device)
    if device.type == "cuda" and x_train.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    check_output(model, x_train[:2], data.num_classes, model_name)  # a user's network: its output shape, now
    return Prepared(device, use_amp, data, noisy_pool, clean_pool, x_train, y_train, is_noisy, holds_true,
                    y_train_clean, x_val, y_val, x_test, y_test, n_train, n_noisy, n_holds_true, model)


def _noisy_labels(config: TrainConfig, data, pool, x_pool) -> np.ndarray:
    """The pool's labels after the config's noise, drawn on the pool (`pool`: indices of a train_size subset,
    None for all). A kind that is not random (labels read from a file) lines up with the whole training pool:
    it is read whole, then subset."""
    entry = NOISE_KINDS[config.noise]
    if pool is not None and not entry.get("random", True):
        return _noisy_labels(config, data, None, data.train_x)[pool]
    given = data.train_y.numpy() if pool is None else data.train_y.numpy()[pool]
    return corrupt_labels(
        given, kind=config.noise, rate=config.noise_rate, num_classes=data.num_classes, seed=config.seed,
        features=x_pool.reshape(len(given), -1).numpy() if "features" in entry.get("needs", ()) else None,
        dataset=config.dataset, path=config.noise_file,
    )


def _result(config, history, status, reason, noisy_pool, clean_pool, device, t_start, facts) -> dict[str, Any]:
    """The run's summary. Without clean test labels every test metric is NaN and best_epoch is -1; without
    clean training labels noisy_fit, clean_fit and realized_rate are NaN (never estimated)."""
    test, val = history["test_acc"], history["val_acc"]
    has_test = bool(test) and not all(np.isnan(test))
    best_epoch = int(np.argmax(test)) if has_test else -1
    best_val_epoch = int(np.argmax(val)) if val else -1
    last = lambda k: history[k][-1] if history[k] else float("nan")  # noqa: E731
    return {
        "status": status,
        "reason": reason,
        "test_acc": last("test_acc"),
        "best_test_acc": test[best_epoch] if has_test else float("nan"),
        "best_epoch": best_epoch,
        "val_acc": last("val_acc"),
        "best_val_acc": val[best_val_epoch] if val else float("nan"),
        "test_acc_at_best_val": test[best_val_epoch] if val else float("nan"),
        "noisy_fit": last("noisy_fit"),
        "clean_fit": last("clean_fit"),
        "realized_rate": realized_rate(clean_pool, noisy_pool) if clean_pool is not None else float("nan"),
        "candidate_set_size": candidate_set_size(noisy_pool),
        "label_hash": label_hash(noisy_pool),
        "wall_time": time.perf_counter() - t_start,
        "device": _device_name(device),
        "epochs_run": len(test),
        **facts,
        "history": history,
        "config": config.to_dict(),
    }


@torch.no_grad()
def _accuracy(model, x, y, use_amp, device) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(x), EVAL_BATCH):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x[start:start + EVAL_BATCH])
        correct += _covers(logits.argmax(1), y[start:start + EVAL_BATCH]).sum()
    return float(correct) / max(1, len(x))


def _covers(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample: the prediction is the given label (N,), or falls in the candidate set ((N, K) mask)."""
    if labels.dim() == 1:
        return pred == labels
    return labels.gather(1, pred.view(-1, 1)).squeeze(1)


def _label_truth(given: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(holds_true, holds_false) per sample: the given labels include the true class / a false one. A class
    label holds exactly one of the two; a candidate set holds its true class and maybe false ones."""
    if given.ndim == 1:
        return given == clean, given != clean
    holds_true = given[np.arange(len(clean)), clean]
    return holds_true, given.sum(axis=1) > holds_true


def _strata(noisy_pool: np.ndarray, clean_pool: np.ndarray | None) -> np.ndarray:
    """What the validation split is stratified by: the given labels. Candidate sets name no one class, so
    there the true class only balances the split (its samples still carry their candidate sets), or, when
    the true classes are unknown, the lowest class of each set."""
    if noisy_pool.ndim == 1:
        return noisy_pool
    return clean_pool if clean_pool is not None else noisy_pool.argmax(axis=1)


def _crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding `pad` and random horizontal flip, per sample, as tensor ops."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    flip = torch.rand(n, device=x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last if x.is_cuda else torch.contiguous_format)


def _pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        from dal_search.objectives.config import ConfigError
        raise ConfigError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()} cores, {torch.get_num_threads()} threads"
