"""DAL's per-epoch (q, lambda): the paper's linear rule and other shapes of the same trade-off.

Every static shape moves q from q_s towards q_e along a progress function f: [0, 1) -> [0, 1) of the epoch
fraction x = i / E (epoch index i = 0..E-1), and switches bootstrapping on once q has passed 1:

    q(i)      = q_s + (q_e - q_s) * f(i / E)
    t0        = the fractional epoch at which q crosses 1:  E * f^-1(c),  c = (1 - q_s) / (q_e - q_s)
    lambda(i) = max(0, (i - t0) / (E - t0))     and 0 whenever q(i) <= 1

    linear       f(x) = x                           the paper's rule: t0 = (1 - q_s) E / (q_e - q_s)
    cosine       f(x) = (1 - cos(pi x)) / 2         slow start and slow finish    t0 = E acos(1 - 2c) / pi
    exponential  f(x) = (e^(k x) - 1) / (e^k - 1)   k = 3: stays longer in the fitting regime (k < 0: shorter)
                                                    t0 = E ln(1 + c (e^k - 1)) / k
    step         f(x) = floor(n x) / n              n = `steps` = 4 plateaus of constant q
                                                    t0 = E j / n for the first plateau j with q > 1 strictly

So lambda is 0 while q <= 1 and then rises linearly in the epoch to about 1 at the end, for every shape,
and `linear` is PAPER.md's rule to float precision. For `step`, a plateau at exactly q = 1 is not past 1,
so bootstrapping waits for the next plateau (as the paper's lambda is 0 at q = 1 exactly).

Edges: q_e <= 1: q never passes 1, so lambda stays 0. q_e == q_s: constant q with no division by zero:
lambda = 0 if q <= 1, else 1 for every epoch (the limit of the paper's rule as q_e -> q_s, where t0 -> -inf).
q_s > 1: q is past 1 from the start; every shape uses the paper's t0 (negative, the linear extrapolation of
the crossing), so lambda is already positive at epoch 0. If t0 >= E (a step shape that never passes 1
within the run), lambda stays 0.

Adaptive (PAPER.md's open question 1: a rule driven by the network's learning status). The trainer feeds the
status s = the fraction of training samples the net predicts as their given label, measured on the previous
epoch. Under label noise that agreement rises in two phases: the net first fits the clean majority, then it
starts to memorise wrong labels; DAL's idea is to turn robust (q > 1, bootstrapping) exactly when the first
phase is done, which is when the agreement has risen most of the way. So progress follows the agreement:

    p_i = max(p_{i-1},  clip((s_i - s_0) / (target - s_0), 0, 1),  min_pace * i / E)
    q   = q_s + (q_e - q_s) * p_i
    lambda = max(0, (p_i - c) / (1 - c)),  c = (1 - q_s) / (q_e - q_s)   (the linear rule, in p instead of i/E)

with s_0 the first status seen (the starting point, so a net that starts at chance agreement and one that
starts at 50 % are treated alike) and `target` = 0.9 the agreement at which q should have reached q_e. The
running max keeps p monotone: a net that un-learns for an epoch (a learning-rate bump) does not make the loss
less robust again. The pace floor `min_pace * i / E` (min_pace = 0.5) makes q rise even when the status
stalls (heavy noise, where the agreement never reaches `target`); with min_pace = 1 the rule is never slower
than linear. Why 0.9 and not "1 - the noise rate": the noise rate is unknown in practice, and a fixed target
is the simple, honest choice; it is a search parameter like q_s and q_e. If s_0 >= target the status has
nothing left to show and p = 1 at once (the clip's limit). A NaN status carries no information and leaves p
where it was (the pace floor still applies); None is allowed only at epoch 0 (no previous epoch to measure).

>>> q, lam = dal_schedule(0.6, 1.5, 150)[149]
>>> round(q, 3), round(lam, 3)
(1.494, 0.988)
>>> s = make_schedule(0.5, 1.5, 10, "adaptive")
>>> s(0), s(1, status=0.5), s(2, status=0.9)
((0.5, 0.0), (0.55, 0.0), (1.5, 1.0))
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

from dal_search.objectives.registry import Registry

# Every schedule shape, in the order lists show them. A static shape registers a factory `(**options) ->
# Progress` (its f, and f^-1 or the plateaus at which q jumps); a shape that needs the learning status
# registers its class with `needs_status=True`. `searchable=False` keeps a shape out of default search spaces.
# A shape whose object changes as the epochs go (adaptive) gives `state_dict()` / `load_state_dict(state)`, so
# that a checkpoint (objectives/checkpoint.py) resumes it where it was.
SCHEDULES = Registry("schedule")


@dataclass(frozen=True)
class Progress:
    """A static shape's progress f: [0, 1) -> [0, 1), and how to find the epoch t0 at which q passes 1:
    `inverse` (f^-1) for a continuous f, else `plateaus` (the x at which a step function jumps)."""

    f: Callable[[float], float]
    inverse: Callable[[float], float] | None = None
    plateaus: Callable[[], list[float]] | None = None


def options(shape: str) -> tuple[str, ...]:
    """The keyword options `shape` takes (exponential: k; step: steps; adaptive: target, min_pace)."""
    entry = SCHEDULES[shape]
    params = inspect.signature(entry.obj).parameters
    skip = ("self", "q_start", "q_end", "epochs") if inspect.isclass(entry.obj) else ()
    return tuple(n for n in params if n not in skip)


def _check(q_start: float, q_end: float, epochs: int, shape: str, kw: dict) -> None:
    SCHEDULES[shape]  # raises UnknownName (a ValueError) listing the shapes
    unknown = sorted(set(kw) - set(options(shape)))
    if unknown:
        takes = ", ".join(options(shape)) or "no options"
        raise ValueError(f"schedule {shape!r} does not take {unknown[0]!r}; it takes: {takes}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (math.isfinite(q_start) and q_start > 0):
        raise ValueError(f"q_start must be a finite number > 0, got {q_start}")
    if not (math.isfinite(q_end) and q_end >= q_start):
        raise ValueError(f"q_end ({q_end}) must be a finite number >= q_start ({q_start})")


def _check_epoch(epoch: int, epochs: int) -> None:
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in 0..{epochs - 1}, got {epoch}")


@SCHEDULES.register("linear", help="the paper's rule: q(i) = q_s + (q_e - q_s) i / E")
def _linear() -> Progress:
    return Progress(lambda x: x, inverse=lambda c: c)


@SCHEDULES.register("cosine", help="slow start and slow finish: f(x) = (1 - cos(pi x)) / 2")
def _cosine() -> Progress:
    return Progress(lambda x: (1 - math.cos(math.pi * x)) / 2, inverse=lambda c: math.acos(1 - 2 * c) / math.pi)


@SCHEDULES.register("exponential", help="stays longer in the fitting regime: f(x) = (e^(k x) - 1) / (e^k - 1), k = 3")
def _exponential(k: float = 3.0) -> Progress:
    if not (math.isfinite(k) and k != 0):
        raise ValueError(f"exponential schedule needs a finite k != 0 (k = 3 is the default), got {k}")
    scale = math.expm1(k)
    return Progress(lambda x: math.expm1(k * x) / scale, inverse=lambda c: math.log1p(c * scale) / k)


@SCHEDULES.register("step", help="plateaus of constant q: f(x) = floor(n x) / n, n = 4 steps")
def _step(steps: int = 4) -> Progress:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"step schedule needs an integer steps >= 1, got {steps!r}")
    return Progress(lambda x: math.floor(x * steps) / steps, plateaus=lambda: [j / steps for j in range(steps)])


def _lam_past_one(q_start: float, q_end: float) -> float | None:
    """lambda for the degenerate cases with no crossing: 0.0 or 1.0, or None when q does cross 1."""
    if q_end <= 1:
        return 0.0  # q never passes 1
    if q_end == q_start:
        return 1.0  # constant q > 1: the paper's t0 -> -inf
    return None


class StaticSchedule:
    """(q, lambda) as a function of the epoch index alone; see the module docstring for the shapes.

    >>> s = StaticSchedule(0.6, 1.5, 150)
    >>> round(s.t0, 2), [round(v, 3) for v in s(67)]
    (66.67, [1.002, 0.004])
    """

    needs_status = False

    def __init__(self, q_start: float, q_end: float, epochs: int, shape: str = "linear", **kw: float):
        _check(q_start, q_end, epochs, shape, kw)
        if SCHEDULES[shape].get("needs_status"):
            raise ValueError(f"the {shape} schedule needs the learning status: use make_schedule(..., {shape!r})")
        self.q_start, self.q_end, self.epochs, self.shape = float(q_start), float(q_end), epochs, shape
        progress = SCHEDULES[shape].obj(**kw)
        self.f, f_inv = progress.f, progress.inverse
        span = self.q_end - self.q_start
        self.fixed_lam = _lam_past_one(self.q_start, self.q_end)
        if self.fixed_lam is not None:
            self.t0 = math.inf if self.fixed_lam == 0 else -math.inf
        elif shape == "linear" or self.q_start > 1:
            self.t0 = (1 - self.q_start) * epochs / span  # the paper's formula, exactly as written
        elif f_inv is not None:
            self.t0 = epochs * f_inv((1 - self.q_start) / span)
        else:  # plateaus (step): the first one whose q is past 1, computed as the q values themselves are
            self.t0 = epochs * next((x for x in progress.plateaus() if self.q_start + span * x > 1), 1.0)

    def q_at(self, epoch: int) -> float:
        if self.shape == "linear":  # the paper's expression, term for term
            return self.q_start + (self.q_end - self.q_start) * epoch / self.epochs
        return self.q_start + (self.q_end - self.q_start) * self.f(epoch / self.epochs)

    def __call__(self, epoch: int, status: float | None = None) -> tuple[float, float]:
        """(q, lambda) at `epoch` in 0..E-1; `status` is ignored (static shapes need no learning signal)."""
        _check_epoch(epoch, self.epochs)
        q = self.q_at(epoch)
        if self.fixed_lam is not None:
            return q, self.fixed_lam
        if q <= 1 or self.t0 >= self.epochs:
            return q, 0.0
        return q, max(0.0, (epoch - self.t0) / (self.epochs - self.t0))


@SCHEDULES.register("adaptive", help="driven by the learning status: q moves as the net's agreement with "
                    "its labels rises (target 0.9, min_pace 0.5)", needs_status=True)
class AdaptiveSchedule:
    """(q, lambda) driven by the learning status the trainer feeds each epoch (rule: the module docstring).

    Stateful: call it once per epoch, in order, with the status measured on the previous epoch.
    `progress` is the current p in [0, 1], `s0` the first status seen (None until one arrives).
    """

    needs_status = True

    def __init__(self, q_start: float, q_end: float, epochs: int, target: float = 0.9, min_pace: float = 0.5):
        _check(q_start, q_end, epochs, "adaptive", {})
        if not 0 < target <= 1:
            raise ValueError(f"adaptive schedule needs 0 < target <= 1 (a fraction of samples), got {target}")
        if not 0 <= min_pace <= 1:
            raise ValueError(f"adaptive schedule needs 0 <= min_pace <= 1, got {min_pace}")
        self.q_start, self.q_end, self.epochs = float(q_start), float(q_end), epochs
        self.target, self.min_pace = float(target), float(min_pace)
        self.s0: float | None = None
        self.progress = 0.0

    def __call__(self, epoch: int, status: float | None = None) -> tuple[float, float]:
        """Advance to `epoch` with the learning `status` in [0, 1] of the previous epoch; return (q, lambda).

        Raises ValueError for a status outside [0, 1], or None after epoch 0.
        """
        _check_epoch(epoch, self.epochs)
        if status is None:
            if epoch > 0:
                raise ValueError(f"the adaptive schedule needs the learning status at epoch {epoch} "
                                 "(the fraction of training samples predicted as their given label)")
        elif not math.isnan(status):
            if not 0 <= status <= 1:
                raise ValueError(f"learning status must be a fraction in [0, 1], got {status}")
            if self.s0 is None:
                self.s0 = float(status)
            room = self.target - self.s0
            driven = 1.0 if room <= 0 else min(1.0, max(0.0, (status - self.s0) / room))
            self.progress = max(self.progress, driven)
        self.progress = max(self.progress, min(1.0, self.min_pace * epoch / self.epochs))
        return self.at(self.progress)

    def at(self, p: float) -> tuple[float, float]:
        """(q, lambda) at progress p in [0, 1]: the linear rule with p in place of i / E."""
        q = self.q_start + (self.q_end - self.q_start) * p
        fixed = _lam_past_one(self.q_start, self.q_end)
        if fixed is not None:
            return q, fixed
        if q <= 1:
            return q, 0.0
        c = (1 - self.q_start) / (self.q_end - self.q_start)
        return q, max(0.0, (p - c) / (1 - c))

    def state_dict(self) -> dict[str, float | None]:
        """What a checkpoint keeps to resume it (objectives/checkpoint.py): the first status and the progress."""
        return {"s0": self.s0, "progress": self.progress}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.s0, self.progress = state["s0"], float(state["progress"])

    def preview(self) -> list[tuple[float, float]]:
        """The (q, lambda) of its pace floor alone (a status that never rises): the slowest it can go."""
        return [self.at(min(1.0, self.min_pace * i / self.epochs)) for i in range(self.epochs)]


@SCHEDULES.register("explicit", help="q(i) and lambda(i) given per epoch (q_schedule, lam_schedule), e.g. a schedule "
                    "learned by Population Based Training", searchable=False)
class ExplicitSchedule:
    """(q, lambda) read from two lists, one value per epoch: a schedule of any shape, such as the one a PBT
    population learned (search/tune.py). Stateless, so it ignores the learning status.

    With neither list given it is the paper's linear rule between q_start and q_end (so, like every shape, it
    is a function of q_s, q_e and E); a TrainConfig with schedule explicit must give both lists. Raises
    ValueError for one list without the other, a list whose length is not `epochs`, a q that is not finite > 0
    or a lambda that is not finite >= 0.

    >>> ExplicitSchedule(0.6, 1.5, 3, q_schedule=[0.6, 1.2, 0.9], lam_schedule=[0.0, 0.5, 0.2])(1)
    (1.2, 0.5)
    """

    needs_status = False

    def __init__(self, q_start: float, q_end: float, epochs: int, q_schedule: list[float] | None = None,
                 lam_schedule: list[float] | None = None):
        _check(q_start, q_end, epochs, "explicit", {})
        if (q_schedule is None) != (lam_schedule is None):
            raise ValueError("the explicit schedule needs both q_schedule and lam_schedule (or neither: linear)")
        if q_schedule is None:
            pairs = [StaticSchedule(q_start, q_end, epochs)(i) for i in range(epochs)]
            q_schedule, lam_schedule = [q for q, _ in pairs], [lam for _, lam in pairs]
        for name, values, ok in (("q_schedule", q_schedule, lambda v: math.isfinite(v) and v > 0),
                                 ("lam_schedule", lam_schedule, lambda v: math.isfinite(v) and v >= 0)):
            if len(values) != epochs:
                raise ValueError(f"{name} has {len(values)} values for {epochs} epochs; give one per epoch")
            bad = next((i for i, v in enumerate(values) if not ok(float(v))), None)
            if bad is not None:
                raise ValueError(f"{name}[{bad}] = {values[bad]} is not a valid "
                                 f"{'q (finite > 0)' if name == 'q_schedule' else 'lambda (finite >= 0)'}")
        self.epochs = epochs
        self.q_schedule = [float(v) for v in q_schedule]
        self.lam_schedule = [float(v) for v in lam_schedule]

    def __call__(self, epoch: int, status: float | None = None) -> tuple[float, float]:
        _check_epoch(epoch, self.epochs)
        return self.q_schedule[epoch], self.lam_schedule[epoch]

    def preview(self) -> list[tuple[float, float]]:
        return list(zip(self.q_schedule, self.lam_schedule))


def schedule_options(config) -> dict:
    """The options of `config.schedule` that a TrainConfig carries as fields of the same name (explicit:
    q_schedule and lam_schedule), for make_schedule."""
    return {name: getattr(config, name) for name in options(config.schedule)
            if getattr(config, name, None) is not None}


def make_schedule(q_start: float, q_end: float, epochs: int, shape: str = "linear", **kw: float):
    """A schedule object: `sched(epoch, status=None) -> (q, lam)` for epoch in 0..E-1.

    `sched.needs_status` is True for shapes (`adaptive`) that the trainer must feed the learning status each
    epoch after the first. Options (`options(shape)`): exponential `k` (3), step `steps` (4), adaptive
    `target` (0.9) and `min_pace` (0.5). Raises ValueError for an unknown shape or option, epochs < 1,
    q_start <= 0 or q_end < q_start.
    """
    _check(q_start, q_end, epochs, shape, kw)
    entry = SCHEDULES[shape]
    if inspect.isclass(entry.obj):  # a schedule with state of its own (adaptive)
        return entry.obj(q_start, q_end, epochs, **kw)
    return StaticSchedule(q_start, q_end, epochs, shape, **kw)


def dal_schedule(q_start: float, q_end: float, epochs: int, shape: str = "linear",
                 **kw: float) -> list[tuple[float, float]]:
    """The per-epoch (q, lambda) pairs for epochs 0..E-1 (length E).

    A shape that depends on the run (`adaptive`) gives its `preview()`: for adaptive, the pairs of its pace
    floor alone (a status that never rises), the slowest it can go.
    """
    sched = make_schedule(q_start, q_end, epochs, shape, **kw)
    if hasattr(sched, "preview"):
        return sched.preview()
    return [sched(i) for i in range(epochs)]


__all__ = ["SCHEDULES", "Progress", "options", "dal_schedule", "make_schedule", "schedule_options",
           "StaticSchedule", "AdaptiveSchedule", "ExplicitSchedule"]
