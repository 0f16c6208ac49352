"""One training run: `train(config, report=None) -> result`.

Reads top to bottom like the run itself: seed, device, data and label noise, network and optimiser, the loss
and its schedule, the epochs, the result. The data stays on the training device as tensors and augmentation
is tensor ops, so a step costs its forward and backward pass and nothing else; the host reads from the device
once per epoch (the epoch's loss and accuracies), never per step.

Memorisation is measured on the training pass itself: every sample's prediction in the step that used it
is kept on the device. `noisy_fit` is the fraction of wrongly-labelled training samples predicted AS their
wrong label (memorised noise), `clean_fit` the fraction of correctly-labelled ones predicted correctly. These
cost nothing extra, and lag the weights by at most one epoch.

A non-finite loss ends the run early with `status="nonfinite"` and a reason, never an exception: a search
worker records it as a failed trial and goes on. An exception raised by `report` (a pruner's TrialPruned, a
Ctrl-C) propagates to the caller.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from dal_search.objectives.config import TrainConfig
from dal_search.objectives.data import load_dataset, split_train_val
from dal_search.objectives.losses import make_loss
from dal_search.objectives.models import build_model
from dal_search.objectives.noise import NOISE_KINDS, corrupt_labels, label_hash, realized_rate
from dal_search.objectives.schedules import make_schedule

Report = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 2048


def train(config: TrainConfig, report: Report | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)

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

    # --- data and label noise: noise is drawn on the whole training pool (so a CIFAR-N label file lines
    # up with it), then a stratified validation split is carved out; the test labels stay clean.
    data = load_dataset(config.dataset, root=config.data_dir, download=config.download)
    clean_pool = data.train_y.numpy()
    noisy_pool = corrupt_labels(
        clean_pool, kind=config.noise, rate=config.noise_rate, num_classes=data.num_classes,
        seed=config.seed, features=data.train_x.reshape(len(clean_pool), -1).numpy()
        if "features" in NOISE_KINDS[config.noise].get("needs", ()) else None,
        dataset=config.dataset, path=config.noise_file,
    )
    train_idx, val_idx = split_train_val(noisy_pool, config.val_fraction, config.seed)
    x_train = data.train_x[train_idx].to(device)
    y_train = torch.as_tensor(noisy_pool[train_idx], device=device)
    is_noisy = torch.as_tensor(noisy_pool[train_idx] != clean_pool[train_idx], device=device)
    y_train_clean = torch.as_tensor(clean_pool[train_idx], device=device)
    x_val = data.train_x[val_idx].to(device)
    y_val = torch.as_tensor(noisy_pool[val_idx], device=device)
    x_test = data.test_x.to(device)
    y_test = data.test_y.to(device)
    if device.type == "cuda" and x_train.dim() == 4:
        x_train, x_val, x_test = (t.contiguous(memory_format=torch.channels_last) for t in (x_train, x_val, x_test))
    n_train = len(train_idx)
    n_noisy = int(is_noisy.sum())

    # --- network, optimiser, learning-rate schedule (the paper's: SGD + cosine annealing over the epochs)
    model = build_model(config.resolved_model(data.input_shape), data.input_shape, data.num_classes).to(device)
    if device.type == "cuda" and x_train.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.resolved_lr(), momentum=config.momentum,
                                weight_decay=config.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)

    # --- the loss and its per-epoch (q, lambda)
    loss_fn = make_loss(config)
    schedule = make_schedule(config.q_start, config.q_end, config.epochs, config.schedule)
    augment = config.resolved_augment() and x_train.dim() == 4

    history: dict[str, list[float]] = {k: [] for k in (
        "epoch", "q", "lam", "lr", "train_loss", "train_acc", "val_acc", "test_acc", "noisy_fit", "clean_fit")}
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    status_signal: float | None = None
    status, reason = "ok", ""

    # --- the epochs
    for epoch in range(config.epochs):
        q, lam = schedule(epoch, status_signal)
        lr_now = optimizer.param_groups[0]["lr"]
        model.train()
        order = torch.randperm(n_train, generator=generator).to(device)
        preds = torch.empty(n_train, dtype=torch.long, device=device)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, n_train, config.batch_size):
            idx = order[start:start + config.batch_size]
            xb = x_train[idx]
            if augment:
                xb = _crop_flip(xb)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb)
            loss = loss_fn(logits, y_train[idx], q, lam)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            preds[idx] = logits.detach().argmax(1)
        lr_schedule.step()

        train_loss = float(loss_sum) / n_train  # the one host read of the training pass
        if not np.isfinite(train_loss):
            status = "nonfinite"
            reason = (f"loss became {train_loss} at epoch {epoch} "
                      f"(lr {config.resolved_lr()} may be too high for loss {config.loss!r})")
            break
        fits_given = preds == y_train
        train_acc = float(fits_given.float().mean())
        noisy_fit = float((fits_given & is_noisy).sum()) / n_noisy if n_noisy else 0.0
        clean_fit = float(((preds == y_train_clean) & ~is_noisy).sum()) / max(1, n_train - n_noisy)
        val_acc = _accuracy(model, x_val, y_val, use_amp, device)
        test_acc = _accuracy(model, x_test, y_test, use_amp, device)
        status_signal = train_acc
        metrics = {"epoch": epoch, "q": float(q), "lam": float(lam), "lr": lr_now, "train_loss": train_loss,
                   "train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc,
                   "noisy_fit": noisy_fit, "clean_fit": clean_fit}
        for k, v in metrics.items():
            history[k].append(v)
        if report is not None:
            report(epoch, metrics)

    # --- the result
    return _result(config, history, status, reason, noisy_pool, clean_pool, device, t_start)


def _result(config, history, status, reason, noisy_pool, clean_pool, device, t_start) -> dict[str, Any]:
    test, val = history["test_acc"], history["val_acc"]
    best_epoch = int(np.argmax(test)) if test else -1
    best_val_epoch = int(np.argmax(val)) if val else -1
    last = lambda k: history[k][-1] if history[k] else float("nan")  # noqa: E731
    return {
        "status": status,
        "reason": reason,
        "test_acc": last("test_acc"),
        "best_test_acc": test[best_epoch] if test else float("nan"),
        "best_epoch": best_epoch,
        "val_acc": last("val_acc"),
        "best_val_acc": val[best_val_epoch] if val else float("nan"),
        "test_acc_at_best_val": test[best_val_epoch] if val else float("nan"),
        "noisy_fit": last("noisy_fit"),
        "clean_fit": last("clean_fit"),
        "realized_rate": realized_rate(clean_pool, noisy_pool),
        "label_hash": label_hash(noisy_pool),
        "wall_time": time.perf_counter() - t_start,
        "device": _device_name(device),
        "epochs_run": len(test),
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
        correct += (logits.argmax(1) == y[start:start + EVAL_BATCH]).sum()
    return float(correct) / max(1, len(x))


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
