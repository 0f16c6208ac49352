"""Per-batch losses on logits (N, K) and integer labels (N,), each returning the batch mean.

All are computed in float32 whatever the logits' dtype (so bf16 autocast is safe), and are differentiable.

    ce        -log p_y
    mae       1 - p_y
    gce       (1 - p_y^q) / q, p clamped to [1e-6, 1] before the power (Zhang & Sabuncu 2018); q may exceed 1
    sce       alpha * CE + beta * RCE,   RCE = -log(1e-4) * (1 - p_y)
    nce_rce   alpha * NCE + beta * RCE,  NCE = (-log p_y) / (-sum_k log p_k)
    dal       gce(q) + lam * L_BS / (q * ln K)     (PAPER.md; lam is the raw lambda(i))
              L_BS soft: mean(-sum_k p_k log(p_k + 1e-6)), gradient through p (the official code's final form)
              L_BS hard: mean(-log p_yhat), yhat = argmax_k z_k (the first upload)

Edge cases: NaN logits give a NaN loss (the trainer turns that into a failed run, never hides it); q -> 0
makes GCE tend to CE; q = 1 makes GCE equal MAE; K = 1 is rejected for DAL (ln K = 0).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

P_MIN = 1e-6
RCE_A = -math.log(1e-4)


def _p_y(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def mae(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1.0 - _p_y(logits, y)).mean()


def gce(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    if q <= 0:
        raise ValueError(f"GCE needs q > 0, got {q}")
    p = _p_y(logits, y).clamp(P_MIN, 1.0)
    return ((1.0 - p.pow(q)) / q).mean()


def _rce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return RCE_A * (1.0 - _p_y(logits, y))


def sce(logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    return alpha * F.cross_entropy(logits.float(), y) + beta * _rce(logits, y).mean()


def nce_rce(logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    log_p = F.log_softmax(logits.float(), dim=1)
    nce = log_p.gather(1, y.view(-1, 1)).squeeze(1) / log_p.sum(dim=1)
    return alpha * nce.mean() + beta * _rce(logits, y).mean()


def bootstrap_term(logits: torch.Tensor, kind: str = "soft") -> torch.Tensor:
    """DAL's L_BS: the mean prediction entropy (soft) or the CE to the predicted label (hard)."""
    z = logits.float()
    if kind == "soft":
        p = F.softmax(z, dim=1)
        return (-(p * torch.log(p + P_MIN)).sum(dim=1)).mean()
    if kind == "hard":
        return F.cross_entropy(z, z.detach().argmax(dim=1))
    raise ValueError(f"unknown bootstrap {kind!r}; choose soft or hard")


def dal(logits: torch.Tensor, y: torch.Tensor, q: float, lam: float, bootstrap: str = "soft") -> torch.Tensor:
    k = logits.shape[1]
    if k < 2:
        raise ValueError("DAL needs at least 2 classes (its bootstrap term is scaled by 1 / ln K)")
    loss = gce(logits, y, q)
    if lam == 0:  # the early stage: no bootstrap work at all, so DAL costs what GCE costs
        return loss
    return loss + lam * bootstrap_term(logits, bootstrap) / (q * math.log(k))


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": ce, "mae": mae, "gce": gce, "sce": sce, "nce_rce": nce_rce, "dal": dal,
}

LossFn = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


def make_loss(config) -> LossFn:
    """`fn(logits, y, q, lam)` for the config's loss. For DAL, q and lam are the epoch's schedule values and
    lam is multiplied here by `config.bootstrap_scale` (1.0 = the paper); the other losses ignore both."""
    name = config.loss
    if name == "dal":
        scale, kind = config.bootstrap_scale, config.bootstrap
        return lambda z, y, q, lam: dal(z, y, q, lam * scale, kind)
    if name == "gce":
        return lambda z, y, q, lam: gce(z, y, config.q)
    if name in ("sce", "nce_rce"):
        fn, a, b = LOSSES[name], config.alpha, config.beta
        return lambda z, y, q, lam: fn(z, y, a, b)
    if name in ("ce", "mae"):
        fn = LOSSES[name]
        return lambda z, y, q, lam: fn(z, y)
    raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
