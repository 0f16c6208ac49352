"""DAL's per-epoch (q, lambda): the paper's linear rule and other shapes of the same trade-off.

Every static shape moves q from q_s towards q_e along a progress function f of the epoch fraction x = i/E:

    q(i)      = q_s + (q_e - q_s) * f(i / E)
    t0        = the fractional epoch at which q crosses 1:  E * f^-1((1 - q_s) / (q_e - q_s))
    lambda(i) = max(0, (i - t0) / (E - t0))           (0 while q <= 1, then rising linearly to ~1)

    linear       f(x) = x                              the paper's rule: t0 = (1 - q_s) E / (q_e - q_s)
    cosine       f(x) = (1 - cos(pi x)) / 2            slow start, slow finish
    exponential  f(x) = (e^(k x) - 1) / (e^k - 1)      stays in the fitting regime longer (k = 3)
    step         f(x) = floor(n x) / n                 n plateaus (n = 4); t0 is the epoch where q jumps past 1

Edges: q_e <= 1 means q never crosses 1, so lambda stays 0 (no bootstrapping). q_e == q_s is a constant q.
q_s >= 1 (q starts past 1): t0 is the paper's formula, negative, so lambda is positive from epoch 0.

`adaptive` (the paper's open question 1: a rule driven by the network's learning status). The trainer feeds
the status s_i = the fraction of training samples the net predicts as their given label, measured during
the previous epoch. Its rise is the learning: first the clean majority is fitted, then further rise means
the net starts memorising wrong labels, which is exactly when DAL should turn robust. So progress is

    p_i = max(p_{i-1}, clip((s_i - s_0) / (target - s_0), 0, 1), min_pace * i / E)

with s_0 the first status seen, `target` (0.95) the agreement at which q should have reached q_e, and a pace
floor (`min_pace` 0.5) so q keeps rising even if the status stalls. q and lambda follow from p as from f(x)
above: q = q_s + (q_e - q_s) p, lambda = max(0, (p - c) / (1 - c)) with c = (1 - q_s) / (q_e - q_s).
Progress never goes back: a net that un-learns does not make the loss less robust again.
"""

from __future__ import annotations

import math
from typing import Callable

SHAPES = ("linear", "cosine", "exponential", "step", "adaptive")


def _check(q_start: float, q_end: float, epochs: int) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if q_start <= 0:
        raise ValueError(f"q_start must be > 0, got {q_start}")
    if q_end < q_start:
        raise ValueError(f"q_end ({q_end}) must be >= q_start ({q_start})")


def _progress(shape: str, k: float = 3.0, steps: int = 4) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(f, f^-1) for a static shape; f^-1 of a step shape gives where f first exceeds c."""
    if shape == "linear":
        return (lambda x: x), (lambda c: c)
    if shape == "cosine":
        return (lambda x: (1 - math.cos(math.pi * x)) / 2), (lambda c: math.acos(1 - 2 * c) / math.pi)
    if shape == "exponential":
        scale = math.expm1(k)
        return (lambda x: math.expm1(k * x) / scale), (lambda c: math.log1p(c * scale) / k)
    if shape == "step":
        return (lambda x: math.floor(steps * x + 1e-12) / steps), (lambda c: (math.floor(steps * c + 1e-12) + 1) / steps)
    raise ValueError(f"unknown schedule shape {shape!r}; choose one of: {', '.join(SHAPES)}")


class StaticSchedule:
    """(q, lambda) as a function of the epoch index alone."""

    needs_status = False

    def __init__(self, q_start: float, q_end: float, epochs: int, shape: str = "linear", **kw: float):
        _check(q_start, q_end, epochs)
        self.q_start, self.q_end, self.epochs, self.shape = q_start, q_end, epochs, shape
        self.f, finv = _progress(shape, **kw)
        span = q_end - q_start
        if q_end <= 1 or span == 0:
            self.t0 = math.inf  # q never crosses 1: no bootstrapping
        elif q_start >= 1:
            self.t0 = (1 - q_start) * epochs / span
        else:
            self.t0 = epochs * finv((1 - q_start) / span)

    def __call__(self, epoch: int, status: float | None = None) -> tuple[float, float]:
        e = self.epochs
        q = self.q_start + (self.q_end - self.q_start) * self.f(epoch / e)
        lam = 0.0 if math.isinf(self.t0) or self.t0 >= e else max(0.0, (epoch - self.t0) / (e - self.t0))
        return q, lam


class AdaptiveSchedule:
    """(q, lambda) driven by the learning status the trainer feeds each epoch (see the module docstring)."""

    needs_status = True

    def __init__(self, q_start: float, q_end: float, epochs: int, target: float = 0.95, min_pace: float = 0.5):
        _check(q_start, q_end, epochs)
        if not 0 < target <= 1 or not 0 <= min_pace <= 1:
            raise ValueError("adaptive schedule needs 0 < target <= 1 and 0 <= min_pace <= 1")
        self.q_start, self.q_end, self.epochs = q_start, q_end, epochs
        self.target, self.min_pace = target, min_pace
        self.s0: float | None = None
        self.p = 0.0

    def __call__(self, epoch: int, status: float | None = None) -> tuple[float, float]:
        if status is not None and not math.isnan(status):
            if self.s0 is None:
                self.s0 = status
            denom = self.target - self.s0
            driven = 1.0 if denom <= 0 else (status - self.s0) / denom
            self.p = max(self.p, min(1.0, max(0.0, driven)))
        self.p = max(self.p, self.min_pace * epoch / self.epochs)
        return self.at(self.p)

    def at(self, p: float) -> tuple[float, float]:
        span = self.q_end - self.q_start
        q = self.q_start + span * p
        if self.q_end <= 1 or span == 0:
            return q, 0.0
        c = (1 - self.q_start) / span
        if c >= 1:
            return q, 0.0
        return q, max(0.0, (p - c) / (1 - c))


def make_schedule(q_start: float, q_end: float, epochs: int, shape: str = "linear", **kw: float):
    """A schedule object: `sched(epoch, status=None) -> (q, lam)`; `sched.needs_status` tells whether the
    trainer must feed the learning status."""
    if shape == "adaptive":
        return AdaptiveSchedule(q_start, q_end, epochs, **kw)
    return StaticSchedule(q_start, q_end, epochs, shape, **kw)


def dal_schedule(q_start: float, q_end: float, epochs: int, shape: str = "linear", **kw: float) -> list[tuple[float, float]]:
    """The per-epoch (q, lambda) pairs for epochs 0..E-1. For `adaptive` these are the pairs it follows
    when the status never drives it (the pace floor alone)."""
    sched = make_schedule(q_start, q_end, epochs, shape, **kw)
    return [sched(i, None) for i in range(epochs)]
