"""Per-batch losses on logits (N, K) and int64 labels (N,), each returning the batch mean as a scalar.

p = softmax(z) for logits z, p_y the probability of the given (possibly noisy) label y, K the classes:

    ce        -log p_y
    mae       1 - p_y
    gce       (1 - p_y^q) / q, p clamped to [1e-6, 1] before the power (Zhang & Sabuncu 2018); q may exceed 1
    sce       alpha * CE + beta * RCE,   RCE = -log(1e-4) * (1 - p_y)
    nce_rce   alpha * NCE + beta * RCE,  NCE = (-log p_y) / (-sum_k log p_k)
    dal       gce(q) + lam * L_BS / (q * ln K)      (PAPER.md; lam is the raw lambda(i) of the schedule)
              L_BS soft: mean(-sum_k p_k log(p_k + 1e-6)), gradient through p (the official code's final form)
              L_BS hard: mean(-log p_yhat), yhat = argmax_k z_k, no gradient through the argmax (first upload)

Every loss computes in float32 at least (bf16/fp16 logits are cast first, so autocast is safe; float64
logits stay float64), returns a float32 scalar for low-precision logits, and is differentiable with respect
to the logits. Shared edge behaviour:

- NaN or inf logits give a NaN loss; nothing here hides it (the trainer ends such a run with a clear status).
- Labels must lie in [0, K). They are not range-checked: that would cost a device sync every step; an
  out-of-range label fails inside PyTorch's gather / cross-entropy instead.
- DAL at lam == 0 returns GCE itself and never computes L_BS, so DAL's early stage costs what GCE costs.

>>> z = torch.tensor([[2.0, 0.0, 0.0]]); y = torch.tensor([0])
>>> round(gce(z, y, 1.0).item(), 4) == round(mae(z, y).item(), 4)
True
>>> dal(z, y, 0.7, 0.0).item() == gce(z, y, 0.7).item()
True
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from dal_search.objectives.registry import Registry

P_MIN = 1e-6  # GCE's clamp of p before the power, and the entropy's epsilon inside the log
RCE_A = -math.log(1e-4)  # RCE's constant: log(0) of the one-hot target replaced by log(1e-4)

LossFn = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]
BOOTSTRAPS = ("soft", "hard")

# Every loss dal-search knows, in the order lists show them. An entry records `params` (the TrainConfig fields
# it takes as keywords), `space` (the search space of an arm that names the loss without one of its own, or a
# function returning it) and `scheduled` (it takes DAL's per-epoch q and lambda). Register a new loss with
# `@LOSSES.register(...)` on a function `fn(logits, y, **params) -> scalar`; every list, help text and default
# search space follows.
LOSSES = Registry("loss")


def _check(logits: torch.Tensor, y: torch.Tensor) -> None:
    # shapes only: a wrong-length y would otherwise be gathered silently against the first rows
    if logits.dim() != 2 or y.dim() != 1 or y.shape[0] != logits.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"losses take logits (N, K) and labels (N,) with N >= 1; got {tuple(logits.shape)} "
                         f"and {tuple(y.shape)}")


def _f32(logits: torch.Tensor) -> torch.Tensor:
    # at least float32: bf16/fp16 logits under autocast are upcast; float64 stays float64 (gradcheck)
    return logits if logits.dtype == torch.float64 else logits.float()


def _check_q(q: float) -> None:
    if not (q > 0 and math.isfinite(q)):  # also catches NaN
        raise ValueError(f"GCE/DAL need a finite q > 0, got {q}")


def _gce_from_p(p: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    p_y = p.gather(1, y.view(-1, 1)).clamp(P_MIN, 1.0)
    return ((1.0 - p_y.pow(q)) / q).mean()


@LOSSES.register("ce", title="CE", help="cross-entropy, -log p_y", space={})
def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy `mean(-log p_y)`, computed from log-softmax (stable for large logits)."""
    _check(logits, y)
    return F.cross_entropy(_f32(logits), y)


@LOSSES.register("mae", title="MAE", help="mean absolute error, 1 - p_y", space={})
def mae(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error to the one-hot label, halved: `mean(1 - p_y)`, in [0, 1]. Robust, slow to fit."""
    _check(logits, y)
    return (1.0 - F.softmax(_f32(logits), dim=1).gather(1, y.view(-1, 1))).mean()


@LOSSES.register("gce", title="GCE", help="generalised CE, (1 - p_y^q) / q (uses --q)", params=("q",),
                 space={"q": {"low": 0.1, "high": 1.0}})
def gce(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Generalised cross-entropy `mean((1 - p_y^q) / q)` with p_y clamped to [1e-6, 1] before the power.

    q -> 0 tends to CE (for p_y >= 1e-6), q = 1 is MAE, and q > 1 (DAL's late stage) weights confident,
    easy examples more. Below the clamp (p_y < 1e-6) the gradient is zero: a sample the net is sure is
    another class stops pulling, which is part of the robustness. Raises ValueError unless q is finite > 0.
    """
    _check(logits, y)
    _check_q(q)
    return _gce_from_p(F.softmax(_f32(logits), dim=1), y, q)


@LOSSES.register("sce", title="SCE", help="symmetric CE, alpha CE + beta RCE (uses --alpha, --beta)",
                 params=("alpha", "beta"), space={"alpha": {"low": 0.01, "high": 10.0, "log": True},
                                                  "beta": {"low": 0.01, "high": 10.0, "log": True}})
def sce(logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Symmetric CE `alpha * CE + beta * RCE`, RCE = -log(1e-4) * (1 - p_y) (Wang et al. 2019)."""
    _check(logits, y)
    log_p_y = F.log_softmax(_f32(logits), dim=1).gather(1, y.view(-1, 1))
    return alpha * (-log_p_y).mean() + beta * RCE_A * (1.0 - log_p_y.exp()).mean()


@LOSSES.register("nce_rce", title="NCE+RCE", help="alpha NCE + beta RCE (uses --alpha, --beta)",
                 params=("alpha", "beta"), space={"alpha": {"low": 0.01, "high": 10.0, "log": True},
                                                  "beta": {"low": 0.01, "high": 10.0, "log": True}})
def nce_rce(logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """`alpha * NCE + beta * RCE` (Ma et al. 2020), NCE = (-log p_y) / (-sum_k log p_k), from log-softmax.

    NCE lies in [0, 1]. K = 1 raises ValueError: then sum_k log p_k = 0 and NCE is 0 / 0.
    """
    _check(logits, y)
    if logits.shape[1] < 2:
        raise ValueError("NCE needs at least 2 classes (its denominator -sum_k log p_k is 0 when K = 1)")
    log_p = F.log_softmax(_f32(logits), dim=1)
    log_p_y = log_p.gather(1, y.view(-1, 1)).squeeze(1)
    nce = log_p_y / log_p.sum(dim=1)  # the two minus signs cancel
    return alpha * nce.mean() + beta * RCE_A * (1.0 - log_p_y.exp()).mean()


def _searchable_shapes() -> list[str]:
    from dal_search.objectives.schedules import SCHEDULES

    return [e.name for e in SCHEDULES if e.get("searchable", True)]


def _bootstrap_sum(p: torch.Tensor, z: torch.Tensor, kind: str) -> torch.Tensor:
    """-N * L_BS, i.e. the batch sum of sum_k p_k log(p_k + 1e-6) (soft) or of log p_yhat (hard): the sign
    and the 1/N are left to the caller, which folds them into one scalar weight (fewer ops per step)."""
    if kind == "soft":
        return torch.xlogy(p, p + P_MIN).sum()  # xlogy(p, p + eps) = p * log(p + eps), one op
    if kind == "hard":
        # p_yhat is the largest probability, >= 1/K, so its log cannot underflow
        return p.gather(1, z.detach().argmax(dim=1, keepdim=True)).log().sum()
    raise ValueError(f"unknown bootstrap {kind!r}; choose soft or hard")


def bootstrap_term(logits: torch.Tensor, kind: str = "soft") -> torch.Tensor:
    """DAL's L_BS alone: soft `mean(-sum_k p_k log(p_k + 1e-6))` (prediction entropy, gradient through p)
    or hard `mean(-log p_yhat)` with yhat = argmax_k z_k (CE to the net's own prediction)."""
    z = _f32(logits)
    return -_bootstrap_sum(F.softmax(z, dim=1), z, kind) / z.shape[0]


@LOSSES.register("dal", title="DAL", help="Dynamics-Aware Loss: GCE with q(t) plus lambda(t) bootstrapping "
                 "(uses --q-start, --q-end, --schedule, --bootstrap, --bootstrap-scale)", params=("bootstrap",),
                 scheduled=True, space=lambda: {
                     "q_start": {"low": 0.1, "high": 1.0}, "q_end": {"low": 1.0, "high": 2.5},
                     "schedule": _searchable_shapes(), "bootstrap": list(BOOTSTRAPS),
                     "bootstrap_scale": {"low": 0.0, "high": 2.0}})
def dal(logits: torch.Tensor, y: torch.Tensor, q: float, lam: float, bootstrap: str = "soft") -> torch.Tensor:
    """Dynamics-Aware Loss for one epoch's (q, lam): `gce(q) + lam * L_BS / (q * ln K)` (PAPER.md).

    `q` and `lam` are the schedule's raw q(i) and lambda(i); the 1 / (q ln K) scaling, which puts L_BS on
    GCE's [0, 1/q] scale, happens here. `bootstrap` is "soft" (default) or "hard" (see `bootstrap_term`).
    lam == 0 returns GCE without computing L_BS. Raises ValueError for K < 2 (ln K = 0), for q not finite
    > 0, for lam < 0 or NaN, and for an unknown bootstrap. As q -> 0 with lam > 0 the bootstrap weight
    lam / (q ln K) grows without bound; the schedules only give lam > 0 once q > 1.
    """
    _check(logits, y)
    k = logits.shape[1]
    if k < 2:
        raise ValueError("DAL needs at least 2 classes (its bootstrap term is scaled by 1 / ln K, and ln 1 = 0)")
    _check_q(q)
    if not lam >= 0:
        raise ValueError(f"DAL's lambda must be >= 0, got {lam}")
    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"unknown bootstrap {bootstrap!r}; choose soft or hard")
    z = _f32(logits)
    p = F.softmax(z, dim=1)
    loss = _gce_from_p(p, y, q)
    if lam == 0:  # the early stage: no bootstrap work at all, so DAL costs what GCE costs
        return loss
    # one softmax shared by both terms, and L_BS's weight lam / (q ln K), its sign and its 1/N folded into
    # one scalar, keep the late stage cheap too
    return torch.add(loss, _bootstrap_sum(p, z, bootstrap), alpha=-lam / (q * math.log(k) * z.shape[0]))


def make_loss(config) -> LossFn:
    """The per-batch loss of a `TrainConfig` as `fn(logits, y, q, lam) -> scalar`.

    The registry entry of `config.loss` says what it reads: its `params` (TrainConfig fields passed as
    keywords, e.g. GCE's `q`, SCE's `alpha` and `beta`) and whether it is `scheduled` (it takes the
    schedule's per-epoch q(i) and lambda(i); lambda is multiplied by `config.bootstrap_scale` here, 1.0 being
    the paper and 0 turning bootstrapping off). Losses that are not scheduled ignore q and lam.

    >>> from dal_search.objectives.config import TrainConfig
    >>> fn = make_loss(TrainConfig(loss="gce", q=0.7))
    >>> z, y = torch.zeros(2, 10), torch.tensor([1, 2])
    >>> fn(z, y, 1.4, 0.5).item() == gce(z, y, 0.7).item()
    True
    """
    entry = LOSSES[config.loss]
    fn = entry.obj
    bound = {name: getattr(config, name) for name in entry.get("params", ())}
    if entry.get("scheduled"):
        scale = float(config.bootstrap_scale)

        def scheduled_loss(logits, y, q, lam):
            return fn(logits, y, q=q, lam=lam * scale, **bound)
        return scheduled_loss
    return lambda logits, y, q, lam: fn(logits, y, **bound)


__all__ = ["ce", "mae", "gce", "sce", "nce_rce", "dal", "bootstrap_term", "LOSSES", "BOOTSTRAPS", "make_loss", "LossFn",
           "P_MIN", "RCE_A"]
