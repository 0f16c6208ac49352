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

Partial labels (PAPER.md's open question 2): where a loss takes labels it may instead take candidate sets, an
(N, K) boolean mask S holding the true class and some false ones (a class label is the mask with one entry).
p_S = sum_{j in S} p_j is the candidate mass:

    cc        -log p_S, computed as -logsumexp_{j in S} log p_j (Feng et al., NeurIPS 2020); CE for class labels
    proden    -sum_j w_j log p_j, w (N, K) per-sample weights over S, re-set each epoch to the net's
              probabilities renormalised within S, uniform over S at the start (Lv et al., ICML 2020)
    gce       (1 - p_S^q) / q                    (candidate-mass GCE)
    dal       gce(q) on p_S + lam * L_BS / (q ln K), L_BS and the schedules exactly as above (candidate-mass DAL)

With a one-entry mask, gce and dal return exactly (bit for bit) what they return for the class label, and cc
returns CE up to float rounding. ce, mae, sce and nce_rce take class labels only and raise ValueError for a
mask. A candidate set must hold at least one class: an empty row is not checked (that would cost a device
sync every step) and gives cc an infinite loss, gce/dal their clamp value 1 - 1e-6^q over q.

Every loss computes in float32 at least (bf16/fp16 logits are cast first, so autocast is safe; float64
logits stay float64), returns a float32 scalar for low-precision logits, and is differentiable with respect
to the logits. Shared edge behaviour:

- NaN or inf logits give a NaN loss; nothing here hides it (the trainer ends such a run with a clear status).
- Labels must lie in [0, K) (candidate sets: a bool tensor shaped like the logits). They are not range-checked: that would cost a device sync every step; an
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

LossFn = Callable[..., torch.Tensor]  # fn(logits, y, q, lam, idx=None) -> scalar, see make_loss
BOOTSTRAPS = ("soft", "hard")

# Every loss dal-search knows, in the order lists show them. An entry records `params` (the TrainConfig fields
# it takes as keywords), `space` (the search space of an arm that names the loss without one of its own, or a
# function returning it) and `scheduled` (it takes DAL's per-epoch q and lambda), `candidate_sets` (it also takes an (N, K) boolean
# mask of candidate sets where it takes labels: partial labels) and `state` (a class keeping per-sample state
# over the whole training set, e.g. PRODEN's weights; see `SampleWeights` for what it provides). Register a new
# loss with `@LOSSES.register(...)` on a function `fn(logits, y, **params) -> scalar`; every list, help text
# and default search space follows.
LOSSES = Registry("loss")


def _check(logits: torch.Tensor, y: torch.Tensor, loss: str = "") -> None:
    """Shapes only (a wrong-length y would otherwise be gathered silently against the first rows). Class
    labels pass the first test and cost nothing more; `loss` names a loss that refuses candidate sets."""
    if logits.dim() == 2 and y.dim() == 1 and y.shape[0] == logits.shape[0] and logits.shape[0] > 0:
        return
    if y.dim() == 2 and y.dtype == torch.bool:
        if loss:
            raise ValueError(f"loss {loss!r} takes class labels (N,), not candidate sets; for partial labels use "
                             f"one of: {', '.join(candidate_set_losses())}")
        if logits.dim() == 2 and y.shape == logits.shape and logits.shape[0] > 0:
            return
        raise ValueError(f"candidate sets must be a bool mask shaped like the logits (N, K) with N >= 1; got "
                         f"logits {tuple(logits.shape)} and a mask {tuple(y.shape)}")
    raise ValueError(f"losses take logits (N, K) and labels (N,) with N >= 1; got {tuple(logits.shape)} "
                     f"and {tuple(y.shape)}")


def candidate_set_losses() -> list[str]:
    """The losses that take candidate sets (partial labels), in registration order."""
    return [e.name for e in LOSSES if e.get("candidate_sets")]


def _f32(logits: torch.Tensor) -> torch.Tensor:
    # at least float32: bf16/fp16 logits under autocast are upcast; float64 stays float64 (gradcheck)
    return logits if logits.dtype == torch.float64 else logits.float()


def _check_q(q: float) -> None:
    if not (q > 0 and math.isfinite(q)):  # also catches NaN
        raise ValueError(f"GCE/DAL need a finite q > 0, got {q}")


def _gce_from_p(p: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    # p_y for a class label; the candidate mass p_S for a mask, whose zeros add exactly nothing, so a
    # one-entry mask gives p_y bit for bit
    p_y = (p.gather(1, y.view(-1, 1)) if y.dim() == 1 else (p * y).sum(1, keepdim=True)).clamp(P_MIN, 1.0)
    return ((1.0 - p_y.pow(q)) / q).mean()


@LOSSES.register("ce", title="CE", help="cross-entropy, -log p_y", space={})
def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy `mean(-log p_y)`, computed from log-softmax (stable for large logits)."""
    _check(logits, y, "ce")
    return F.cross_entropy(_f32(logits), y)


@LOSSES.register("mae", title="MAE", help="mean absolute error, 1 - p_y", space={})
def mae(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error to the one-hot label, halved: `mean(1 - p_y)`, in [0, 1]. Robust, slow to fit."""
    _check(logits, y, "mae")
    return (1.0 - F.softmax(_f32(logits), dim=1).gather(1, y.view(-1, 1))).mean()


@LOSSES.register("gce", title="GCE", help="generalised CE, (1 - p_y^q) / q; on partial labels (1 - p_S^q) / q "
                 "(uses --q)", params=("q",), candidate_sets=True, space={"q": {"low": 0.1, "high": 1.0}})
def gce(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Generalised cross-entropy `mean((1 - p_y^q) / q)` with p_y clamped to [1e-6, 1] before the power.

    q -> 0 tends to CE (for p_y >= 1e-6), q = 1 is MAE, and q > 1 (DAL's late stage) weights confident,
    easy examples more. Below the clamp (p_y < 1e-6) the gradient is zero: a sample the net is sure is
    another class stops pulling, which is part of the robustness. Raises ValueError unless q is finite > 0.
    Candidate sets `y` (an (N, K) bool mask) use the candidate mass p_S in place of p_y.
    """
    _check(logits, y)
    _check_q(q)
    return _gce_from_p(F.softmax(_f32(logits), dim=1), y, q)


@LOSSES.register("sce", title="SCE", help="symmetric CE, alpha CE + beta RCE (uses --alpha, --beta)",
                 params=("alpha", "beta"), space={"alpha": {"low": 0.01, "high": 10.0, "log": True},
                                                  "beta": {"low": 0.01, "high": 10.0, "log": True}})
def sce(logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Symmetric CE `alpha * CE + beta * RCE`, RCE = -log(1e-4) * (1 - p_y) (Wang et al. 2019)."""
    _check(logits, y, "sce")
    log_p_y = F.log_softmax(_f32(logits), dim=1).gather(1, y.view(-1, 1))
    return alpha * (-log_p_y).mean() + beta * RCE_A * (1.0 - log_p_y.exp()).mean()


@LOSSES.register("nce_rce", title="NCE+RCE", help="alpha NCE + beta RCE (uses --alpha, --beta)",
                 params=("alpha", "beta"), space={"alpha": {"low": 0.01, "high": 10.0, "log": True},
                                                  "beta": {"low": 0.01, "high": 10.0, "log": True}})
def nce_rce(logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """`alpha * NCE + beta * RCE` (Ma et al. 2020), NCE = (-log p_y) / (-sum_k log p_k), from log-softmax.

    NCE lies in [0, 1]. K = 1 raises ValueError: then sum_k log p_k = 0 and NCE is 0 / 0.
    """
    _check(logits, y, "nce_rce")
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
                 "(uses --q-start, --q-end, --schedule, --bootstrap, --bootstrap-scale); on partial labels GCE on p_S",
                 params=("bootstrap",), scheduled=True, candidate_sets=True, space=lambda: {
                     "q_start": {"low": 0.1, "high": 1.0}, "q_end": {"low": 1.0, "high": 2.5},
                     "schedule": _searchable_shapes(), "bootstrap": list(BOOTSTRAPS),
                     "bootstrap_scale": {"low": 0.0, "high": 2.0}})
def dal(logits: torch.Tensor, y: torch.Tensor, q: float, lam: float, bootstrap: str = "soft") -> torch.Tensor:
    """Dynamics-Aware Loss for one epoch's (q, lam): `gce(q) + lam * L_BS / (q * ln K)` (PAPER.md).

    `q` and `lam` are the schedule's raw q(i) and lambda(i); the 1 / (q ln K) scaling, which puts L_BS on
    GCE's [0, 1/q] scale, happens here. `bootstrap` is "soft" (default) or "hard" (see `bootstrap_term`).
    lam == 0 returns GCE without computing L_BS. Raises ValueError for K < 2 (ln K = 0), for q not finite
    > 0, for lam < 0 or NaN, and for an unknown bootstrap. As q -> 0 with lam > 0 the bootstrap weight
    lam / (q ln K) grows without bound; the schedules only give lam > 0 once q > 1. Candidate sets `y` (an
    (N, K) bool mask) use the candidate mass p_S in the GCE term; L_BS does not read the labels, so it is
    unchanged (the hard bootstrap's yhat is the argmax over all K classes, inside S or not).
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


@LOSSES.register("cc", title="CC", help="classifier-consistent partial-label loss, -log p_S (Feng et al. 2020); "
                 "CE on class labels", candidate_sets=True, space={})
def cc(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Classifier-consistent loss `mean(-log p_S)` (Feng et al., NeurIPS 2020), p_S the candidate mass.

    Computed in log space as -logsumexp over S of log-softmax, so it stays finite however small p_S gets. A
    class label is S = {y}: CE (computed as CE). An empty candidate set gives +inf.
    """
    _check(logits, y)
    z = _f32(logits)
    if y.dim() == 1:
        return F.cross_entropy(z, y)
    log_p = F.log_softmax(z, dim=1)
    return -torch.logsumexp(log_p.masked_fill(~y, -math.inf), dim=1).mean()


class SampleWeights:
    """PRODEN's per-sample weights over the candidate sets of a whole training set, on the labels' device.

    A loss registered with `state=SampleWeights` is bound to one (make_loss(config, labels=...)); the bound
    loss passes each batch's rows to the loss as `weights=` (`batch(idx)`), records what the net says about
    the batch in the same step (`observe(logits, y, idx)`: its softmax renormalised within S, no gradient),
    and `end_epoch()` makes the recorded values the weights of the next epoch. So the weights of epoch i are
    the net's probabilities within S from its training pass of epoch i - 1 (in train mode, before each step's
    update, as the official PRODEN code takes them), and uniform over S in epoch 0. A sample not seen in an
    epoch keeps its weights. Class labels need no weights (S = {y}: they are one-hot), so none are kept.
    """

    def __init__(self, labels: torch.Tensor) -> None:
        self.weights: torch.Tensor | None = None
        if labels.dim() == 2:
            mask = labels.to(torch.float32)
            self.weights = mask / mask.sum(dim=1, keepdim=True)
            self._next = self.weights.clone()

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {} if self.weights is None else {"weights": self.weights[idx]}

    @torch.no_grad()
    def observe(self, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        if self.weights is not None:
            # softmax of the logits masked to S is p renormalised within S, without p_S underflowing to 0
            self._next[idx] = F.softmax(_f32(logits).masked_fill(~y, -math.inf), dim=1).to(self._next.dtype)

    def end_epoch(self) -> None:
        if self.weights is not None:
            self.weights.copy_(self._next)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """What a checkpoint must keep to resume the weights (None for class labels)."""
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        if self.weights is not None and state.get("weights") is not None:
            self.weights.copy_(state["weights"])
            self._next.copy_(state["weights"])


@LOSSES.register("proden", title="PRODEN", help="progressive identification of true labels (Lv et al. 2020): "
                 "-sum_j w_j log p_j, w re-set each epoch to p renormalised within S; CE on class labels",
                 candidate_sets=True, state=SampleWeights, space={})
def proden(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """PRODEN's loss `mean(-sum_j w_j log p_j)` (Lv et al., ICML 2020) for the batch's weights (N, K), which
    are zero outside S with rows summing to 1 (the trainer keeps them: see SampleWeights). Without `weights`,
    uniform over S (the first epoch). A class label is S = {y}, whose only weights are one-hot: CE.
    """
    _check(logits, y)
    z = _f32(logits)
    if y.dim() == 1:
        return F.cross_entropy(z, y)
    if weights is None:
        mask = y.to(z.dtype)
        weights = mask / mask.sum(dim=1, keepdim=True)
    elif weights.shape != z.shape:
        raise ValueError(f"PRODEN's weights must be shaped like the logits {tuple(z.shape)}, got {tuple(weights.shape)}")
    # outside S the weight is exactly 0 and log p finite, so those terms add exactly nothing
    return -(weights.to(z.dtype) * F.log_softmax(z, dim=1)).sum(dim=1).mean()


def make_loss(config, labels: torch.Tensor | None = None) -> LossFn:
    """The per-batch loss of a `TrainConfig` as `fn(logits, y, q, lam, idx=None) -> scalar`.

    The registry entry of `config.loss` says what it reads: its `params` (TrainConfig fields passed as
    keywords, e.g. GCE's `q`, SCE's `alpha` and `beta`) and whether it is `scheduled` (it takes the
    schedule's per-epoch q(i) and lambda(i); lambda is multiplied by `config.bootstrap_scale` here, 1.0 being
    the paper and 0 turning bootstrapping off). Losses that are not scheduled ignore q and lam.

    A loss with per-sample `state` (PRODEN) is bound to the training set: pass its `labels` (class labels or
    candidate sets, on the training device); each call then needs `idx`, the batch's rows of `labels`, and
    the trainer calls `fn.end_epoch()` after each epoch's pass. Every returned fn has `end_epoch` (a no-op for
    stateless losses) and `state` (the state object, or None), so a trainer needs no case per loss. A
    stateful loss without `labels` raises ValueError.

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

        def loss(logits, y, q, lam, idx=None, **per_sample):
            return fn(logits, y, q=q, lam=lam * scale, **bound, **per_sample)
    else:
        def loss(logits, y, q, lam, idx=None, **per_sample):
            return fn(logits, y, **bound, **per_sample)

    state_type = entry.get("state")
    if state_type is None:
        loss.state, loss.end_epoch = None, _nothing
        return loss
    if labels is None:
        raise ValueError(f"loss {config.loss!r} keeps per-sample state: make_loss needs the training labels "
                         f"(labels=) and each call the batch's indices into them (idx=)")
    state = state_type(labels)

    def stateful_loss(logits, y, q, lam, idx=None):
        if idx is None:
            raise ValueError(f"loss {config.loss!r} keeps per-sample state: pass idx, the batch's rows of the labels")
        value = loss(logits, y, q, lam, **state.batch(idx))
        state.observe(logits, y, idx)
        return value
    stateful_loss.state, stateful_loss.end_epoch = state, state.end_epoch
    return stateful_loss


def _nothing() -> None:
    return None


__all__ = ["ce", "mae", "gce", "sce", "nce_rce", "dal", "cc", "proden", "bootstrap_term", "LOSSES", "BOOTSTRAPS",
           "SampleWeights", "candidate_set_losses", "make_loss", "LossFn", "P_MIN", "RCE_A"]
