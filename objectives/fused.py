"""Horizontally fused trials (HFTA, Wang et al., MLSys 2021): several trials of one study trained as ONE batched
model over the same batches.

Trials of one study share their dataset, noise, seed, split, batch order, network and batch size, and differ
in the knobs the study searches: the loss's (q_start, q_end, schedule, bootstrap, ...) and the optimiser's
(lr, momentum, weight_decay). `train_fused(configs)` trains K such configs at once: the K networks start from
the same initial weights (the seed's, as each one-by-one run would), their parameters and buffers are stacked
along a first axis of length K (torch.func.stack_module_state), and one forward pass of the stacked network
(torch.func.vmap over functional_call) gives every member's logits for the shared batch. Each member then has
its own loss with its own per-epoch q and lambda, its own learning-rate schedule and SGD settings, its own
BatchNorm running statistics (buffers stacked like the weights), history, report and checkpoint. The members
never mix: the gradient of the summed losses with respect to a member's slice is that member's own gradient.

So a fused member's history equals the one-by-one run of its config to float rounding (the batched matrix
products round differently): tests/test_fused.py checks that on CPU for the MLP and the small CNN. On a GPU
one fused step launches the kernels of one step for K trials (HFTA's point: small trials leave a GPU idle),
and where every member's step can be captured (objectives/graphs.py) the fused step is captured and replayed.

Which configs fuse: those equal in every field but FUSABLE (`why_not_fusable` names the first field that
differs otherwise), with a built-in network (a user's `py:` network may hold state or draw random numbers that
vmap cannot batch). Anything else raises NotFusable and the caller trains the configs one at a time.

Edges. A member whose loss becomes non-finite ends with status "nonfinite" at that epoch, as its one-by-one
run would, and the others train on. A member whose report raises an Exception (a pruner's TrialPruned) stops
there; that exception is its entry in the returned list. A BaseException that is not an Exception
(KeyboardInterrupt) stops the whole fused run. A stopped member leaves the stack at the end of its epoch, so
the rest do not pay for it. Checkpoints are saved per member (each a file a one-by-one run could resume
from), never resumed here: a member with a checkpoint to resume trains alone (train()).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from dal_search.objectives import graphs
from dal_search.objectives.checkpoint import Checkpointer, RunState
from dal_search.objectives.config import TrainConfig
from dal_search.objectives.losses import make_loss
from dal_search.objectives.train import (EVAL_BATCH, _covers, _crop_flip, _result, nonfinite_reason, prepare,
                                         run_schedule)

# The fields in which fused members may differ: the loss and its schedule, the optimiser's settings, and how a
# run is placed where that changes nothing it computes. Everything else (data, noise, seed, network, batch
# size, epochs, augmentation) defines the batches and the network, which the members share.
FUSABLE = frozenset({"loss", "q", "alpha", "beta", "q_start", "q_end", "schedule", "q_schedule", "lam_schedule",
                     "bootstrap", "bootstrap_scale", "lr", "momentum", "weight_decay", "graphs"})


class NotFusable(ValueError):
    """The configs cannot be trained as one batched model; the message names why."""


def fusion_key(config: TrainConfig) -> tuple:
    """The values of every field outside FUSABLE: configs with equal keys train on the same batches."""
    return tuple((k, _hashable(v)) for k, v in sorted(config.to_dict().items()) if k not in FUSABLE)


def why_not_fusable(configs: Sequence[TrainConfig]) -> str:
    """Why `configs` cannot be fused ("" when they can)."""
    if not configs:
        return "no configs"
    first = configs[0].to_dict()
    for c in configs[1:]:
        other = c.to_dict()
        differ = sorted(k for k in first if k not in FUSABLE and first[k] != other[k])
        if differ:
            return f"their {differ[0]} differs ({first[differ[0]]!r} and {other[differ[0]]!r})"
    if configs[0].model.startswith("py:"):
        return f"model {configs[0].model!r} is a user's network (it may hold state or draw random numbers)"
    return ""


@dataclass
class _Member:
    """One fused trial: its config and everything of it that is not stacked."""

    config: TrainConfig
    report: Callable | None
    checkpoint: Checkpointer | None
    shadow: torch.nn.Module  # the member's network as train() would hold it: filled from the stack to save
    optimizer: torch.optim.SGD  # holds its learning-rate schedule and, when saving, its momentum buffers
    lr_schedule: Any
    loss_fn: Callable
    schedule: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    status_signal: float | None = None
    status: str = "ok"
    reason: str = ""
    error: Exception | None = None
    done: bool = False


def train_fused(configs: Sequence[TrainConfig | dict], reports: Sequence[Callable | None] | None = None,
                checkpoints: Sequence[Checkpointer | None] | None = None) -> list[dict[str, Any] | Exception]:
    """Train `configs` as one batched model; per config, its result (as train() returns it, with `fused` = K,
    the number of members) or the Exception its report raised. `reports[i]` and `checkpoints[i]` are config
    i's, as train() takes them. Raises NotFusable for configs that cannot be fused."""
    t_start = time.perf_counter()
    configs = [TrainConfig.from_dict(c) if isinstance(c, dict) else c for c in configs]
    why = why_not_fusable(configs)
    if why:
        raise NotFusable(f"these configs cannot be fused: {why}")
    k = len(configs)
    reports = list(reports) if reports is not None else [None] * k
    checkpoints = list(checkpoints) if checkpoints is not None else [None] * k
    config = configs[0]

    # --- setup: train()'s own (seeds, device, data and noise, split, network), so that every member sees the
    # batches, labels and initial weights its one-by-one run would
    run = prepare(config)
    device, use_amp, model = run.device, run.use_amp, run.model
    x_train, y_train, x_val, y_val = run.x_train, run.y_train, run.x_val, run.y_val
    x_test, y_test, n_train = run.x_test, run.y_test, run.n_train

    # --- the members: each its own network copy (to save), optimiser and LR schedule, loss and (q, lambda)
    # schedule; their weights and buffers stacked into one batched network
    members = [_member(c, r, ck, model, y_train) for c, r, ck in zip(configs, reports, checkpoints)]
    base = copy.deepcopy(model).to("meta")  # the architecture alone: functional_call fills in each member
    stack = _Stack.of(members, device)
    augment = config.resolved_augment() and x_train.dim() == 4
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    live = list(members)
    runner, graphs_line = _runner(live, stack, forward, base, x_train, y_train, _crop_flip if augment else None,
                                  use_amp, device, n_train)

    # --- the epochs
    for epoch in range(config.epochs):
        qs_lams = [m.schedule(epoch, m.status_signal) for m in live]
        lrs = [m.optimizer.param_groups[0]["lr"] for m in live]
        base.train()
        order = torch.randperm(n_train, generator=generator).to(device)
        runner.epoch(order, qs_lams, lrs)
        for m in live:
            m.lr_schedule.step()
            m.loss_fn.end_epoch()
        train_losses = [s / n_train for s in runner.step.loss_sum.tolist()]  # the one host read of the pass
        preds = runner.step.preds
        val_accs = _accuracies(forward, base, stack, x_val, y_val, use_amp, device)
        test_accs = (_accuracies(forward, base, stack, x_test, y_test, use_amp, device) if y_test is not None
                     else [float("nan")] * len(live))
        for i, m in enumerate(live):
            (q, lam), train_loss = qs_lams[i], train_losses[i]
            if not np.isfinite(train_loss):
                m.status, m.done, m.reason = "nonfinite", True, nonfinite_reason(m.config, train_loss, epoch)
                continue
            train_acc, noisy_fit, clean_fit = run.fit_metrics(preds[i])
            m.status_signal = train_acc
            metrics = {"epoch": epoch, "q": float(q), "lam": float(lam), "lr": lrs[i], "train_loss": train_loss,
                       "train_acc": train_acc, "val_acc": val_accs[i], "test_acc": test_accs[i],
                       "noisy_fit": noisy_fit, "clean_fit": clean_fit}
            for key, v in metrics.items():
                m.history[key].append(v)
            if m.checkpoint is not None:
                stack.fill_shadow(i, m)
                m.checkpoint.epoch_done(epoch, m.config, _run_state(m, generator))
            if m.report is not None:
                try:
                    m.report(epoch, metrics)
                except Exception as e:  # noqa: BLE001 - this member stops (a pruner); the others train on
                    m.error, m.done = e, True
        if any(m.done for m in live):
            keep = [i for i, m in enumerate(live) if not m.done]
            live = [live[i] for i in keep]
            if not live:
                break
            stack = stack.select(keep)
            runner, _ = _runner(live, stack, forward, base, x_train, y_train, _crop_flip if augment else None,
                                use_amp, device, n_train)

    # --- the results, each as its one-by-one run returns it
    facts = {**run.facts(graphs_line), "fused": k}
    return [m.error if m.error is not None else
            _result(m.config, m.history, m.status, m.reason, run.noisy_pool, run.clean_pool, device, t_start, facts)
            for m in members]


def _member(config: TrainConfig, report, checkpoint, model: torch.nn.Module, y_train: torch.Tensor) -> _Member:
    shadow = copy.deepcopy(model)
    optimizer = torch.optim.SGD(shadow.parameters(), lr=config.resolved_lr(), momentum=config.momentum,
                                weight_decay=config.weight_decay)
    optimizer._opt_called = True  # its update runs on the stack: the LR schedule's "step order" warning is moot
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    schedule = run_schedule(config)
    history = {key: [] for key in ("epoch", "q", "lam", "lr", "train_loss", "train_acc", "val_acc", "test_acc",
                                   "noisy_fit", "clean_fit")}
    return _Member(config, report, checkpoint, shadow, optimizer, lr_schedule, make_loss(config, labels=y_train),
                   schedule, history)


def _run_state(m: _Member, generator: torch.Generator) -> RunState:
    return RunState(m.shadow, m.optimizer, m.lr_schedule, m.loss_fn.state, m.schedule, generator, m.history)


@dataclass
class _Stack:
    """The live members' weights and buffers stacked along a first axis, their momentum buffers and their SGD
    settings (momentum, weight decay) as (K,) tensors."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    bufs: list[torch.Tensor]
    momentum: torch.Tensor
    weight_decay: torch.Tensor

    @classmethod
    def of(cls, members: list[_Member], device: torch.device) -> "_Stack":
        params, buffers = stack_module_state([m.shadow for m in members])
        bufs = [torch.zeros_like(p) for p in params.values()]
        as_tensor = lambda name: torch.tensor([getattr(m.config, name) for m in members],  # noqa: E731
                                              dtype=torch.float32, device=device)
        return cls(params, buffers, bufs, as_tensor("momentum"), as_tensor("weight_decay"))

    def select(self, keep: list[int]) -> "_Stack":
        """The stack of the members at positions `keep` (new tensors: a captured step must be captured again)."""
        at = torch.tensor(keep, device=self.momentum.device)
        return _Stack({n: t.detach()[at].requires_grad_(t.requires_grad) for n, t in self.params.items()},
                      {n: t[at] for n, t in self.buffers.items()}, [b[at] for b in self.bufs],
                      self.momentum[at], self.weight_decay[at])

    @torch.no_grad()
    def fill_shadow(self, i: int, m: _Member) -> None:
        """Copy member i's slice into its own network and optimiser state, as its one-by-one run holds them."""
        for name, t in m.shadow.state_dict(keep_vars=True).items():
            t.copy_((self.params.get(name) if name in self.params else self.buffers[name])[i])
        if m.config.momentum:
            for p, b in zip(m.shadow.parameters(), self.bufs):
                m.optimizer.state[p]["momentum_buffer"] = b[i].clone()


class FusedStep:
    """One training step of the stacked members on static buffers (graphs.EpochRunner's step): gather and
    augment the shared batch, one batched forward pass, each member's loss, the gradients, every member's SGD
    update, and the members' running loss sums (K,) and predictions (K, N).

    `tensor_losses` False (eager): each member's loss gets its q and lambda as numbers, exactly as train()'s
    step does; True (captured): as device tensors, through graphs.capturable_loss."""

    def __init__(self, members: list[_Member], stack: _Stack, forward: Callable, x: torch.Tensor, y: torch.Tensor,
                 augment: Callable | None, use_amp: bool, tensor_losses: bool) -> None:
        self.stack, self.forward, self.x, self.y, self.augment, self.use_amp = stack, forward, x, y, augment, use_amp
        self.device, k = x.device, len(members)
        self.params = list(stack.params.values())
        self.bufs = stack.bufs if any(m.config.momentum for m in members) else [None] * len(self.params)
        self.q, self.lam, self.lr = (torch.zeros(k, device=self.device) for _ in range(3))
        self.loss_sum = torch.zeros(k, device=self.device)
        self.preds = torch.zeros(k, len(x), dtype=torch.long, device=self.device)
        self.scales = [float(m.config.bootstrap_scale) for m in members]
        self.values: list[tuple[float, float]] = [(0.0, 0.0)] * k
        if tensor_losses:
            self.losses = [_tensor_loss(graphs.capturable_loss(m.config, m.loss_fn), self, i)
                           for i, m in enumerate(members)]
        else:
            self.losses = [_number_loss(m.loss_fn, self, i) for i, m in enumerate(members)]

    def begin_epoch(self, qs_lams: list[tuple[float, float]], lrs: list[float]) -> None:
        self.values = list(qs_lams)
        self.q.copy_(torch.tensor([q for q, _ in qs_lams]))
        self.lam.copy_(torch.tensor([lam * s for (_, lam), s in zip(qs_lams, self.scales)]))
        self.lr.copy_(torch.tensor(lrs))
        self.loss_sum.zero_()

    def __call__(self, idx: torch.Tensor) -> None:
        xb = self.x[idx]
        if self.augment is not None:
            xb = self.augment(xb)  # one draw for all members: each one-by-one run draws exactly this
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
            logits = self.forward(self.stack.params, self.stack.buffers, xb)  # (K, B, classes)
        yb = self.y[idx]
        losses = torch.stack([loss(logits[i], yb, idx) for i, loss in enumerate(self.losses)])
        # d(sum)/d(member i's slice) is member i's own gradient: the members never mix
        grads = torch.autograd.grad(losses.sum(), self.params, allow_unused=True)
        graphs.sgd_step_(self.params, grads, self.bufs, self.lr, self.stack.momentum, self.stack.weight_decay)
        with torch.no_grad():
            self.loss_sum += losses.detach() * len(idx)
            self.preds[:, idx] = logits.detach().argmax(-1)

    def state(self) -> list[torch.Tensor]:
        return [*self.params, *self.stack.buffers.values(), *(b for b in self.bufs if b is not None)]


def _number_loss(loss_fn: Callable, step: FusedStep, i: int) -> Callable:
    return lambda z, y, idx: loss_fn(z, y, step.values[i][0], step.values[i][1], idx)


def _tensor_loss(loss: Callable, step: FusedStep, i: int) -> Callable:
    return lambda z, y, idx: loss(z, y, step.q[i], step.lam[i])


def _runner(members: list[_Member], stack: _Stack, forward, base, x, y, augment, use_amp, device,
            n_train: int) -> tuple[graphs.EpochRunner, str]:
    """The members' epochs: a captured fused step where every member's step can be captured, else eager; and
    the line that says which (logged)."""
    whose, why = next(((f"member {i} (loss {m.config.loss}): ", w) for i, m in enumerate(members)
                       if (w := graphs.refusal(m.config, device, m.loss_fn, n_train))), ("", ""))
    if why.startswith(("device is", "config graphs")):
        whose = ""  # the same for every member
    if not why:
        base.train()
        try:
            step = FusedStep(members, stack, forward, x, y, augment, use_amp, tensor_losses=True)
            runner = graphs.EpochRunner(step, n_train, members[0].config.batch_size, device,
                                        capture=not graphs.emulating(device))
            return runner, graphs.announce(runner)
        except Exception as e:  # noqa: BLE001 - as for one model: say why and run eager
            why = graphs.capture_failure(e)
    line = graphs.fall_back(members[0].config, why, whose)
    step = FusedStep(members, stack, forward, x, y, augment, use_amp, tensor_losses=False)
    return graphs.EpochRunner(step, n_train, members[0].config.batch_size, device, capture=False), line


@torch.no_grad()
def _accuracies(forward, base, stack: _Stack, x, y, use_amp, device) -> list[float]:
    """Each member's accuracy (covering accuracy for candidate sets) on (x, y), in eval mode: one host read."""
    base.eval()
    k = stack.momentum.shape[0]
    correct = torch.zeros(k, dtype=torch.long, device=device)
    for start in range(0, len(x), EVAL_BATCH):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = forward(stack.params, stack.buffers, x[start:start + EVAL_BATCH]).argmax(-1)
        labels = y[start:start + EVAL_BATCH]
        correct += torch.stack([_covers(pred[i], labels).sum() for i in range(k)])
    return [c / max(1, len(x)) for c in correct.tolist()]


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


__all__ = ["train_fused", "why_not_fusable", "fusion_key", "NotFusable", "FUSABLE", "FusedStep"]
