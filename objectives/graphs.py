"""The training step captured once in a CUDA graph and replayed, for a launch-bound GPU step.

At batch 128 a ResNet-18 step on an H200 is launch-bound (issue 12: 6.4 ms a step for work the GPU does at
batch 512 in a quarter of the time per image). A CUDA graph records the step's kernels once and replays them
with one launch, so the step costs its arithmetic. What the step reads changes between steps and epochs, so
everything it reads lives in static device tensors that the host refills between replays:

- the batch: the epoch's permutation in `EpochRunner.order`, a step counter `ptr` on the device, and the
  step gathers rows `order[ptr * B + 0..B-1]` of the training tensors, then bumps `ptr`;
- augmentation (random crop + flip): the same tensor ops and the same random draws as the eager step; a
  captured draw replays with the generator's offset advanced as eager calls would advance it, so a replayed
  epoch draws the numbers an eager epoch draws;
- the loss's per-epoch q and lambda: 0-d tensors (`dal_tensor` is DAL with tensor q and lam; losses that take
  no schedule capture as they are), so a new epoch needs no re-capture;
- the learning rate: a 0-d tensor filled each epoch from the optimiser's cosine schedule (the trainer steps
  the schedule once per epoch, so every step of an epoch uses the epoch's rate);
- the optimiser: torch.optim.SGD cannot be captured with a changing rate in torch 2.14 (it has no
  `capturable`, and its single-tensor and foreach paths read a tensor rate back to the host), so `sgd_step_`
  writes its update (weight decay, momentum, dampening 0, no Nesterov) as tensor ops on the optimiser's own
  momentum buffers: on CPU it equals torch's SGD bit for bit, and the buffers stay the optimiser's, so
  checkpoints save and resume them as before.

The last partial batch (N not a multiple of B) runs the same step eagerly, on the same buffers. Warm-up steps
(which let cudnn.benchmark pick its kernels) run before the capture and are undone after it: weights,
buffers, momentum and the CUDA generator are restored, so the captured run trains from the state the eager
run would start from.

Where capture is off or impossible the trainer runs its eager loop, and `capture_step` says why in ONE log
line (logger "dal-search.graphs"): the device is the CPU, the config says `graphs: off`, the loss keeps
per-sample state (PRODEN), a scheduled loss other than DAL (its q and lambda are numbers), no full batch, or
the capture itself raised (a network with data-dependent control flow reads the device mid-step, which a
capture refuses). `graphs: on` turns each of those into a ConfigError instead.

Results: a replayed run computes the eager run's arithmetic with two differences of rounding, DAL's q and
lambda as float32 tensors (a last-place difference in the loss) and the momentum update's order of operations
on CUDA; under bf16 autocast both vanish in the bf16 rounding. tests/test_graphs.py checks the tensor forms
against the eager ones on CPU and, on a GPU, a captured run against an eager one.

Test-only (never set it in production): DAL_SEARCH_TEST_GRAPHS=emulate runs the capture machinery on the CPU
with each replay a direct call of the step, so the CPU suite exercises the static buffers, the step counter,
the partial batch and the optimiser's tensor form the way a GPU replays them.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from dal_search.objectives.config import ConfigError
from dal_search.objectives.losses import LOSSES, _bootstrap_sum, _f32, _gce_from_p

log = logging.getLogger("dal-search.graphs")
WARMUP_STEPS = 3  # eager steps before the capture: cudnn.benchmark's choice and autograd's caches settle
EMULATE = "emulate"


# ---------------------------------------------------------------- the tensor forms of the step's parts

def dal_tensor(logits: torch.Tensor, y: torch.Tensor, q: torch.Tensor, lam: torch.Tensor,
               bootstrap: str = "soft") -> torch.Tensor:
    """DAL (objectives.losses.dal) with `q` and `lam` as tensors that stay on the device, for a captured step.

    Equal to `dal(logits, y, float(q), float(lam), bootstrap)` up to float rounding (a last-place difference
    where the bootstrap weight lam / (q ln K N) is computed in float32 here and in float64 there), and exactly
    equal at lam == 0. It never reads q or lam back to the host, so nothing is checked: q must be finite
    > 0 and lam >= 0 (the trainer's schedules give nothing else), and L_BS is always computed (at lam == 0 it
    is multiplied by zero and adds exactly nothing, where `dal` skips it). Candidate sets (an (N, K) bool mask)
    work as in `dal`. Under torch.func.vmap, q and lam may be batched (one value per fused member).
    """
    z = _f32(logits)
    p = F.softmax(z, dim=-1)
    weight = -lam / (q * math.log(z.shape[-1]) * z.shape[-2])  # L_BS's sign, scale and 1/N in one factor
    return _gce_from_p(p, y, q) + _bootstrap_sum(p, z, bootstrap) * weight


def sgd_step_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
              bufs: Sequence[torch.Tensor | None], lr: torch.Tensor, momentum: float | torch.Tensor,
              weight_decay: float | torch.Tensor) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov, not maximising) in place, as tensor ops that a CUDA
    graph can capture: `d = g + wd * p; buf = momentum * buf + d; p -= lr * buf`.

    `lr` is a tensor: 0-d for one model, or (K,) for K fused members whose parameters are stacked along a
    first axis of length K (each member's value then applies to its own slice). `momentum` and `weight_decay`
    are numbers, or tensors shaped like `lr`. `bufs` are the momentum buffers, zeros before the first step:
    torch's first step clones d into the buffer, and 0 * momentum + d is d exactly, so the two agree from the
    first step on. With momentum 0 (a number) pass `bufs` of None: d is applied directly, as torch does; a
    member with momentum 0 among others keeps a buffer, which then always equals its d. A parameter whose grad
    is None is skipped (torch skips it too). On CPU this equals torch.optim.SGD bit for bit, number or tensor
    settings alike (tests/test_graphs.py): products are rounded as torch rounds them.
    """
    live = [i for i, g in enumerate(grads) if g is not None]
    if not live:
        return
    p = [params[i] for i in live]
    g = [grads[i] for i in live]
    with torch.no_grad():
        if isinstance(weight_decay, torch.Tensor):
            d = [gi.addcmul(pi, _per_member(weight_decay, pi)) for gi, pi in zip(g, p)]
        elif weight_decay != 0:
            d = torch._foreach_add(g, p, alpha=weight_decay)
        else:
            d = list(g)
        if bufs[live[0]] is not None:
            b = [bufs[i] for i in live]
            if isinstance(momentum, torch.Tensor):
                for bi in b:
                    bi.mul_(_per_member(momentum, bi))
            else:
                torch._foreach_mul_(b, momentum)
            torch._foreach_add_(b, d)
            d = b
        # p - lr * d as one fused multiply-add, as torch's p.add_(d, alpha=-lr) rounds it
        torch._foreach_addcmul_(p, d, [_per_member(lr, pi).expand_as(pi) for pi in p], value=-1)


def _per_member(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0-d setting as it is; a (K,) one shaped (K, 1, ..., 1) to broadcast over stacked members' slices."""
    return t if t.dim() == 0 else t.view(-1, *([1] * (like.dim() - 1)))


def momentum_buffers(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """The optimiser's own momentum buffers of `params`, made (zeros) where it has none yet, so that the
    captured step updates the tensors a checkpoint saves; None for each when momentum is 0."""
    group = optimizer.param_groups[0]
    if not group["momentum"]:
        return [None] * len(params)
    out = []
    for p in params:
        state = optimizer.state[p]
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        out.append(state["momentum_buffer"])
    return out


# ---------------------------------------------------------------- one model's step

class SingleStep:
    """One training step of one model on static buffers: gather, augment, forward under autocast, the loss
    with q and lambda from tensors, gradients, the SGD update, and the epoch's running loss sum and per-sample
    predictions (`loss_sum`, `preds`), as the trainer's eager loop keeps them."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Callable,
                 x: torch.Tensor, y: torch.Tensor, augment: Callable | None, use_amp: bool,
                 lam_scale: float = 1.0) -> None:
        group = optimizer.param_groups[0]
        if len(optimizer.param_groups) != 1 or group.get("nesterov") or group.get("dampening") \
                or group.get("maximize"):
            raise ValueError("the captured step writes plain SGD (one parameter group, no Nesterov, dampening "
                             "or maximize)")
        self.model, self.loss, self.x, self.y, self.augment, self.use_amp = model, loss, x, y, augment, use_amp
        self.lam_scale = float(lam_scale)  # bootstrap_scale, applied on the host in float64 as make_loss does
        self.device = x.device
        self.params = [p for p in group["params"] if p.requires_grad]
        self.bufs = momentum_buffers(optimizer, self.params)
        optimizer._opt_called = True  # its update runs here: the LR schedule's "step order" warning is moot
        self.momentum, self.weight_decay = group["momentum"], group["weight_decay"]
        self.q, self.lam, self.lr = (torch.zeros((), device=self.device) for _ in range(3))
        self.loss_sum = torch.zeros((), device=self.device)
        self.preds = torch.zeros(len(x), dtype=torch.long, device=self.device)

    def begin_epoch(self, q: float, lam: float, lr: float) -> None:
        """The epoch's q(i), lambda(i) (before bootstrap_scale) and learning rate, into the step's tensors."""
        self.q.fill_(q)
        self.lam.fill_(lam * self.lam_scale)
        self.lr.fill_(lr)
        self.loss_sum.zero_()

    def __call__(self, idx: torch.Tensor) -> None:
        xb = self.x[idx]
        if self.augment is not None:
            xb = self.augment(xb)
        # autocast's weight cache must be off in a captured region (the cached casts would be stale)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
            logits = self.model(xb)
        loss = self.loss(logits, self.y[idx], self.q, self.lam)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        sgd_step_(self.params, grads, self.bufs, self.lr, self.momentum, self.weight_decay)
        with torch.no_grad():
            self.loss_sum += loss.detach() * len(idx)
            self.preds[idx] = logits.detach().argmax(1)

    def state(self) -> list[torch.Tensor]:
        """Every tensor a step writes that must survive the warm-up unchanged."""
        return [*self.model.state_dict(keep_vars=True).values(), *(b for b in self.bufs if b is not None)]


# ---------------------------------------------------------------- an epoch of steps, replayed

class EpochRunner:
    """The steps of one epoch: every full batch a replay of the captured step (or, with `capture` False, the
    same step called directly), then the partial batch eagerly. `step` has `begin_epoch(...)`, `__call__(idx)`
    and `state()`; `n` is the number of training rows, `batch_size` B."""

    def __init__(self, step, n: int, batch_size: int, device: torch.device, capture: bool) -> None:
        self.step, self.batch_size = step, batch_size
        self.full, self.tail = divmod(n, batch_size)
        self.order = torch.arange(n, device=device)
        self.ptr = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.graph = _capture(self._graph_step, self.ptr.zero_, [*step.state(), self.ptr], device) \
            if capture else None

    def _graph_step(self) -> None:
        self.step(self.order[self.ptr * self.batch_size + self.offsets])
        self.ptr += 1

    def epoch(self, order: torch.Tensor, *epoch_values: Any) -> None:
        """Train one epoch over the permutation `order` (on the device); `epoch_values` go to the step's
        `begin_epoch`."""
        self.step.begin_epoch(*epoch_values)
        self.order.copy_(order)
        self.ptr.zero_()
        replay = self.graph.replay if self.graph is not None else self._graph_step
        for _ in range(self.full):
            replay()
        if self.tail:
            self.step(order[self.full * self.batch_size:])


def _capture(step: Callable[[], None], rewind: Callable[[], Any], state: list[torch.Tensor],
             device: torch.device) -> "torch.cuda.CUDAGraph":
    """Run `step` a few times on a side stream (`rewind` before each: back to the epoch's first batch),
    capture it, and put back every tensor of `state` and the CUDA generator as they were before the warm-up
    (whatever happened: the run continues from that state, captured or eager)."""
    with torch.no_grad():
        saved = [t.detach().clone() for t in state]
    rng = torch.cuda.get_rng_state(device)
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                rewind()
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        rewind()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph
    finally:
        torch.cuda.synchronize(device)
        with torch.no_grad():
            for t, s in zip(state, saved):
                t.copy_(s)
        torch.cuda.set_rng_state(rng, device)


# ---------------------------------------------------------------- the trainer's hook

def capture_step(config, device: torch.device, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, augment: Callable | None,
                 use_amp: bool) -> tuple[EpochRunner | None, str]:
    """The trainer's captured epochs, or None for its eager loop; and one line saying which and why (also
    logged). Call it after any checkpoint is resumed (it binds the optimiser's momentum buffers as they are
    then). `graphs: on` raises ConfigError where `auto` would fall back."""
    why = refusal(config, device, loss_fn, len(x))
    if why:
        return None, fall_back(config, why)
    model.train()
    try:
        step = SingleStep(model, optimizer, capturable_loss(config, loss_fn), x, y, augment, use_amp,
                          lam_scale=config.bootstrap_scale)
        runner = EpochRunner(step, len(x), config.batch_size, device, capture=not emulating(device))
    except Exception as e:  # noqa: BLE001 - capture refused the step (a sync, an unsupported op): run eager
        return None, fall_back(config, capture_failure(e))
    return runner, announce(runner)


def emulating(device: torch.device) -> bool:
    """DAL_SEARCH_TEST_GRAPHS=emulate on a CPU run (tests only): the captured step's machinery without capture."""
    return device.type == "cpu" and os.environ.get("DAL_SEARCH_TEST_GRAPHS", "") == EMULATE


def refusal(config, device: torch.device, loss_fn: Callable, n: int) -> str:
    """Why this run's step is not captured ("" when it can be tried): the config, the device or the loss."""
    if config.graphs == "off":
        return "config graphs: off"
    if device.type != "cuda" and not emulating(device):
        return f"device is {device.type}"
    if getattr(loss_fn, "state", None) is not None:
        return f"loss {config.loss!r} keeps per-sample state, updated outside the step (it runs eager)"
    entry = LOSSES[config.loss]
    if entry.get("scheduled") and config.loss != "dal":
        return f"loss {config.loss!r} takes its per-epoch q and lambda as numbers (only DAL has a tensor form)"
    if n < config.batch_size:
        return f"no full batch ({n} training samples, batch_size {config.batch_size})"
    return ""


def capture_failure(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"capture raised {type(e).__name__}: {text}"


def fall_back(config, why: str, whose: str = "") -> str:
    """The one line for an eager run (logged; `whose` names the fused member it is about); ConfigError instead
    under `graphs: on`."""
    if config.graphs == "on":
        raise ConfigError(f"graphs 'on' but the step cannot be captured: {whose}{why}; use graphs auto (eager "
                          f"where capture is impossible) or off")
    line = f"cuda graphs off: {whose}{why}"
    # expected where there is no GPU or they were turned off; worth a warning where a GPU could have used them
    log.log(logging.INFO if why.startswith(("device is", "config graphs")) else logging.WARNING, line)
    return line


def announce(runner: EpochRunner) -> str:
    """The one line for a captured (or emulated) run (logged)."""
    if runner.graph is None:
        line = "cuda graphs emulated on cpu (DAL_SEARCH_TEST_GRAPHS=emulate, tests only)"
    else:
        line = (f"cuda graphs on: one step captured, {runner.full} replays an epoch"
                + (f" and its last {runner.tail} samples eager" if runner.tail else ""))
    log.info(line)
    return line


def capturable_loss(config, loss_fn: Callable) -> Callable:
    """The loss as `fn(logits, y, q, lam)` with q and lam tensors, lam already multiplied by bootstrap_scale
    (as make_loss multiplies it): DAL's tensor form, or the config's loss itself when it takes no schedule (its
    settings are numbers fixed for the run)."""
    if config.loss == "dal":
        bootstrap = config.bootstrap
        return lambda z, y, q, lam: dal_tensor(z, y, q, lam, bootstrap)
    return lambda z, y, q, lam: loss_fn(z, y, 0.0, 0.0)


__all__ = ["dal_tensor", "sgd_step_", "momentum_buffers", "SingleStep", "EpochRunner", "capture_step",
           "capturable_loss", "refusal", "fall_back", "announce", "capture_failure", "emulating", "WARMUP_STEPS"]
