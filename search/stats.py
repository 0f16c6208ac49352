"""Comparisons over seeds: the one place where dal-search decides whether A beats B.

Every finding, table and report sentence that compares two things (two losses, two schedule shapes, two
q_s x q_e points) goes through `compare` and says it with `sentence`, so they all state n, the mean
difference, its 95 % interval and one of four verdicts:

    better                    the interval lies above 0 (A higher than B)
    worse                     the interval lies below 0
    no detectable difference  the interval contains 0 (an interval that touches 0 contains it)
    too few seeds to tell     n < 3, whatever the numbers say

Pairing. In dal-search a seed fixes the label-noise draw, the train/validation split, the initialisation and
the batch order (objectives/train.py), so A and B trained on the same seed saw the same noisy labels: their
difference on that seed removes the noise draw's effect. `compare` pairs by seed over the seeds both sides
have; when they share fewer than 3 seeds but each side has its own, it falls back to Welch's unpaired
interval over all values and says so (`paired` is False).

    >>> c = compare({0: 0.95, 1: 0.93, 2: 0.96}, {0: 0.94, 1: 0.93, 2: 0.94})
    >>> (c.n, c.paired, c.verdict)
    (3, True, 'no detectable difference')
    >>> sentence("DAL", "GCE", c)  # doctest: +ELLIPSIS
    'DAL vs GCE: +1.0 points of test accuracy, 95 % CI [-1.5, +3.5], n=3 seeds paired: no detectable difference'

Values that are None or NaN (a failed seed) are left out before pairing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping

CONFIDENCE = 0.95
MIN_SEEDS = 3

BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = "better", "worse", "no detectable difference", "too few seeds to tell"


@dataclass(frozen=True)
class Comparison:
    """A minus B over seeds. `n` is the number of seed pairs (paired) or the smaller side (Welch);
    `low`/`high` are NaN where no interval exists (one value on a side)."""

    n: int
    diff: float
    low: float
    high: float
    verdict: str
    paired: bool
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float


def _clean(values: Mapping[int, float | None]) -> dict[int, float]:
    return {int(s): float(v) for s, v in values.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))}


def _t(df: float) -> float:
    from scipy.stats import t  # scipy comes with scikit-learn, a dependency of dal-search

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


def verdict(n: int, low: float, high: float) -> str:
    """The verdict for an interval [low, high] over n seeds (closed: an end at exactly 0 contains 0)."""
    if n < MIN_SEEDS or math.isnan(low) or math.isnan(high):
        return TOO_FEW
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NO_DIFFERENCE


def compare(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> Comparison:
    """Compare per-seed values of A and B ({seed: value}); the interval is Student t over seeds.

    Paired over the shared seeds when there are at least 3 of them, or when the two sides have exactly
    the same seeds; otherwise Welch's interval over all values of each side (an empty side gives n=0)."""
    a, b = _clean(a), _clean(b)
    shared = sorted(set(a) & set(b))
    mean_a = statistics.fmean(a.values()) if a else math.nan
    mean_b = statistics.fmean(b.values()) if b else math.nan
    if shared and (len(shared) >= MIN_SEEDS or set(a) == set(b)):
        d = [a[s] - b[s] for s in shared]
        n = len(d)
        diff = statistics.fmean(d)
        if n < 2:
            low = high = math.nan
        else:
            half = _t(n - 1) * statistics.stdev(d) / math.sqrt(n)
            low, high = diff - half, diff + half
        return Comparison(n, diff, low, high, verdict(n, low, high), True, len(a), len(b),
                          statistics.fmean(a[s] for s in shared), statistics.fmean(b[s] for s in shared))
    n = min(len(a), len(b))
    diff = mean_a - mean_b if n else math.nan
    low = high = math.nan
    if n >= 2:
        va, vb = statistics.variance(a.values()) / len(a), statistics.variance(b.values()) / len(b)
        se = math.sqrt(va + vb)
        if se == 0:
            low = high = diff
        else:
            df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
            half = _t(df) * se
            low, high = diff - half, diff + half
    return Comparison(n, diff, low, high, verdict(n, low, high), False, len(a), len(b), mean_a, mean_b)


def _points(x: float, scale: float, digits: int) -> str:
    return f"{scale * x:+.{digits}f}"


def describe(c: Comparison, what: str = "test accuracy", scale: float = 100.0, unit: str = "points",
             digits: int = 1) -> str:
    """'+1.3 points of test accuracy, 95 % CI [-0.2, +2.8], n=5 seeds paired: no detectable difference'.

    `scale` turns fractions into points (100: accuracy 0.013 is 1.3 points)."""
    if c.n == 0:
        return f"no shared data to compare {what} (n=0): {c.verdict}"
    head = f"{_points(c.diff, scale, digits)} {unit} of {what}"
    if math.isnan(c.low):
        interval = "no interval (one seed)" if c.n == 1 else "no interval"
    else:
        interval = (f"{round(100 * CONFIDENCE):d} % CI [{_points(c.low, scale, digits)}, "
                    f"{_points(c.high, scale, digits)}]")
    if c.paired:
        seeds = f"n={c.n} seed{'s' if c.n != 1 else ''} paired"
    else:
        seeds = f"n={c.n_a} vs {c.n_b} seeds, unpaired (Welch: the two sides share too few seeds to pair)"
    return f"{head}, {interval}, {seeds}: {c.verdict}"


def sentence(a: str, b: str, c: Comparison, note: str = "", **kw) -> str:
    """'A vs B (note): <describe(c)>' : the one way every place in dal-search states a comparison."""
    return f"{a} vs {b}{f' ({note})' if note else ''}: {describe(c, **kw)}"


def cell(c: Comparison, scale: float = 100.0, digits: int = 1) -> str:
    """A compact table cell: '+1.3 [-0.2, +2.8]' (the verdict goes in its own column)."""
    if c.n == 0:
        return "-"
    if math.isnan(c.low):
        return f"{_points(c.diff, scale, digits)} [no interval]"
    return f"{_points(c.diff, scale, digits)} [{_points(c.low, scale, digits)}, {_points(c.high, scale, digits)}]"


def spread(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample std) of per-seed values; std is None for fewer than 2 values (no spread to draw)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)
