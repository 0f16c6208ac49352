"""DAL as a `torch.nn.Module`, for your own training loop.

`DALLoss` holds DAL's settings and its schedule; `set_epoch(i)` moves it to epoch i (the only state) and
`loss(logits, targets)` computes `dal(logits, targets, q(i), lambda(i))` exactly as the functional
`objectives.losses.dal` does (PAPER.md). Targets are int class indices (N,), or an (N, K) boolean mask of
candidate labels where the loss accepts them.

>>> import torch
>>> loss = DALLoss(num_classes=10, q_start=0.6, q_end=1.5, epochs=150)
>>> loss.set_epoch(149)
(1.494, 0.988)
>>> logits, targets = torch.zeros(4, 10), torch.tensor([0, 1, 2, 3])
>>> float(loss(logits, targets)) == float(dal(logits, targets, 1.494, 0.988))
True
"""

from __future__ import annotations

import torch
from torch import nn

from dal_search.objectives.losses import BOOTSTRAPS, dal
from dal_search.objectives.schedules import make_schedule


class DALLoss(nn.Module):
    """The Dynamics-Aware Loss with its schedule: `L = GCE_q(i) + lambda(i) * L_BS / (q(i) ln K)`.

    Args:
        num_classes: K; logits must have K columns (checked on every call: the check costs no device sync).
        q_start, q_end: DAL's q_s and q_e (the paper's defaults: 0.6 and 1.5 on CIFAR).
        epochs: E, the number of epochs the schedule spans (epoch indices 0..E-1).
        schedule: a registered shape (linear is the paper's; see `objectives.schedules.SCHEDULES`).
        bootstrap: "soft" (prediction entropy, the official code's final form) or "hard" (argmax label).
        bootstrap_scale: multiplies lambda(i); 1.0 is the paper, 0 turns bootstrapping off.
        **options: the shape's options (exponential `k`, step `steps`, adaptive `target` and `min_pace`).

    Call `set_epoch(i)` at the start of each epoch (the adaptive shape also wants `status`, the fraction of
    training samples the net predicted as their given label in the previous epoch). Before the first
    `set_epoch` the loss is at epoch 0. Invalid settings raise ValueError at construction.
    """

    def __init__(self, num_classes: int, q_start: float = 0.6, q_end: float = 1.5, epochs: int = 150,
                 schedule: str = "linear", bootstrap: str = "soft", bootstrap_scale: float = 1.0,
                 **options: float) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"DALLoss needs num_classes >= 2 (its bootstrap term divides by ln K), got {num_classes!r}")
        if bootstrap not in BOOTSTRAPS:
            raise ValueError(f"unknown bootstrap {bootstrap!r}; choose one of: {', '.join(BOOTSTRAPS)}")
        if not bootstrap_scale >= 0:
            raise ValueError(f"bootstrap_scale must be >= 0, got {bootstrap_scale}")
        self.num_classes, self.bootstrap, self.bootstrap_scale = num_classes, bootstrap, float(bootstrap_scale)
        self.schedule_name, self.epochs = schedule, epochs
        self._schedule = make_schedule(q_start, q_end, epochs, schedule, **options)
        self.q_start, self.q_end = float(q_start), float(q_end)
        self.epoch = -1
        self.set_epoch(0, status=None)

    @property
    def q(self) -> float:
        """q(i) of the current epoch."""
        return self._q

    @property
    def lam(self) -> float:
        """lambda(i) of the current epoch, before `bootstrap_scale`."""
        return self._lam

    def set_epoch(self, epoch: int, status: float | None = None) -> tuple[float, float]:
        """Move to epoch `epoch` (0..E-1) and return its (q, lambda), rounded to 3 places for display only
        (the loss uses the exact values). `status` feeds schedules that need the learning status."""
        q, lam = self._schedule(epoch, status)
        self.epoch, self._q, self._lam = epoch, float(q), float(lam)
        return round(self._q, 3), round(self._lam, 3)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"DALLoss({self.num_classes} classes) needs logits of shape (N, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        return dal(logits, targets, self._q, self._lam * self.bootstrap_scale, self.bootstrap)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, q_start={self.q_start:g}, q_end={self.q_end:g}, "
                f"epochs={self.epochs}, schedule={self.schedule_name!r}, bootstrap={self.bootstrap!r}, "
                f"bootstrap_scale={self.bootstrap_scale:g}, epoch={self.epoch}")


__all__ = ["DALLoss"]
